"""Per-domain locks and the global create lock: ``flock`` files under ``/run/xentool``.

* ``create_lock()`` serialises the part of ``create`` that picks a name and device ids and
  makes them visible in XenStore, so two parallel creates never pick the same ones.
* ``domain_lock(domid)`` serialises everything that changes one domain (destroy,
  shutdown handling by the monitor, rename, device attach/detach, ...).

The kernel drops an ``flock`` when the last descriptor of its open file goes away, so a
holder killed with SIGKILL never leaves a lock behind.  What *can* leave one is a
descendant that inherited the descriptor (a hotplug script started by a killed xentool,
a fork without exec): the lock stays held although its owner is gone.  Every holder
therefore writes ``<pid> <start time> <command>`` into the file; a waiter that finds the
lock busy checks whether that process still exists, and if not, breaks the lock by
unlinking the file (under a guard lock, and only if the path still names the inode it
found busy) so the next attempt creates a fresh one.  A holder always re-checks after
``flock`` that the path still names the file it locked, so it never holds an unlinked
lock by mistake.

Lock order: the create lock before any domain lock, and domain locks in increasing domid
order; never wait for the create lock while holding a domain lock.

Locks are reentrant within a process (and thread-safe): nested ``with domain_lock(3):``
does not deadlock on itself.  ``XENTOOL_RUN_DIR`` moves the directory (tests).

Nobody but root can block a lock: anyone who can open a lock file, even read-only, can
``flock`` it.  The run directory is therefore 0700 and ours (:func:`xentool.state.private_dir`
creates or tightens it, and refuses one that is a symbolic link or another user's), and
lock files are created 0600 without following symbolic links.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from xentool.errors import BusyError, XentoolError
from xentool.logs import get_logger
from xentool.procs import proc_start_time, process_alive
from xentool.state import private_dir, run_dir

log = get_logger(__name__)

DEFAULT_TIMEOUT = 60.0
_POLL = 0.05


class LockTimeout(BusyError):
    """The lock stayed busy for the whole timeout."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a lock file, as written by the holder."""

    pid: int
    start_time: int | None
    command: str

    def alive(self) -> bool:
        return process_alive(self.pid, self.start_time)

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command})" if self.command else f"pid {self.pid}"

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        parts = text.strip().split(" ", 2)
        if len(parts) < 2 or not parts[0].isdigit():
            return None
        start = int(parts[1]) if parts[1].isdigit() else None
        return cls(int(parts[0]), start, parts[2] if len(parts) > 2 else "")

    @classmethod
    def me(cls) -> Holder:
        cmd = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
        return cls(os.getpid(), proc_start_time(os.getpid()), cmd.replace("\n", " ")[:200])

    def line(self) -> str:
        return f"{self.pid} {self.start_time if self.start_time is not None else '-'} " \
               f"{self.command}\n"


class _Local:
    """Per-path in-process state: a thread lock, the flock'ed fd and a depth count."""

    def __init__(self) -> None:
        self.rlock = threading.RLock()
        self.fd: int | None = None
        self.depth = 0


_locals: dict[str, _Local] = {}
_locals_guard = threading.Lock()


def _local(path: Path) -> _Local:
    with _locals_guard:
        return _locals.setdefault(str(path), _Local())


def forget_after_fork() -> None:
    """In a child forked by a threaded process (xentoold, whose monitor thread takes
    domain locks): the locks other threads held are not the child's.  Their descriptors
    are closed without unlocking (the flock belongs to the open file, which the parent
    still holds) and the in-process state starts afresh, so the child waits for such a
    lock as any other process does instead of for a thread it does not have."""
    global _locals_guard
    _locals_guard = threading.Lock()
    for st in _locals.values():
        if st.fd is not None:
            try:
                os.close(st.fd)
            except OSError:
                pass
    _locals.clear()


class FileLock:
    """An exclusive ``flock`` on ``path``; ``with FileLock(p, what="..."):``."""

    def __init__(self, path: Path | str, *, what: str, timeout: float | None = DEFAULT_TIMEOUT
                 ) -> None:
        self.path = Path(path)
        self.what = what
        self.timeout = timeout
        self._st = _local(self.path)

    # -- public ---------------------------------------------------------------------------

    def acquire(self) -> None:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        if not self._st.rlock.acquire(timeout=-1 if self.timeout is None else self.timeout):
            raise LockTimeout(f"timed out after {self.timeout:g}s waiting for the {self.what} "
                              f"lock (held by another thread of this process)")
        try:
            if self._st.depth == 0:
                self._st.fd = self._lock_file(deadline)
            self._st.depth += 1
        except BaseException:
            self._st.rlock.release()
            raise

    def release(self) -> None:
        st = self._st
        if st.depth <= 0:
            raise RuntimeError(f"{self.what} lock released but not held")
        st.depth -= 1
        if st.depth == 0 and st.fd is not None:
            fd, st.fd = st.fd, None
            # Unlock before close: a descriptor inherited by a child must not keep it held.
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        st.rlock.release()

    def held(self) -> bool:
        return self._st.depth > 0 and self._st.fd is not None

    def holder(self) -> Holder | None:
        try:
            return Holder.parse(self.path.read_text())
        except OSError:
            return None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    # -- internals ------------------------------------------------------------------------

    def _open(self) -> int:
        # Only root may open a lock: whoever can open one can flock it and stall xentool.
        private_dir(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise XentoolError(f"{self.path} is a symbolic link: refusing to use it as "
                                   f"the {self.what} lock") from None
            raise
        try:
            st = os.fstat(fd)
            if st.st_mode & 0o077 and st.st_uid == os.geteuid():
                os.fchmod(fd, 0o600)  # made by an older xentool
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _guard(self) -> int:
        """flock the directory: makes 'claim' and 'break' atomic with respect to each other."""
        guard = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(guard, fcntl.LOCK_EX)
        return guard  # _unguard drops the flock

    @staticmethod
    def _unguard(guard: int) -> None:
        # Unlock before close, as release() does: a process forked meanwhile by another
        # thread (xentoold's children) holds a copy of the descriptor, which would keep
        # the directory locked, and every later claim waiting, for as long as it lives.
        try:
            fcntl.flock(guard, fcntl.LOCK_UN)
        finally:
            os.close(guard)

    def _lock_file(self, deadline: float | None) -> int:
        warned = False
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                busy_ino = os.fstat(fd).st_ino
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                holder = self._break_if_stale(busy_ino)
                if holder is None:
                    continue  # broken (or replaced meanwhile): try the fresh file
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockTimeout(f"timed out after {self.timeout:g}s waiting for the "
                                      f"{self.what} lock held by {holder} ({self.path})"
                                      ) from None
                if not warned:
                    log.info("waiting for the %s lock held by %s", self.what, holder)
                    warned = True
                time.sleep(_POLL)
                continue
            if self._claim(fd):
                return fd
            os.close(fd)

    def _claim(self, fd: int) -> bool:
        """We hold the flock: sign the file, unless a breaker unlinked it under us."""
        guard = self._guard()
        try:
            try:
                if os.stat(self.path).st_ino != os.fstat(fd).st_ino:
                    return False
            except FileNotFoundError:
                return False
            os.ftruncate(fd, 0)
            os.pwrite(fd, Holder.me().line().encode(), 0)
            return True
        finally:
            self._unguard(guard)

    def _break_if_stale(self, busy_ino: int) -> Holder | str | None:
        """The live holder of a busy lock; None if it was stale and has been broken.

        Holders sign the file under the guard, so under the guard the signature is the
        current holder's unless that holder has not signed yet (then it is an older one,
        or empty) — and such a holder re-checks the path under the guard before signing,
        so breaking the lock under it only makes it retry.
        """
        guard = self._guard()
        try:
            try:
                if os.stat(self.path).st_ino != busy_ino:
                    return None  # already replaced: retry at once
            except FileNotFoundError:
                return None
            holder = self.holder()
            if holder is None or holder.alive():
                return holder or "another process"
            log.warning("breaking the stale %s lock of %s: that process is gone but a "
                        "descendant still holds the file", self.what, holder)
            os.unlink(self.path)
            return None
        finally:
            self._unguard(guard)


def create_lock(timeout: float | None = DEFAULT_TIMEOUT) -> FileLock:
    """The global lock held while a create picks its name and device ids."""
    return FileLock(run_dir() / "create.lock", what="create", timeout=timeout)


def domain_lock(domid: int, timeout: float | None = DEFAULT_TIMEOUT) -> FileLock:
    """The lock of one domain, by domid (names change with ``rename``, domids do not)."""
    if not 0 <= domid < 0x7FF0:
        raise XentoolError(f"invalid domain id {domid} for a lock")
    return FileLock(run_dir() / f"domain-{domid}.lock", what=f"domain {domid}",
                    timeout=timeout)
