"""The units after boot: started by systemd after Debian's xen.service, answering (the
monitor carries out on_poweroff, the controller applies the policy), and the monitor
restarted by systemd after a SIGKILL still restarts a rebooting guest."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from integration.helpers import GuestKit

from .helpers import (
    MONITOR,
    POLICY,
    SCHED,
    UNITS,
    domains,
    journal_cursor,
    logged,
    main_pid,
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
    cursor = journal_cursor()
    cfg = tmp_path / f"{guest_name}.cfg"
    cfg.write_text(kit.tiny_cfg(guest_name, more='on_poweroff = "destroy"\n'))
    xentool("create", "-q", str(cfg))
    # The tiny guest halts at once; without the monitor it would stay shut down.
    wait_for(lambda: guest_name not in domains(), "the halted guest to be destroyed")
    wait_for(lambda: logged(MONITOR, cursor, "shut down (poweroff): action destroy"),
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


def test_the_monitor_killed_is_restarted_and_still_restarts_a_rebooting_guest(
        kit: GuestKit, guest_name: str, tmp_path: Path) -> None:
    cfg = tmp_path / f"{guest_name}.cfg"
    cfg.write_text(kit.tiny_cfg(guest_name, wait=True, more='on_reboot = "restart"\n'))
    xentool("create", "-q", str(cfg))
    first = domains()[guest_name]
    restarts = int(show(MONITOR, "NRestarts")["NRestarts"])
    killed = main_pid(MONITOR)
    cursor = journal_cursor()
    os.kill(killed, signal.SIGKILL)
    # Restart=on-failure, RestartSec=5; active again only once it has said READY=1.
    wait_for(lambda: (s := show(MONITOR, "ActiveState", "MainPID", "NRestarts"))
             ["ActiveState"] == "active" and int(s["MainPID"]) not in (0, killed)
             and int(s["NRestarts"]) == restarts + 1,
             "systemd to restart the monitor", timeout=90)
    # The new monitor knows the guest from the state the old one left: reboot it.
    xentool("reboot", "-F", guest_name)
    again = wait_for(lambda: (d := domains().get(guest_name)) and d["domid"] != first["domid"]
                     and d, "the rebooted guest to be restarted", timeout=180)
    assert again["uuid"] == first["uuid"]
    assert wait_for(lambda: logged(MONITOR, cursor, "shut down (reboot): action restart"),
                    "the restart in the monitor's journal", timeout=30)
    xentool("destroy", guest_name)
