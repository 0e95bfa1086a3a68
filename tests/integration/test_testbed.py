"""The testbed itself: a real Xen 4.17 hypervisor, a working dom0 toolstack, bootable guests."""

from __future__ import annotations

import re

import pytest

from .helpers import GuestKit, domain_names, run, wait_for_console, xl

pytestmark = pytest.mark.xen


def test_hypervisor_is_xen_4_17() -> None:
    info = xl("info").stdout
    assert re.search(r"^xen_major\s+: 4$", info, re.M)
    assert re.search(r"^xen_minor\s+: 17$", info, re.M)


def test_xenstored_answers() -> None:
    assert run("xenstore-read", "/local/domain/0/name").stdout.strip() == "Domain-0"


def test_dom0_is_listed() -> None:
    assert "Domain-0" in domain_names()


def test_bridge_and_backend_modules() -> None:
    assert run("ip", "link", "show", "xenbr0").returncode == 0
    modules = run("cat", "/proc/modules").stdout
    for mod in ("xen_blkback", "xen_netback", "xen_gntdev", "xen_evtchn"):
        assert re.search(rf"^{mod} ", modules, re.M), mod


def test_busybox_guest_boots_under_xl(kit: GuestKit, guest_name: str, cfg_file) -> None:
    cfg = cfg_file(kit.busybox_cfg(guest_name, memory=128, vcpus=2, extra="hello=world"))
    xl("create", str(cfg))
    log = wait_for_console(guest_name, r"XENTOOL-GUEST-READY")
    assert "XENTOOL-GUEST-UP" in log
    assert re.search(r"^XENTOOL-CPUS 2\r?$", log, re.M)
    assert "hello=world" in log
    xl("destroy", guest_name)
    assert guest_name not in domain_names()


def test_tiny_guest_prints_marker_and_halts(kit: GuestKit, guest_name: str, cfg_file) -> None:
    cfg = cfg_file(kit.tiny_cfg(guest_name, more='on_poweroff = "preserve"\n'))
    xl("create", str(cfg))
    wait_for_console(guest_name, r"XENTOOL-TINY-UP", timeout=60)
    xl("destroy", guest_name)
