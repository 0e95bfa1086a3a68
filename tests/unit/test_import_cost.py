"""Start-up cost of the read verbs: what ``xentool list`` must not import.

``python3 -m xentool list`` is benchmarked against ``xl list`` (bench/list.py) and almost
all of its time is Python start-up and imports.  These tests run the CLI in a fresh
interpreter and check which modules it loaded (no timings: they would be flaky).
"""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Costly stdlib modules that no read verb needs.
NEVER_ON_READ_PATH = {"logging", "typing", "pathlib", "shutil", "threading", "struct"}


def _new_modules(code: str) -> set[str]:
    """Modules that ``code`` imports in a fresh interpreter (beyond what start-up loaded)."""
    script = "import sys\n_before = set(sys.modules)\n" + textwrap.dedent(code) + (
        "\nsys.stdout.write('\\n'.join(sorted(set(sys.modules) - _before)))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60, check=False)
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
    assert "xentool.cli.commands.query" in new
    assert not new & NEVER_ON_READ_PATH
    if argv[0] == "domname":  # XenStore alone answers it: no result dataclass either
        assert not new & {"dataclasses", "inspect"}


# What ``xentool destroy`` must not import: the config side of the device table (the
# dataclasses and enums of xentool.config.model, the disk spec's rule table, hashlib for
# generated MACs), which only create and the attach verbs use, and what only running a
# hotplug script (tempfile, with shutil) or retrying a XenStore conflict (random) needs.
NOT_ON_DESTROY_PATH = {
    "xentool.config", "xentool.config.model", "xentool.config.disk", "xentool.config.vif",
    "xentool.config.support", "hashlib", "_hashlib", "tempfile", "shutil", "random",
}


def test_destroy_verb_imports_no_costly_module() -> None:
    # Without Xen the verb fails before it gets to xentool.destroy: import what it loads
    # with Xen (the verb's module, the handles its session opens, the destroy itself).
    # The device list verbs load the same device table.
    new = _new_modules("""
        import xentool.cli.commands.control
        import domain_builder.xenctrl, xenstore.client
        import xentool.destroy
        """)
    assert {"xentool.host", "xentool.devices", "xenstore.devices.attach"} <= new
    assert not new & NOT_ON_DESTROY_PATH


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
        """)], capture_output=True, text=True, timeout=60, check=False)
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
        """)], capture_output=True, text=True, timeout=60, check=False)
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


# -- domain_builder.xenctrl: result types are made dataclasses on first use ----------------

RESULT_TYPES = ["VersionInfo", "PhysInfo", "DomainInfo", "VcpuInfo", "SchedCredit",
                "CreditParams", "Credit2Params", "CpupoolInfo", "CreateConfig", "UserRegs",
                "VcpuContext"]


def test_importing_xenctrl_makes_no_dataclass() -> None:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        from domain_builder import xenctrl
        print(sorted(set(xenctrl._DEFERRED) & set(vars(xenctrl))), "dataclasses" in sys.modules)
        from domain_builder.xenctrl import DomainInfo
        print(sorted(set(xenctrl._DEFERRED) & set(vars(xenctrl))))
        xenctrl.preload()  # what a daemon does before it serves events
        print(set(xenctrl._DEFERRED) <= set(vars(xenctrl)))
        """)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "[] False\n['DomainInfo']\nTrue\n"


@pytest.mark.parametrize("name", RESULT_TYPES)
def test_result_types_are_frozen_dataclasses(name: str) -> None:
    from domain_builder import xenctrl

    cls = getattr(xenctrl, name)
    assert dataclasses.is_dataclass(cls)
    assert cls.__dataclass_params__.frozen
    assert cls.__module__ == xenctrl.__name__ and cls.__qualname__ == name
    assert vars(xenctrl)[name] is cls
    assert name in dir(xenctrl)


def test_unknown_xenctrl_attribute_is_an_attribute_error() -> None:
    from domain_builder import xenctrl

    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        xenctrl.NoSuchThing  # noqa: B018


def test_a_deferred_field_default_is_made_first() -> None:
    # VcpuContext.user_regs defaults to UserRegs(): looked up first, VcpuContext must
    # still build its default with the dataclass, not with the plain class.
    r = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        from domain_builder.xenctrl import VcpuContext
        print(VcpuContext().user_regs)
        """)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("UserRegs(rip=0, rsp=0, ")


def test_a_deferred_field_is_the_field_it_stands_for() -> None:
    from domain_builder.xenctrl import UserRegs, VcpuContext

    (f,) = [f for f in dataclasses.fields(VcpuContext) if f.name == "user_regs"]
    assert f.default_factory is UserRegs
    assert f.default is dataclasses.MISSING and f.init and f.compare


def test_xenctrl_code_never_names_a_deferred_class_directly() -> None:
    """Inside xenctrl.py a bare ``DomainInfo`` is a NameError until the name was looked up:
    code must write ``_module.DomainInfo``.  Annotations are strings and do not count."""
    from domain_builder import xenctrl

    tree = ast.parse(Path(xenctrl.__file__).read_text())
    bare = []

    class Visitor(ast.NodeVisitor):
        def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
            for stmt in node.body:
                self.visit(stmt)

        def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
            if node.value is not None:
                self.visit(node.value)

        def visit_Name(self, node: ast.Name) -> None:
            if node.id in RESULT_TYPES and isinstance(node.ctx, ast.Load):
                bare.append((node.lineno, node.id))

    for stmt in tree.body:
        if isinstance(stmt, ast.ClassDef) and stmt.name in RESULT_TYPES:
            # The class body runs at import, while the names are still bound; its
            # methods and lambdas run later.
            for node in ast.walk(stmt):
                if isinstance(node, ast.FunctionDef):
                    Visitor().visit(node)
                elif isinstance(node, ast.Lambda):
                    Visitor().visit(node.body)
        else:
            Visitor().visit(stmt)
    assert bare == []


def test_grant_entry_size() -> None:
    import struct

    from domain_builder import xenctrl

    assert struct.calcsize(xenctrl._GRANT_V1) == 8
