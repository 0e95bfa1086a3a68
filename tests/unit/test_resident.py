"""xentoold's services without Xen: its options, the domain table, the table's thread
against the fake xenstored, and the locks a forked child inherits from the daemon's threads."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_xenstore_fake import Server, fake_xenstored  # noqa: F401 - fixture

from xenstore.client import Store
from xentool.errors import XentoolError
from xentool.locks import FileLock, LockTimeout
from xentool.resident import (
    Changes,
    DomainTable,
    Options,
    Services,
    load_options,
    parse_options,
    with_overrides,
)
from xentool.state import RUN_DIR_ENV, STATE_DIR_ENV


@dataclass(frozen=True)
class Info:
    domid: int
    uuid: str
    shutdown: bool = False
    dying: bool = False
    shutdown_reason: int | None = None


@pytest.fixture(autouse=True)
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "run"))
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))


# -- options ----------------------------------------------------------------------------------


def test_options_default_to_every_service() -> None:
    assert parse_options("", "x.toml") == Options()
    assert Options().monitor and Options().sched


def test_options_from_a_file(tmp_path: Path) -> None:
    f = tmp_path / "xentoold.toml"
    f.write_text('[monitor]\nenabled = false\nstable_after = 5\n'
                 '[sched]\npolicy = "/p.toml"\nresync = 10\n')
    opts = load_options(str(f))
    assert opts == Options(monitor=False, stable_after=5.0, policy="/p.toml", resync=10.0)
    # The command line wins; what it leaves out stays as the file says.
    assert with_overrides(opts, monitor=True, sched=False) == \
        Options(monitor=True, stable_after=5.0, sched=False, policy="/p.toml", resync=10.0)
    assert with_overrides(opts) == opts


@pytest.mark.parametrize(("text", "says"), [
    ("[monitr]\nenabled = true\n", "unknown setting 'monitr'"),
    ("[sched]\npolicyy = 'x'\n", "unknown setting sched.policyy"),
    ("[monitor]\nenabled = 1\n", "monitor.enabled must be bool, not 1"),
    ("[monitor]\nmax_fast_restarts = true\n", "monitor.max_fast_restarts must be int"),
    ("[monitor]\nmax_delay = -1\n", "monitor.max_delay must not be negative"),
    ("[sched]\nresync = 0\n", "sched.resync must be positive"),
    ("[sched\n", "x.toml: "),
])
def test_bad_options_are_one_error_naming_the_file(text: str, says: str) -> None:
    with pytest.raises(XentoolError) as ei:
        parse_options(text, "x.toml")
    assert str(ei.value).startswith("x.toml: ") and says in str(ei.value)


def test_a_missing_default_config_is_the_defaults_but_a_named_one_is_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import xentool.resident as resident

    monkeypatch.setattr(resident, "CONFIG_PATH", str(tmp_path / "none.toml"))
    assert load_options() == Options()
    with pytest.raises(XentoolError, match=r"none\.toml: no such file"):
        load_options(str(tmp_path / "none.toml"))


# -- the domain table ---------------------------------------------------------------------------


def test_the_table_reports_what_changed() -> None:
    t = DomainTable()
    assert t.update([Info(0, "u0"), Info(3, "u3")]) == Changes(introduced=(0, 3))
    assert not t.update([Info(0, "u0"), Info(3, "u3")])
    # 3 shuts down (reported once), 4 appears already dying (a quick crash).
    assert t.update([Info(0, "u0"), Info(3, "u3", shutdown=True, shutdown_reason=1),
                     Info(4, "u4", dying=True)]) == Changes(introduced=(4,), shut_down=(3, 4))
    assert not t.update([Info(0, "u0"), Info(3, "u3", shutdown=True, shutdown_reason=1),
                         Info(4, "u4", dying=True)])
    assert t.snapshot()[3].reason == 1
    # 4 is gone; domid 3 now holds another domain (restarted under a reused id).
    assert t.update([Info(0, "u0"), Info(3, "u3b")]) == \
        Changes(introduced=(3,), released=(3, 4))
    assert set(t.snapshot()) == {0, 3} and t.snapshot()[3].uuid == "u3b"


# -- the table's thread against the fake xenstored ---------------------------------------------


class FakeXc:
    def __init__(self) -> None:
        self.infos: list[Info] = [Info(0, "u0")]

    def __enter__(self) -> FakeXc:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def domains(self) -> list[Info]:
        return list(self.infos)


@pytest.fixture
def services(fake_xenstored: tuple[Server, str]) -> Iterator[tuple[Services, FakeXc, Store]]:  # noqa: F811
    _srv, path = fake_xenstored
    xc = FakeXc()
    s = Services(Options(monitor=False, sched=False),
                 connect=lambda: Store.connect(path, timeout=5), xenctrl=lambda: xc)
    s._targets = {"domains": s._domains_main}  # the table alone
    with Store.connect(path, timeout=5) as other:
        s.start()
        try:
            yield s, xc, other
        finally:
            s.stop()
    assert not any(t.is_alive() for t in s.threads.values())


def _wait(event: threading.Event, what: str) -> None:
    assert event.wait(10), what
    event.clear()


def test_the_table_follows_the_watches(services: tuple[Services, FakeXc, Store]) -> None:
    s, xc, xs = services
    _wait(s.sched_wake, "dom0 at the first look")
    assert set(s.table.snapshot()) == {0}
    assert s.looked.is_set()  # the monitor may act now
    xc.infos.append(Info(5, "u5"))
    xs.introduce_domain(5, 0xFEFFF, 1)
    _wait(s.sched_wake, "the sched-controller woken by @introduceDomain")
    assert set(s.table.snapshot()) == {0, 5}
    assert not s.monitor_wake.is_set()
    xc.infos[1] = Info(5, "u5", shutdown=True, shutdown_reason=1)
    xs.release_domain(5)
    _wait(s.monitor_wake, "the monitor woken by @releaseDomain")
    assert s.table.snapshot()[5].shutdown
    # A forked child closes the connection the thread watches with.
    assert len(s.child_fds()) == 1 and os.fstat(s.child_fds()[0])


def test_a_shared_queue_gets_the_events_of_several_watches(
        fake_xenstored: tuple[Server, str]) -> None:  # noqa: F811
    _srv, path = fake_xenstored
    events: queue.Queue[tuple[bytes, bytes]] = queue.Queue()
    with Store.connect(path, timeout=5) as xs, \
            xs.watch("/a", "ta", events=events), xs.watch("/b", "tb", events=events):
        got = {events.get(timeout=5)[1] for _ in range(2)}  # each fires at registration
        assert got == {b"ta", b"tb"}
        xs.write("/b/x", "1")
        assert events.get(timeout=5)[1] == b"tb"


# -- locks across the daemon's fork -------------------------------------------------------------


def test_a_forked_child_waits_for_a_lock_a_daemon_thread_holds(tmp_path: Path) -> None:
    """The child does not inherit the thread's hold: it finds the lock busy as any other
    process would (not "held by another thread"), and once the thread lets go it gets it;
    the child's exit leaves the thread's lock held."""
    from xentool import locks

    path = tmp_path / "run" / "domain-9.lock"
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with FileLock(path, what="domain 9"):
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(10)
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(r)
                locks.forget_after_fork()
                try:
                    FileLock(path, what="domain 9", timeout=0).acquire()
                    os.write(w, b"took it\n")
                except LockTimeout as e:
                    os.write(w, b"busy: " + str(e).encode() + b"\n")
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r) as f:
            said = f.read()
        assert os.waitpid(pid, 0)[1] == 0
        assert said.startswith("busy: ") and "another thread" not in said, said
        # Still ours after the child closed its copy of the descriptor.
        with pytest.raises(LockTimeout):
            _other_process_takes(path)
    finally:
        release.set()
        t.join(10)
    _other_process_takes(path)


def _other_process_takes(path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    code = ("import sys; from xentool.locks import FileLock, LockTimeout\n"
            "try:\n    FileLock(sys.argv[1], what='x', timeout=0).acquire()\n"
            "except LockTimeout:\n    sys.exit(3)\n")
    r = subprocess.run([sys.executable, "-c", code, str(path)], cwd=root, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(root)})
    if r.returncode == 3:
        raise LockTimeout("busy")
    assert r.returncode == 0


def test_services_start_no_monitor_or_sched_when_off() -> None:
    s = Services(Options(monitor=False, sched=False))
    assert s._targets == {}
    assert set(Services(Options(monitor=False))._targets) == {"domains", "sched"}
    s = Services(Options())
    assert set(s._targets) == {"domains", "monitor", "sched"}
    assert s.threads == {}


# -- the first fork waits for the services' start-up --------------------------------------


def test_settle_waits_for_each_first_pass_but_not_for_a_failed_service() -> None:
    from xentool.resident import Options, Services

    svc = Services(Options(monitor=False, sched=False))

    def slow() -> None:
        time.sleep(0.3)
        svc._settled("slow")
        svc.stop_event.wait()

    def broken() -> None:
        raise RuntimeError("no hypervisor")

    svc._targets = {"slow": slow, "broken": broken}
    t0 = time.monotonic()
    svc.start()
    svc.settle(timeout=10)
    took = time.monotonic() - t0
    svc.stop()
    assert 0.3 <= took < 5, took


def test_a_fork_waits_while_a_thread_opens_a_xenctrl_handle() -> None:
    from domain_builder import xenctrl

    held = threading.Event()

    def opening() -> None:
        with xenctrl._handles:  # what XenCtrl.open() holds around xc_interface_open
            held.set()
            time.sleep(0.5)

    t = threading.Thread(target=opening)
    t.start()
    held.wait(5)
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os._exit(0 if xenctrl._handles.acquire(timeout=5) else 1)  # free in the child
    waited = time.monotonic() - t0
    _, status = os.waitpid(pid, 0)
    t.join()
    assert waited >= 0.3, waited
    assert os.waitstatus_to_exitcode(status) == 0
