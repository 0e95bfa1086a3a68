"""A concurrency storm: four clients mixing ``xl`` and ``xentool`` on up to eight guests.

Each round, four clients run one random operation each at the same time (create, destroy,
block/network attach and detach, pause, unpause, rename, mem-set, credit2 weight, vcpu-pin)
on a pool of eight tiny guests, created paused so they do not compete for the two pCPUs.
Operations may fail (the guest was destroyed meanwhile, a name is taken, a device is gone);
a failure must be clean: no traceback, an exit code in 1..127, no hang.  After every round
no backend, ``/vm`` or ``/libxl`` node of a vanished domain and no loop device of ours
without a live backend may exist, and both tools must agree on every domain (``list``,
``list -l``, ``block-list``, ``network-list``).  At the end every storm guest is destroyed
and the host must be back to its first snapshot.

``XENTOOL_STORM_SEED`` replays a run (the seed is printed), ``XENTOOL_STORM_OPS`` sets the
operations per client (3 in CI, 50 for the full storm) and ``XENTOOL_STORM_CHECK``
how often the tools are compared (every round unless set).
"""

from __future__ import annotations

import os
import random
import re
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from domain_builder.xenctrl import XenCtrl
from xenstore.client import Store
from xenstore.errors import XenStoreError

from .helpers import XENTOOL, GuestKit, xentool, xl
from .test_create_faults import settle, snapshot

pytestmark = pytest.mark.xen

CLIENTS = 4
GUESTS = 8
VDEVS = ("xvdb", "xvdc")
KINDS = ("create", "destroy", "block-attach", "block-detach", "network-attach",
         "network-detach", "pause", "unpause", "rename", "mem-set", "sched-credit2",
         "vcpu-pin")


@dataclass(frozen=True)
class Op:
    kind: str
    tool: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    op: Op
    rc: int
    stderr: str

    @property
    def unclean(self) -> str:
        """Why this failure is not clean ('' when it is clean or a success)."""
        if self.rc == 0:
            return ""
        if "Traceback" in self.stderr:
            return "traceback"
        if not 1 <= self.rc <= 127:
            return f"exit code {self.rc}"
        if self.op.tool == "xentool" and not self.stderr.strip():
            return "no error message"
        return ""


def pick(rng: random.Random, names: list[str], cfgs: dict[str, Path], imgs: Path) -> Op:
    kind = rng.choice(KINDS)
    tool = rng.choice(("xl", "xentool"))
    name = rng.choice(names)
    vdev = rng.choice(VDEVS)
    args: tuple[str, ...]
    if kind == "create":
        args = ("create", "-q", "-p", "-e", str(cfgs[name]))
    elif kind == "destroy":
        args = ("destroy", name)
    elif kind == "block-attach":
        # One image per (guest, vdev): a shared rw image is refused by the hotplug script.
        img = imgs / f"{name}-{vdev}.img"
        args = ("block-attach", name, f"format=raw, vdev={vdev}, access=rw, target={img}")
    elif kind == "block-detach":
        args = ("block-detach", name, vdev)
    elif kind == "network-attach":
        args = ("network-attach", name, "bridge=xenbr0")
    elif kind == "network-detach":
        args = ("network-detach", name, str(rng.randrange(2)))
    elif kind in ("pause", "unpause"):
        args = (kind, name)
    elif kind == "rename":
        args = ("rename", name, rng.choice(names))
    elif kind == "mem-set":
        args = ("mem-set", name, rng.choice(("24m", "28m", "32m")))
    elif kind == "sched-credit2":
        args = ("sched-credit2", "-d", name, "-w", str(rng.choice((128, 256, 512))))
    else:
        args = ("vcpu-pin", name, "0", rng.choice(("0", "1", "all")))
    return Op(kind, tool, args)


def perform(op: Op) -> Outcome:
    base = ["xl"] if op.tool == "xl" else [*XENTOOL]
    try:
        r = subprocess.run([*base, *op.argv], capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        return Outcome(op, -1, "timed out")
    return Outcome(op, r.returncode, r.stderr)


def orphans(imgs: Path) -> list[str]:
    """State of a domain that no longer exists, or a loop device of ours nothing uses
    (in-process: it runs after every round)."""
    with XenCtrl() as xc:
        live = {str(d.domid) for d in xc.domains()}
    found = []
    with closing(Store.connect()) as store:
        def ls(path: str) -> list[str]:
            try:
                return store.ls(path)
            except XenStoreError:
                return []

        for kind in ("vbd", "qdisk", "vif", "console"):
            found += [f"backend/{kind}/{dom}"
                      for dom in ls(f"/local/domain/0/backend/{kind}") if dom not in live]
        found += [f"/libxl/{dom}" for dom in ls("/libxl") if dom.isdigit() and dom not in live]
        vms = {store.get(f"/local/domain/{d}/vm") for d in live}
        found += [f"/vm/{uuid}" for uuid in ls("/vm") if f"/vm/{uuid}" not in vms]
        used = set()
        for dom in ls("/local/domain/0/backend/vbd"):
            for dev in ls(f"/local/domain/0/backend/vbd/{dom}"):
                be = f"/local/domain/0/backend/vbd/{dom}/{dev}"
                used |= {store.get(f"{be}/node"), store.get(f"{be}/physical-device-path")}
    for loop in Path("/sys/block").glob("loop*/loop"):
        backing = (loop / "backing_file").read_text().strip()
        dev = f"/dev/{loop.parent.name}"
        if backing.startswith(str(imgs)) and dev not in used:
            found.append(f"loop {dev} ({backing})")
    return found


def _untimed(text: str) -> str:
    """``list`` without what changes between two calls on its own: the Time(s) column of a
    running domain and the running/blocked flags of its state (an unpaused guest flips
    between them); paused, shutdown, crashed and dying stay compared."""
    text = re.sub(r"(?m)\s+[0-9.]+$", "", text)
    return re.sub(r"(?m)(\s)[r-][b-]([p-][s-][c-][d-])$", r"\1··\2", text)


def disagreements(names: list[str]) -> list[str]:
    """Where xl and xentool tell a different story about the same host."""
    out = []
    pairs = [("list",), ("list", "-l")]
    live = [n for n in names if xl("domid", n, check=False).returncode == 0]
    for n in live:
        pairs += [("block-list", n), ("network-list", n)]

    def compare(args: tuple[str, ...]) -> str:
        a, b = xl(*args, check=False), xentool(*args, check=False)
        if (a.returncode, _untimed(a.stdout)) == (b.returncode, _untimed(b.stdout)):
            return ""
        return (f"{' '.join(args)}:\n--- xl ({a.returncode})\n{a.stdout}"
                f"--- xentool ({b.returncode})\n{b.stdout}")

    # Nothing else runs during a check: two at a time, one per vCPU of dom0.
    with ThreadPoolExecutor(2) as pool:
        out += [d for d in pool.map(compare, pairs) if d]
    return out


@pytest.mark.timeout(3600)
def test_storm(kit: GuestKit, tmp_path: Path, guest_name: str) -> None:
    seed = int(os.environ.get("XENTOOL_STORM_SEED") or random.randrange(1 << 32))
    ops = int(os.environ.get("XENTOOL_STORM_OPS", "3"))
    check_every = int(os.environ.get("XENTOOL_STORM_CHECK", "1"))
    print(f"storm seed {seed} (XENTOOL_STORM_SEED={seed} replays), "
          f"{CLIENTS} clients x {ops} operations")
    names = [f"{guest_name}-{i}" for i in range(GUESTS)]
    cfgs = {}
    for name in names:
        cfgs[name] = tmp_path / f"{name}.cfg"
        cfgs[name].write_text(kit.tiny_cfg(name, wait=True))
        for vdev in VDEVS:
            with open(tmp_path / f"{name}-{vdev}.img", "wb") as f:
                f.truncate(4 << 20)
    rngs = [random.Random(f"{seed}/{c}") for c in range(CLIENTS)]
    attempts: Counter[str] = Counter()
    successes: Counter[str] = Counter()
    clean: Counter[str] = Counter()
    leaks: Counter[str] = Counter()
    problems: list[str] = []
    window: set[str] = set()

    def blame(found: list[str], what: str) -> None:
        problems.extend(f"{what}: {f}" for f in found)
        for kind in window:
            leaks[kind] += len(found)

    before = snapshot()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            # Half the pool exists from the start, made by both tools, so the first rounds
            # already act on guests instead of failing on missing ones.
            seeded = [Op("create", ("xl", "xentool")[i % 2], ("create", "-q", "-p", "-e",
                                                              str(cfgs[n])))
                      for i, n in enumerate(names[:GUESTS // 2])]
            for out in pool.map(perform, seeded):
                assert out.rc == 0, f"{out.op.tool} create: {out.stderr}"
            for rnd in range(ops):
                batch = [pick(rng, names, cfgs, tmp_path) for rng in rngs]
                for out in pool.map(perform, batch):
                    kind = out.op.kind
                    attempts[kind] += 1
                    window.add(kind)
                    if out.rc == 0:
                        successes[kind] += 1
                    elif out.unclean:
                        problems.append(f"round {rnd}: {out.op.tool} {' '.join(out.op.argv)}: "
                                        f"{out.unclean}\n{out.stderr}")
                        leaks[kind] += 1
                    else:
                        clean[kind] += 1
                blame(orphans(tmp_path), f"round {rnd} orphan")
                if (rnd + 1) % check_every == 0 or rnd == ops - 1:
                    blame(disagreements(names), f"round {rnd} disagreement")
                    window.clear()
        for name in names:
            if xl("domid", name, check=False).returncode == 0:
                xentool("destroy", name)
        window = {"destroy"}
        blame(settle(before), "after the storm")
    finally:
        for name in names:
            xl("destroy", name, check=False)
        print(f"{'operation':16}{'attempts':>9}{'ok':>6}{'clean':>7}{'leaks':>7}")
        for kind in KINDS:
            print(f"{kind:16}{attempts[kind]:9}{successes[kind]:6}{clean[kind]:7}"
                  f"{leaks[kind]:7}")
        for p in problems:
            print(p)
    assert problems == []
