"""What the package installs for the operator: `man xentool` and `man 5
xentool-sched-policy` render, and bash completes the verbs and the running domains."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from integration.helpers import GuestKit

from .helpers import run, xentool

pytestmark = [pytest.mark.xen, pytest.mark.production]


def installed_verbs() -> list[str]:
    code = "from xentool.cli import VERBS\nfor v in VERBS: print(v.name)\n"
    verbs = run("/usr/bin/python3", "-c", code).stdout.split()
    assert len(verbs) > 30, verbs
    return verbs


def man(*args: str) -> str:
    env = {**os.environ, "MANWIDTH": "100", "MANPAGER": "cat"}
    r = run("man", "--warnings", *args, env=env)
    assert r.stderr == "", r.stderr  # groff's warnings included
    return r.stdout


def test_man_xentool_renders_every_verb() -> None:
    text = man("xentool")
    assert re.match(r"XENTOOL\(1\)\s", text), text[:200]
    missing = [v for v in installed_verbs() if f"OPTIONS 'xentool {v}'" not in text]
    assert not missing, f"verbs without a section in xentool(1): {missing}"


def test_man_sched_policy_renders() -> None:
    text = man("5", "xentool-sched-policy")
    assert re.match(r"XENTOOL-SCHED-POLICY\(5\)\s", text), text[:200]
    assert "weight" in text and "cap" in text


COMPLETE = r"""
. /usr/share/bash-completion/bash_completion
# What bash does on the first <TAB> after "xentool": load the package's completion file.
__load_completion xentool || exit 3
fn=$(complete -p xentool | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
[ -n "$fn" ] || exit 4
complete_words() {
    COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
    COMPREPLY=()
    "$fn" xentool "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
    printf '%s\n' "${COMPREPLY[@]}"
}
complete_words xentool ""
echo "-- destroy"
complete_words xentool destroy ""
"""


def test_completion_lists_the_verbs_and_the_running_domains(kit: GuestKit, guest_name: str,
                                                            tmp_path: Path) -> None:
    cfg = tmp_path / f"{guest_name}.cfg"
    cfg.write_text(kit.tiny_cfg(guest_name, wait=True))
    xentool("create", "-q", str(cfg))
    try:
        out = run("bash", "--norc", "--noprofile", "-c", COMPLETE).stdout
    finally:
        xentool("destroy", guest_name)
    verbs, _, domains = out.partition("-- destroy\n")
    # every verb of the table, and `help` (which takes a verb)
    assert sorted(verbs.split()) == sorted([*installed_verbs(), "help"])
    assert {"Domain-0", guest_name} <= set(domains.split()), domains
