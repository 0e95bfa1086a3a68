"""xentoold killed with SIGKILL: systemd restarts it, and the new one's monitor still
restarts a rebooting guest it never saw created."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from integration.helpers import GuestKit

from .helpers import DAEMON, domains, journal_cursor, logged, main_pid, show, wait_for, xentool

pytestmark = [pytest.mark.xen, pytest.mark.production]


def test_the_daemon_killed_is_restarted_and_still_restarts_a_rebooting_guest(
        kit: GuestKit, guest_name: str, tmp_path: Path) -> None:
    cfg = tmp_path / f"{guest_name}.cfg"
    cfg.write_text(kit.tiny_cfg(guest_name, wait=True, more='on_reboot = "restart"\n'))
    xentool("create", "-q", str(cfg))
    first = domains()[guest_name]
    restarts = int(show(DAEMON, "NRestarts")["NRestarts"])
    killed = main_pid(DAEMON)
    cursor = journal_cursor()
    os.kill(killed, signal.SIGKILL)
    # Restart=on-failure, RestartSec=5; active again only once it has said READY=1.
    wait_for(lambda: (s := show(DAEMON, "ActiveState", "MainPID", "NRestarts"))
             ["ActiveState"] == "active" and int(s["MainPID"]) not in (0, killed)
             and int(s["NRestarts"]) == restarts + 1,
             "systemd to restart xentoold", timeout=90)
    # The new daemon's monitor knows the guest from the state the old one left: reboot it.
    xentool("reboot", "-F", guest_name)
    again = wait_for(lambda: (d := domains().get(guest_name)) and d["domid"] != first["domid"]
                     and d, "the rebooted guest to be restarted", timeout=180)
    assert again["uuid"] == first["uuid"]
    assert wait_for(lambda: logged(DAEMON, cursor, "shut down (reboot): action restart"),
                    "the restart in the monitor's journal", timeout=30)
    xentool("destroy", guest_name)
