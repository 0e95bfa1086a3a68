"""A hostile guest: xentool's backend side stays correct and bounded while the guest rewrites
its own frontend nodes with garbage.

The busybox guest runs with ``xentool.mode=hostile`` (contrib/testbed/guest/init): its own
front-end drivers let go of their devices, and a loop writes rapid ``state`` flips, garbage
ring-refs, event channels, protocols and feature flags, terminal escapes and values as large
as the xenbus device takes into every frontend directory it has, hot-plugged ones included.
While it does, the device verbs must succeed or fail with one clean line within a bound, the
listings must stay short and free of what the guest wrote, a detach and the shutdown must
complete, and the host must end up exactly as it was before the create.

The guest usually wins the race against an attach: it turns on the new device before the
hotplug script is done, the backend gives up and the attach fails (cleanly).  So the detaches
take the hot-plugged device when there is one, else the one the guest booted with.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from .helpers import XENTOOL, GuestKit, run, wait_for_console, xentool, xl
from .test_create_faults import settle, snapshot

pytestmark = pytest.mark.xen

VERB_BOUND = 60.0  # seconds any one verb may take with the guest hammering
LIST_BOUND = 20000  # characters a listing of one small guest may print
# Seconds between the guest's rounds of writes (its flips within a round are back to back):
# under emulation the guest's loop competes with dom0 for the two CPUs.
PAUSE = os.environ.get("XENTOOL_HOSTILE_PAUSE", "1")
# What the guest writes that must never reach an operator's terminal.
GUEST_GARBAGE = ("ZZZZZZZZZZZZZZZZ", "pwned", "99999999999")
# Anything but newline and tab below 0x20, DEL, and the C1 controls (0x9b is a CSI).
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
GARBAGE_FLAGS = ("x", "-1", "99999999999")  # what the loop writes to request-rx-copy


def check_clean(r: subprocess.CompletedProcess[str], took: float, what: str,
                expect_ok: bool = False) -> None:
    """A clean outcome: exit 0, or a one-line error and a non-zero status; never a
    traceback, never what the guest wrote, within VERB_BOUND."""
    what = f"xentool {what} (exit {r.returncode}, {took:.1f}s)"
    print(f"{what}: {r.stderr.strip()}")
    assert "Traceback" not in r.stderr, f"{what}:\n{r.stderr}"
    assert took < VERB_BOUND, what
    if r.returncode != 0:
        assert not expect_ok, f"{what}:\n{r.stdout}{r.stderr}"
        assert len(r.stderr.splitlines()) == 1, f"{what}: not one line:\n{r.stderr}"
    for stream in (r.stdout, r.stderr):
        assert len(stream) < LIST_BOUND, f"{what}: {len(stream)} characters"
        assert not CONTROL.search(stream), f"{what}: control characters in {stream!r}"
        assert not any(g in stream for g in GUEST_GARBAGE), f"{what}: guest data in {stream!r}"


def timed(*args: str, expect_ok: bool = False) -> subprocess.CompletedProcess[str]:
    t0 = time.monotonic()
    r = xentool(*args, check=False, timeout=VERB_BOUND + 60)
    check_clean(r, time.monotonic() - t0, " ".join(args), expect_ok)
    return r


def timed_together(*argvs: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Read-only verbs run side by side (as several operators would), each checked."""
    t0 = time.monotonic()
    procs = [subprocess.Popen([*XENTOOL, *a], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for a in argvs]
    out = []
    for argv, p in zip(argvs, procs, strict=True):
        stdout, stderr = p.communicate(timeout=VERB_BOUND + 60)
        r = subprocess.CompletedProcess(argv, p.returncode, stdout, stderr)
        check_clean(r, time.monotonic() - t0, " ".join(argv), expect_ok=True)
        out.append(r)
    return out


def xs_read(path: str) -> str | None:
    r = run("xenstore-read", path, check=False)
    return r.stdout.rstrip("\n") if r.returncode == 0 else None


def wait_for_garbage(path: str, timeout: float = 30.0) -> str | None:
    deadline = time.monotonic() + timeout
    while (value := xs_read(path)) not in GARBAGE_FLAGS and time.monotonic() < deadline:
        time.sleep(0.5)
    return value


def image(tmp_path: Path, name: str) -> Path:
    p = tmp_path / name
    with open(p, "wb") as f:
        f.truncate(4 << 20)
    return p


@pytest.mark.timeout(600)
def test_hostile_guest_cannot_break_device_verbs_or_leak(kit: GuestKit, tmp_path: Path,
                                                        guest_name: str) -> None:
    first, second = image(tmp_path, "a.img"), image(tmp_path, "b.img")
    more = (f"disk = [ 'format=raw, vdev=xvda, access=rw, target={first}' ]\n"
            "vif = [ 'bridge=xenbr0' ]\n")
    cfg = tmp_path / "hostile.cfg"
    cfg.write_text(kit.busybox_cfg(guest_name, mode="hostile",
                                   extra=f"xentool.hostile-pause={PAUSE}", more=more))
    before = snapshot()
    xentool("create", "-q", str(cfg), timeout=300)
    try:
        domid = int(xl("domid", guest_name).stdout)
        log = wait_for_console(guest_name, r"XENTOOL-HOSTILE-(RUNNING|NOTHING)[^\n]*\n",
                               timeout=180)
        running = re.search(r"XENTOOL-HOSTILE-RUNNING devices=(\d+) landed=(\d+)[^\n]*", log)
        assert running, log[-2000:]
        print(running.group(0))
        assert int(running.group(1)) == 2 and int(running.group(2)) > 0, running.group(0)
        # Its writes land: no front-end driver writes request-rx-copy into a vbd.
        assert xs_read(f"/local/domain/{domid}/device/vbd/51712/request-rx-copy") \
            in GARBAGE_FLAGS

        # -- attach while it hammers: success or one clean line, in bounded time
        disk = timed("block-attach", guest_name,
                     f"format=raw,vdev=xvdb,access=rw,target={second}", "--timeout", "30")
        if disk.returncode == 0:  # the loop finds the hot-plugged disk and turns on it too
            hot = f"/local/domain/{domid}/device/vbd/51728/request-rx-copy"
            assert wait_for_garbage(hot) in GARBAGE_FLAGS
        nic = timed("network-attach", guest_name, "bridge=xenbr0", "--timeout", "30")

        # -- listings: no crash, short, nothing of the guest's
        blocks, nets, long = timed_together(["block-list", guest_name],
                                            ["network-list", guest_name],
                                            ["list", "-l", guest_name])
        for r, added, state_col in ((blocks, disk, 3), (nets, nic, 4)):
            rows = r.stdout.splitlines()[1:]
            assert len(rows) == 1 + (added.returncode == 0), r.stdout
            for row in rows:  # the frontend's state: a xenbus state, or -1 for garbage
                assert -1 <= int(row.split()[state_col]) <= 8, row
        assert f'"name": "{guest_name}"' in long.stdout

        # -- detach while it hammers: must complete
        vdev, devid = ("xvdb", 51728) if disk.returncode == 0 else ("xvda", 51712)
        if timed("block-detach", guest_name, vdev, "--timeout", "5").returncode != 0:
            timed("block-detach", "-f", guest_name, vdev, "--timeout", "5", expect_ok=True)
        assert xs_read(f"/local/domain/0/backend/vbd/{domid}/{devid}/state") is None
        assert xs_read(f"/libxl/{domid}/device/vbd/{devid}/backend") is None
        assert xs_read(f"/local/domain/{domid}/device/vbd/{devid}/state") is None
        vif = 1 if nic.returncode == 0 else 0
        timed("network-detach", guest_name, str(vif), "--timeout", "5", expect_ok=True)
        assert xs_read(f"/local/domain/0/backend/vif/{domid}/{vif}/state") is None
        assert xs_read(f"/local/domain/{domid}/device/vif/{vif}/state") is None

        # -- the guest still powers off on request, hammering to the end
        r = timed("shutdown", "-w", guest_name, expect_ok=True)
        assert f"Domain {domid} has been shut down, reason code 0" in r.stderr, r.stderr
    finally:
        xentool("destroy", guest_name, check=False, timeout=300)
    leaks = settle(before, timeout=60)
    assert not leaks, leaks
