"""flock-based domain/create locks, exercised with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from xentool.errors import XentoolError
from xentool.locks import FileLock, Holder, LockTimeout, create_lock, domain_lock
from xentool.state import RUN_DIR_ENV, run_dir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def rundir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "run"
    monkeypatch.setenv(RUN_DIR_ENV, str(d))
    return d


def _spawn(body: str, rundir: Path) -> subprocess.Popen[str]:
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", code], text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, RUN_DIR_ENV: str(rundir)})


def _wait_for(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_paths(rundir: Path) -> None:
    assert run_dir() == rundir
    assert create_lock().path == rundir / "create.lock"
    assert domain_lock(7).path == rundir / "domain-7.lock"
    with pytest.raises(XentoolError):
        domain_lock(0x7FF0)


def test_parallel_processes_never_overlap(rundir: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    procs = [_spawn(f"""
        import os, time
        from xentool.locks import create_lock
        for _ in range(5):
            with create_lock(timeout=60):
                with open({str(log)!r}, "a") as f:
                    f.write(f"in {{os.getpid()}}\\n"); f.flush()
                    time.sleep(0.01)
                    f.write(f"out {{os.getpid()}}\\n")
        """, rundir) for _ in range(6)]
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read()
    lines = log.read_text().splitlines()
    assert len(lines) == 6 * 5 * 2
    for a, b in zip(lines[::2], lines[1::2], strict=True):
        assert a.startswith("in ") and b == "out " + a[3:]  # strictly nested, never interleaved


def test_holder_is_recorded_and_named_on_timeout(rundir: Path, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    p = _spawn(f"""
        import pathlib, time
        from xentool.locks import domain_lock
        with domain_lock(5):
            pathlib.Path({str(ready)!r}).touch()
            time.sleep(60)
        """, rundir)
    try:
        _wait_for(ready)
        lock = domain_lock(5, timeout=0.3)
        h = lock.holder()
        assert h is not None and h.pid == p.pid and h.alive()
        t0 = time.monotonic()
        with pytest.raises(LockTimeout) as ei:
            lock.acquire()
        assert time.monotonic() - t0 >= 0.3
        assert f"domain 5 lock held by pid {p.pid}" in str(ei.value)
        assert not lock.held()
    finally:
        p.kill()
        p.wait()


def test_sigkilled_holder_releases_at_once(rundir: Path, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    p = _spawn(f"""
        import pathlib, time
        from xentool.locks import create_lock
        with create_lock():
            pathlib.Path({str(ready)!r}).touch()
            time.sleep(60)
        """, rundir)
    _wait_for(ready)
    p.send_signal(signal.SIGKILL)
    p.wait()
    with create_lock(timeout=2) as lk:
        assert lk.held()
        assert lk.holder() == Holder.me()


def test_stale_lock_held_by_an_orphaned_child_is_broken(rundir: Path, tmp_path: Path) -> None:
    """The holder dies, a forked child keeps the descriptor: the next locker breaks it."""
    child_pid_file = tmp_path / "child"
    p = _spawn(f"""
        import os, time, pathlib
        from xentool.locks import domain_lock
        lk = domain_lock(3)
        lk.acquire()
        pid = os.fork()
        if pid == 0:            # like a hotplug script started without exec hygiene
            time.sleep(60)
            os._exit(0)
        pathlib.Path({str(child_pid_file)!r}).write_text(str(pid))
        os._exit(0)             # the holder vanishes without unlocking
        """, rundir)
    assert p.wait(timeout=20) == 0
    _wait_for(child_pid_file)
    child = int(child_pid_file.read_text())
    try:
        old_ino = (rundir / "domain-3.lock").stat().st_ino
        holder = domain_lock(3).holder()
        assert holder is not None and holder.pid == p.pid and not holder.alive()
        t0 = time.monotonic()
        with domain_lock(3, timeout=5) as lk:
            assert time.monotonic() - t0 < 4
            assert lk.holder() == Holder.me()
            assert (rundir / "domain-3.lock").stat().st_ino != old_ino
        os.kill(child, 0)  # the orphan itself was left alone
    finally:
        os.kill(child, signal.SIGKILL)


def test_live_holder_is_never_broken(rundir: Path, tmp_path: Path) -> None:
    """Many contenders + a holder that sleeps while holding: exclusion holds throughout."""
    log = tmp_path / "log"
    procs = [_spawn(f"""
        import os, time
        from xentool.locks import domain_lock
        for _ in range(3):
            with domain_lock(9, timeout=60):
                with open({str(log)!r}, "a") as f:
                    f.write("in\\n"); f.flush(); time.sleep(0.05); f.write("out\\n")
        """, rundir) for _ in range(4)]
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read()
    assert log.read_text() == "in\nout\n" * 12


def test_reentrant_in_one_process() -> None:
    with domain_lock(1) as a:
        with domain_lock(1) as b:
            assert a.held() and b.held()
        assert a.held()
    assert not a.held()
    with pytest.raises(RuntimeError):
        a.release()


def test_other_threads_wait_for_the_in_process_holder() -> None:
    import threading

    order: list[str] = []
    lk = FileLock(run_dir() / "t.lock", what="test")
    lk.acquire()

    def other() -> None:
        with FileLock(run_dir() / "t.lock", what="test", timeout=10):
            order.append("other")

    t = threading.Thread(target=other)
    t.start()
    time.sleep(0.2)
    order.append("main")
    lk.release()
    t.join(10)
    assert order == ["main", "other"]


@pytest.mark.parametrize("text, holder", [
    ("123 456 xentool create g.cfg\n", Holder(123, 456, "xentool create g.cfg")),
    ("7 - x\n", Holder(7, None, "x")),
    ("8 99", Holder(8, 99, "")),
    ("", None),
    ("garbage here", None),
])
def test_holder_parse(text: str, holder: Holder | None) -> None:
    assert Holder.parse(text) == holder
    if holder is not None:
        assert Holder.parse(holder.line()) == holder
