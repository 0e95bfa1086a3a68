"""A bad policy file given to xentoold's running sched-controller (`systemctl reload`):
rejected, the running policy kept in force, and the error in the journal at priority err."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from integration.helpers import GuestKit

from .helpers import (
    DAEMON,
    POLICY,
    journal,
    journal_cursor,
    logged,
    main_pid,
    run,
    sched_params,
    show,
    wait_for,
    xentool,
)

pytestmark = [pytest.mark.xen, pytest.mark.production]

# Out of range (1-65535): a file that parses but that the controller must refuse.
BAD = '[[rule]]\nmatch = "batch-*"\nweight = 70000\n'
REJECTED = "keeping the previous policy"


@pytest.fixture(scope="module")
def rejected() -> Iterator[dict[str, object]]:
    """The installed policy replaced by BAD and the controller told to reload; the good one
    is put back and reloaded afterwards."""
    good = POLICY.read_bytes()
    pid = main_pid(DAEMON)
    cursor = journal_cursor()
    POLICY.write_text(BAD)
    try:
        run("systemctl", "reload", DAEMON)
        entries = wait_for(lambda: logged(DAEMON, cursor, REJECTED), "the rejection", timeout=60)
        yield {"pid": pid, "cursor": cursor, "entries": entries}
    finally:
        after = journal_cursor()
        POLICY.write_bytes(good)
        run("systemctl", "reload", DAEMON, check=False)
        wait_for(lambda: logged(DAEMON, after, "loaded policy"), "the good policy reloaded",
                 timeout=60)


def test_a_bad_policy_is_rejected_and_the_running_one_kept(
        rejected: dict[str, object], kit: GuestKit, guest_name: str, tmp_path: Path) -> None:
    state = show(DAEMON, "ActiveState", "MainPID")
    assert state["ActiveState"] == "active"
    assert int(state["MainPID"]) == rejected["pid"], "xentoold was restarted"
    # The same file, checked by hand: one line naming the fault, non-zero exit.
    r = xentool("sched-controller", "--check", "-f", str(POLICY), check=False)
    assert r.returncode != 0 and len(r.stderr.splitlines()) == 1 and "70000" in r.stderr, r
    # The running policy still applies to a new guest: the example's batch-* rule
    # (weight 128, cap 50), not the rejected weight and not Xen's defaults (256, 0).
    name = f"batch-{guest_name}"
    cfg = tmp_path / f"{name}.cfg"
    cfg.write_text(kit.tiny_cfg(name, wait=True))
    xentool("create", "-q", str(cfg))
    try:
        wait_for(lambda: sched_params(name) == (128, 50), "the kept policy applied to "
                 f"{name} (now {sched_params(name)})", timeout=60)
    finally:
        xentool("destroy", name)


def test_errors_reach_the_journal_at_priority_err(rejected: dict[str, object]) -> None:
    entries = rejected["entries"]
    assert isinstance(entries, list) and entries
    e = entries[0]
    assert e["PRIORITY"] == "3", e
    assert e["_SYSTEMD_UNIT"] == DAEMON
    assert not str(e["MESSAGE"]).startswith("<"), "journald did not read the priority prefix"
    # What an operator runs finds it ...
    errors = run("journalctl", "-b", "-u", DAEMON, "-p", "err", "-o", "cat",
                 f"--after-cursor={rejected['cursor']}").stdout
    assert REJECTED in errors
    # ... and the daemon's ordinary lines are not errors: a policy loaded is a notice.
    started = [x for x in journal(DAEMON) if "sched-controller: loaded policy" in
               str(x["MESSAGE"])]
    assert started and {x["PRIORITY"] for x in started} == {"5"}, started
