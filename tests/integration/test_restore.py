"""``xentool restore`` in the testbed, of guests ``xl save`` wrote (interop: xl's guest is
the subject): the guest goes on with the state only its RAM held, its disk and vif
reconnect, ``xl list -l`` and ``xentool list -l`` agree on it, and destroying it leaves
nothing; a damaged file, a failure at any step of the restore and a killed restore leave
nothing either.

The guest is the busybox guest in ``xentool.mode=stateful`` (contrib/testbed/guest/init):
a counter on hvc0 every 100 ms and a checksummed file in its tmpfs.  CI cost: one guest
booted by xl and saved once; the fault walk restores that file at every step.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xentool.journal import traced_steps

from .helpers import (
    XENTOOL,
    GuestKit,
    console_log,
    console_session,
    domid_of,
    wait_for_console,
    xentool,
    xl,
)
from .test_create_faults import settle, snapshot
from .test_save import assert_continues, counters

pytestmark = pytest.mark.xen


def backend_states(domid: int) -> dict[str, str]:
    """kind/devid -> backend state of the domain's vbd and vif backends."""
    out = {}
    for kind in ("vbd", "vif"):
        r = subprocess.run(["xenstore-list", f"/local/domain/0/backend/{kind}/{domid}"],
                           capture_output=True, text=True)
        for devid in r.stdout.split():
            state = subprocess.run(
                ["xenstore-read", f"/local/domain/0/backend/{kind}/{domid}/{devid}/state"],
                capture_output=True, text=True).stdout.strip()
            out[f"{kind}/{devid}"] = state
    return out


def wait_connected(domid: int, want: set[str], timeout: float = 120) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = backend_states(domid)
        if set(states) == want and all(s == "4" for s in states.values()):
            break
        time.sleep(1)
    return states


def restore_env(**kw: str) -> dict[str, str]:
    # In-process (not through xentoold): the fault plan and a SIGKILL are the command's.
    return {**os.environ, "XENTOOL_NO_DAEMON": "1", **kw}


def run_restore(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*XENTOOL, "restore", *args],
                          capture_output=True, text=True, timeout=600, env=restore_env(**env))


class Saved:
    """A stateful guest with a disk and a vif, created and saved by xl."""

    def __init__(self, name: str, path: Path, checksum: str, last: int, devices: set[str]):
        self.name, self.path, self.checksum, self.last = name, path, checksum, last
        self.devices = devices


@pytest.fixture(scope="module")
def saved(kit: GuestKit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Saved]:
    tmp = tmp_path_factory.mktemp("restore")
    name = f"t-restore-{os.getpid()}"
    disk = tmp / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(8 << 20)
    cfg = tmp / "g.cfg"
    cfg.write_text(kit.busybox_cfg(
        name, memory=128, vcpus=2, mode="stateful",
        more=f"disk = [ 'format=raw, vdev=xvda, access=rw, target={disk}' ]\n"
             "vif = [ 'bridge=xenbr0' ]\n"))
    xl("create", "-q", str(cfg), timeout=300)
    try:
        log = wait_for_console(name, r"XENTOOL-STATE-OK", timeout=240)
        m = re.search(r"XENTOOL-STATE-SUM (\w+)", log)
        assert m, log[-2000:]
        domid = domid_of(name)
        assert domid is not None
        devices = set(wait_connected(domid, {"vbd/51712", "vif/0"}))
        path = tmp / "g.save"
        t0 = time.monotonic()
        xl("save", name, str(path), timeout=600)
        print(f"xl save: {time.monotonic() - t0:.1f}s, {path.stat().st_size} bytes")
        last = max(counters(console_log(name).read_text(errors="replace")))
        yield Saved(name, path, m.group(1), last, devices)
    finally:
        xl("destroy", name, check=False)


def test_xl_save_xentool_restore_c(saved: Saved) -> None:
    """``xentool restore -c`` of what ``xl save`` wrote: xl's messages, the console shows the
    counter going on, the state holds, the disk and vif connect again, and xl and xentool
    describe the same guest."""
    before = snapshot()
    offset = console_log(saved.name).stat().st_size
    t0 = time.monotonic()
    try:
        text, rc = console_session("restore", "-c", str(saved.path), timeout=600,
                                   pattern=r"(?s)XENTOOL-COUNTER \d+.*XENTOOL-COUNTER \d+\r?\n")
        print(f"xentool restore -c: {time.monotonic() - t0:.1f}s to the counter")
        assert rc == 0, text[-2000:]
        assert f"Loading new save file {saved.path} (new xl fmt info 0x3/0x0/" in text, text
        assert "Parsing config from <saved>" in text, text
        later = counters(text)
        assert later and min(later) > saved.last, (saved.last, later[:5])
        domid = domid_of(saved.name)
        assert domid is not None, "no domain after the restore"
        seen = assert_continues(saved.name, offset, saved.last, saved.checksum)
        print(f"counter: {saved.last} before the save, {seen[0]}..{seen[-1]} after")
        states = wait_connected(domid, saved.devices)
        assert states == dict.fromkeys(saved.devices, "4"), states
        # xl and xentool see the same guest
        xl_doc = json.loads(xl("list", "-l", saved.name).stdout)[0]
        xt_doc = json.loads(xentool("list", "-l", saved.name).stdout)[0]
        for doc in (xl_doc, xt_doc):
            assert doc["domid"] == domid
            c, b = doc["config"]["c_info"], doc["config"]["b_info"]
            assert c["name"] == saved.name
            assert (b["max_memkb"], b["target_memkb"], b["max_vcpus"]) == (131072, 131072, 2)
        assert xl_doc["config"]["c_info"]["uuid"] == xt_doc["config"]["c_info"]["uuid"]
        assert [d["vdev"] for d in xl_doc["config"]["disks"]] == ["xvda"]
        assert len(xl_doc["config"]["nics"]) == 1
    finally:
        xentool("destroy", saved.name, check=False)
    assert not settle(before), "restore + destroy leaked"


def test_damaged_files_fail_cleanly(saved: Saved, tmp_path: Path) -> None:
    """Cut a little way into the memory, cut before the libxc END, a wrong magic number:
    one line naming the file, non-zero status, nothing left."""
    before = snapshot()
    data = saved.path.read_bytes()
    # An eighth in: past the first batches of pages, and a cheaper restore than half-way.
    cases = {"cut": data[:len(data) // 8], "no-end": data[:len(data) - 24],
             "magic": b"Y" + data[1:]}
    for label, content in cases.items():
        bad = tmp_path / f"{label}.save"
        bad.write_bytes(content)
        r = run_restore("-e", str(bad))
        assert r.returncode != 0, (label, r.stderr)
        assert "Traceback" not in r.stderr, (label, r.stderr)
        errors = [line for line in r.stderr.splitlines() if line.startswith("xentool:")]
        assert len(errors) == 1 and str(bad) in errors[0], (label, r.stderr)
        assert domid_of(saved.name) is None
        leaks = settle(before)
        assert not leaks, (label, leaks)
        bad.unlink()


#: XENTOOL_RESTORE_WALK=1: fail every step and kill at every step (CI: a few of each).
FULL_WALK = os.environ.get("XENTOOL_RESTORE_WALK", "") not in ("", "0")


def test_failed_or_killed_restore_leaves_nothing(saved: Saved, tmp_path: Path) -> None:
    """A failure injected at steps of the restore (in CI the stream and the last one), a
    kill at steps of it (in CI the stream) and a SIGKILL in the middle of reading the
    memory (then ``destroy`` of what the killed process left, as an operator would):
    nothing leaks."""
    before = snapshot()
    trace = tmp_path / "trace"
    r = run_restore("-e", "-p", str(saved.path), XENTOOL_FAULT_TRACE=str(trace))
    xentool("destroy", saved.name, check=False)
    assert r.returncode == 0, r.stderr
    steps = list(traced_steps(trace, op="restore"))
    names = [n for _, _, n in steps]
    assert "restore" in names and len(steps) >= 5, steps
    assert not settle(before), "restore + destroy leaked"
    stream = names.index("restore")
    if FULL_WALK:
        failed = killed = list(range(len(steps)))
    else:  # CI: the stream (where the domain is half built) and the last step
        failed, killed = sorted({stream, len(steps) - 1}), [stream]
    points = [("step", steps[i][1], steps[i][2]) for i in failed]
    points += [("kill", steps[i][1], steps[i][2]) for i in killed]
    points.append(("sigkill", 0, "reading the memory"))
    failures = []

    def recover() -> None:
        for domid in snapshot().domids - before.domids:
            xentool("destroy", str(domid), check=False)
        xentool("list", check=False)  # drops the record of a kill before any domain

    for mode, k, name in points:
        print(f"restore fault walk: {mode}:{k} ({name})", file=sys.stderr, flush=True)
        if mode == "sigkill":
            proc = subprocess.Popen([*XENTOOL, "restore", "-e", "-p",
                                     str(saved.path)], env=restore_env(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not snapshot().domids - before.domids:
                time.sleep(0.5)
            time.sleep(3)  # well into the memory
            proc.kill()
            proc.wait(timeout=60)
            recover()
        else:
            r = run_restore("-e", "-p", str(saved.path),
                            XENTOOL_FAULT_INJECT=f"{mode}:{k}@restore")
            if mode == "step":
                if r.returncode != 1 or f"injected fault at step {k} ({name})" not in \
                        r.stderr or "Traceback" in r.stderr:
                    failures.append(f"step:{k} ({name}): rc {r.returncode}: "
                                    f"{r.stderr[-500:]}")
            else:
                if r.returncode != -9:
                    failures.append(f"kill:{k} ({name}): rc {r.returncode}")
                recover()
        leaks = settle(before)
        if leaks:
            failures.append(f"{mode}:{k} ({name}): {'; '.join(leaks)}")
            for domid in snapshot().domids - before.domids:
                xl("destroy", str(domid), check=False)
    print(f"restore fault walk: {len(points)} points, {len(failures)} failures")
    assert not failures, "\n".join(failures)
