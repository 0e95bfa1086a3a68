"""PVH guests on the real hypervisor: xentool's PVH builder boots the guest kit's kernel,
with a disk and a vif, and the guest sees what it sees when xl builds it; every step of a
PVH create can fail or be killed without leaving anything behind.

Under TCG the guest needs ``cpuid = "host,rdtscp=0"``: QEMU's emulated SVM gives Xen no
next-RIP for the RDTSCP intercept (../shared/TESTBED-NOTES.md), so the configs carry it,
which also exercises the CPUID policy.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .helpers import (
    FULL_FAULT_WALK,
    XENTOOL,
    GuestKit,
    console_log,
    console_session,
    domid_of,
    fault_sample,
    wait_for_console,
    xentool,
    xl,
)
from .test_create_faults import create_env, kill_points, settle, snapshot, walk_create

if TYPE_CHECKING:
    from domain_builder.xenctrl import DomainInfo

pytestmark = pytest.mark.xen

READY = "XENTOOL-GUEST-READY"


def pvh_cfg(kit: GuestKit, name: str, *, memory: int = 128, vcpus: int = 1,
            more: str = "") -> str:
    return (f'name = "{name}"\ntype = "pvh"\nkernel = "{kit.kernel}"\n'
            f'ramdisk = "{kit.initrd}"\n'
            'extra = "console=hvc0 xentool.mode=wait xentool.settle=2"\n'
            f'memory = {memory}\nvcpus = {vcpus}\ncpuid = "host,rdtscp=0"\n{more}')


def devices(tmp_path: Path, mac: str = "00:16:3e:5a:00:01") -> str:
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(8 << 20)
    return (f"disk = [ 'format=raw, vdev=xvda, access=rw, target={img}' ]\n"
            f"vif = [ 'mac={mac}, bridge=xenbr0' ]\n")


def seen_by_guest(log: str) -> dict[str, object]:
    """What the guest reports about itself: CPUs, MemTotal, its e820, disks and NICs."""
    def one(key: str) -> str:
        m = re.search(rf"{key} (.*)", log)
        assert m, f"no {key} on the console:\n{log[-2000:]}"
        return m.group(1).strip()

    return {
        "cpus": int(one("XENTOOL-CPUS")),
        "memkb": int(one("XENTOOL-MEMKB")),
        "e820": re.findall(r"BIOS-e820: (\[mem [^\]]+\] .*)", log),
        "acpi": re.findall(r"ACPI: (RSDP|XSDT|FACP|DSDT|FACS|APIC) (0x[0-9A-F]+ [0-9A-F]+)",
                           log),
        "disks": re.findall(r"XENTOOL-DISK (.*)", log),
        "nics": re.findall(r"XENTOOL-NIC (.*)", log),
        "smp": re.findall(r"smpboot: (Allowing .*|Total of \d+ processors)", log),
    }


def destroy(name: str) -> None:
    if xentool("destroy", name, check=False).returncode != 0:
        xl("destroy", name, check=False)


def wait_connected(name: str, timeout: float = 60.0) -> tuple[list[str], list[str]]:
    """The rows of `xl block-list` and `xl network-list` once every device is Connected."""
    deadline = time.monotonic() + timeout
    while True:
        blocks = xl("block-list", name).stdout.splitlines()[1:]
        nics = xl("network-list", name).stdout.splitlines()[1:]
        states = [r.split()[3] for r in blocks] + [r.split()[4] for r in nics]
        if (states and all(s == "4" for s in states)) or time.monotonic() > deadline:
            return blocks, nics
        time.sleep(0.5)


def info(name: str) -> DomainInfo:
    from domain_builder.xenctrl import XenCtrl

    with XenCtrl() as xc:
        i = xc.domain_info(int(xl("domid", name).stdout))
    assert i is not None
    return i


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:.0f} s")
        time.sleep(0.5)


def runtime_verbs(name: str, tmp_path: Path) -> None:
    """What an operator does with a running guest works on a PVH one: pause, vCPU and
    memory changes the guest acts upon, a disk plugged and unplugged, an orderly
    shutdown through the PV control path."""
    xentool("pause", name)
    assert info(name).paused
    xentool("unpause", name)
    assert not info(name).paused
    xentool("vcpu-set", name, "1")
    wait_for("vCPU 1 offline", lambda: info(name).nr_online_vcpus == 1)
    xentool("mem-set", name, "112m")
    wait_for("balloon down to 112 MiB", lambda: info(name).current_memkb <= 113 * 1024,
             timeout=240)
    img = tmp_path / "hot.img"
    with open(img, "wb") as f:
        f.truncate(4 << 20)
    xentool("block-attach", name, f"format=raw, vdev=xvdb, access=rw, target={img}")
    wait_for("xvdb connected", lambda: any(
        r.split()[0] == "51728" and r.split()[3] == "4"
        for r in xl("block-list", name).stdout.splitlines()[1:]))
    xentool("block-detach", name, "xvdb")
    assert "51728" not in xl("block-list", name).stdout
    d = info(name).domid
    r = xentool("shutdown", "-w", name, timeout=300)
    assert r.stderr.splitlines()[-1] == f"Domain {d} has been shut down, reason code 0"


def test_pvh_guest_boots_with_disk_and_vif_like_under_xl(kit: GuestKit, tmp_path: Path,
                                                          guest_name: str) -> None:
    """The bar of the PVH issue: `xentool create` of a type="pvh" busybox guest with a
    disk and a vif reaches the marker, its devices are Connected, `xl list -l` shows it
    as PVH, and it sees the memory, CPUs, memory map and ACPI tables it sees under xl."""
    seen = {}
    for tool in ("xl", "xentool"):
        name = f"{guest_name}-{tool}"
        cfg = tmp_path / f"{tool}.cfg"
        cfg.write_text(pvh_cfg(kit, name, vcpus=2, more="maxvcpus = 3\n" + devices(tmp_path)))
        t0 = time.monotonic()
        r = (xl if tool == "xl" else xentool)("create", str(cfg), check=False)
        try:
            assert r.returncode == 0, r.stderr
            log = wait_for_console(name, READY, timeout=240)
            print(f"{tool}: marker {time.monotonic() - t0:.1f} s after create")
            seen[tool] = seen_by_guest(log)
            if tool == "xentool":
                blocks, nics = wait_connected(name)
                assert [b.split()[3] for b in blocks] == ["4"], blocks
                assert [n.split()[4] for n in nics] == ["4"], nics
                by_xl = xl("list", "-l", name).stdout
                doc = json.loads(by_xl)
                assert len(doc) == 1 and doc[0]["config"]["c_info"]["type"] == "pvh"
                assert xentool("list", "-l", name).stdout == by_xl
                row = xl("list", name).stdout.splitlines()[1].split()
                assert (row[2], row[3]) == ("128", "2"), row
                runtime_verbs(name, tmp_path)
        finally:
            destroy(name)
            time.sleep(1)  # the file disk's loop device is released asynchronously
    xl_view, xt_view = seen["xl"], seen["xentool"]
    print(f"guest view under xl: {xl_view}")
    assert xt_view["disks"] == ["xvda 16384 ro=0"] and \
        xt_view["nics"] == ["eth0 00:16:3e:5a:00:01"]
    assert xt_view == xl_view


def test_pvh_guest_console_network_scheduler_and_reboot(kit: GuestKit, tmp_path: Path,
                                                         guest_name: str) -> None:
    """The rest of what an operator does with a guest, on a PVH one: `create -c` shows its
    console, a vif plugged at run time connects and unplugs, a credit2 weight is set, and
    `reboot` brings the guest back (on_reboot="restart") as PVH, with its devices."""
    cfg = tmp_path / "g.cfg"
    cfg.write_text(pvh_cfg(kit, guest_name, more=devices(tmp_path)))
    before = snapshot()
    seen, rc = console_session("create", "-c", str(cfg), pattern=READY)
    try:
        assert rc == 0 and "XENTOOL-CPUS 1" in seen, seen[-2000:]
        wait_connected(guest_name)
        xentool("network-attach", guest_name, "mac=00:16:3e:5a:00:02", "bridge=xenbr0")
        wait_for("the plugged vif connected", lambda: [
            r.split()[4] for r in xl("network-list", guest_name).stdout.splitlines()[1:]]
            == ["4", "4"])
        xentool("network-detach", guest_name, "00:16:3e:5a:00:02")
        assert len(xl("network-list", guest_name).stdout.splitlines()) == 2

        xentool("sched-credit2", "-d", guest_name, "-w", "512")
        row = xl("sched-credit2", "-d", guest_name).stdout.splitlines()[1].split()
        assert row[0] == guest_name and row[2] == "512", row

        first = info(guest_name).domid
        r = xentool("reboot", "-w", guest_name, timeout=300)
        assert r.stderr.splitlines()[-1] == \
            f"Domain {first} has been shut down, reason code 1"
        # The old domain is gone before the new one takes the name: between the two, no
        # domain has it (xl restarts the same way).
        wait_for("the guest restarted", lambda: (d := domid_of(guest_name)) is not None
                 and d != first, timeout=180)
        wait_for("the marker of the second boot", lambda: console_log(guest_name)
                 .read_text(errors="replace").count(READY) >= 2, timeout=240)
        assert json.loads(xl("list", "-l", guest_name).stdout)[0]["config"]["c_info"][
            "type"] == "pvh"
        blocks, nics = wait_connected(guest_name)
        assert [b.split()[3] for b in blocks] == ["4"] and [n.split()[4] for n in nics] == ["4"]
    finally:
        destroy(guest_name)
    assert not settle(before), "the PVH guest left something behind"


def test_pvh_guest_with_maxmem_above_memory_balloons(kit: GuestKit, tmp_path: Path,
                                                     guest_name: str) -> None:
    """memory below maxmem: the RAM up to maxmem is populate-on-demand, Xen holds the
    target, the guest's balloon driver gives the rest back before it runs out; mem-set
    moves the target (and the PoD cache) up and the guest balloons up to it."""
    cfg = tmp_path / "g.cfg"
    cfg.write_text(pvh_cfg(kit, guest_name, memory=128, more="maxmem = 192\n"))
    xentool("create", str(cfg))
    try:
        log = wait_for_console(guest_name, READY, timeout=240)
        assert "BIOS-e820: [mem 0x0000000000100000-0x000000000bffffff] usable" in log
        wait_for("ballooned down to the target",
                 lambda: info(guest_name).current_memkb <= 129 * 1024)
        assert not info(guest_name).shutdown  # no PoD exhaustion
        assert info(guest_name).max_memkb == 129 * 1024
        xentool("mem-set", guest_name, "160m")
        wait_for("ballooned up to 160 MiB",
                 lambda: info(guest_name).current_memkb >= 159 * 1024, timeout=240)
        assert not info(guest_name).shutdown
    finally:
        destroy(guest_name)


def test_pvh_plan_and_dry_run_need_no_domain(kit: GuestKit, tmp_path: Path,
                                             guest_name: str) -> None:
    cfg = tmp_path / "g.cfg"
    cfg.write_text(pvh_cfg(kit, guest_name, memory=256, vcpus=2))
    doc = json.loads(xentool("create", "--plan", str(cfg)).stdout)
    plan = doc["plan"]
    assert plan["type"] == "pvh" and plan["nr_pages"] == 256 * 256 and plan["vcpus"] == 2
    assert plan["kernel"]["addr"] == "0x1000000" and plan["acpi"]["table_pages"] == 7
    dry = json.loads(xentool("create", "-n", str(cfg)).stdout)
    assert dry["c_info"]["type"] == "pvh" and "type.pvh" in dry["b_info"]
    assert guest_name not in xl("list").stdout


def test_pvh_create_refusals_name_the_cause(kit: GuestKit, tmp_path: Path,
                                            guest_name: str) -> None:
    """What xentool cannot build is refused before anything exists, in one error line
    (a config error is followed by the offending line and a caret, as everywhere)."""
    before = snapshot()
    for more, message in (
            ("pvshim = 1\n", "'pvshim = 1' is not supported by xentool"),
            ('cpuid = "host,nosuchflag=0"\n', "unknown CPUID flag name 'nosuchflag'")):
        cfg = tmp_path / "g.cfg"
        cfg.write_text(pvh_cfg(kit, guest_name) + more)
        r = xentool("create", str(cfg), check=False)
        assert r.returncode == 1, (more, r.stderr)
        errors = [line for line in r.stderr.splitlines() if line.startswith("xentool: ")]
        assert len(errors) == 1 and message in errors[0], r.stderr
        assert "Traceback" not in r.stderr
    assert not settle(before)


def test_tiny_pv_kernel_is_refused_as_pvh(kit: GuestKit, tmp_path: Path,
                                          guest_name: str) -> None:
    """A kernel without XEN_ELFNOTE_PHYS32_ENTRY cannot boot as PVH: refused before
    anything exists (xl too refuses it: libxenguest finds no PVH entry)."""
    cfg = tmp_path / "g.cfg"
    cfg.write_text(f'name = "{guest_name}"\ntype = "pvh"\nkernel = "{kit.tiny}"\n'
                   "memory = 32\n")
    r = xentool("create", str(cfg), check=False)
    assert r.returncode == 1 and "XEN_ELFNOTE_PHYS32_ENTRY" in r.stderr.splitlines()[-1]
    assert guest_name not in xl("list").stdout


@pytest.mark.timeout(2400)
def test_every_step_of_a_pvh_create_fails_or_dies_cleanly(kit: GuestKit, tmp_path: Path,
                                                          guest_name: str) -> None:
    """The PVH create's journal: a fault injected at each step (a sixteenth of them in CI, see
    helpers.fault_sample), and a kill at the first, middle and last step, leave nothing
    once the create failed or, after a kill, `xentool destroy` ran.  The device steps are
    those of a PV guest, walked with devices by test_create_faults.py: here they join the
    walk, and a kill at every step, with XENTOOL_FULL_FAULT_WALK=1."""
    from xentool.journal import traced_steps

    cfg = tmp_path / "g.cfg"
    more = devices(tmp_path) if FULL_FAULT_WALK else ""
    cfg.write_text(pvh_cfg(kit, guest_name, memory=96) + more)
    argv = [*XENTOOL, "create", "-q", "-p", str(cfg)]
    trace = tmp_path / "trace"
    before = snapshot()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                       env=create_env(XENTOOL_FAULT_TRACE=str(trace)))
    xentool("destroy", guest_name, check=False)
    assert r.returncode == 0, r.stderr
    steps = list(traced_steps(trace, op="create"))
    assert [s[2] for s in steps][:3] == ["create domain", "xenstore nodes", "build"]
    assert not settle(before), "a successful PVH create + destroy leaked"

    kills = kill_points(steps)
    failed = fault_sample(steps)
    leaks = walk_create(argv, before, failed, kills)
    walked = len(failed) + len(kills)
    print(f"PVH fault walk: {walked} points ({len(failed)} of {len(steps)} steps failed, "
          f"{walked - len(failed)} killed), {len(leaks)} leaks")
    assert not leaks, "\n".join(leaks)
