"""The monitor keeps handling domains whatever one record file or one error does.

* an unreadable or invalid record is logged once and skipped: the other domains are handled;
* a domain counts as handled only once its action succeeded: a transient error (a lock
  timeout, xenstored busy) is retried on the next scan, up to ``MAX_ATTEMPTS`` times;
* ``run()`` survives xenstored going away: it reconnects with back-off and scans again.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_monitor as base  # the fakes of the monitor's tests

from xenstore.errors import XenStoreError
from xentool import monitor as m
from xentool import records
from xentool.locks import LockTimeout

U1, U2, rec = base.U1, base.U2, base.rec
state = base.state  # the autouse fixture: records in a private state directory


class FakeOps(base.FakeOps):
    """test_monitor's fake, plus errors to inject: ``fail[op]`` is a list of exceptions
    raised by the next calls of ``op`` (None: succeed), ``always[op]`` one raised forever."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: dict[str, list[BaseException | None]] = {}
        self.always: dict[str, BaseException] = {}

    def _maybe_fail(self, op: str) -> None:
        if op in self.always:
            raise self.always[op]
        queued = self.fail.get(op)
        if queued:
            exc = queued.pop(0)
            if exc is not None:
                raise exc

    @contextlib.contextmanager
    def lock(self, domid: int) -> Iterator[None]:
        self._maybe_fail("lock")
        yield

    def destroy(self, domid: int) -> bool:
        self.calls.append(("destroy", domid))
        self._maybe_fail("destroy")
        del self.doms[domid]
        return True


Clock = base.Clock


@pytest.fixture
def world() -> tuple[FakeOps, Clock, m.Monitor]:
    ops, clock = FakeOps(), Clock()
    return ops, clock, m.Monitor(ops, clock=clock)  # type: ignore[arg-type]


def _errors(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and text in r.getMessage()]


# -- one bad record -----------------------------------------------------------------------


@pytest.mark.parametrize("content", [
    b"{not json", b"1", b"[1, 2]", b"\xff\xfe\x00garbage", b'{"version": 1, "uuid": 12}',
    b'{"version": 1, "uuid": "' + U1.encode() + b'", "name": "g", "config_path": "x", '
    b'"config_text": "", "on_crash": "explode"}',
], ids=["syntax", "number", "list", "not-utf8", "uuid-not-a-string", "bad-action"])
def test_a_bad_record_does_not_stop_the_others(world, state: Path, content: bytes,
                                               caplog: pytest.LogCaptureFixture) -> None:
    ops, clock, mon = world
    records.write_record(rec(U2, name="good", started_at=clock.t - 1000))
    bad_file = state / "domains" / f"{U1}.json"
    bad_file.write_bytes(content)
    (state / "domains" / "junk.json").write_bytes(content)  # no domain has it
    bad = ops.add(U1, reason=0)
    good = ops.add(U2, reason=0)
    with caplog.at_level(logging.INFO):
        mon.scan()
        mon.scan()
        assert mon.next_wakeup() == m.POLL_S
    assert ops.calls == [("destroy", good.domid)]
    assert bad.domid in ops.doms
    # Logged at error level once per file, however many scans meet it.
    assert len(_errors(caplog, str(bad_file))) == 1
    assert len(_errors(caplog, str(state / "domains" / "junk.json"))) == 1
    # Mended: the domain is handled on the next scan.
    records.write_record(rec(U1, started_at=clock.t - 1000))
    mon.scan()
    assert ops.calls == [("destroy", good.domid), ("destroy", bad.domid)]


def test_a_watcher_with_a_bad_record_keeps_watching_its_live_domain(world, state: Path) -> None:
    ops, clock, _ = world
    mon = m.Monitor(ops, clock=clock, only=U1)  # type: ignore[arg-type]
    (state / "domains").mkdir(parents=True)
    (state / "domains" / f"{U1}.json").write_text("{")
    d = ops.add(U1, reason=0)
    mon.scan()
    assert not mon.finished()
    assert mon.next_wakeup() == m.POLL_S
    del ops.doms[d.domid]
    assert mon.finished()


def test_a_bad_old_record_does_not_stop_a_create_from_saving(tmp_path: Path, state: Path
                                                              ) -> None:
    from xentool.config import load

    (state / "domains").mkdir(parents=True)
    (state / "domains" / f"{U1}.json").write_text("{")
    cfg = tmp_path / "g.cfg"
    cfg.write_text('name = "web"\nkernel = "k"\n')
    records.save_domain_config(load(str(cfg)), U1, str(cfg))
    r = records.load_domain_config(U1)
    assert r is not None and r.name == "web" and r.fast_restarts == 0


# -- one error ---------------------------------------------------------------------------------


@pytest.mark.parametrize("exc", [
    LockTimeout("timed out after 60s waiting for the domain 10 lock held by pid 1"),
    XenStoreError(errno.EBUSY, "/local/domain/10", "xenstored busy"),
    OSError(errno.EAGAIN, "try again"),
], ids=["lock-timeout", "xenstore-busy", "oserror"])
@pytest.mark.parametrize("op", ["destroy", "lock"])
def test_a_transient_error_is_retried_on_the_next_scan(world, op: str, exc: Exception,
                                                       caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    ops, clock, mon = world
    records.write_record(rec(started_at=clock.t - 1000))  # on_reboot: restart
    d = ops.add(U1, reason=1)
    ops.fail[op] = [exc]
    with caplog.at_level(logging.INFO):
        mon.scan()
    assert d.domid in ops.doms and ("create", "g") not in ops.calls
    mon.scan()
    assert d.domid not in ops.doms
    assert ops.calls[-2:] == [("destroy", d.domid), ("create", "g")]
    mon.scan()
    assert ops.calls.count(("create", "g")) == 1  # handled once, not again
    assert len(_errors(caplog, "retrying")) == 1


def test_retries_are_bounded(world, caplog: pytest.LogCaptureFixture) -> None:
    ops, clock, mon = world
    records.write_record(rec(started_at=clock.t - 1000))
    d = ops.add(U1, reason=0)
    ops.always["destroy"] = OSError(errno.EBUSY, "busy")
    with caplog.at_level(logging.INFO):
        for _ in range(m.MAX_ATTEMPTS + 5):
            mon.scan()
    assert ops.calls == [("destroy", d.domid)] * m.MAX_ATTEMPTS
    gave_up = _errors(caplog, "giving up")
    assert len(gave_up) == 1 and f"{m.MAX_ATTEMPTS} times" in gave_up[0]
    # A new domain (a new domid) gets its own attempts.
    del ops.always["destroy"]
    records.write_record(rec(U2, name="h", started_at=clock.t - 1000))
    e = ops.add(U2, reason=0)
    mon.scan()
    assert e.domid not in ops.doms and d.domid in ops.doms


def test_a_failed_write_of_one_restart_does_not_stop_the_scan(world, monkeypatch
                                                                ) -> None:
    ops, clock, mon = world
    records.write_record(rec(restart_at=clock.t - 1))
    records.write_record(rec(U2, name="h", restart_at=clock.t - 1))
    real = records.write_record

    def write(r: records.DomainRecord) -> Path:
        if r.uuid == U1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(r)

    monkeypatch.setattr(m, "write_record", write)
    mon.scan()
    assert ("create", "h") in ops.calls


# -- run(): xenstored goes away ----------------------------------------------------------------


class FakeWatch:
    def __init__(self, store: FakeStore) -> None:
        self.store = store

    def __enter__(self) -> FakeWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.watch_closed = True

    def get(self, timeout: float | None = None) -> None:
        if self.store.broken:
            raise XenStoreError(errno.ECONNRESET, "@releaseDomain",
                                "connection to xenstored lost")
        return None


class FakeStore:
    def __init__(self, broken: bool = False, refuse_watch: bool = False) -> None:
        self.broken = broken
        self.refuse_watch = refuse_watch
        self.watch_closed = False

    def watch(self, path: str) -> FakeWatch:
        assert path == "@releaseDomain"
        if self.refuse_watch:
            raise XenStoreError(errno.ECONNRESET, path, "connection to xenstored lost")
        return FakeWatch(self)


class Connector:
    """Hands out the stores (or exceptions) queued in ``plan``, then good stores."""

    def __init__(self, *plan: FakeStore | BaseException) -> None:
        self.plan = list(plan)
        self.calls = 0
        self.stores: list[FakeStore] = []

    def __call__(self) -> FakeStore:
        self.calls += 1
        item = self.plan.pop(0) if self.plan else FakeStore()
        if isinstance(item, BaseException):
            raise item
        self.stores.append(item)
        return item


def _counting(mon: m.Monitor, stop: threading.Event, scans: int) -> list[int]:
    """Make ``mon.scan`` count its calls and stop the loop after ``scans`` of them."""
    done: list[int] = []
    real = mon.scan

    def scan() -> None:
        real()
        done.append(1)
        if len(done) >= scans:
            stop.set()

    mon.scan = scan  # type: ignore[method-assign]
    return done


def test_run_reconnects_when_the_watch_breaks(world, caplog: pytest.LogCaptureFixture
                                              ) -> None:
    _ops, clock, mon = world
    records.write_record(rec(started_at=clock.t - 1000))
    stop = threading.Event()
    scans = _counting(mon, stop, 2)
    connect = Connector(FakeStore(broken=True))
    slept: list[float] = []
    with caplog.at_level(logging.INFO):
        m.run(mon, connect, stop, sleep=slept.append)  # type: ignore[arg-type]
    assert connect.calls == 2 and len(scans) == 2
    assert connect.stores[0].watch_closed
    assert slept == [1.0]
    assert _errors(caplog, "reconnecting")


def test_run_handles_what_happened_while_xenstored_was_away(world) -> None:
    ops, clock, mon = world
    records.write_record(rec(started_at=clock.t - 1000))
    stop = threading.Event()
    scans = _counting(mon, stop, 2)
    first = FakeStore(broken=True)
    # The domain shuts down while the connection is down: found by the scan after it.
    real_watch = first.watch

    def watch(path: str) -> FakeWatch:
        d = ops.add(U1, reason=0)
        ops.calls.append(("added", d.domid))
        return real_watch(path)

    first.watch = watch  # type: ignore[method-assign]
    m.run(mon, Connector(first), stop, sleep=lambda s: None)  # type: ignore[arg-type]
    assert len(scans) == 2
    assert [c[0] for c in ops.calls] == ["added", "destroy"]


def test_run_backs_off_while_xenstored_is_down(world) -> None:
    _ops, _clock, mon = world
    stop = threading.Event()
    scans = _counting(mon, stop, 1)
    down = XenStoreError(errno.ECONNREFUSED, "/run/xenstored/socket", "cannot reach xenstored")
    connect = Connector(*[down] * 8, FakeStore(refuse_watch=True), OSError(errno.EIO, "io"))
    slept: list[float] = []
    m.run(mon, connect, stop, sleep=slept.append, reconnect_delay=1.0,  # type: ignore[arg-type]
          max_reconnect_delay=30.0)
    assert slept == [1, 2, 4, 8, 16, 30, 30, 30, 30, 30]
    assert len(scans) == 1 and connect.calls == 11


def test_run_resets_the_back_off_once_connected(world) -> None:
    _ops, _clock, mon = world
    stop = threading.Event()
    scans = _counting(mon, stop, 3)
    down = XenStoreError(errno.ECONNREFUSED, "x", "down")
    connect = Connector(down, down, FakeStore(broken=True), down, FakeStore(broken=True))
    slept: list[float] = []
    m.run(mon, connect, stop, sleep=slept.append)  # type: ignore[arg-type]
    # down, down, scan + broken (the watch worked: back to 1 s), down, scan + broken, scan
    assert slept == [1, 2, 1, 2, 1]
    assert len(scans) == 3


def test_run_survives_a_failing_scan(world, caplog: pytest.LogCaptureFixture) -> None:
    ops, _clock, mon = world
    stop = threading.Event()
    real = ops.domains
    failures = [RuntimeError("hypercall failed")]

    def domains() -> list[base.Dom]:
        if failures:
            raise failures.pop()
        return real()

    ops.domains = domains  # type: ignore[method-assign]
    scans = _counting(mon, stop, 1)
    with caplog.at_level(logging.INFO):
        m.run(mon, Connector(), stop, sleep=lambda s: None)  # type: ignore[arg-type]
    assert len(scans) == 1 and _errors(caplog, "hypercall failed")


def test_run_returns_when_a_transient_monitor_is_finished(world) -> None:
    ops, clock, _ = world
    mon = m.Monitor(ops, clock=clock, transient=True)  # type: ignore[arg-type]
    connect = Connector()
    m.run(mon, connect, threading.Event(), sleep=lambda s: None)  # type: ignore[arg-type]
    assert connect.calls == 1


def test_session_reopens_its_xenstore_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    from xenstore import client
    from xentool.session import Session

    class Conn:
        closed = 0

        def close(self) -> None:
            Conn.closed += 1
            raise XenStoreError(errno.ECONNRESET, "", "already gone")

    opened: list[Conn] = []

    def connect() -> Conn:
        opened.append(Conn())
        return opened[-1]

    monkeypatch.setattr(client.Store, "connect", staticmethod(connect))
    s = Session()
    assert s.reopen_xs() is opened[0]  # nothing open yet: just opens
    assert s.xs is opened[0]
    assert s.reopen_xs() is opened[1] and Conn.closed == 1  # a close that fails is fine
    assert s.xs is opened[1]
