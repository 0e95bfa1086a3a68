"""The units after boot: started by systemd after Debian's xen.service (which started
xenstored and xenconsoled), and answering: the monitor carries out a guest's on_poweroff,
the controller applies the policy.  First in the run, so it sees them as the boot left them."""

from __future__ import annotations

from pathlib import Path

import pytest
from integration.helpers import GuestKit

from .helpers import (
    MONITOR,
    POLICY,
    SCHED,
    UNITS,
    domains,
    logged,
    processes_named,
    run,
    sched_params,
    show,
    unit_of,
    wait_for,
    xentool,
)

pytestmark = [pytest.mark.xen, pytest.mark.production]


def status(unit: str) -> str:
    return run("systemctl", "status", "--no-pager", "-n", "20", unit, check=False).stdout


def test_units_are_up_after_boot_after_debians_xen_service() -> None:
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
    wanted = run("systemctl", "list-dependencies", "--plain", "multi-user.target").stdout
    for unit in UNITS:
        assert unit in wanted, f"{unit} is not started by multi-user.target"
        u = show(unit, "ExecMainStartTimestampMonotonic", "After")
        assert "xen.service" in u["After"].split()
        assert int(u["ExecMainStartTimestampMonotonic"]) >= \
            int(xen["ActiveEnterTimestampMonotonic"]), (unit, u, xen)


def test_the_monitor_answers_a_guest_that_powers_off(kit: GuestKit, guest_name: str,
                                                     tmp_path: Path) -> None:
    cfg = tmp_path / f"{guest_name}.cfg"
    cfg.write_text(kit.tiny_cfg(guest_name, more='on_poweroff = "destroy"\n'))
    xentool("create", "-q", str(cfg))
    # The tiny guest halts at once; without the monitor it would stay shut down.
    wait_for(lambda: guest_name not in domains(), "the halted guest to be destroyed")
    # Found by the guest's name, unique to this test: a journal cursor taken this early
    # after boot missed the line (the monitor logged it; --after-cursor found nothing).
    wait_for(lambda: logged(MONITOR, None, f"({guest_name}) shut down (poweroff): action "
                                           "destroy"),
             "the monitor's line in the journal", timeout=30)
    # The unit's monitor did it: create found it holding its lock and started none of its own.
    monitors = processes_named("xentool", "monitor")
    assert monitors and {unit_of(p) for p in monitors} == {MONITOR}, monitors


def test_the_controller_answers_with_the_policy() -> None:
    assert show(SCHED, "StatusText")["StatusText"] == f"policy {POLICY}"
    # The example policy gives Domain-0 weight 512 (Xen's default is 256).
    assert "Domain-0" in POLICY.read_text()
    wait_for(lambda: sched_params("Domain-0") == (512, 0), "Domain-0's weight from the policy",
             timeout=30)
