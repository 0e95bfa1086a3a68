"""shutdown/reboot/rename/mem-set/mem-max/vcpu-set against the hypervisor, xl as the oracle.

Guests are created with ``xentool create -e`` (no monitor), so nothing reacts to a shutdown
behind the test's back: a guest that shuts down stays in state 's' with its reason.  Under
TCG a busybox boot takes minutes, so the XenStore/hypervisor side of every verb is checked on
one tiny GRUB guest (module scope, seconds to create); busybox guests are used only where the
guest's own drivers matter (``test_busybox_*``: PV shutdown/reboot, balloon), two of them,
booted side by side once for the module.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import GuestKit, wait_for_console, xentool, xl

pytestmark = pytest.mark.xen


def xs_read(path: str) -> str | None:
    r = subprocess.run(["xenstore-read", path], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def domid_of(name: str) -> int:
    return int(xl("domid", name).stdout)


def dominfo(name: str) -> dict:
    """xentool's list --json entry (hypervisor values: max_memory_kb, shutdown_reason...)."""
    rows = json.loads(xentool("list", "--json", name).stdout)
    return rows[0]


def wait_state(name: str, pred, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = dominfo(name)
        if pred(info):
            return info
        assert time.monotonic() < deadline, f"{name} never reached the state: {info}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def busyboxes(kit: GuestKit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Two busybox guests (room to balloon: maxmem 160 MiB), booting at the same time."""
    tmp = tmp_path_factory.mktemp("busybox")
    names = [f"t-ops-bb{i}-{int(time.time()) % 100000}" for i in range(2)]
    try:
        for name in names:
            cfg = tmp / f"{name}.cfg"
            cfg.write_text(kit.busybox_cfg(name, memory=128, more="maxmem = 160\n"))
            xentool("create", "-e", str(cfg), timeout=600)
        for name in names:
            wait_for_console(name, "XENTOOL-GUEST-READY", timeout=900)
        yield names
    finally:
        for name in names:
            xentool("destroy", name, check=False, timeout=600)


@pytest.fixture(scope="module")
def guest(kit: GuestKit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tiny guest with room to move: maxmem 64 MiB, 2 possible vcpus."""
    name = f"t-ops-{int(time.time()) % 100000}"
    cfg = tmp_path_factory.mktemp("ops") / "g.cfg"
    cfg.write_text(kit.tiny_cfg(name, wait=True, more="maxmem = 64\nvcpus = 1\n"
                                                      "maxvcpus = 2\n"))
    try:
        xentool("create", "-e", str(cfg), timeout=600)
        yield name
    finally:
        xentool("destroy", name, check=False, timeout=600)


@pytest.fixture
def tiny(kit: GuestKit, tmp_path: Path, guest_name: str) -> Iterator[str]:
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(kit.tiny_cfg(guest_name, wait=True))
    try:
        xentool("create", "-e", str(cfg), timeout=600)
        yield guest_name
    finally:
        xentool("destroy", guest_name, check=False, timeout=600)


# -- memory and vcpus (the module's tiny guest) --------------------------------------------


def mem_state(name: str) -> tuple[str | None, str | None, int]:
    d = domid_of(name)
    uuid = dominfo(name)["uuid"]
    return (xs_read(f"/local/domain/{d}/memory/target"), xs_read(f"/vm/{uuid}/memory"),
            dominfo(name)["max_memory_kb"])


def test_mem_set_matches_xl(guest: str) -> None:
    xentool("mem-set", guest, "24m")
    ours = mem_state(guest)
    xl("mem-set", guest, "28m")
    assert mem_state(guest) != ours  # the oracle really changed something
    xl("mem-set", guest, "24m")
    assert mem_state(guest) == ours
    assert ours == (str(24 * 1024), "24", 25 * 1024)


def test_mem_set_above_static_max_fails_like_xl(guest: str) -> None:
    before = mem_state(guest)
    r = xentool("mem-set", guest, "1g", check=False)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "memory_dynamic_max" in r.stderr
    assert "Traceback" not in r.stderr
    assert xl("mem-set", guest, "1g", check=False).returncode == 1
    assert mem_state(guest) == before
    r = xentool("mem-set", guest, "12q", check=False)
    assert (r.returncode, r.stderr) == (2, "xentool: invalid memory size: 12q\n")


def test_mem_max_matches_xl(guest: str) -> None:
    def state() -> tuple[int, str | None]:
        return (dominfo(guest)["max_memory_kb"],
                xs_read(f"/local/domain/{domid_of(guest)}/memory/static-max"))

    xentool("mem-set", guest, "32m")
    xentool("mem-max", guest, "48m")
    ours = state()
    xl("mem-max", guest, "40m")
    assert state() != ours
    xl("mem-max", guest, "48m")
    # Xen's limit gets libxl's 1 MiB of slack; static-max in XenStore follows the new value.
    assert state() == ours == (48 * 1024 + 1024, str(48 * 1024))
    r = xentool("mem-max", guest, "16m", check=False)
    assert r.returncode == 1 and "memory_static_max" in r.stderr


def test_vcpu_set_matches_xl(guest: str) -> None:
    d = domid_of(guest)

    def nodes() -> list[str | None]:
        return [xs_read(f"/local/domain/{d}/cpu/{i}/availability") for i in range(2)]

    xentool("vcpu-set", guest, "2")
    assert nodes() == ["online", "online"]
    xentool("vcpu-set", guest, "1")
    ours = nodes()
    xl("vcpu-set", guest, "2")
    assert nodes() == ["online", "online"]
    xl("vcpu-set", guest, "1")
    assert nodes() == ours == ["online", "offline"]
    r = xentool("vcpu-set", guest, "3", "-i", check=False)
    assert r.returncode == 1 and "at most 2" in r.stderr
    r = xentool("vcpu-set", guest, "0", check=False)
    assert r.returncode == 1 and "0 vcpus" in r.stderr


def test_reboot_F_w_of_guest_without_pv_control(guest: str) -> None:
    """Last test on the module guest: it ends shut down (reason reboot, nobody restarts)."""
    d = domid_of(guest)
    r = xentool("reboot", "-F", "-w", guest, timeout=300)
    assert r.stderr.splitlines() == [
        f"Rebooting domain {d}",
        "PV control interface not available: using the reboot hypercall.",
        "Waiting for 1 domains", f"Domain {d} has been shut down, reason code 1"]
    assert dominfo(guest)["shutdown_reason"] == 1


# -- rename (tiny guest) ------------------------------------------------------------------


def test_rename_like_xl(tiny: str) -> None:
    d = domid_of(tiny)
    new = tiny + "-r"
    try:
        xentool("rename", tiny, new)
        assert domid_of(new) == d
        assert xs_read(f"/local/domain/{d}/name") == new
        uuid = dominfo(new)["uuid"]
        assert xs_read(f"/vm/{uuid}/name") == new
        assert xl("domid", tiny, check=False).returncode != 0
        r = xentool("rename", new, "Domain-0", check=False)
        assert r.returncode == 1
        assert r.stderr == (f"xentool: can't rename domain '{new}': domain with name "
                            f"\"Domain-0\" already exists\n")
        assert xl("rename", new, "Domain-0", check=False).returncode != 0
        xl("rename", new, tiny)
        assert domid_of(tiny) == d
    finally:
        xentool("destroy", new, check=False)


# -- shutdown / reboot ------------------------------------------------------------------------


def test_busybox_balloon_follows_mem_set(busyboxes: list[str]) -> None:
    guest = busyboxes[0]
    xentool("mem-set", guest, "100m")
    wait_state(guest, lambda i: i["current_memory_kb"] <= 101 * 1024, timeout=300)


def test_busybox_shutdown_w(busyboxes: list[str]) -> None:
    guest = busyboxes[0]  # after the balloon test: this ends it
    d = domid_of(guest)
    assert xs_read(f"/local/domain/{d}/control/feature-poweroff") == "1"
    r = xentool("shutdown", "-w", guest, timeout=600)
    assert r.stderr.splitlines() == [
        f"Shutting down domain {d}", "Waiting for 1 domains",
        f"Domain {d} has been shut down, reason code 0"]
    info = dominfo(guest)
    assert info["shutdown"] and info["shutdown_reason"] == 0


def test_busybox_reboot_w(busyboxes: list[str]) -> None:
    guest = busyboxes[1]
    d = domid_of(guest)
    r = xentool("reboot", "-w", guest, timeout=600)
    assert r.stderr.splitlines() == [
        f"Rebooting domain {d}", "Waiting for 1 domains",
        f"Domain {d} has been shut down, reason code 1"]
    assert dominfo(guest)["shutdown_reason"] == 1


def test_shutdown_F_of_guest_without_pv_control(tiny: str) -> None:
    d = domid_of(tiny)
    # libxl creates the node empty; only a guest with PV control writes "1" into it.
    assert not xs_read(f"/local/domain/{d}/control/feature-poweroff")
    r = xentool("shutdown", "-F", "-w", tiny, timeout=120)
    assert "PV control interface not available" in r.stderr
    assert f"Domain {d} has been shut down, reason code 0" in r.stderr
    assert dominfo(tiny)["shutdown_reason"] == 0


def test_shutdown_usage_errors() -> None:
    r = xentool("shutdown", check=False)
    assert (r.returncode, r.stderr) == (2, "xentool: you must specify -a or a domain id\n")
    r = xentool("shutdown", "no-such-domain-xyz", check=False)
    assert r.returncode == 1 and "does not exist" in r.stderr
    assert re.fullmatch(r"xentool: [^\n]*\n", r.stderr)
