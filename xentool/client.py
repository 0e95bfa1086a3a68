"""The ``xentool`` command: hands the command line to xentoold when it runs, else runs it here.

A one-shot ``xentool`` spends most of its time starting Python and importing the library;
xentoold (:mod:`xentool.daemon`) has it all imported already and forks a child per
command.  This module is what the ``xentool`` entry point and ``python3 -m xentool`` run
first, so it imports nothing but ``os``, ``sys``, ``socket``, ``json``, ``signal``,
``struct`` and ``array`` (tests/unit/test_daemon.py checks it in a fresh interpreter):
the library is imported only when no daemon answers and the command runs in-process, as
it always did.  Output and exit status are the same either way, because the daemon's child
runs the same :func:`xentool.cli.main` on this process's own stdin, stdout, stderr and
working directory, with this process's environment, umask and argv.

The daemon is used when the socket answers (``XENTOOL_DAEMON_SOCKET``, else
``xentoold.sock`` in the run directory, ``XENTOOL_RUN_DIR`` or ``/run/xentool``).  The
command runs in-process instead when ``XENTOOL_NO_DAEMON`` is set (to anything but ``0``
or the empty string), when nothing listens there, when the daemon speaks another protocol
version or refuses the request (another user than root), and for the verbs that are
long-running services themselves (``monitor``, ``sched-controller``, ``daemon``).  Once the
daemon has accepted a command it is never run a second time here: a daemon lost after that
is an error (exit status 1).

SIGINT, SIGTERM and SIGHUP that reach this process are passed to the daemon, which delivers
them to the command's process: a create interrupted with Ctrl-C rolls back as in-process.
A command killed by a signal kills this process with the same signal.  The wire protocol
is described in :mod:`xentool.daemon`.
"""

from __future__ import annotations

# The C modules under socket, signal, struct and json: those import enum, selectors and re,
# which cost more than the rest of a forwarded command under emulation.
import _socket as socket
import _struct
import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable, Mapping, Sequence
    from types import FrameType
else:
    import _signal as signal

#: Protocol version: a daemon that greets with another one is not used.
PROTOCOL = 1
#: The same defaults as :mod:`xentool.state` (not imported here: start-up cost).
RUN_DIR = "/run/xentool"
RUN_DIR_ENV = "XENTOOL_RUN_DIR"
SOCKET_NAME = "xentoold.sock"
SOCKET_ENV = "XENTOOL_DAEMON_SOCKET"
NO_DAEMON_ENV = "XENTOOL_NO_DAEMON"
#: The signals passed on to the command: those a journaled operation rolls back on.
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Verbs that are services of their own and always run in their own process (migrate
#: and migrate-receive: their transport is a pipe to a child they own).
LOCAL_VERBS = ("monitor", "sched-controller", "daemon", "migrate", "migrate-receive")
#: Largest message either side accepts (a request carries the whole environment).
MAX_MESSAGE = 1 << 20
#: File descriptors sent with a request: stdin, stdout, stderr, working directory.
REQUEST_FDS = 4

_HEADER = _struct.Struct(">I")


class ProtocolError(Exception):
    """The peer closed the connection or sent something that is not a message."""


class _ScanContext:
    """What ``_json.make_scanner`` reads from json.JSONDecoder, for plain JSON."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> object:
        raise ValueError(f"{name} is not JSON")


_scan: Callable[[str, int], tuple[object, int]] | None
try:
    from _json import encode_basestring_ascii as _quote
    from _json import make_scanner

    _scan = make_scanner(_ScanContext())  # type: ignore[arg-type]  # duck-typed context
except ImportError:  # an interpreter without the accelerator: the json package then
    from json import loads as _loads
    from json.encoder import encode_basestring_ascii as _quote

    _scan = None


def socket_path(environ: Mapping[str, str] | None = None) -> str:
    """Where xentoold listens (and where the client looks for it)."""
    env = os.environ if environ is None else environ
    return env.get(SOCKET_ENV) or os.path.join(env.get(RUN_DIR_ENV) or RUN_DIR, SOCKET_NAME)


def _json(value: object) -> str:
    """Compact JSON of what messages hold (what ``json.dumps`` makes of them, too)."""
    if isinstance(value, str):
        quoted: str = _quote(value)
        return quoted
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_json(str(k))}:{_json(v)}" for k, v in value.items()) + "}"
    raise ProtocolError(f"cannot send a {type(value).__name__}")


def encode(message: Mapping[str, object]) -> bytes:
    """One message on the wire: a 4-byte big-endian length, then that much UTF-8 JSON."""
    body = _json(dict(message)).encode()
    if len(body) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(body)} bytes is too large")
    return _HEADER.pack(len(body)) + body


def decode(body: bytes) -> dict[str, object]:
    try:
        text = body.decode()
        if _scan is None:
            message = _loads(text)
        else:
            message, end = _scan(text, 0)
            if end != len(text):
                raise ValueError("extra data after the object")
    except (ValueError, StopIteration) as e:  # StopIteration: the scanner found no value
        raise ProtocolError(f"not a message: {e!r}") from None
    if not isinstance(message, dict):
        raise ProtocolError("not a message: not a JSON object")
    return message


def send(sock: socket.socket, message: Mapping[str, object], fds: Sequence[int] = ()) -> None:
    data = encode(message)
    if fds:
        # SCM_RIGHTS travels with the first byte; the rest, if any, follows.
        rights = _struct.pack(f"{len(fds)}i", *fds)
        sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
        data = data[sent:]
    if data:
        sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise ProtocolError("connection closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv(sock: socket.socket) -> dict[str, object]:
    """The next message (blocking)."""
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    if size > MAX_MESSAGE:
        raise ProtocolError(f"message of {size} bytes is too large")
    return decode(_recv_exact(sock, size))


def _local_verb(args: Sequence[str]) -> bool:
    """Whether the command names (or may abbreviate) one of LOCAL_VERBS.  The global
    options take no value, so the verb is the first word that is not an option."""
    for word in args:
        if word == "--":
            return False
        if not word.startswith("-"):
            return any(verb.startswith(word) for verb in LOCAL_VERBS)
    return False


def _stdio_ok() -> bool:
    """Whether fds 0, 1 and 2 are open and Python has streams on them: the child gets
    copies of them, and an in-process run is the only faithful one otherwise."""
    for fd, stream in enumerate((sys.stdin, sys.stdout, sys.stderr)):
        if stream is None:
            return False
        try:
            os.fstat(fd)
        except OSError:
            return False
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def request(args: Sequence[str]) -> dict[str, object]:
    """The ``run`` message for ``args`` (the command line after the program name)."""
    streams = (sys.stdin, sys.stdout, sys.stderr)
    return {
        "v": PROTOCOL, "op": "run",
        "argv": [sys.argv[0] if sys.argv else "xentool", *args],
        "env": dict(os.environ),
        "umask": _umask(),
        "executable": sys.executable,
        "stdio": [[s.encoding, s.errors] if s is not None else None for s in streams],
        "ignored": [s for s in FORWARDED_SIGNALS if signal.getsignal(s) == signal.SIG_IGN],
    }


def _die_like(signo: int) -> int:
    """End this process the way the command's process ended: killed by ``signo``."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        signal.signal(signo, signal.SIG_DFL)
    except (OSError, ValueError):  # SIGKILL, SIGSTOP: their action is the default anyway
        pass
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signo])
    os.kill(os.getpid(), signo)
    return 128 + signo  # a signal whose default action is not to end the process


def forward(args: Sequence[str], path: str | None = None) -> int | None:
    """Run ``args`` in xentoold: its exit status, or None if no daemon took the command
    (nothing was run, the caller runs it in-process)."""
    env = os.environ.get(NO_DAEMON_ENV, "")
    if env not in ("", "0") or _local_verb(args) or not _stdio_ok():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        try:
            sock.connect(path or socket_path())
            hello = recv(sock)
        except (OSError, ProtocolError):
            return None  # nothing listens (ENOENT, ECONNREFUSED), not root (EACCES), ...
        if hello.get("op") != "hello" or hello.get("v") != PROTOCOL:
            return None
        return _run(sock, args)
    finally:
        sock.close()


def _run(sock: socket.socket, args: Sequence[str]) -> int | None:
    received: list[int] = []
    started = False

    def on_signal(signo: int, frame: FrameType | None) -> None:
        received.append(signo)
        try:
            send(sock, {"v": PROTOCOL, "op": "signal", "signo": signo})
        except OSError:
            pass  # the daemon is gone: the reply loop finds out

    # Blocked until the request is out, so no handler writes in the middle of it.
    signals = [s for s in FORWARDED_SIGNALS if signal.getsignal(s) != signal.SIG_IGN]
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    saved = {s: signal.signal(s, on_signal) for s in signals}
    try:
        cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            send(sock, request(args), [0, 1, 2, cwd])
        except (OSError, ProtocolError):
            return None  # not sent whole: the daemon runs nothing
        finally:
            os.close(cwd)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        while True:
            try:
                reply = recv(sock)
            except (OSError, ProtocolError):
                reply = {"op": "lost"}
            op = reply.get("op")
            if op == "started":
                started = True
            elif op == "refused" and not started:
                if received:  # interrupted before anything ran: as in-process
                    return _die_like(received[0])
                return None
            elif op == "exit":
                code, signo = reply.get("code"), reply.get("signal")
                if isinstance(signo, int):
                    return _die_like(signo)
                return code if isinstance(code, int) else 1
            elif op == "lost" or not started:
                # Accepted, so never run here a second time.
                print("xentool: lost the connection to xentoold before the command ended",
                      file=sys.stderr)
                return 1
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for s, handler in saved.items():
            signal.signal(s, handler)


def run_in_process(args: Sequence[str]) -> int:
    """Run the command in this process, as ``xentool`` did before the daemon existed."""
    if sys.flags.no_site and "site" not in sys.modules:  # started with -S to forward fast
        import site

        site.main()
    from xentool.cli import main as cli_main

    return cli_main(list(args))


def main(argv: Sequence[str] | None = None) -> int:
    """The ``xentool`` entry point."""
    args = sys.argv[1:] if argv is None else list(argv)
    code = forward(args)
    return run_in_process(args) if code is None else code
