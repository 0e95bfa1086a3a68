"""Walk every step of destroy, the device verbs, rename and mem-set with fault injection.

For each operation the steps of its journal are traced once (``XENTOOL_FAULT_TRACE``);
then for every step K:

* ``step:K`` must fail the verb with the injected-fault message (exit 1, no traceback) and
  leave nothing behind: the domain still there and consistent (one name in
  ``/local/domain/<id>/name``, ``/vm/<uuid>/name`` and ``xl list``; each device either
  fully there or fully gone) and the state as before the verb (destroy: the next
  ``destroy`` finishes the job);
* ``kill:K`` SIGKILLs the verb at step K; running the same verb again (for an attach: a
  destroy of the guest) must finish the job with nothing leaked.

One tiny paused guest serves every operation; it is created again only when an operation
destroyed it.  Prints, per operation, the points walked and the leaks found (the bar is 0).
The kill walk takes the last step of each verb and the step walk a sixteenth of the steps
(``helpers.fault_sample``) unless ``XENTOOL_FULL_FAULT_WALK=1``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from domain_builder.xenctrl import XenCtrl
from xenstore.client import Store
from xenstore.errors import XenStoreError
from xentool import Domain, Host

from .helpers import FULL_FAULT_WALK, XENTOOL, GuestKit, domid_of, fault_sample, xl
from .test_create_faults import Snapshot, settle, snapshot

pytestmark = pytest.mark.xen



def xt(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*XENTOOL, *args], capture_output=True,
                          text=True, timeout=180, env={**os.environ, **env})


def xs_read(path: str) -> str | None:
    with closing(Store.connect()) as store:
        return store.get(path)


def xs_list(path: str) -> set[str]:
    with closing(Store.connect()) as store:
        try:
            return set(store.ls(path))
        except XenStoreError:
            return set()


class Guest:
    """The one paused tiny guest the walk works on."""

    def __init__(self, kit: GuestKit, tmp: Path, name: str) -> None:
        self.name = name
        self.cfg = tmp / "guest.cfg"
        self.cfg.write_text(kit.tiny_cfg(name, wait=True))
        self.disk = tmp / "xvdb.img"
        with open(self.disk, "wb") as f:
            f.truncate(4 << 20)

    def exists(self) -> bool:
        return domid_of(self.name) is not None

    def ensure(self) -> None:
        if not self.exists():
            with Host() as host:
                host.create(self.cfg, paused=True, record=False)

    @property
    def domid(self) -> int:
        domid = domid_of(self.name)
        assert domid is not None, f"{self.name} is gone"
        return domid

    def disk_spec(self) -> str:
        return f"format=raw,vdev=xvdb,access=rw,target={self.disk}"

    def problems(self, name: str | None = None) -> list[str]:
        """What is inconsistent about the guest (it must exist, named ``name``)."""
        name = name or self.name
        domid = domid_of(name)
        if domid is None:
            return [f"domain {name} is gone"]
        out = []
        vm = xs_read(f"/local/domain/{domid}/vm")
        names = (xs_read(f"/local/domain/{domid}/name"), xs_read(f"{vm}/name"))
        if names != (name, name):
            out.append(f"names (local, vm) {names}, expected {name}")
        if xl("list", name, check=False).returncode != 0:
            out.append("xl list does not show it")
        for kind in ("vbd", "vif"):
            recorded = xs_list(f"/libxl/{domid}/device/{kind}")
            backends = xs_list(f"/local/domain/0/backend/{kind}/{domid}")
            frontends = xs_list(f"/local/domain/{domid}/device/{kind}")
            if not recorded == backends == frontends:
                out.append(f"{kind}: recorded {sorted(recorded)}, backends "
                           f"{sorted(backends)}, frontends {sorted(frontends)}")
            for devid in backends:
                be = f"/local/domain/0/backend/{kind}/{domid}/{devid}"
                if xs_read(f"{be}/hotplug-status") != "connected":
                    out.append(f"{kind} {devid}: half attached (hotplug-status "
                               f"{xs_read(f'{be}/hotplug-status')})")
                if kind == "vif" and not Path(f"/sys/class/net/vif{domid}.{devid}").exists():
                    out.append(f"vif {devid}: no vif{domid}.{devid} interface")
        return out

    def vifs(self) -> set[str]:
        return xs_list(f"/libxl/{self.domid}/device/vif")

    def has_disk(self) -> bool:
        return "51728" in xs_list(f"/libxl/{self.domid}/device/vbd")


@dataclass
class Op:
    """One verb under test.  ``prepare`` brings the guest to the state before the verb
    and returns its argv; ``undone``/``done`` say what is wrong with the state after a
    rolled-back / completed run; ``reset`` goes back to the plain guest."""

    op: str
    prepare: Callable[[Guest], list[str]]
    undone: Callable[[Guest], list[str]]
    done: Callable[[Guest], list[str]]
    reset: Callable[[Guest], None]
    kill_rerun: bool = True  # after a kill, the same verb finishes; else destroy does
    destroys: bool = False


def _ok(r: subprocess.CompletedProcess[str], what: str) -> None:
    assert r.returncode == 0, f"{what}: {r.stderr}"


# Bringing the guest to the state before a verb and back goes through the library in this
# process: the verb under test is the one place that needs its own xentool process (to be
# failed or killed), and every other process start costs seconds under emulation.

def _on(g: Guest, act: Callable[[Domain], object]) -> None:
    with Host() as host:
        act(host.domain(g.name))


def _attach_disk(g: Guest) -> None:
    if not g.has_disk():
        _on(g, lambda d: d.attach_disk(g.disk_spec()))


def _detach_disk(g: Guest) -> None:
    if g.has_disk():
        _on(g, lambda d: d.detach_disk("xvdb", force=True))


def _vif_state(g: Guest) -> Callable[[Guest], list[str]]:
    before = g.vifs()
    return lambda g2: [] if g2.vifs() == before else [f"vifs {before} -> {g2.vifs()}"]


# A paused guest never lets its vif go: force after 1 s rather than libxl's 10 s.
NET_DETACH = ("--timeout", "1")


def _detach_vifs(g: Guest) -> None:
    for devid in g.vifs():
        _on(g, lambda d, devid=devid: d.detach_nic(devid, timeout=1))


def _expect(cond: Callable[[Guest], bool], what: str) -> Callable[[Guest], list[str]]:
    return lambda g: [] if cond(g) else [what]


def _target(g: Guest) -> int:
    return int(xs_read(f"/local/domain/{g.domid}/memory/target") or 0)


def _max_kb(g: Guest) -> int:
    with XenCtrl() as xc:
        info = xc.domain_info(g.domid)
        assert info is not None
        return info.max_memkb


RENAMED = "-renamed"
MEM_KB = 32 * 1024


def _mem_undone(g: Guest) -> list[str]:
    out = [] if _target(g) == MEM_KB else [f"target {_target(g)} kB, not {MEM_KB}"]
    if _max_kb(g) != MEM_KB + 1024:  # what mem-set 32m gave it, plus libxl's slack
        out.append(f"hypervisor max {_max_kb(g)} kB, not {MEM_KB + 1024}")
    return out


def _net_prepare(g: Guest) -> list[str]:
    _detach_vifs(g)
    return ["network-attach", g.name, "bridge=xenbr0"]


def _netd_prepare(g: Guest) -> list[str]:
    if not g.vifs():
        _on(g, lambda d: d.attach_nic("bridge=xenbr0"))
    return ["network-detach", *NET_DETACH, g.name, sorted(g.vifs())[0]]


def _rename_back(g: Guest) -> None:
    with Host() as host:
        host.domain(g.name + RENAMED).rename(g.name)


def _set_mem(g: Guest) -> None:
    _on(g, lambda d: d.set_memory(MEM_KB))


OPS = [
    Op("block-attach", lambda g: (_detach_disk(g), ["block-attach", g.name, g.disk_spec()])[1],
       _expect(lambda g: not g.has_disk(), "xvdb attached"),
       _expect(Guest.has_disk, "xvdb not attached"), _detach_disk, kill_rerun=False),
    # A detach that failed once the backend closed finishes the removal: "fully there or
    # fully gone" is what Guest.problems checks.  Forced: a paused guest never lets go.
    Op("block-detach", lambda g: (_attach_disk(g), ["block-detach", "-f", g.name, "xvdb"])[1],
       lambda g: [],
       _expect(lambda g: not g.has_disk(), "xvdb still attached"), _detach_disk),
    Op("network-attach", _net_prepare, _expect(lambda g: not g.vifs(), "vif attached"),
       _expect(lambda g: len(g.vifs()) == 1, "no vif attached"), _detach_vifs,
       kill_rerun=False),
    Op("network-detach", _netd_prepare, lambda g: [],
       _expect(lambda g: not g.vifs(), "vif still there"), _detach_vifs),
    Op("rename", lambda g: ["rename", g.name, g.name + RENAMED],
       lambda g: g.problems(), lambda g: g.problems(g.name + RENAMED),
       lambda g: g.exists() or _rename_back(g)),
    Op("mem-set", lambda g: (_set_mem(g), ["mem-set", g.name, "24m"])[1],
       _mem_undone, _expect(lambda g: _target(g) == 24 * 1024, "target not 24 MiB"),
       _set_mem),
    Op("destroy", lambda g: ["destroy", g.name], lambda g: [],
       _expect(lambda g: not g.exists(), "guest still there"), lambda g: None,
       destroys=True),
]


def _kill_points(n: int) -> list[int]:
    """Every step with XENTOOL_FULL_FAULT_WALK=1; in CI the last one: a kill differs from
    a failure at the same step only in who finishes the job (the next run of the verb),
    and the last step leaves the most for it to finish."""
    return list(range(1, n + 1)) if FULL_FAULT_WALK else [n]


@pytest.mark.timeout(3600 if FULL_FAULT_WALK else 900)
def test_every_step_of_the_domain_operations(kit: GuestKit, tmp_path: Path,
                                             guest_name: str) -> None:
    from xentool.journal import traced_steps

    empty: Snapshot = snapshot()  # without the guest: what a destroy must get back to
    g = Guest(kit, tmp_path, guest_name)
    report, failures = [], []
    try:
        g.ensure()
        for op in OPS:
            trace = tmp_path / f"{op.op}.trace"
            argv = op.prepare(g)
            _ok(xt(*argv, XENTOOL_FAULT_TRACE=str(trace)), f"{op.op} without faults")
            steps = [(k, name) for _, k, name in traced_steps(trace, op.op)] \
                if trace.exists() else []
            assert steps, f"{op.op} traced no journal steps"
            assert not op.done(g), f"{op.op} did not do its job: {op.done(g)}"
            op.reset(g)
            g.ensure()
            walked, leaks = 0, []
            points = [("step", k, n) for k, n in fault_sample(steps)] + \
                [("kill", k, n) for k, n in steps if k in _kill_points(len(steps))]
            for mode, k, name in points:
                walked += 1
                print(f"fault walk: {op.op} {mode}:{k} ({name})", file=sys.stderr, flush=True)
                op.reset(g)
                g.ensure()
                plain = snapshot()
                argv = op.prepare(g)
                base = snapshot()
                r = xt(*argv, XENTOOL_FAULT_INJECT=f"{mode}:{k}@{op.op}")
                where = f"{op.op} {mode}:{k} ({name})"
                found: list[str] = []
                if mode == "step":
                    if r.returncode != 1 or f"injected fault at step {k} ({name})" \
                            not in r.stderr or "Traceback" in r.stderr:
                        found.append(f"rc {r.returncode}: {r.stderr.strip()[-400:]}")
                else:
                    if r.returncode != -9:
                        found.append(f"not killed: rc {r.returncode} {r.stderr[-300:]}")
                if op.destroys or (mode == "kill" and not op.kill_rerun):
                    # finish by (another) destroy; everything must be back to no guest
                    if g.exists() or op.destroys:
                        d = xt("destroy", g.name)
                        if d.returncode != 0:
                            found.append(f"destroy after it: {d.stderr.strip()}")
                    found += settle(empty)
                    g.ensure()
                elif mode == "kill":
                    again = xt(*argv)
                    if again.returncode != 0:
                        found.append(f"run again: rc {again.returncode} {again.stderr[-300:]}")
                    found += g.problems(g.name + RENAMED if op.op == "rename" else None)
                    found += op.done(g)
                    op.reset(g)
                    found += settle(plain)
                else:
                    found += g.problems() + op.undone(g) + settle(base)
                if found:
                    leaks.append(f"{where}: {'; '.join(found)}")
                    # back to a known state for the next point
                    if g.exists():
                        xl("destroy", g.name, check=False)
                        xl("destroy", g.name + RENAMED, check=False)
                    g.ensure()
            op.reset(g)
            line = f"{op.op}: {walked} points walked of {len(steps)} steps, {len(leaks)} leaks"
            print(line)
            report.append(line)
            failures += leaks
    finally:
        for n in (g.name, g.name + RENAMED):
            xt("destroy", n)
    print("\n".join(report))
    assert not failures, "\n".join(failures)
    assert not settle(empty), "the walk leaked"
