"""xentoold after boot: started by systemd after Debian's xen.service (which started
xenstored and xenconsoled), and answering: commands are forwarded to it, its monitor carries
out a guest's on_poweroff, its sched-controller applies the policy.  First in the run, so it
sees the daemon as the boot left it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from integration.helpers import GuestKit

from .helpers import (
    DAEMON,
    POLICY,
    SOCKET,
    UNITS,
    domains,
    logged,
    processes_named,
    run,
    sched_params,
    show,
    wait_for,
    xentool,
)

pytestmark = [pytest.mark.xen, pytest.mark.production]


def status(unit: str) -> str:
    return run("systemctl", "status", "--no-pager", "-n", "20", unit, check=False).stdout


def test_xentoold_is_up_after_boot_after_debians_xen_service() -> None:
    xen = show("xen.service", "ActiveState", "SourcePath", "ActiveEnterTimestampMonotonic",
               "ControlGroup")
    # Debian's start-up: the unit systemd makes of xen-utils-common's init script ...
    assert xen["ActiveState"] == "active" and xen["SourcePath"] == "/etc/init.d/xen", xen
    # ... which started xenstored and xenconsoled (nothing else did).
    procs = Path(f"/sys/fs/cgroup{xen['ControlGroup']}/cgroup.procs").read_text().split()
    names = {Path(f"/proc/{p}/comm").read_text().strip() for p in procs
             if Path(f"/proc/{p}").exists()}
    assert names & {"oxenstored", "xenstored"} and "xenconsoled" in names, names
    assert run("systemctl", "is-active", *UNITS).stdout.split() == ["active", "active"], \
        "\n".join(status(u) for u in UNITS)
    assert run("systemctl", "is-enabled", *UNITS).stdout.split() == ["enabled", "enabled"]
    # Started at boot, not at the first command: the monitor must run with no command.
    wanted = run("systemctl", "list-dependencies", "--plain", "multi-user.target").stdout
    assert DAEMON in wanted, f"{DAEMON} is not started by multi-user.target"
    assert SOCKET in run("systemctl", "list-dependencies", "--plain", "sockets.target").stdout
    u = show(DAEMON, "ExecMainStartTimestampMonotonic", "After")
    assert "xen.service" in u["After"].split()
    assert int(u["ExecMainStartTimestampMonotonic"]) >= \
        int(xen["ActiveEnterTimestampMonotonic"]), (u, xen)
    # One daemon: no other xentool unit runs beside it (the testbed's own units aside).
    units = {line.split()[0] for line in run("systemctl", "list-units", "--no-legend",
                                             "--plain", "xentool*").stdout.splitlines()}
    assert {u for u in units if not u.startswith("xentool-testbed-")} == set(UNITS), units


# Runs the installed entry point in this interpreter and reports whether the command ran
# here (the library imported) or in the daemon (only xentool.client imported).
_PROBE = """
import runpy, sys
sys.argv = ["/usr/bin/xentool", "list"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    code = e.code
print("in-process" if "xentool.cli" in sys.modules else "forwarded", code, file=sys.stderr)
"""


def test_commands_are_forwarded_to_xentoold() -> None:
    """The installed `xentool` hands its command to the daemon: the library is never
    imported in the client's own process, unless XENTOOL_NO_DAEMON=1 makes it run the
    command itself."""
    def where(**env: str) -> str:
        r = run("/usr/bin/python3", "-c", _PROBE, env={**os.environ, **env}, timeout=60)
        assert r.stdout.startswith("Name "), r.stdout
        return r.stderr.splitlines()[-1]

    assert where() == "forwarded 0"
    assert where(XENTOOL_NO_DAEMON="1") == "in-process 0"


def test_the_monitor_answers_a_guest_that_powers_off(kit: GuestKit, guest_name: str,
                                                     tmp_path: Path) -> None:
    cfg = tmp_path / f"{guest_name}.cfg"
    cfg.write_text(kit.tiny_cfg(guest_name, more='on_poweroff = "destroy"\n'))
    xentool("create", "-q", str(cfg))
    # The tiny guest halts at once; without the monitor it would stay shut down.
    wait_for(lambda: guest_name not in domains(), "the halted guest to be destroyed")
    # Found by the guest's name, unique to this test: a journal cursor taken this early
    # after boot missed the line (the monitor logged it; --after-cursor found nothing).
    wait_for(lambda: logged(DAEMON, None, f"({guest_name}) shut down (poweroff): action "
                                           "destroy"),
             "the monitor's line in the journal", timeout=30)
    # The daemon's monitor did it: create found it holding the monitor lock and started no
    # transient `xentool monitor` of its own.
    assert processes_named("xentool", "monitor") == []


def test_the_controller_answers_with_the_policy() -> None:
    assert logged(DAEMON, None, f"sched-controller: loaded policy {POLICY}")
    # The example policy gives Domain-0 weight 512 (Xen's default is 256).
    assert "Domain-0" in POLICY.read_text()
    wait_for(lambda: sched_params("Domain-0") == (512, 0), "Domain-0's weight from the policy",
             timeout=30)
