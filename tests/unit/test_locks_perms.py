"""Only root can touch xentool's locks: a private run directory and 0600 lock files.

A lock file any user can open read-only can be ``flock``ed by that user: root then waits
for it, times out and blames "another process".  These tests check that an unprivileged
user cannot even open one, and that the run directory is refused when it is not ours.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from xentool.errors import XentoolError
from xentool.journal import FaultPlan, Journal, default_record_dir
from xentool.locks import create_lock, domain_lock
from xentool.state import RUN_DIR_ENV

NOBODY = 65534

as_root = pytest.mark.skipif(os.geteuid() != 0,
                             reason="needs root: drops to an unprivileged user, chowns")


@pytest.fixture
def world_readable(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 0755 directory in /tmp (pytest's own tmp dirs are 0700, which would hide the bug);
    the run directory is ``<it>/run``."""
    top = Path(tempfile.mkdtemp(prefix="xentool-perms-", dir="/tmp"))
    top.chmod(0o755)
    monkeypatch.setenv(RUN_DIR_ENV, str(top / "run"))
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _flock_as_nobody(path: Path) -> int:
    """Open ``path`` read-only and flock it as user nobody: 0, or the errno it failed with."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 100
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            fd = os.open(path, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            code = 0
        except OSError as e:
            code = e.errno or 101
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status)
    return os.WEXITSTATUS(status)


@as_root
def test_an_unprivileged_user_cannot_flock_a_lock(world_readable: Path) -> None:
    with create_lock():
        pass
    with domain_lock(4):
        pass
    run = world_readable / "run"
    for name in ("create.lock", "domain-4.lock"):
        assert _flock_as_nobody(run / name) == errno.EACCES
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    # Root itself still takes them at once.
    with create_lock(timeout=0), domain_lock(4, timeout=0):
        pass


@as_root
def test_a_run_dir_left_wide_open_is_tightened(world_readable: Path) -> None:
    run = world_readable / "run"
    run.mkdir(mode=0o755)
    run.chmod(0o755)
    old = run / "create.lock"  # left by an older xentool
    old.write_text("")
    old.chmod(0o644)
    with create_lock(timeout=0):
        pass
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    assert _flock_as_nobody(old) == errno.EACCES


@as_root
def test_a_run_dir_owned_by_someone_else_is_refused(world_readable: Path) -> None:
    run = world_readable / "run"
    run.mkdir(mode=0o700)
    os.chown(run, NOBODY, NOBODY)
    with pytest.raises(XentoolError, match=f"{run}.*owned by uid {NOBODY}"):
        create_lock(timeout=0).acquire()
    assert not (run / "create.lock").exists()


def test_a_symlinked_run_dir_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run").symlink_to(tmp_path / "elsewhere")
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "run"))
    with pytest.raises(XentoolError, match=f"{tmp_path / 'run'}.*symbolic link"):
        domain_lock(1, timeout=0).acquire()
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_symlinked_lock_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (run / "domain-2.lock").symlink_to(victim)
    monkeypatch.setenv(RUN_DIR_ENV, str(run))
    with pytest.raises(XentoolError, match=r"domain-2\.lock is a symbolic link"):
        domain_lock(2, timeout=0).acquire()
    assert victim.read_text() == "precious\n"


def test_private_dir_creates_missing_parents_private(tmp_path: Path) -> None:
    from xentool.state import private_dir  # new with this fix

    d = private_dir(tmp_path / "a" / "b")
    assert d == tmp_path / "a" / "b"
    for p in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o700
    assert private_dir(d) == d  # twice is fine
    (tmp_path / "file").write_text("")
    with pytest.raises(XentoolError, match="not a directory"):
        private_dir(tmp_path / "file")


def test_the_journal_creates_a_private_run_dir(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    monkeypatch.setenv(RUN_DIR_ENV, str(run))
    with Journal("create", faults=FaultPlan(), record_dir=default_record_dir(),
                 handle_signals=False) as j:
        j.note("domid", 5)
        assert stat.S_IMODE(run.stat().st_mode) == 0o700
        assert stat.S_IMODE((run / "journal").stat().st_mode) == 0o700
        assert len(list((run / "journal").iterdir())) == 1
    with create_lock(timeout=0):  # and the locks live next to it
        pass
