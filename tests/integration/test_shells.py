"""The split toolstack in the testbed: xentoold keeps domain shells ready, creates take them.

A daemon with ``--prebuild 2`` (shells of 32 MiB, one vCPU: the tiny guest's size) runs on a
private socket.  Proven here, against the real hypervisor and xenstored:

* the shells are paused domains that ``xentool list`` leaves out and ``xl list`` names
  ``xentool-shell-<domid>``; a create, through the daemon or in-process, takes one (its
  domid is a shell's), the guest boots from it, and the daemon makes a new one;
* a guest built from a shell leaves the same hypervisor and xenstore state as ``xl
  create`` of the same config (test_state_parity's record and comparison);
* a config that does not fit (another memory size) is created the ordinary way;
* fault injection at every step of a create that takes a shell, and kills after the take:
  nothing leaks (no domain but the pool's, no node, no file), the pool is full again;
* the daemon's stop destroys its shells; a daemon killed outright leaves them, and the next
  one adopts them.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from domain_builder.xenctrl import XenCtrl
from xentool.state import shell_dir_name, shell_domids

from .helpers import (
    FULL_FAULT_WALK,
    XENTOOL,
    GuestKit,
    Xentoold,
    domid_of,
    wait_for_console,
    xentool,
    xl,
)
from .test_state_parity import _xs_tree, compare, record

pytestmark = pytest.mark.xen

POOL = 2


class Pool(Xentoold):
    ARGS = ("--no-monitor", "--no-sched", "--prebuild", str(POOL))

    def full(self, timeout: float = 120) -> frozenset[int]:
        """Wait until the pool is full again; its shells."""
        deadline = time.monotonic() + timeout
        while len(shell_domids()) < POOL:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"the pool is not full after {timeout}s:\n"
                                     f"{self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        return shell_domids()

    def create(self, cfg: Path, *args: str, via: bool = True,
               **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*XENTOOL, "create", "-q", *args, str(cfg)], capture_output=True,
                              text=True, timeout=300, env=self.env(via, **env))


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    try:
        p = Pool()
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        p.full()
        yield p
    finally:
        print(f"xentoold log:\n{p.stop()}")
    assert not _shell_domains(), "the daemon's stop left shells"


def _shell_domains() -> set[int]:
    """Domains named as shells in xenstore (what ``xl list`` shows as xentool-shell-N)."""
    out = set()
    with XenCtrl() as xc:
        for d in xc.domains():
            name = subprocess.run(["xenstore-read", f"/local/domain/{d.domid}/name"],
                                  capture_output=True, text=True).stdout.strip()
            if name.startswith("xentool-shell-"):
                out.add(d.domid)
    return out


def test_the_shells_are_paused_and_left_out_of_list(pool: Pool) -> None:
    ready = pool.full()
    rows = {int(r.split()[1]): r.split() for r in xl("list").stdout.splitlines()[1:]}
    for domid in ready:
        assert rows[domid][0] == f"xentool-shell-{domid}"
        assert "p" in rows[domid][4]
        assert rows[domid][2] == "32"  # MiB, populated
    for via in (True, False):
        r = subprocess.run([*XENTOOL, "list"], capture_output=True, text=True, timeout=120,
                           env=pool.env(via))
        listed = {int(row.split()[1]) for row in r.stdout.splitlines()[1:]}
        assert r.returncode == 0 and not listed & ready, r.stdout


@pytest.mark.parametrize("via", [True, False], ids=["daemon", "in-process"])
def test_a_create_takes_a_shell_and_the_guest_boots(pool: Pool, kit: GuestKit, tmp_path: Path,
                                                    guest_name: str, via: bool) -> None:
    ready = pool.full()
    cfg = tmp_path / "g.cfg"
    cfg.write_text(kit.tiny_cfg(guest_name, wait=True))
    r = pool.create(cfg, via=via)
    try:
        assert r.returncode == 0, r.stderr
        domid = domid_of(guest_name)
        assert domid in ready, f"domain {domid} is not one of the shells {sorted(ready)}"
        wait_for_console(guest_name, "XENTOOL-TINY-UP", timeout=120)
        again = pool.full()
        assert domid not in again and len(again - ready) == 1
    finally:
        xentool("destroy", guest_name, check=False)
    assert domid_of(guest_name) is None


def test_a_guest_from_a_shell_has_xls_state(pool: Pool, kit: GuestKit, tmp_path: Path,
                                            guest_name: str) -> None:
    dom_uuid = str(uuidlib.uuid4())
    cfg = tmp_path / "g.cfg"
    cfg.write_text(kit.tiny_cfg(guest_name, wait=True, more=f'uuid = "{dom_uuid}"\n'))
    seen = {}
    for tool in ("xl", "xentool"):
        ready = pool.full()
        if tool == "xl":
            xl("create", "-p", "-e", str(cfg))
        else:
            r = pool.create(cfg, "-p", "-e")
            assert r.returncode == 0, r.stderr
            assert domid_of(guest_name) in ready
        try:
            seen[tool] = record(guest_name, dom_uuid)
        finally:
            xl("destroy", guest_name, check=False)
    diffs = compare(seen["xl"], seen["xentool"])
    assert not diffs, "a guest from a shell differs from xl's:\n" + "\n".join(diffs)


def test_a_config_of_another_size_is_created_the_ordinary_way(
        pool: Pool, kit: GuestKit, tmp_path: Path, guest_name: str) -> None:
    ready = pool.full()
    cfg = tmp_path / "g.cfg"
    cfg.write_text(kit.tiny_cfg(guest_name, wait=True, memory=48))
    r = pool.create(cfg, "-p")
    try:
        assert r.returncode == 0, r.stderr
        assert domid_of(guest_name) not in ready
        assert shell_domids() == ready
    finally:
        xentool("destroy", guest_name, check=False)


# -- fault injection --------------------------------------------------------------------------


def free_mb() -> int:
    with XenCtrl() as xc:
        return xc.physinfo().free_pages >> 8


def state() -> tuple[frozenset[str], ...]:
    """Everything a create leaves, but the pool's shells (which it refills) and the free
    memory (:func:`free_mb`, compared with room for rounding)."""
    shells = shell_domids()
    with XenCtrl() as xc:
        domids = frozenset(str(d.domid) for d in xc.domains() if d.domid not in shells)
    trees = []
    for root in ("/local/domain", "/libxl", "/vm", "/local/domain/0/backend/console"):
        kids = {p.split("/")[len(root.split("/"))] for p in _xs_tree(root) if p != root}
        trees.append(frozenset(k for k in kids if not (k.isdigit() and int(k) in shells)))
    files = frozenset(
        str(p) for d in ("/var/lib/xen", "/var/lib/xentool", "/run/xentool/journal",
                         shell_dir_name())
        for p in (Path(d).rglob("*") if Path(d).is_dir() else ())
        if p.is_file() and not (p.parent == Path(shell_dir_name())
                                and re.fullmatch(r"\d+\.json|keeper\.lock", p.name)))
    return (domids, *trees, files)


def test_every_fault_in_a_create_that_takes_a_shell_leaves_nothing(
        pool: Pool, kit: GuestKit, tmp_path: Path, guest_name: str) -> None:
    from xentool.journal import traced_steps

    cfg = tmp_path / "g.cfg"
    cfg.write_text(kit.tiny_cfg(guest_name, wait=True))
    trace = tmp_path / "trace"
    pool.full()
    before, mb = state(), free_mb()
    r = pool.create(cfg, "-p", via=False, XENTOOL_FAULT_TRACE=str(trace))
    xentool("destroy", guest_name, check=False)
    assert r.returncode == 0, r.stderr
    steps = [name for _, _, name in traced_steps(trace, op="create")]
    assert steps[:2] == ["take shell", "domain handle"], steps
    pool.full()
    assert state() == before, "a create from a shell and its destroy leaked"
    # Every step of the shell's own path (up to the build) fails; CI samples the rest.
    upto = steps.index("build") + 1
    failed = list(range(1, len(steps) + 1)) if FULL_FAULT_WALK else list(range(1, upto + 1))
    killed = [2, upto] if not FULL_FAULT_WALK else list(range(1, len(steps) + 1))
    leaks = []
    for mode, points in (("step", failed), ("kill", killed)):
        for k in points:
            print(f"fault walk: {mode}:{k} ({steps[k - 1]})", file=sys.stderr, flush=True)
            r = pool.create(cfg, "-p", via=False, XENTOOL_FAULT_INJECT=f"{mode}:{k}@create")
            if mode == "step":
                assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
                assert f"injected fault at step {k} ({steps[k - 1]})" in r.stderr
            else:
                assert r.returncode == -9, r.stderr
                left = domid_of(guest_name)
                if left is None:  # killed before the name was written: by the record
                    left = _half_built()
                if left is not None:
                    xentool("destroy", str(left))
            pool.full()
            after, now_mb = state(), free_mb()
            if after != before or now_mb < mb - 2:
                leaks.append(f"{mode}:{k} ({steps[k - 1]}): free {mb} -> {now_mb} MiB; "
                             + "; ".join(f"{sorted(a - b)} more, {sorted(b - a)} fewer"
                                         for a, b in zip(after, before, strict=True)
                                         if a != b))
    print(f"fault injection: {len(failed) + len(killed)} points walked, {len(leaks)} leaks")
    assert not leaks, "\n".join(leaks)


def _half_built() -> int | None:
    from xentool.journal import half_built_domains

    found = list(half_built_domains())
    return found[0] if found else None


# -- the daemon's stop and restart ------------------------------------------------------------


def test_stop_releases_and_a_killed_daemon_s_shells_are_adopted(pool: Pool) -> None:
    ready = pool.full()
    pool.proc.kill()  # no clean-up at all
    pool.proc.wait()
    assert shell_domids() == ready and _shell_domains() == set(ready)
    pool.start()
    deadline = time.monotonic() + 60
    while pool.log.read_text().count("adopted shell") < POOL:
        assert time.monotonic() < deadline, pool.log.read_text()[-2000:]
        time.sleep(0.2)
    assert pool.full() == ready  # the same domains, made by the daemon that was killed
    # The module's fixture stops it: every shell destroyed (asserted there).
