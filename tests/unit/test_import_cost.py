"""Start-up cost of the read verbs: what ``xentool list`` must not import.

``python3 -m xentool list`` is benchmarked against ``xl list`` (bench/list.py) and almost
all of its time is Python start-up and imports.  These tests run the CLI in a fresh
interpreter and check which modules it loaded (no timings: they would be flaky).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Costly stdlib modules that no read verb needs.
NEVER_ON_READ_PATH = {"logging", "typing", "pathlib", "shutil", "threading"}


def _new_modules(code: str) -> set[str]:
    """Modules that ``code`` imports in a fresh interpreter (beyond what start-up loaded)."""
    script = "import sys\n_before = set(sys.modules)\n" + textwrap.dedent(code) + (
        "\nsys.stdout.write('\\n'.join(sorted(set(sys.modules) - _before)))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def test_importing_the_cli_is_cheap() -> None:
    new = _new_modules("import xentool.cli")
    assert "xentool.cli" in new
    assert not new & (NEVER_ON_READ_PATH | {"dataclasses", "inspect"})


@pytest.mark.parametrize("argv", [
    ["list"], ["list", "-l", "0"], ["-v", "list", "--json"], ["info"], ["domid", "x"],
    ["domname", "0"], ["uptime"], ["vcpu-list"],
])
def test_read_verbs_import_no_costly_module(argv: list[str]) -> None:
    # Without Xen the verb fails to open libxenctrl (or XenStore); with Xen it runs.
    # Either way it has imported all it needs by the time main() returns.
    new = _new_modules(f"""
        import contextlib, io
        from xentool.cli import main
        with contextlib.redirect_stdout(io.StringIO()), \\
                contextlib.redirect_stderr(io.StringIO()):
            main({argv!r})
        """)
    assert "xentool.commands.query" in new
    assert not new & NEVER_ON_READ_PATH


def test_logging_is_configured_when_a_verb_imports_it() -> None:
    # As basicConfig in main() always did: -v counts lower the level, one line format.
    r = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        from xentool import cli
        hook = cli._LoggingOnImport(1)
        hook.install()
        assert "logging" not in sys.modules
        import logging
        assert hook not in sys.meta_path
        (h,) = logging.root.handlers
        print(logging.root.level, h.formatter._fmt, h.stream is sys.stderr)
        logging.getLogger("xentool.test").info("hello %s", "world")
        """)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "20 xentool: %(message)s True\n"
    assert r.stderr == "xentool: hello world\n"


@pytest.mark.parametrize("verbose, level", [(0, 30), (1, 20), (2, 10), (3, 10)])
def test_logging_imported_before_main_is_configured_at_once(verbose: int, level: int) -> None:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import logging, sys
        from xentool.cli import main
        assert main(["-v"] * {verbose} + ["help"]) == 0
        (h,) = logging.root.handlers
        assert not [f for f in sys.meta_path if type(f).__name__ == "_LoggingOnImport"]
        print(logging.root.level, h.formatter._fmt, file=sys.stderr)
        """)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr == f"{level} xentool: %(message)s\n"


def test_main_leaves_no_import_hook_behind() -> None:
    from xentool import cli

    before = list(sys.meta_path)
    assert cli.main(["help"]) == 0
    assert sys.meta_path == before


@pytest.mark.parametrize("columns", [None, "", "120", "0", "-3", "wide", "45"])
@pytest.mark.parametrize("lines", [None, "40", "x"])
def test_help_width_is_shutils(monkeypatch: pytest.MonkeyPatch, columns: str | None,
                               lines: str | None) -> None:
    import shutil

    from xentool import cli

    for name, value in (("COLUMNS", columns), ("LINES", lines)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert cli._terminal_columns() == shutil.get_terminal_size().columns
