"""The integration and production suites only run inside the testbed; a syntax error there
should not cost a testbed boot to find."""

from __future__ import annotations

import py_compile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
SUITE = sorted([*(TESTS / "integration").glob("*.py"), *(TESTS / "production").glob("*.py")])


@pytest.mark.parametrize("path", SUITE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_integration_module_compiles(path: Path, tmp_path: Path) -> None:
    py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)
