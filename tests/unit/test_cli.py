import subprocess
import sys

import pytest

from xentool import __version__
from xentool.cli import VERBS, main


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xentool", *argv],
                          capture_output=True, text=True, timeout=60)


def test_version() -> None:
    r = run("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"xentool {__version__}"


def test_help_lists_every_verb() -> None:
    r = run("--help")
    assert r.returncode == 0
    for verb in VERBS:
        assert verb.name in r.stdout


def test_unknown_verb_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-verb"]) == 2
    err = capsys.readouterr().err
    assert err == "xentool: unknown verb 'no-such-verb' (see 'xentool help')\n"


def test_every_verb_has_configure_and_handler() -> None:
    for verb in VERBS:
        assert callable(verb.configure()), verb.name
        assert callable(verb.handler()), verb.name


def test_verb_names_are_unique() -> None:
    names = [v.name for v in VERBS]
    assert len(names) == len(set(names))
