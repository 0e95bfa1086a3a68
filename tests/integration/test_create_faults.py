"""Walk every step of ``xentool create`` with fault injection: nothing may leak.

A guest with two disks and two vifs is created once with ``XENTOOL_FAULT_TRACE`` to learn
the steps of the create journal; then for every step K, ``XENTOOL_FAULT_INJECT=step:K``
must make the create fail with that cause and leave no trace: no extra domain, free memory
back where it was, no XenStore node of the domain, its backends, ``/vm`` or ``/libxl``, no
stored libxl configuration, no xentool domain or journal record, no loop device, no vif.
``kill:K`` kills the create at step K; ``xentool destroy`` of what it left must then get back
to the same clean state.  In CI a sixteenth of the steps fail (``helpers.fault_sample``) and
the kills are at the first, middle and last step; ``XENTOOL_FULL_FAULT_WALK=1`` walks them all.
The test prints how many points it walked and how many leaks it found (the bar is 0).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from domain_builder.xenctrl import XenCtrl
from xenstore.client import Store
from xenstore.errors import XenStoreError

from .helpers import FULL_FAULT_WALK, XENTOOL, GuestKit, fault_sample, xentool, xl

pytestmark = pytest.mark.xen


@dataclass(frozen=True)
class Snapshot:
    domids: frozenset[int]
    free_mb: int
    xs_domains: frozenset[str]
    backends: frozenset[str]
    loops: frozenset[str]
    vifs: frozenset[str]
    vm: frozenset[str]
    libxl: frozenset[str]
    files: frozenset[str]  # stored configurations, domain records, journal records

    def leaks(self, after: Snapshot) -> list[str]:
        out = []
        if after.domids - self.domids:
            out.append(f"domains {sorted(after.domids - self.domids)}")
        if after.free_mb < self.free_mb - 2:  # rounding to MiB
            out.append(f"free memory {self.free_mb} -> {after.free_mb} MiB")
        for what in ("xs_domains", "backends", "loops", "vifs", "vm", "libxl", "files"):
            extra = getattr(after, what) - getattr(self, what)
            if extra:
                out.append(f"{what} {sorted(extra)}")
        return out


def _ls(store: Store, path: str) -> frozenset[str]:
    try:
        return frozenset(store.ls(path))
    except XenStoreError:
        return frozenset()


def snapshot() -> Snapshot:
    """In-process (no xl or xenstore-* child per field): a fault walk takes one or more
    snapshots per point, and every process start costs most of a second under emulation."""
    with XenCtrl() as xc:
        domids = frozenset(d.domid for d in xc.domains())
        # Pages waiting to be scrubbed are given back too (libxl counts them as free):
        # waiting for Xen to scrub a destroyed guest's memory takes seconds under emulation.
        info = xc.physinfo()
        free = (info.free_pages + info.scrub_pages) * 4 // 1024
    with closing(Store.connect()) as store:
        backends = frozenset(f"{kind}/{dom}" for kind in ("vbd", "qdisk", "vif", "console")
                             for dom in _ls(store, f"/local/domain/0/backend/{kind}"))
        xs_domains = _ls(store, "/local/domain")
        vm, libxl = _ls(store, "/vm"), _ls(store, "/libxl")
    # /sys/block/loopN/loop exists only while the loop device is bound (losetup -a)
    loops = frozenset(f"/dev/{p.parent.name}" for p in Path("/sys/block").glob("loop*/loop"))
    vifs = frozenset(n for n in os.listdir("/sys/class/net") if n.startswith("vif"))
    files = frozenset(str(p) for d, pattern in RECORD_FILES for p in Path(d).glob(pattern))
    return Snapshot(domids, free, xs_domains, backends, loops, vifs, vm, libxl, files)


# Where a create leaves files behind it (default state and run directories).
RECORD_FILES = (("/var/lib/xen", "userdata-d.*"), ("/var/lib/xentool/domains", "*"),
                ("/run/xentool/journal", "*"))


def settle(before: Snapshot, timeout: float = 30.0) -> list[str]:
    """Leaks once memory scrubbing and backend teardown had a moment to finish."""
    deadline = time.monotonic() + timeout
    while True:
        leaks = before.leaks(snapshot())
        if not leaks or time.monotonic() > deadline:
            return leaks
        time.sleep(1)


@pytest.fixture
def disk_and_vif_cfg(kit: GuestKit, tmp_path: Path, guest_name: str) -> Path:
    """Two file disks and two vifs: every kind of device step, and a second of each (the
    undo of a device must not depend on being the only one)."""
    disks = []
    for i, vdev in enumerate(("xvda", "xvdb")):
        img = tmp_path / f"d{i}.img"
        with open(img, "wb") as f:
            f.truncate(8 << 20)
        disks.append(f"'format=raw, vdev={vdev}, access=rw, target={img}'")
    more = (f"disk = [ {', '.join(disks)} ]\n"
            "vif = [ 'bridge=xenbr0', 'bridge=xenbr0' ]\n")
    cfg = tmp_path / "faults.cfg"
    cfg.write_text(kit.tiny_cfg(guest_name, wait=True, more=more))
    return cfg


def create_env(**kw: str) -> dict[str, str]:
    return {**os.environ, **kw}


def kill_points(steps: list[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    """Where to SIGKILL the create: every step with XENTOOL_FULL_FAULT_WALK=1; in CI the
    first, the middle and the last one (a kill differs from a failure only in who cleans
    up, and that is the same ``destroy`` for every step)."""
    if FULL_FAULT_WALK:
        return steps
    return [steps[i] for i in sorted({0, len(steps) // 2, len(steps) - 1})]


@pytest.mark.timeout(3000)  # ~2 creates per step under emulation
def test_every_injection_point_of_create_leaves_nothing(disk_and_vif_cfg: Path,
                                                        tmp_path: Path,
                                                        guest_name: str) -> None:
    from xentool.journal import traced_steps

    trace = tmp_path / "trace"
    before = snapshot()
    create = [*XENTOOL, "create", "-q", str(disk_and_vif_cfg)]
    r = subprocess.run(create, capture_output=True, text=True,
                       timeout=300, env=create_env(XENTOOL_FAULT_TRACE=str(trace)))
    xentool("destroy", guest_name, check=False)
    if r.returncode != 0:
        pytest.fail(f"create without faults failed: {r.stderr}")
    steps = list(traced_steps(trace, op="create")) if trace.exists() else []
    assert steps, f"the create traced no journal steps into {trace}"
    assert not settle(before), "a successful create + destroy leaked"

    failed = fault_sample(steps)
    leaks = walk_create(create, before, failed, kill_points(steps))
    print(f"fault injection: {len(failed) + len(kill_points(steps))} points walked "
          f"({len(failed)} of {len(steps)} steps failed, {len(kill_points(steps))} killed), "
          f"{len(leaks)} leaks")
    assert not leaks, "\n".join(leaks)


def walk_create(argv: list[str], before: Snapshot, failed: list[tuple[str, int, str]],
                killed: list[tuple[str, int, str]]) -> list[str]:
    """Run the create ``argv`` with a fault injected at each step of ``failed`` and a kill
    at each of ``killed``; after each, what it left (a killed create: once ``xentool
    destroy`` ran) must be ``before``.  Returns the leaks found, one line a point."""
    leaks_found = []
    for mode, points in (("step", failed), ("kill", killed)):
        for _, k, name in points:
            # Progress for `pytest -s`: a walk takes minutes under emulation.
            print(f"fault walk: {mode}:{k} ({name})", file=sys.stderr, flush=True)
            r = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                               env=create_env(XENTOOL_FAULT_INJECT=f"{mode}:{k}@create"))
            if mode == "step":
                assert r.returncode == 1, f"step {k} ({name}): {r.stderr}"
                assert f"injected fault at step {k} ({name})" in r.stderr
                assert "Traceback" not in r.stderr
            else:
                assert r.returncode == -9, f"kill at step {k} ({name}): rc {r.returncode}"
                # recovery: whatever the killed create left is destroyed by id
                for domid in snapshot().domids - before.domids:
                    xentool("destroy", str(domid), check=False)
            leaks = settle(before)
            if leaks:
                leaks_found.append(f"{mode}:{k} ({name}): {'; '.join(leaks)}")
                # clean up so the next point starts from the same state
                for domid in snapshot().domids - before.domids:
                    xl("destroy", str(domid), check=False)
    return leaks_found


def test_eight_parallel_creates_then_eight_parallel_destroys(kit: GuestKit, tmp_path: Path,
                                                             guest_name: str) -> None:
    """The create lock and the per-domain locks keep parallel invocations apart: every
    create succeeds with its own name and domid, every destroy frees its guest."""
    before = snapshot()
    names = [f"{guest_name}-{i}" for i in range(8)]
    cfgs = []
    for name in names:
        cfg = tmp_path / f"{name}.cfg"
        cfg.write_text(kit.tiny_cfg(name, wait=True))
        cfgs.append(cfg)

    def all_of(argvs: list[list[str]]) -> list[tuple[int, str]]:
        procs = [subprocess.Popen([*XENTOOL, *a], text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for a in argvs]
        return [(p.wait(timeout=600), p.communicate()[1]) for p in procs]

    try:
        # Paused: eight spinning guests on two pCPUs would starve dom0, and with it the
        # very creates under test, for minutes under emulation.
        created = all_of([["create", "-q", "-p", str(c)] for c in cfgs])
        assert [r for r in created if r[0] != 0] == []
        listed = {line.split()[0]: int(line.split()[1])
                  for line in xl("list").stdout.splitlines()[1:]}
        assert set(names) <= set(listed)
        assert len({listed[n] for n in names}) == 8
        destroyed = all_of([["destroy", n] for n in names])
        assert [r for r in destroyed if r[0] != 0] == []
        assert not settle(before)
    finally:
        for name in names:
            xl("destroy", name, check=False)
