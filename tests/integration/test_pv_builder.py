"""The PV builder on a real hypervisor: `xentool create` boots the guest kit, xl checks it."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from .helpers import console_log, console_session, wait_for_console, xentool, xl

pytestmark = pytest.mark.xen

MARKER = "XENTOOL-GUEST-UP"


def xl_list(name: str) -> dict:
    """The guest's entry in `xl list -l` (libxl JSON)."""
    doms = json.loads(xl("list", "-l", name).stdout)
    assert len(doms) == 1
    return doms[0]


def xl_row(name: str) -> list[str]:
    """Name ID Mem VCPUs State Time(s) of `xl list NAME`."""
    return xl("list", name).stdout.splitlines()[1].split()


def free_memory() -> int:
    m = re.search(r"^free_memory\s*:\s*(\d+)", xl("info").stdout, re.MULTILINE)
    assert m
    return int(m.group(1))


def destroy(name: str) -> None:
    r = xentool("destroy", name, check=False)
    if r.returncode != 0:  # leave the testbed clean even if our destroy is broken
        xl("destroy", name, check=False)


# A busybox boot is minutes under emulation: CI boots the two corners of the matrix, the
# whole of it with XENTOOL_FULL_MATRIX=1.
BOOTS = ([(128, 1), (128, 2), (512, 1), (512, 2)] if os.environ.get("XENTOOL_FULL_MATRIX")
         else [(128, 1), (512, 2)])


@pytest.mark.parametrize("memory, vcpus", BOOTS)
def test_busybox_guest_boots(kit, guest_name, cfg_file, memory: int, vcpus: int) -> None:
    cfg = cfg_file(kit.busybox_cfg(guest_name, memory=memory, vcpus=vcpus,
                                   extra="xentool.test=cmdline-reached"))
    r = xentool("create", str(cfg), check=False)
    try:
        assert r.returncode == 0, r.stderr
        # What an operator does: `xentool create` then `xentool console`.  The kernel takes
        # seconds to boot, so the console is attached well before the initrd's /init runs.
        log, status = console_session("console", guest_name, pattern=r"XENTOOL-GUEST-READY")
        assert status == 0
        name, _domid, mem, nvcpus, state, _time = xl_row(guest_name)
        assert name == guest_name
        assert int(mem) == memory and int(nvcpus) == vcpus
        assert "r" in state or "b" in state, state
        # The initrd's /init ran (the marker); it reports the cmdline, CPUs and memory seen.
        assert re.search(r"XENTOOL-CMDLINE .*xentool\.test=cmdline-reached", log)
        assert re.search(rf"XENTOOL-CPUS {vcpus}\b", log), log[-2000:]
        memkb = int(re.search(r"XENTOOL-MEMKB (\d+)", log).group(1))
        # MemTotal excludes what the kernel reserves (~46 MiB for this kernel and initrd, plus
        # its page structures); test_guest_memory_matches_xl checks the exact figure against xl.
        assert memory * 1024 * 0.9 - 48 * 1024 < memkb <= memory * 1024
        assert MARKER in log
    finally:
        destroy(guest_name)


@pytest.mark.parametrize("vcpus", [1, 2])
def test_tiny_guest_64m(kit, guest_name, cfg_file, vcpus: int) -> None:
    """`create -c` on the tiny kernel, which prints its marker the moment it runs: the
    console client must be attached before the guest starts (as xl does it)."""
    cfg = cfg_file(kit.tiny_cfg(guest_name, wait=True, memory=64, more=f"vcpus = {vcpus}\n"))
    try:
        _, status = console_session("create", "-c", str(cfg), pattern="XENTOOL-TINY-UP",
                                    timeout=120)
        assert status == 0
        assert xl_row(guest_name)[2] == "64"
        # GRUB brings up vCPU 0 only, so `xl list` counts 1 online; vcpu-list shows them all.
        assert len(xl("vcpu-list", guest_name).stdout.splitlines()) - 1 == vcpus
    finally:
        destroy(guest_name)


@pytest.mark.parametrize("vcpus", [1, 2])
def test_debian_kernel_in_64m_refused_like_xl(kit, guest_name, cfg_file, vcpus: int) -> None:
    """The Debian kernel is linked at 16 MiB and spans 58 MiB: neither xl nor xentool fits it
    into 64 MiB.  xentool must say so in one line and leave nothing behind."""
    before = free_memory()
    cfg = cfg_file(kit.busybox_cfg(guest_name, memory=64, vcpus=vcpus))
    by_xl = xl("create", str(cfg), check=False)
    assert by_xl.returncode != 0 and "too large" in by_xl.stderr, by_xl.stderr
    r = xentool("create", str(cfg), check=False)
    assert r.returncode == 1
    last = r.stderr.splitlines()[-1]
    assert last.startswith("xentool: memory=64 MiB is too small") and "Traceback" not in r.stderr
    assert guest_name not in xl("list").stdout
    assert free_memory() >= before


def test_paused_then_unpause(kit, guest_name, cfg_file) -> None:
    cfg = cfg_file(kit.busybox_cfg(guest_name, memory=128))
    r = xentool("create", "-p", str(cfg), check=False)
    try:
        assert r.returncode == 0, r.stderr
        assert "p" in xl_row(guest_name)[4]
        time.sleep(2)
        assert MARKER not in (console_log(guest_name).read_text(errors="replace")
                              if console_log(guest_name).exists() else "")
        xl("unpause", guest_name)
        wait_for_console(guest_name, MARKER, timeout=240)
    finally:
        destroy(guest_name)


def test_xenstore_nodes_like_xl(kit, guest_name, cfg_file) -> None:
    cfg = cfg_file(kit.busybox_cfg(guest_name, memory=128, vcpus=1, more="maxvcpus = 2\n"))
    r = xentool("create", "-p", str(cfg), check=False)
    try:
        assert r.returncode == 0, r.stderr
        domid = int(xl_row(guest_name)[1])
        dom = f"/local/domain/{domid}"

        def read(path: str) -> str:
            return xl_out("xenstore-read", path)

        def perms(path: str) -> str:
            return xl_out("xenstore-ls", "-p", path.rsplit("/", 1)[0]).split(
                path.rsplit("/", 1)[1] + " = ", 1)[1].splitlines()[0]

        assert read(f"{dom}/name") == guest_name
        assert read(f"{dom}/domid") == str(domid)
        assert read(f"{dom}/memory/target") == str(128 * 1024)
        assert read(f"{dom}/cpu/0/availability") == "online"
        assert read(f"{dom}/cpu/1/availability") == "offline"
        assert read(f"{dom}/console/type") == "xenconsoled"
        assert int(read(f"{dom}/store/port")) > 0
        assert read(read(f"{dom}/vm") + "/name") == guest_name
        assert f"(n0,r{domid})" in perms(f"{dom}/name")
        assert f"(n{domid})" in perms(f"{dom}/control/shutdown")
    finally:
        destroy(guest_name)


def xl_out(*argv: str) -> str:
    from .helpers import run

    return run(*argv).stdout.strip()


def test_destroy_frees_all_memory(kit, guest_name, cfg_file) -> None:
    before = free_memory()
    cfg = cfg_file(kit.busybox_cfg(guest_name, memory=256))
    r = xentool("create", str(cfg), check=False)
    try:
        assert r.returncode == 0, r.stderr
        wait_for_console(guest_name, MARKER, timeout=240)
        assert free_memory() <= before - 256
    finally:
        destroy(guest_name)
    deadline = time.monotonic() + 30
    while free_memory() < before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert free_memory() >= before


def test_plan_needs_no_xen(kit, guest_name, cfg_file) -> None:
    cfg = cfg_file(kit.busybox_cfg(guest_name, memory=512, vcpus=2))
    r = xentool("create", "--plan", str(cfg))
    doc = json.loads(r.stdout)
    assert doc["plan"]["nr_pages"] == 512 * 256 and doc["plan"]["vcpus"] == 2
    assert guest_name not in xl("list").stdout


def test_failed_create_leaves_nothing(kit, guest_name, cfg_file) -> None:
    before = free_memory()
    # More memory than the host has: populate fails after the domain exists.
    cfg = cfg_file(kit.busybox_cfg(guest_name, memory=8192))  # the testbed has 6 GiB
    r = xentool("create", str(cfg), check=False)
    assert r.returncode == 1
    # Like xl, "Parsing config from ..." comes first; then exactly one error line.
    assert r.stderr.splitlines()[-1].startswith("xentool: ") and "Traceback" not in r.stderr
    assert guest_name not in xl("list").stdout
    assert free_memory() >= before


def test_guest_memory_matches_xl(kit, guest_name, cfg_file) -> None:
    """The guest sees exactly the memory it sees when xl builds it (same MemTotal)."""
    seen = {}
    for tool in ("xl", "xentool"):
        name = f"{guest_name}-{tool}"
        cfg = cfg_file(kit.busybox_cfg(name, memory=128), name=f"{tool}.cfg")
        (xl if tool == "xl" else xentool)("create", str(cfg))
        try:
            log = wait_for_console(name, r"XENTOOL-GUEST-READY", timeout=240)
            seen[tool] = int(re.search(r"XENTOOL-MEMKB (\d+)", log).group(1))
        finally:
            destroy(name)
    print(f"MemTotal of a 128 MiB guest: xl {seen['xl']} kB, xentool {seen['xentool']} kB")
    assert seen["xentool"] == seen["xl"]
