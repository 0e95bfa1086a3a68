"""destroy and vcpu-pin over fake handles: order of operations, XenStore cleanup, arguments."""

from __future__ import annotations

import argparse
import errno
from pathlib import Path

import pytest

import xentool.destroy
import xentool.host
from domain_builder.errors import XenError
from xenstore.errors import XenStoreError
from xentool.cli.commands import control
from xentool.errors import DomainNotFound, UsageError, XentoolError


class _Info:
    def __init__(self, domid: int, max_vcpu_id: int = 1) -> None:
        self.domid = domid
        self.max_vcpu_id = max_vcpu_id
        self.uuid = "01234567-89ab-cdef-0011-223344556677"


class FakeXc:
    def __init__(self, log: list, pause_fails: bool = False) -> None:
        self.log = log
        self.pause_fails = pause_fails

    def domain_info(self, domid: int):
        return _Info(domid) if domid in (0, 7) else None

    def pause(self, domid: int) -> None:
        self.log.append(("pause", domid))
        if self.pause_fails:
            raise XenError("xc_domain_pause", errno.EINVAL)

    def destroy(self, domid: int) -> None:
        self.log.append(("destroy", domid))

    def max_cpus(self) -> int:
        return 4

    def set_vcpu_affinity(self, domid, vcpu, hard, soft, force=False):
        self.log.append(("affinity", domid, vcpu, hard, soft) + (("force",) if force else ()))
        return (hard if hard is not None else frozenset(range(4)), frozenset())


class FakeXs:
    def __init__(self, log: list) -> None:
        self.log = log
        self.nodes = {
            "/local/domain/7/vm": "/vm/01234567-89ab-cdef-0011-223344556677",
            "/libxl/7/device/vif/0/backend": "/local/domain/0/backend/vif/7/0",
            "/libxl/7/device/vbd/51712/backend": "/local/domain/0/backend/vbd/7/51712",
        }

    def get(self, path, default=None):
        return self.nodes.get(path, default)

    def ls(self, path):
        kids = sorted({k[len(path) + 1:].split("/")[0] for k in self.nodes
                       if k.startswith(path + "/")})
        if not kids:
            raise XenStoreError(errno.ENOENT, path)
        return kids

    def rm(self, path, missing_ok=False):
        self.log.append(("rm", path))


class FakeSession:
    def __init__(self, pause_fails: bool = False) -> None:
        self.log: list = []
        self.xc = FakeXc(self.log, pause_fails)
        self.xs = FakeXs(self.log)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.log.append(("closed",))

    def resolve(self, q: str) -> int:
        if q in ("g", "7"):
            return 7
        if q == "0":
            return 0
        raise DomainNotFound(q)


def _isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, s: FakeSession) -> None:
    monkeypatch.setattr(xentool.host, "Session", lambda: s)
    monkeypatch.setattr(xentool.destroy, "LIBXL_USERDATA_DIR", str(tmp_path))
    monkeypatch.setenv("XENTOOL_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XENTOOL_STATE_DIR", str(tmp_path / "state"))
    # Device teardown has its own tests (test_devices_attach); here only its place matters.
    monkeypatch.setattr(xentool.destroy, "remove_all_devices",
                        lambda xs, domid: s.log.append(("devices", domid)) or [])


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeSession:
    s = FakeSession()
    _isolate(monkeypatch, tmp_path, s)
    return s


def test_destroy_pauses_destroys_then_cleans_xenstore_and_userdata(session, tmp_path) -> None:
    mine = tmp_path / "userdata-d.7.01234567-89ab-cdef-0011-223344556677.libxl-json"
    other = tmp_path / "userdata-d.8.ffffffff-89ab-cdef-0011-223344556677.libxl-json"
    mine.touch()
    other.touch()
    assert control.cmd_destroy(argparse.Namespace(domain="g", force=False)) == 0
    assert session.log == [
        ("pause", 7), ("devices", 7), ("destroy", 7),
        ("rm", "/local/domain/0/backend/vbd/7/51712"), ("rm", "/local/domain/0/backend/vif/7/0"),
        ("rm", "/vm/01234567-89ab-cdef-0011-223344556677"),
        ("rm", "/local/domain/7"), ("rm", "/libxl/7"), ("closed",),
    ]
    assert not mine.exists() and other.exists()


def test_destroy_goes_on_when_pause_fails(monkeypatch, tmp_path) -> None:
    s = FakeSession(pause_fails=True)
    _isolate(monkeypatch, tmp_path, s)
    control.cmd_destroy(argparse.Namespace(domain="7", force=False))
    assert ("destroy", 7) in s.log


def test_destroy_forgets_the_monitor_record_and_a_killed_creates_record(session,
                                                                       tmp_path) -> None:
    import json
    import os

    from xentool.journal import default_record_dir, half_built_domains
    from xentool.records import DomainRecord, load_domain_config, write_record

    uuid = "01234567-89ab-cdef-0011-223344556677"
    write_record(DomainRecord(uuid=uuid, name="g", config_path="/g.cfg", config_text=""))
    rec_dir = default_record_dir()
    rec_dir.mkdir(parents=True)
    # pid 1 never is a create that died; an unused pid with a foreign start time is.
    (rec_dir / "create-999999.json").write_text(json.dumps(
        {"op": "create", "pid": 999999, "start_time": 1, "steps": ["create domain"],
         "notes": {"domid": 7, "uuid": uuid}}))
    assert 7 in half_built_domains() and not os.path.exists("/proc/999999")
    control.cmd_destroy(argparse.Namespace(domain="g", force=False))
    assert load_domain_config(uuid) is None
    assert half_built_domains() == {}


def test_destroy_refuses_dom0(session) -> None:
    with pytest.raises(XentoolError, match="domain 0"):
        control.cmd_destroy(argparse.Namespace(domain="0", force=False))
    assert ("destroy", 0) not in session.log


def test_destroy_unknown_domain(session) -> None:
    with pytest.raises(DomainNotFound, match="domain 'nope' does not exist"):
        control.cmd_destroy(argparse.Namespace(domain="nope", force=False))


def _pin(**kw) -> argparse.Namespace:
    base = {"domain": "g", "vcpu": "all", "hard": "-", "soft": "-", "force": False,
                "ignore_global_affinity_masks": False}
    base.update(kw)
    return argparse.Namespace(**base)


def test_vcpu_pin_all_vcpus_soft_only(session) -> None:
    control.cmd_vcpu_pin(_pin(vcpu="all", hard="-", soft="2-3"))
    assert [e for e in session.log if e[0] == "affinity"] == [
        ("affinity", 7, 0, None, frozenset({2, 3})), ("affinity", 7, 1, None, frozenset({2, 3}))]


def test_vcpu_pin_one_vcpu_hard(session) -> None:
    control.cmd_vcpu_pin(_pin(vcpu="1", hard="0,^0,3"))
    assert [e for e in session.log if e[0] == "affinity"] == [
        ("affinity", 7, 1, frozenset({3}), None)]


def test_vcpu_pin_force_reaches_xen(session) -> None:
    control.cmd_vcpu_pin(_pin(vcpu="1", hard="3", force=True))
    assert [e for e in session.log if e[0] == "affinity"] == [
        ("affinity", 7, 1, frozenset({3}), None, "force")]


@pytest.mark.parametrize("kw,exc,msg", [
    ({"vcpu": "x", "hard": "1"}, UsageError, "invalid vcpu 'x'"),
    ({"vcpu": "5", "hard": "1"}, XentoolError, "has no vcpu 5"),
    ({"vcpu": "0", "hard": "9"}, UsageError, "pcpu 9 is out of range"),
    ({"vcpu": "0", "hard": "1-0"}, UsageError, "invalid pcpu range"),
    ({"vcpu": "0", "hard": "0,^0"}, UsageError, "selects no cpu"),
])
def test_vcpu_pin_errors(session, kw, exc, msg) -> None:
    with pytest.raises(exc, match=msg):
        control.cmd_vcpu_pin(_pin(**kw))
    assert not [e for e in session.log if e[0] == "affinity"]
