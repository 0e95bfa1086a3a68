"""Packaging: the manual and completion cover the whole verb table, the units verify, the
daemons' systemd notifications and journal priorities, the binding's release check."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from domain_builder import _binding
from xentool import __version__, service
from xentool.cli import VERBS

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "contrib/systemd").glob("*.service"))
SOCKETS = sorted((ROOT / "contrib/systemd").glob("*.socket"))


def _gendocs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gendocs", ROOT / "contrib/gendocs.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_completion_lists_every_verb_and_its_options() -> None:
    gen = _gendocs()
    script = gen.bash_completion()
    for name, _summary, parser in gen.verb_parsers():
        assert f"\n        {name})\n" in script, name
        options = [o for a in parser._actions if a.help != argparse.SUPPRESS
                   for o in a.option_strings]
        block = script.split(f"\n        {name})\n", 1)[1].split(" ;;\n        ", 1)[0]
        for option in options:
            assert option in script, (name, option)
        assert block  # a branch of its own
    top_words = re.search(r'compgen -W "help ([^"]*)"', script)
    assert top_words is not None
    assert top_words.group(1).split() == [v.name for v in VERBS]
    if shutil.which("bash"):
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_manual_lists_every_verb_and_option() -> None:
    pytest.importorskip("build_manpages", reason="python3-argparse-manpage not installed")
    gen = _gendocs()
    text = gen.manual()
    assert text.startswith(".TH XENTOOL 1 ")
    for name, _summary, parser in gen.verb_parsers():
        assert f".SH OPTIONS 'xentool {name}'" in text, name
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings:
                assert option.replace("-", r"\-") in text, (name, option)


def test_help_for_an_unknown_verb_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from xentool.cli import main

    assert main(["help", "cpupool-lst"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "unknown verb 'cpupool-lst'" in err and "'cpupool-list'" in err


def test_units_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` is silent on the units (xentool itself stands in as a
    stub: it need not be installed here)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    stub = tmp_path / "xentool"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    units = [*UNITS, *SOCKETS]
    for unit in units:
        text = re.sub(r"^(Exec\w+=)xentool ", rf"\g<1>{stub} ", unit.read_text(), flags=re.M)
        (tmp_path / unit.name).write_text(text)
    r = subprocess.run([analyze, "verify", "--man=no", *(str(tmp_path / u.name) for u in units)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "" and r.stdout == "", r.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_units_notify_and_run_xentool_from_path(unit: Path) -> None:
    text = unit.read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text
    assert "proc-xen.mount" not in text and "/usr/bin/xentool" not in text
    assert "After=xen.service" in text


def test_changelog_version_is_the_package_version() -> None:
    first = (ROOT / "debian/changelog").read_text().split("\n", 1)[0]
    assert first.startswith(f"xentool ({__version__}")


def test_notifications_go_to_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []
    monkeypatch.setattr(service, "_notify", sent.append)
    monkeypatch.setattr(service, "_last_ping", 0.0)
    service.ready("watching")
    service.alive()
    service.alive()  # within a second of the last: not sent again
    service.stopping()
    assert sent == ["READY=1\nSTATUS=watching", "WATCHDOG=1", "STOPPING=1"]


def test_notifications_without_systemd_do_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "_notify", False)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    service.ready()
    service.alive()
    assert service._notify is None


def test_journal_priorities(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "stderr"
    with open(log, "w") as f:
        st = os.fstat(f.fileno())
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
            assert service.stderr_is_journal()
            monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
            assert not service.stderr_is_journal()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    fmt = service.JournalPriorityFormatter("xentool: %(message)s")

    def line(level: int, msg: str) -> str:
        return fmt.format(logging.LogRecord("x", level, __file__, 1, msg, None, None))

    assert line(logging.ERROR, "failed") == "<3>xentool: failed"
    assert line(logging.INFO, "restarted a\nb") == "<5>xentool: restarted a\n<5>b"
    assert line(logging.DEBUG, "detail") == "<7>xentool: detail"


def test_binding_release_check() -> None:
    maps = "7f00-7f01 r-xp 0 fe:01 42 /usr/lib/x86_64-linux-gnu/libxenctrl.so.4.17.0\n"
    assert _binding.linked_release(maps) == (4, 17)
    assert _binding.linked_release("nothing\n") is None
    assert _binding.release_mismatch(4, 17, (4, 17)) is None
    assert _binding.release_mismatch(4, 17, None) is None
    msg = _binding.release_mismatch(4, 18, (4, 17))
    assert msg is not None and "\n" not in msg
    assert "Xen 4.17" in msg and "Xen 4.18" in msg
    err = ImportError("libxenctrl.so.4.16: cannot open shared object file: No such file")
    assert "built for Xen 4.16" in _binding.missing_library(err)
    assert "not built" in _binding.missing_library(ImportError("No module named x"))


def test_gendocs_writes_files(tmp_path: Path) -> None:
    pytest.importorskip("build_manpages", reason="python3-argparse-manpage not installed")
    r = subprocess.run([sys.executable, str(ROOT / "contrib/gendocs.py"), "--man",
                        str(tmp_path / "xentool.1"), "--bash-completion",
                        str(tmp_path / "xentool")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "xentool.1").stat().st_size > 0
    assert (tmp_path / "xentool").read_text().endswith("complete -o filenames -F _xentool "
                                                      "xentool\n")
