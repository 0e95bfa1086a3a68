"""The controller with a fake hypervisor and a fake xenstored speaking the real protocol:
new domains on @introduceDomain, reloads, dry run, vanishing domains, xenstored restarts."""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_xenstore_fake import Server, fake_xenstored  # noqa: F401 - fixture

from domain_builder.errors import XenError
from domain_builder.xenctrl import CpupoolInfo, DomainInfo, SchedCredit
from xenstore.client import Store
from xenstore.errors import XenStoreError
from xentool.scheduler import policy
from xentool.scheduler.controller import Controller, Daemon, XenBackend
from xentool.scheduler.policy import parse_policy

CREDIT, CREDIT2, RTDS = 5, 6, 8


class FakeXc:
    """The slice of XenCtrl the controller uses; set calls can be made to fail."""

    def __init__(self) -> None:
        self.doms: dict[int, DomainInfo] = {}
        self.params: dict[int, SchedCredit] = {}
        self.pools = {0: CpupoolInfo(0, CREDIT2, 0, frozenset({0, 1})),
                      1: CpupoolInfo(1, CREDIT, 0, frozenset({2})),
                      2: CpupoolInfo(2, RTDS, 0, frozenset({3}))}
        self.sets: list[tuple[str, int, SchedCredit]] = []
        self.vanish_on_set: set[int] = set()
        self.lock = threading.Lock()

    def add(self, domid: int, pool: int = 0, vcpus: int = 1, handle: int = 0) -> None:
        with self.lock:
            self.doms[domid] = DomainInfo(domid, 0, 0, 0, 0, 0, 0, 0, 0, vcpus, vcpus - 1, 0,
                                          bytes([handle or domid]) * 16, pool)
            self.params[domid] = SchedCredit(256, 0)

    def remove(self, domid: int) -> None:
        with self.lock:
            self.doms.pop(domid, None)
            self.params.pop(domid, None)

    def domains(self) -> list[DomainInfo]:
        with self.lock:
            return [self.doms[d] for d in sorted(self.doms)]

    def cpupool_info(self, poolid: int) -> CpupoolInfo:
        return self.pools[poolid]

    def _check(self, domid: int, sched_id: int, op: str) -> None:
        if domid not in self.doms:
            raise XenError(op, errno.ESRCH)
        if self.pools[self.doms[domid].cpupool].sched_id != sched_id:
            raise XenError(op, errno.EINVAL)

    def sched_credit(self, domid: int) -> SchedCredit:
        self._check(domid, CREDIT, "get")
        return self.params[domid]

    def sched_credit2(self, domid: int) -> SchedCredit:
        self._check(domid, CREDIT2, "get")
        return self.params[domid]

    def _set(self, kind: str, sid: int, domid: int, p: SchedCredit) -> None:
        if domid in self.vanish_on_set:
            self.remove(domid)
        self._check(domid, sid, "set")
        self.params[domid] = p
        self.sets.append((kind, domid, p))

    def set_sched_credit(self, domid: int, p: SchedCredit) -> None:
        self._set("credit", CREDIT, domid, p)

    def set_sched_credit2(self, domid: int, p: SchedCredit) -> None:
        self._set("credit2", CREDIT2, domid, p)


class FakeStore:
    def __init__(self, nodes: dict[str, str], building: set[int] | None = None) -> None:
        self.nodes = nodes
        self.building = building if building is not None else set()

    def get(self, path: str, default: str | None = None) -> str | None:
        return self.nodes.get(path, default)

    def is_domain_introduced(self, domid: int) -> bool:
        return domid not in self.building

    def watch(self, path: str):
        raise XenStoreError(errno.EOPNOTSUPP, path, "watches need the xenstored socket")

    def close(self) -> None:
        pass


def names(**by_domid: str) -> dict[str, str]:
    nodes = {f"/local/domain/{k[1:]}/name": v for k, v in by_domid.items()}
    nodes.update({"/local/pool/0/name": "Pool-0", "/local/pool/1/name": "gold",
                  "/local/pool/2/name": "rt"})
    return nodes


POLICY = parse_policy('''
[default]
weight = 128
[[rule]]
match = "web-*"
weight = 512
[[rule]]
match = "*"
pool = "gold"
weight = 2000
cap = 50
''')


@pytest.fixture
def xc() -> FakeXc:
    x = FakeXc()
    x.add(0)
    return x


def test_reconcile_applies_per_scheduler_and_leaves_others(xc: FakeXc, tmp_path: Path) -> None:
    xc.add(1)
    xc.add(2, pool=1)
    xc.add(3, pool=2)
    xc.add(4)
    # Guest 4 has cpu_weight in its xl.cfg, as libxl stored it.
    uuid4 = xc.doms[4].uuid
    (tmp_path / f"userdata-d.4.{uuid4}.libxl-json").write_text(
        json.dumps({"b_info": {"sched_params": {"weight": 640, "cap": -1}}}))
    store = FakeStore(names(d0="Domain-0", d1="web-1", d2="batch", d3="rt-guest", d4="db"))
    msgs: list[str] = []
    ctl = Controller(XenBackend(xc, lambda: store, str(tmp_path)), POLICY, report=msgs.append)
    ctl.reconcile()
    assert sorted(xc.sets) == [("credit", 2, SchedCredit(2000, 50)),
                               ("credit2", 1, SchedCredit(512, 0)),
                               ("credit2", 4, SchedCredit(640, 0))]
    assert xc.params[0] == SchedCredit(256, 0)  # dom0: no rule names it
    assert "set domain 4 (db) [credit2]: weight 256 -> 640 (xl.cfg)" in msgs
    xc.sets.clear()
    assert all(not d.changed for d in ctl.reconcile()) and xc.sets == []


def test_dry_run_reports_once_and_sets_nothing(xc: FakeXc) -> None:
    xc.add(1)
    msgs: list[str] = []
    ctl = Controller(XenBackend(xc, lambda: FakeStore(names(d1="web-1"))), POLICY,
                     dry_run=True, report=msgs.append)
    ctl.reconcile()
    ctl.reconcile()
    assert xc.sets == []
    assert msgs == ["would set domain 1 (web-1) [credit2]: weight 256 -> 512 (rule 1 (web-*))"]


def test_domain_vanishing_mid_update_is_skipped(xc: FakeXc) -> None:
    xc.add(1)
    xc.add(2)
    xc.vanish_on_set.add(1)
    ctl = Controller(XenBackend(xc, lambda: FakeStore(names(d1="web-1", d2="web-2"))), POLICY)
    decisions = ctl.reconcile()
    assert [d.domid for d in decisions] == [2]
    assert xc.sets == [("credit2", 2, SchedCredit(512, 0))]


def test_nameless_domain_is_left_for_later(xc: FakeXc) -> None:
    xc.add(1)
    nodes = names()
    ctl = Controller(XenBackend(xc, lambda: FakeStore(nodes)), POLICY)
    assert ctl.reconcile() == [] and xc.sets == []
    nodes["/local/domain/1/name"] = "web-1"
    ctl.reconcile()
    assert xc.sets == [("credit2", 1, SchedCredit(512, 0))]
    # On the fast path too: a new domain without a name is retried at the next event.
    xc.add(2)
    assert ctl.on_introduce() == []
    nodes["/local/domain/2/name"] = "web-2"
    assert [d.domid for d in ctl.on_introduce()] == [2]
    assert xc.sets[-1] == ("credit2", 2, SchedCredit(512, 0))


def test_stale_pool_cache_is_refreshed_once(xc: FakeXc) -> None:
    xc.add(1)
    ctl = Controller(XenBackend(xc, lambda: FakeStore(names(d1="x"))), POLICY)
    ctl.reconcile()
    assert xc.sets == [("credit2", 1, SchedCredit(128, 0))]
    # Pool 0 is recreated under credit; a new domain arrives before any full pass.
    xc.pools[0] = CpupoolInfo(0, CREDIT, 0, frozenset({0}))
    xc.add(5)
    ctl.backend._store = lambda: FakeStore(names(d1="x", d5="y"))
    ctl.on_introduce()
    assert xc.sets[-1] == ("credit", 5, SchedCredit(128, 0))


def test_on_introduce_handles_only_new_domains_and_reused_domids(xc: FakeXc) -> None:
    xc.add(1)
    nodes = names(d1="web-1", d2="web-2")
    ctl = Controller(XenBackend(xc, lambda: FakeStore(nodes)), POLICY)
    ctl.reconcile()
    xc.params[1] = SchedCredit(999, 0)  # someone changed it by hand: a full pass reverts it
    xc.add(2)
    ctl.on_introduce()
    assert xc.params[1] == SchedCredit(999, 0) and xc.params[2] == SchedCredit(512, 0)
    xc.remove(2)
    xc.add(2, handle=77)  # same domid, new domain
    ctl.on_introduce()
    assert xc.sets[-1] == ("credit2", 2, SchedCredit(512, 0)) and len(xc.sets) == 3
    ctl.reconcile()
    assert xc.params[1] == SchedCredit(512, 0)


def test_domain_still_being_built_is_left_to_its_toolstack(xc: FakeXc) -> None:
    xc.add(1)
    building = {1}
    ctl = Controller(XenBackend(xc, lambda: FakeStore(names(d1="web-1"), building)), POLICY)
    assert ctl.reconcile() == [] and ctl.on_introduce() == [] and xc.sets == []
    building.clear()  # introduced: the build is over
    assert [d.domid for d in ctl.on_introduce()] == [1]
    assert xc.sets == [("credit2", 1, SchedCredit(512, 0))]


# -- the daemon loop against a fake xenstored ------------------------------------------------


class Running:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.daemon.run()
        except BaseException as e:
            self.errors.append(e)

    def stop(self) -> None:
        self.daemon.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive() and not self.errors, self.errors


def wait_until(cond, timeout: float = 5.0) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)
    return time.monotonic() - t0


@pytest.fixture
def daemon(xc: FakeXc, fake_xenstored, tmp_path: Path) -> Iterator[tuple[Daemon, FakeXc, Path]]:  # noqa: F811
    _srv, path = fake_xenstored
    pol = tmp_path / "policy.toml"
    pol.write_text('[[rule]]\nmatch = "web-*"\nweight = 512\n')
    current: dict[str, Store] = {}

    def connect() -> Store:
        current["xs"] = Store.connect(path, timeout=2)
        return current["xs"]

    ctl = Controller(XenBackend(xc, lambda: current["xs"], str(tmp_path)),
                     policy.load_policy(str(pol)))
    d = Daemon(ctl, str(pol), connect, resync=3600, poll=0.05)
    d._test_path = path  # type: ignore[attr-defined]
    yield d, xc, pol
    d.stop.set()
    if "xs" in current:
        current["xs"].close()


def test_daemon_applies_on_introduce_and_reloads(daemon, fake_xenstored) -> None:  # noqa: F811
    d, xc, pol = daemon
    _srv, path = fake_xenstored
    run = Running(d)
    try:
        with Store.connect(path) as xs:
            wait_until(lambda: d.ctl.known)  # first pass done
            xs.write("/local/domain/7/name", "web-7")
            xc.add(7)
            t0 = time.monotonic()
            xs.introduce_domain(7, 0x1000, 3)
            wait_until(lambda: xc.params[7] == SchedCredit(512, 0))
            assert time.monotonic() - t0 < 1.0
            # Edit the file: picked up without a signal.
            pol.write_text('[[rule]]\nmatch = "web-*"\nweight = 600\ncap = 10\n')
            os.utime(pol, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
            wait_until(lambda: xc.params[7] == SchedCredit(600, 10))
            # A broken edit keeps the old policy; a reload request applies the fixed one.
            pol.write_text('[[rule]]\nmatch = "web-*"\nweight = 0\n')
            time.sleep(0.3)
            assert xc.params[7] == SchedCredit(600, 10) and run.thread.is_alive()
            pol.write_text('[[rule]]\nmatch = "web-*"\nweight = 700\n')
            d.reload.set()  # what SIGHUP does
            wait_until(lambda: xc.params[7] == SchedCredit(700, 10))
    finally:
        run.stop()


# pyxs's reader thread ends with an exception when xenstored goes away: expected here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_daemon_survives_xenstored_restart(daemon, fake_xenstored) -> None:  # noqa: F811
    d, xc, _pol = daemon
    srv, path = fake_xenstored
    run = Running(d)
    try:
        wait_until(lambda: d.ctl.known)
        # A xenstored restart: the old process and all its connections are gone.
        srv.shutdown()
        srv.server_close()
        for w in list(srv.fake.watches):
            w[0].request.shutdown(socket.SHUT_RDWR)
        os.unlink(path)
        time.sleep(0.5)  # the controller notices and retries meanwhile
        srv2 = Server(path)
        t = threading.Thread(target=srv2.serve_forever, args=(0.05,), daemon=True)
        t.start()
        try:
            with Store.connect(path) as xs:
                xs.write("/local/domain/9/name", "web-9")
                xc.add(9)
                xs.introduce_domain(9, 0x1000, 3)
                # Whether the watch event or the reconnect pass sees it first, it is applied.
                wait_until(lambda: xc.params[9] == SchedCredit(512, 0), timeout=15)
                assert run.thread.is_alive()
                xs.write("/local/domain/10/name", "web-10")
                xc.add(10)
                xs.introduce_domain(10, 0x1000, 3)
                wait_until(lambda: xc.params[10] == SchedCredit(512, 0), timeout=5)
        finally:
            run.stop()
            srv2.shutdown()
            srv2.server_close()
    finally:
        d.stop.set()


def test_daemon_polls_where_watches_are_unavailable(xc: FakeXc, tmp_path: Path) -> None:
    pol = tmp_path / "policy.toml"
    pol.write_text('[[rule]]\nmatch = "web-*"\nweight = 512\n')
    nodes = names()
    building: set[int] = set()
    store = FakeStore(nodes, building)
    ctl = Controller(XenBackend(xc, lambda: store), policy.load_policy(str(pol)))
    d = Daemon(ctl, str(pol), lambda: store, resync=3600, poll=0.05, fast_poll=0.01)
    run = Running(d)
    try:
        wait_until(lambda: 0 in d.ctl.known)
        nodes["/local/domain/4/name"] = "web-4"
        building.add(4)
        xc.add(4)
        time.sleep(0.1)
        assert xc.params[4] == SchedCredit(256, 0)  # not while it is being built
        building.discard(4)
        assert wait_until(lambda: xc.params[4] == SchedCredit(512, 0)) < 1.0
    finally:
        run.stop()


def test_a_second_controller_waits_for_the_first_one(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """xentoold's controller and 'xentool sched-controller' take turns on one lock."""
    from xentool.scheduler.controller import _wait_for, sched_lock
    from xentool.state import RUN_DIR_ENV

    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "run"))
    held, release = threading.Event(), threading.Event()

    def first() -> None:
        with sched_lock():
            held.set()
            release.wait(30)

    t = threading.Thread(target=first)
    t.start()
    assert held.wait(10)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    assert _wait_for(sched_lock(), stop) is False  # stopped while the first one ran
    release.set()
    t.join(10)
    lock = sched_lock()
    assert _wait_for(lock, threading.Event()) is True
    lock.release()
