"""The journals of destroy, the device verbs, rename and mem-set: each step is a fault
point, a half-done attach/rename/mem-set is rolled back, a half-done detach is finished,
and a destroy that stopped half-way is finished by the next one."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_devices_attach import FAST, calls, env, recording_script  # noqa: F401 - fixture
from test_domain_ops import UUID
from test_domain_ops import env as ops_env  # noqa: F401 - fixture
from test_xenctrl_control_verbs import FakeSession, _isolate
from test_xenstore_fake import fake_xenstored  # noqa: F401 - fixture

from xenstore.devices.attach import Force, attach, detach, find_device, ref_of
from xenstore.devices.vbd import Vbd, vbd_nodes
from xentool import control as ops
from xentool.cli.commands import control
from xentool.errors import DomainNotFound
from xentool.journal import FaultPlan, InjectedFault, Journal


def _journal(op: str, spec: str) -> Journal:
    return Journal(op, faults=FaultPlan.parse(spec), handle_signals=False)


# -- attach / detach ----------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_attach_fault_at_every_step_leaves_no_device(env, tmp_path: Path,  # noqa: F811
                                                     k: int) -> None:
    """Step 4 is a step after the attach: the whole attach is undone, script included."""
    xs, _be, _fake = env
    sc = recording_script(tmp_path)
    dev = vbd_nodes(5, Vbd(vdev="xvda", target="/img", script=sc))
    with pytest.raises(InjectedFault), _journal("block-attach", f"step:{k}") as j:
        attach(xs, dev, FAST, steps=j)
        j.do("after", lambda: None)
    assert find_device(xs, 5, "vbd", dev.devid) is None
    assert not xs.exists(dev.frontend) and not xs.exists(dev.backend)
    assert not xs.exists(dev.libxl)
    script_calls = [c.split()[0] for c in calls(tmp_path)]
    assert script_calls == ([] if k <= 3 else ["add", "remove"])


def test_attach_steps_are_named(env, tmp_path: Path) -> None:  # noqa: F811
    xs, _be, _fake = env
    dev = vbd_nodes(5, Vbd(vdev="xvda", target="/img", script=recording_script(tmp_path)))
    with _journal("block-attach", "") as j:
        attach(xs, dev, FAST, steps=j)
    assert j.steps_done == ["write device nodes", "backend ready", "hotplug script add"]


@pytest.mark.parametrize("k", [2, 3])
def test_detach_fault_after_close_finishes_the_removal(env, tmp_path: Path,  # noqa: F811
                                                      k: int) -> None:
    xs, _be, _fake = env
    dev = vbd_nodes(5, Vbd(vdev="xvda", target="/img", script=recording_script(tmp_path)))
    attach(xs, dev, FAST)
    with pytest.raises(InjectedFault), _journal("block-detach", f"step:{k}") as j:
        detach(xs, ref_of(dev), Force.ON, FAST, steps=j)
    assert not xs.exists(dev.frontend) and not xs.exists(dev.backend)
    assert not xs.exists(dev.libxl)
    assert [c.split()[0] for c in calls(tmp_path)] == ["add", "remove"]  # remove once


def test_detach_fault_before_anything_leaves_the_device(env, tmp_path: Path) -> None:  # noqa: F811
    xs, _be, _fake = env
    dev = vbd_nodes(5, Vbd(vdev="xvda", target="/img", script=recording_script(tmp_path)))
    attach(xs, dev, FAST)
    with pytest.raises(InjectedFault), _journal("block-detach", "step:1") as j:
        detach(xs, ref_of(dev), Force.ON, FAST, steps=j)
    assert xs.read(f"{dev.backend}/state") == "2"
    assert [c.split()[0] for c in calls(tmp_path)] == ["add"]


# -- rename / mem-set ---------------------------------------------------------------------


def test_rename_fault_restores_the_old_name_everywhere(ops_env: SimpleNamespace,  # noqa: F811
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XENTOOL_FAULT_INJECT", "step:2@rename")
    with pytest.raises(InjectedFault, match=r"rename: injected fault at step 2 \(domain name"):
        ops.rename_domain(ops_env, 5, "web")
    assert ops_env.xs.read("/local/domain/5/name") == "guest"
    assert ops_env.xs.read(f"/vm/{UUID}/name") == "guest"


def test_rename_killed_after_vm_is_still_found_by_its_old_name(
        ops_env: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    ops_env.xs.write(f"/vm/{UUID}/name", "web")  # what a kill after step 1 leaves
    ops.rename_domain(ops_env, 5, "web", old_name="guest")
    assert ops_env.xs.read("/local/domain/5/name") == "web"


def test_mem_set_fault_restores_the_hypervisor_max(ops_env: SimpleNamespace,  # noqa: F811
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    old_max = ops_env.xc.infos[5].max_memkb
    monkeypatch.setenv("XENTOOL_FAULT_INJECT", "step:2@mem-set")
    with pytest.raises(InjectedFault, match="memory target"):
        ops.set_memory_target(ops_env, 5, 200 * 1024)
    assert ops_env.xc.maxmem == [(5, 200 * 1024 + 1024), (5, old_max)]
    assert ops_env.xs.read("/local/domain/5/memory/target") == str(128 * 1024)
    monkeypatch.setenv("XENTOOL_FAULT_INJECT", "step:1@mem-set")
    with pytest.raises(InjectedFault):
        ops.set_memory_target(ops_env, 5, 200 * 1024)
    assert len(ops_env.xc.maxmem) == 2


# -- destroy ------------------------------------------------------------------------------


class GoneSession(FakeSession):
    """Domain 7 ("g") disappears from the hypervisor once destroyed."""

    def __init__(self) -> None:
        super().__init__()
        self.gone = False
        real = self.xc.domain_info
        self.xc.domain_info = lambda d: None if (d == 7 and self.gone) else real(d)
        destroy = self.xc.destroy
        self.xc.destroy = lambda d: (destroy(d), setattr(self, "gone", True))

    def resolve(self, q: str) -> int:
        if self.gone and q in ("g", "7"):
            raise DomainNotFound(q)
        return super().resolve(q)


def _dead_records(run: Path) -> list[Path]:
    """Make the records of this (living) test process look like a dead one's."""
    out = []
    for p in sorted((run / "journal").glob("destroy-*.json")):
        doc = json.loads(p.read_text())
        doc["pid"], doc["start_time"] = 999999, 1
        p.write_text(json.dumps(doc))
        out.append(p)
    return out


@pytest.mark.parametrize("k", range(1, 7))
def test_destroy_failed_at_any_step_is_finished_by_the_next(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, k: int) -> None:
    s = GoneSession()
    _isolate(monkeypatch, tmp_path, s)
    s.xs.nodes["/local/domain/7/name"] = "g"
    monkeypatch.setenv("XENTOOL_FAULT_INJECT", f"step:{k}@destroy")
    args = argparse.Namespace(domain="g", force=False)
    with pytest.raises(InjectedFault):
        control.cmd_destroy(args)
    assert _dead_records(tmp_path / "run"), "the failed destroy kept no record"
    monkeypatch.delenv("XENTOOL_FAULT_INJECT")
    s.log.clear()
    assert control.cmd_destroy(args) == 0
    assert list((tmp_path / "run" / "journal").glob("*.json")) == []
    removed = {p for op, *p in s.log if op == "rm" for p in p}
    assert {"/local/domain/7", "/libxl/7", f"/vm/{UUID_D}"} <= removed
    assert s.log.count(("destroy", 7)) == (0 if k > 3 else 1)
    assert not os.path.exists("/proc/999999")


UUID_D = "01234567-89ab-cdef-0011-223344556677"


def test_destroy_of_an_unknown_domain_without_record_still_fails(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = GoneSession()
    _isolate(monkeypatch, tmp_path, s)
    with pytest.raises(DomainNotFound):
        control.cmd_destroy(argparse.Namespace(domain="nope", force=False))
