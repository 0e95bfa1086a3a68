"""xentoold: a resident process that runs ``xentool`` commands without the start-up cost.

Started with ``xentool daemon`` (or its alias ``xentoold``), by hand or by systemd
(``contrib/systemd/xentoold.socket`` and ``xentoold.service``).  It imports the whole
library once, then listens on a unix socket (:func:`xentool.client.socket_path`: by default
``/run/xentool/xentoold.sock``, mode 0600 in a directory only root can enter) and, for each
command a client sends, forks a child that already has everything imported.  The child
takes the client's stdin, stdout and stderr (passed over the socket with ``SCM_RIGHTS``)
as its fds 0, 1 and 2, its working directory, umask, environment and argv, opens its own
libxenctrl and xenstore handles as the command line does (nothing is shared across the
fork) and runs :func:`xentool.cli.main`.  Its output goes straight to the client's
terminal or pipes, so it is the output of an in-process run, byte for byte, and a console
attached by ``console`` or ``create -c`` has the client's terminal.

Only root may use it: the socket is 0600 and the daemon checks the peer's uid
(``SO_PEERCRED``).  The daemon runs one command per connection, any number at once, and
never runs two at once in one process: each gets its own child, as each gets its own
process without a daemon.

Protocol (version 1)
--------------------
Each message is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON, an
object with ``"v"`` (the protocol version) and ``"op"``:

=============  ====================================================================
daemon→client  ``{"op": "hello", "pid": N}`` at once on accept; a client that finds
               another ``"v"`` closes the connection and runs the command itself.
client→daemon  ``{"op": "run", "argv": [...], "env": {...}, "umask": N, "executable":
               S, "stdio": [[encoding, errors] x 3], "ignored": [signo...]}`` sent with
               4 file descriptors: stdin, stdout, stderr and the working directory
               (``O_PATH``).  ``argv[0]`` is the client's program name; ``ignored``
               lists the forwarded signals the client ignores (``nohup``), which the
               child then ignores too.
daemon→client  ``{"op": "refused", "reason": S}``: nothing was run (peer not root,
               another version, a malformed request, fork failed); the client runs the
               command itself.  Else ``{"op": "started", "pid": N}``.
client→daemon  ``{"op": "signal", "signo": N}``: SIGINT, SIGTERM or SIGHUP to deliver
               to the child.  A client that disconnects before the child ended is
               taken for a hangup: the child gets SIGHUP (a create rolls back).
daemon→client  ``{"op": "exit", "code": N}`` or ``{"op": "exit", "signal": N}`` once
               the child ended; then the daemon closes the connection.
=============  ====================================================================

Besides commands, the daemon runs the host's monitor and sched-controller as threads of
its own process (never of the children), see :mod:`xentool.resident`; SIGHUP reads the
sched policy again.  SIGTERM or SIGINT stop the daemon: it stops listening at once, waits up to
``STOP_GRACE`` seconds for the commands in flight to end (their clients still get their
exit status), and leaves any still running to finish on their own.  With systemd's socket
activation (``LISTEN_FDS``) it serves the socket it is given and leaves the file to
systemd; otherwise it makes the socket itself and removes it when it stops.  One daemon
per socket: a second one fails while ``xentoold.pid`` beside the socket is locked.
"""

from __future__ import annotations

import array
import atexit
import contextlib
import errno
import fcntl
import importlib
import io
import logging
import os
import pkgutil
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

from xentool import client
from xentool.client import FORWARDED_SIGNALS, MAX_MESSAGE, PROTOCOL, REQUEST_FDS, ProtocolError
from xentool.errors import XentoolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from xentool.resident import Options, Services

log = logging.getLogger(__name__)

#: Seconds a stopping daemon waits for the commands in flight.
STOP_GRACE = 30.0
#: Longest sleep of the main loop: the systemd watchdog is pinged at least this often.
TICK = 5.0
#: Packages whose every module is imported before serving.
PACKAGES = ("xentool", "domain_builder", "xenstore")
#: Modules not imported ahead: entry points and the binding's build script.
NOT_PRELOADED = frozenset(("xentool.__main__", "domain_builder._build_xenctrl"))
#: systemd's first passed socket (sd_listen_fds(3)).
SD_LISTEN_FDS_START = 3

Runner = Callable[[list[str]], int]


def preload() -> list[str]:
    """Import every module the commands may need, and make what they make on first use
    (the xenctrl result classes, the xl.cfg grammar, the disk spec's rules).  Returns the
    modules that failed to import (a host without the binding, say): their commands import
    them again, and fail as they would without the daemon."""
    failed = []
    for name in PACKAGES:
        try:
            package = importlib.import_module(name)
        except ImportError:
            failed.append(name)
            continue
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            if info.name in NOT_PRELOADED:
                continue
            try:
                importlib.import_module(info.name)
            except Exception as e:  # ImportError, or a binding that refuses this host
                log.debug("daemon: not preloaded: %s: %s", info.name, e)
                failed.append(info.name)
    # What modules make on first use: domain_builder.xenctrl's result classes, the xl.cfg
    # grammar, the disk spec's rule table.
    for name, module in list(sys.modules.items()):
        if name == __name__ or not name.startswith(tuple(f"{p}." for p in PACKAGES)):
            continue
        make = vars(module).get("preload")
        # Only a module's own preload(), not one it imported (the controller's xenctrl's).
        if callable(make) and getattr(make, "__module__", None) == name:
            try:
                make()
            except Exception as e:
                log.debug("daemon: %s.preload(): %s", name, e)
    return failed


# -- the child: one command, as the client would have run it ----------------------------


def _stdio(fd: int, spec: object, write: bool) -> io.TextIOWrapper:
    """A text stream on ``fd`` as Python's start-up makes one, with the client's encoding."""
    encoding, errors = "utf-8", "strict"
    if isinstance(spec, list) and len(spec) == 2 and all(isinstance(x, str) for x in spec):
        encoding, errors = spec
    raw = io.FileIO(fd, "w" if write else "r", closefd=False)
    line_buffering = write and (fd == 2 or os.isatty(fd))
    if write:
        return io.TextIOWrapper(io.BufferedWriter(raw), encoding=encoding, errors=errors,
                                line_buffering=line_buffering)
    return io.TextIOWrapper(io.BufferedReader(raw), encoding=encoding, errors=errors)


def _exit_code(exc: SystemExit) -> int:
    """What the interpreter exits with for ``SystemExit(code)``."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def run_child(request: dict[str, object], fds: list[int], runner: Runner,
              mask: set[int | signal.Signals]) -> int:
    """Become the client's command and run it: its exit status.  Runs in the forked
    child, with the forwarded signals still blocked; ``mask`` is the mask to end with."""
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    os.fchdir(fds[3])
    for fd in fds:
        if fd > 2:
            os.close(fd)
    umask = request.get("umask")
    os.umask(umask if isinstance(umask, int) else 0o022)
    env = request.get("env")
    os.environ.clear()
    if isinstance(env, dict):
        os.environ.update({str(k): str(v) for k, v in env.items()})
    with contextlib.suppress(Exception):
        import locale

        locale.setlocale(locale.LC_CTYPE, "")
    argv = request.get("argv")
    sys.argv = [str(a) for a in argv] if isinstance(argv, list) and argv else ["xentool"]
    executable = request.get("executable")
    if isinstance(executable, str) and executable:
        sys.executable = executable
    stdio = request.get("stdio")
    specs: list[object] = stdio if isinstance(stdio, list) and len(stdio) == 3 else [None] * 3
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        stream = _stdio(fd, specs[fd], fd > 0)
        vars(sys)[name] = vars(sys)[f"__{name}__"] = stream
    # As a fresh interpreter: no handler on the root logger (the command's -v sets it up).
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    from xentool import service

    service.forget()
    ignored = request.get("ignored")
    for s in FORWARDED_SIGNALS:
        if isinstance(ignored, list) and int(s) in ignored:
            signal.signal(s, signal.SIG_IGN)
        else:
            signal.signal(s, signal.default_int_handler if s == signal.SIGINT
                          else signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        code = runner(sys.argv[1:])
    except SystemExit as e:
        code = _exit_code(e)
    except KeyboardInterrupt:
        # As the interpreter: a traceback, then killed by SIGINT.
        sys.excepthook(*sys.exc_info())
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        code = 130
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    if not _flush():
        code = 120  # as the interpreter when it cannot flush stdout at exit
    return code & 0xFF


def _flush() -> bool:
    ok = True
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            ok = False if stream is sys.stdout else ok
    return ok


# -- the daemon ---------------------------------------------------------------------------


class _Conn:
    """One client connection: what it sent so far, and the child running its command."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.fds: list[int] = []
        self.pid: int | None = None
        self.pidfd: int | None = None
        self.open = True

    def close_fds(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


class _Spare:
    """A child forked ahead of the next command, waiting for its request on ``ctl``: the
    fork of a daemon with the whole library loaded is slow on a PV dom0 (Xen checks
    every page table page it copies), so a command does not wait for it."""

    def __init__(self, pid: int, pidfd: int, ctl: socket.socket) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.ctl = ctl


def _await_request(ctl: socket.socket, runner: Runner, mask: set[int | signal.Signals]) -> int:
    """In a spare: wait for the request the daemon hands over, then run it.  The daemon
    closing ``ctl`` instead (it stops) ends the spare quietly."""
    fds = array.array("i")
    try:
        data, ancdata, _flags, _addr = ctl.recvmsg(
            4, socket.CMSG_SPACE(REQUEST_FDS * fds.itemsize))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
        if not data:
            return 0
        header = data + client._recv_exact(ctl, 4 - len(data))
        (size,) = struct.unpack(">I", header)
        request = client.decode(client._recv_exact(ctl, size))
    except (OSError, ProtocolError, struct.error):
        return 0
    ctl.close()
    if len(fds) != REQUEST_FDS:
        return 1
    return run_child(request, list(fds), runner, mask)


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def inherited_socket(environ: dict[str, str] | None = None) -> socket.socket | None:
    """The listening socket systemd passed (sd_listen_fds(3)), or None."""
    env = os.environ if environ is None else environ
    try:
        pid, count = int(env["LISTEN_PID"]), int(env["LISTEN_FDS"])
    except (KeyError, ValueError):
        return None
    if pid != os.getpid() or count < 1:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for the children
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise XentoolError("the socket systemd passed is not a unix stream socket")
    os.set_inheritable(sock.fileno(), False)
    return sock


def _lock_path(path: str) -> str:
    return os.path.splitext(path)[0] + ".pid"


class Server:
    """The daemon: a listening socket and the connections of commands in flight.

    ``runner`` runs a command line in the child (:func:`xentool.cli.main`; tests give
    another); ``allow_uid`` is whom the peer check lets in (root).  ``path`` defaults to
    :func:`xentool.client.socket_path`.
    """

    def __init__(self, runner: Runner, path: str | None = None, *,
                 allow_uid: int = 0, listener: socket.socket | None = None) -> None:
        self.path = path or client.socket_path()
        self.runner = runner
        self.allow_uid = allow_uid
        self.listener = listener
        self.owns_path = listener is None
        self.lock_fd: int | None = None
        self.conns: dict[int, _Conn] = {}  # by socket fd
        self.by_pidfd: dict[int, _Conn] = {}
        self.spare: _Spare | None = None
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.stopping = False
        self.stop_grace = STOP_GRACE
        #: Fork the next command's child ahead of its request (see _Spare).
        self.use_spare = True
        self.spare_after = 0.0
        self.stop_deadline = 0.0
        #: The threads besides commands (xentool.resident), if any.
        self.services: Services | None = None

    # -- set-up and tear-down ----------------------------------------------------------

    def open(self) -> None:
        """Take the daemon lock, then listen (or take systemd's socket)."""
        self.lock()
        self.listen()

    def lock(self) -> None:
        """Take the lock that makes this the one daemon of its socket."""
        from xentool.state import private_dir

        parent = Path(self.path).parent
        private_dir(parent)
        lock = _lock_path(self.path)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise XentoolError(f"xentoold already runs on {self.path}"
                                   + (f" (pid {holder})" if holder else "")) from None
            raise
        self.lock_fd = fd
        self.write_pid()

    def listen(self) -> None:
        """Make the socket (unless systemd passed one) and serve it from the next
        :meth:`serve`."""
        if self.listener is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            # Bound and listening under a name of its own, then renamed into place (over a
            # dead daemon's socket: the lock says none runs): a client never finds the path
            # before it accepts (it would run in-process).
            tmp = f"{self.path}.{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            old = os.umask(0o177)
            try:
                sock.bind(tmp)
            finally:
                os.umask(old)
            os.chmod(tmp, 0o600)
            sock.listen(64)
            os.rename(tmp, self.path)
            self.listener = sock
        self.listener.setblocking(False)
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, "listen")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")

    def write_pid(self) -> None:
        """Name this process in the lock file (again after going to the background)."""
        if self.lock_fd is not None:
            os.ftruncate(self.lock_fd, 0)
            os.pwrite(self.lock_fd, f"{os.getpid()}\n".encode(), 0)

    def close(self) -> None:
        if self.listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(self.listener)
            if self.owns_path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            self.listener.close()
            self.listener = None
        for conn in list(self.conns.values()):
            self._drop(conn)
        self._drop_spare()
        for pidfd in list(self.by_pidfd):
            os.close(pidfd)
        self.by_pidfd.clear()
        self.sel.close()
        self.wake_r.close()
        self.wake_w.close()
        if self.lock_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(_lock_path(self.path))
            os.close(self.lock_fd)
            self.lock_fd = None

    def stop(self) -> None:
        """Stop listening and end once the commands in flight are done (or the grace
        period is over).  Safe in a signal handler."""
        if not self.stopping:
            self.stopping = True
            self.stop_deadline = time.monotonic() + self.stop_grace
        with contextlib.suppress(OSError):
            self.wake_w.send(b"\0")

    # -- the loop ----------------------------------------------------------------------

    def serve(self) -> None:
        """Serve until :meth:`stop`, then until the commands in flight are done."""
        from xentool import service

        while True:
            if self.stopping:
                self._drop_spare()
                if self.listener is not None:
                    self.sel.unregister(self.listener)
                    if self.owns_path:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(self.path)
                    self.listener.close()
                    self.listener = None
                if not self.by_pidfd or time.monotonic() >= self.stop_deadline:
                    if self.by_pidfd:
                        log.warning("daemon: stopping with %d command(s) still running",
                                    len(self.by_pidfd))
                    return
            service.alive()
            if self.services is not None:
                self.services.check()
            self._spawn_spare()
            timeout = TICK
            if self.stopping:
                timeout = max(0.0, min(TICK, self.stop_deadline - time.monotonic()))
            for key, _ in self.sel.select(timeout):
                what = key.data
                if what == "listen":
                    self._accept()
                elif what == "wake":
                    with contextlib.suppress(OSError):
                        self.wake_r.recv(64)
                elif isinstance(what, tuple) and what[0] == "conn":
                    conn = self.conns.get(what[1])
                    if conn is not None:
                        self._readable(conn)
                elif isinstance(what, tuple) and what[0] == "child":
                    conn = self.by_pidfd.get(what[1])
                    if conn is not None:
                        self._reap(conn)
                elif what == "spare":  # died waiting (killed): not again at once
                    self._drop_spare()
                    self.spare_after = time.monotonic() + TICK

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:  # EMFILE and the like: the client falls back, we go on
            log.warning("daemon: accept: %s", e)
            return
        sock.setblocking(False)
        try:
            uid = peer_uid(sock)
        except OSError:
            sock.close()
            return
        if uid != self.allow_uid:
            self._send(sock, {"op": "refused", "reason": "only root may use xentoold"})
            sock.close()
            return
        conn = _Conn(sock)
        if not self._send(sock, {"op": "hello", "pid": os.getpid()}):
            sock.close()
            return
        self.conns[sock.fileno()] = conn
        self.sel.register(sock, selectors.EVENT_READ, ("conn", sock.fileno()))

    @staticmethod
    def _send(sock: socket.socket, message: dict[str, object]) -> bool:
        try:
            sock.sendall(client.encode({"v": PROTOCOL, **message}))
        except OSError:  # the client is gone, or stopped reading: it is not waited for
            return False
        return True

    def _readable(self, conn: _Conn) -> None:
        try:
            data, ancdata, _flags, _addr = conn.sock.recvmsg(
                65536, socket.CMSG_SPACE(REQUEST_FDS * array.array("i").itemsize))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, ancdata = b"", []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                conn.fds.extend(fds)
        if not data:
            self._hangup(conn)
            return
        conn.buf += data
        while len(conn.buf) >= 4 and conn.open:
            (size,) = struct.unpack(">I", conn.buf[:4])
            if size > MAX_MESSAGE:
                self._refuse(conn, "message too large")
                return
            if len(conn.buf) < 4 + size:
                return
            body = bytes(conn.buf[4:4 + size])
            del conn.buf[:4 + size]
            try:
                message = client.decode(body)
            except ProtocolError as e:
                self._refuse(conn, str(e))
                return
            self._message(conn, message)

    def _message(self, conn: _Conn, message: dict[str, object]) -> None:
        op = message.get("op")
        if conn.pid is None:
            if message.get("v") != PROTOCOL:
                self._refuse(conn, f"protocol version {message.get('v')!r}, not {PROTOCOL}")
            elif op != "run":
                self._refuse(conn, f"expected a run request, not {op!r}")
            elif len(conn.fds) != REQUEST_FDS:
                self._refuse(conn, f"a run request comes with {REQUEST_FDS} file "
                                   f"descriptors, not {len(conn.fds)}")
            else:
                self._start(conn, message)
        elif op == "signal":
            signo = message.get("signo")
            if signo in [int(s) for s in FORWARDED_SIGNALS] and isinstance(signo, int):
                self._kill(conn, signo)

    def _refuse(self, conn: _Conn, reason: str) -> None:
        log.info("daemon: refused a request: %s", reason)
        self._send(conn.sock, {"op": "refused", "reason": reason})
        self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        """Forget the connection (its child, if any, is still reaped)."""
        if not conn.open:
            return
        conn.open = False
        conn.close_fds()
        fd = conn.sock.fileno()
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn.sock)
        self.conns.pop(fd, None)
        conn.sock.close()

    def _hangup(self, conn: _Conn) -> None:
        if conn.pid is not None:
            log.info("daemon: client of pid %d hung up: SIGHUP", conn.pid)
            self._kill(conn, signal.SIGHUP)
        self._drop(conn)

    def _kill(self, conn: _Conn, signo: int) -> None:
        if conn.pidfd is None:
            return
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(conn.pidfd, signo)

    def _start(self, conn: _Conn, request: dict[str, object]) -> None:
        started = self._hand_to_spare(conn, request) or self._fork(conn, request)
        if started is None:
            return
        conn.close_fds()
        conn.pid, conn.pidfd = started
        self.by_pidfd[conn.pidfd] = conn
        self.sel.register(conn.pidfd, selectors.EVENT_READ, ("child", conn.pidfd))
        self._send(conn.sock, {"op": "started", "pid": conn.pid})

    def _hand_to_spare(self, conn: _Conn, request: dict[str, object]
                       ) -> tuple[int, int] | None:
        spare, self.spare = self.spare, None
        if spare is None:
            return None
        self.sel.unregister(spare.pidfd)
        try:
            client.send(spare.ctl, request, conn.fds)
        except (OSError, ProtocolError):  # it died meanwhile: forget it, fork instead
            spare.ctl.close()
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(spare.pidfd, signal.SIGKILL)
                os.waitpid(spare.pid, 0)
            os.close(spare.pidfd)
            return None
        spare.ctl.close()
        return spare.pid, spare.pidfd

    def _fork(self, conn: _Conn, request: dict[str, object]) -> tuple[int, int] | None:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
        try:
            pid = os.fork()
        except OSError as e:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self._refuse(conn, f"fork: {e.strerror}")
            return None
        if pid == 0:
            code = 1
            try:
                fds = list(conn.fds)
                conn.fds.clear()
                self._forget_in_child()
                code = run_child(request, fds, self.runner, mask)
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return pid, os.pidfd_open(pid)

    def _spawn_spare(self) -> None:
        """Fork the child that will run the next command, if there is none."""
        if self.spare is not None or self.stopping or not self.use_spare \
                or time.monotonic() < self.spare_after:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
        try:
            pid = os.fork()
        except OSError as e:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            log.warning("daemon: no spare child: fork: %s", e.strerror)
            ours.close()
            theirs.close()
            return
        if pid == 0:
            code = 1
            try:
                os.close(ours.detach())
                self._forget_in_child()
                code = _await_request(theirs, self.runner, mask)
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        theirs.close()
        self.spare = _Spare(pid, os.pidfd_open(pid), ours)
        self.sel.register(self.spare.pidfd, selectors.EVENT_READ, "spare")

    def _drop_spare(self) -> None:
        spare, self.spare = self.spare, None
        if spare is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(spare.pidfd)
        spare.ctl.close()  # it reads EOF and exits
        with contextlib.suppress(OSError):
            os.waitpid(spare.pid, 0)
        os.close(spare.pidfd)

    def _forget_in_child(self) -> None:
        """Close in the child every descriptor the daemon holds: a child must not keep the
        socket, the lock or another client's connection alive."""
        signal.set_wakeup_fd(-1)
        from xentool import locks

        # The daemon's threads are not in the child: their xenstored connections and the
        # locks they held (the monitor's, a domain's it acts on) are not the child's.
        if self.services is not None:
            for fd in self.services.child_fds():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.services = None
        locks.forget_after_fork()
        for other in self.conns.values():
            with contextlib.suppress(OSError):
                os.close(other.sock.detach())
            other.close_fds()
        for pidfd in self.by_pidfd:
            with contextlib.suppress(OSError):
                os.close(pidfd)
        if self.spare is not None:
            with contextlib.suppress(OSError):
                os.close(self.spare.ctl.detach())
                os.close(self.spare.pidfd)
            self.spare = None
        for sock in (self.listener, self.wake_r, self.wake_w):
            if sock is not None:
                with contextlib.suppress(OSError):
                    os.close(sock.detach())
        with contextlib.suppress(OSError):
            self.sel.close()
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def _reap(self, conn: _Conn) -> None:
        assert conn.pid is not None and conn.pidfd is not None
        try:
            pid, status = os.waitpid(conn.pid, os.WNOHANG)
        except ChildProcessError:  # reaped already (cannot happen: only we wait)
            pid, status = conn.pid, 0
        if pid == 0:
            return
        self.sel.unregister(conn.pidfd)
        del self.by_pidfd[conn.pidfd]
        os.close(conn.pidfd)
        conn.pidfd = None
        if conn.open:
            if os.WIFSIGNALED(status):
                self._send(conn.sock, {"op": "exit", "signal": os.WTERMSIG(status)})
            else:
                self._send(conn.sock, {"op": "exit", "code": os.waitstatus_to_exitcode(status)})
            self._drop(conn)


# -- the command --------------------------------------------------------------------------


def _daemonize(log_file: str | None, server: Server) -> None:
    """Go to the background: the command returns once the daemon listens (the socket is
    already open, so a client that comes now waits in the backlog, it is not refused)
    and the pid file names the daemon, not the command."""
    ready_r, ready_w = os.pipe()
    if os.fork() > 0:
        os.close(ready_w)
        with contextlib.suppress(OSError):
            os.read(ready_r, 1)  # the daemon's byte, or EOF if it died first
        os._exit(0)
    os.close(ready_r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    server.write_pid()
    os.write(ready_w, b"\0")
    os.close(ready_w)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    out = null
    if log_file is not None:
        with contextlib.suppress(OSError):
            out = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                          0o644)
    os.dup2(out, 2)
    if out != null:
        os.close(out)
    os.close(null)
    os.chdir("/")


def serve(runner: Runner, *, path: str | None = None, foreground: bool = False,
          log_file: str | None = "/var/log/xen/xentoold.log", allow_uid: int = 0,
          options: Options | None = None) -> None:
    """Run xentoold until SIGTERM or SIGINT (``xentool daemon``).  Without ``foreground``
    it returns in the calling process once the daemon listens, and goes on in a detached
    one that logs to ``log_file`` (when its directory exists).  ``options``: the monitor
    and sched-controller it runs besides (:mod:`xentool.resident`; None: neither).
    SIGHUP reads the sched policy again."""
    from xentool import service
    from xentool.resident import Services, describe

    server = Server(runner, path, allow_uid=allow_uid, listener=inherited_socket())
    server.lock()  # before going to the background: "already runs" is said here
    services: Services | None = None
    try:
        # The socket appears once everything is imported: until then a client finds no
        # daemon and runs its command itself rather than wait (socket activation aside).
        failed = preload()
        server.listen()
        if not foreground:
            if log_file is not None and not os.path.isdir(os.path.dirname(log_file)):
                log_file = None
            sys.stdout.flush()
            sys.stderr.flush()
            _daemonize(log_file, server)
        if failed:
            log.info("daemon: not preloaded (the commands that need them import them "
                     "again): %s", ", ".join(failed))

        def on_signal(signum: int, frame: object) -> None:
            server.stop()

        def on_hangup(signum: int, frame: object) -> None:
            if server.services is not None:
                server.services.reload()

        signal.set_wakeup_fd(server.wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, on_hangup)
        # Threads only now: after going to the background (a fork keeps no thread).
        if options is not None:
            services = server.services = Services(options)
            services.start()
            services.settle()  # before the first fork: see Services.settle
        log.info("daemon: serving %s (pid %d); running %s", server.path, os.getpid(),
                 describe(options) if options is not None else "nothing else")
        service.ready(f"serving {server.path}")
        server.serve()
    finally:
        service.stopping()
        if services is not None:
            services.stop()
        signal.set_wakeup_fd(-1)
        server.close()
        log.info("daemon: stopped")

