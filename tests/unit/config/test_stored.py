"""The libxl-json userdata xentool stores equals, byte for byte, the file xl 4.17 stores for
the same config (captured in the testbed: tests/data/stored/<name>.cfg and the file xl
wrote for it, <name>.libxl-json)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xentool.config import loads
from xentool.config.libxl_json import stored_dumps, to_libxl

DATA = Path(__file__).resolve().parents[2] / "data" / "stored"


@pytest.mark.parametrize("name", sorted(p.stem for p in DATA.glob("*.cfg")))
def test_stored_config_is_what_xl_stores(name: str) -> None:
    cfg = loads((DATA / f"{name}.cfg").read_text(), f"{name}.cfg")
    want = (DATA / f"{name}.libxl-json").read_bytes().decode()
    # the testbed's cpumap is one byte: "all" is CPUs 0-7 in it
    assert stored_dumps(to_libxl(cfg, stored=True, host_cpus=8)) == want


def test_claim_mode_off_is_stored_as_xl_stores_it() -> None:
    cfg = loads((DATA / "minimal.cfg").read_text(), "minimal.cfg")
    text = stored_dumps(to_libxl(cfg, stored=True, claim_mode=False))
    assert '"claim_mode": "False"' in text and text.endswith("}\n\0")
