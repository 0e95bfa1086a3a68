"""The package as installed at boot: by apt, from the .deb built on the host, offline; the
running xentool is the package's, nothing of the checkout; an upgrade restarts xentoold."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from .helpers import CHECKOUT, DAEMON, SOCKET, main_pid, run, show, wait_for

pytestmark = [pytest.mark.xen, pytest.mark.production]

INSTALLED = "/var/cache/xentool-testbed"  # where the boot's set-up copied the package


def installed_deb() -> Path:
    debs = sorted(Path(INSTALLED).glob("xentool_*.deb"))
    assert len(debs) == 1, debs
    return debs[0]


def test_apt_installed_the_hosts_package_offline() -> None:
    deb = installed_deb()
    version = run("dpkg-deb", "-f", str(deb), "Version").stdout.strip()
    status = run("dpkg-query", "-W", "-f", "${Status} ${Version}", "xentool").stdout
    assert status == f"install ok installed {version}"
    # Installed by apt from the file, as the README says (apt's own record of it).
    history = Path("/var/log/apt/history.log").read_text()
    assert re.search(r"^Commandline: apt install .*\./xentool_[^ ]*\.deb", history, re.M), \
        history[-2000:]
    assert re.search(rf"^(Install|Reinstall): .*\bxentool:amd64 \({re.escape(version)}",
                     history, re.M), history[-2000:]
    # Every installed file is the package's (dpkg checks them against its md5sums).
    assert run("dpkg", "--verify", "xentool").stdout == ""
    # No network in dom0: apt found every dependency in the image.
    assert run("ip", "route", "show", "default").stdout.strip() == ""


def test_xentool_is_the_package_not_the_checkout() -> None:
    assert "PYTHONPATH" not in os.environ
    assert shutil.which("xentool") == "/usr/bin/xentool"
    assert run("dpkg", "-S", "/usr/bin/xentool").stdout.startswith("xentool: ")
    code = ("import xentool, domain_builder._xenctrl as x\n"
            "print(xentool.__file__)\nprint(x.__file__)\n")
    for path in run("/usr/bin/python3", "-c", code).stdout.split():
        assert path.startswith("/usr/lib/python3/dist-packages/"), path
    pid = main_pid(DAEMON)
    assert pid, f"{DAEMON} has no main process"
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[:2] == [b"/usr/bin/python3", b"/usr/bin/xentool"], argv
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert not [e for e in env if e.startswith(b"PYTHONPATH=")]
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert str(CHECKOUT) not in maps
    # The daemon has loaded the binding: the one compiled into the package.
    assert "/usr/lib/python3/dist-packages/domain_builder/_xenctrl" in maps


def test_an_upgrade_restarts_the_running_daemon() -> None:
    """`apt install --reinstall` runs the maintainer scripts of an upgrade: the enabled
    daemon must come back with the new files, not stay stopped."""
    before = main_pid(DAEMON)
    run("apt", "install", "-y", "--reinstall", f"./{installed_deb().name}", cwd=INSTALLED,
        timeout=600)
    state = wait_for(lambda: (s := show(DAEMON, "ActiveState", "MainPID"))
                     ["ActiveState"] in ("active", "failed", "inactive") and s,
                     f"{DAEMON} to settle", timeout=120)
    assert state["ActiveState"] == "active", run("systemctl", "status", DAEMON,
                                                 check=False).stdout
    assert int(state["MainPID"]) != before, f"{DAEMON} was not restarted"
    assert run("systemctl", "is-active", SOCKET).stdout.strip() == "active"
