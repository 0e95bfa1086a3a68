"""A typed XenStore client over pyxs.

pyxs supplies the unix-socket and xenbus transports, the path checks and the router thread
that multiplexes replies and watch events over one connection. This layer builds the
requests itself (the message header and opcodes are the protocol's, see below) and adds
what a toolstack needs on top:

* every failure is a ``XenStoreError(errno, path)``; a dead xenstored never hangs a caller
  (requests time out and notice a dead router thread);
* values are ``str`` on the way out, ``str | bytes`` on the way in, any byte except NUL
  (pyxs itself refuses anything that is not printable 7-bit ASCII);
* permissions are typed (``Perms`` = owner + default access + ACL);
* ``with store.transaction() as t:`` commits on success, aborts on exception and survives
  EAGAIN by *replaying* the recorded requests in a fresh transaction: when every replayed
  request returns what it returned the first time, the block would have taken the same
  decisions, so its writes are still right. When something the block read has changed,
  replay is unsound and the conflict is raised; ``store.transact(fn)`` re-runs a function
  instead and is the tool for read-modify-write;
* ``with t.pipelined():`` inside a transaction sends its writes without waiting for each
  answer (a create's nodes cost about one round trip instead of one each);
* ``store.watch(path)`` is an iterator and context manager with a deadline.

Protocol reference: Xen ``docs/misc/xenstore.txt`` and ``xen/include/public/io/xs_wire.h``.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import functools
import itertools
import logging
import os
import queue
import time
from dataclasses import dataclass

from pyxs.client import Router
from pyxs.connection import UnixSocketConnection, XenBusConnection
from pyxs.exceptions import InvalidPath, InvalidPermission, PyXSError
from pyxs.helpers import check_path, check_watch_path

from xenstore.errors import XenStoreError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Iterator, Sequence
    from types import TracebackType
    from typing import Protocol, TypeVar

    T = TypeVar("T")

    # The parts of pyxs (which has no type hints) this module uses.

    class _Reply(Protocol):
        """A reply packet as the pyxs router hands it over."""

        op: int
        payload: bytes

    class _RVar(Protocol):
        """pyxs.client.RVar: where the router puts the reply to one request."""

        condition: threading.Condition
        target: _Reply | None

    class _Connection(Protocol):
        """pyxs.connection.PacketConnection, as far as Store looks at it."""

        @property
        def is_connected(self) -> bool: ...

        def fileno(self) -> int: ...

    class _Router(Protocol):
        """pyxs.client.Router: owns the connection and its reader thread."""

        connection: _Connection
        thread: threading.Thread

        def start(self) -> None: ...

        def terminate(self) -> None: ...

        def send(self, packet: _Request) -> _RVar: ...

        def subscribe(self, token: bytes, monitor: Watch) -> None: ...

        def unsubscribe(self, token: bytes, monitor: Watch) -> None: ...

log = logging.getLogger(__name__)

#: Where xenstored listens, in the order libxenstore tries them.
SOCKET_PATHS = ("/run/xenstored/socket", "/var/run/xenstored/socket")
XENBUS_PATH = "/dev/xen/xenbus"

#: xs_wire.h XENSTORE_PAYLOAD_MAX: the most a value (plus its path) can carry.
PAYLOAD_MAX = 4096

#: How long one request may take before xenstored is presumed stuck.
REQUEST_TIMEOUT = 30.0
#: Requests a pipelined transaction has in flight at most (xenstored throttles a
#: connection with many outstanding requests rather than refuse them; this keeps the
#: number of answers held at once small either way).
PIPELINE_WINDOW = 32

SPECIAL_WATCHES = ("@introduceDomain", "@releaseDomain")

NUL = b"\0"


class Op:
    """Message types (xs_wire.h ``enum xsd_sockmsg_type``, docs/misc/xenstore.txt).

    pyxs keeps its table in a private module; these numbers are part of the stable wire
    protocol, so the ones this client sends or expects back are named here.
    """

    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18


#: Requests whose only answer is "OK" (or an error): a pipelined transaction sends them
#: without waiting.
_ACKED_OPS = frozenset({Op.WRITE, Op.MKDIR, Op.RM, Op.SET_PERMS})


class _Request:
    """One request: the fields of the ``xsd_sockmsg`` header (xs_wire.h) and the payload.

    pyxs builds its packets in a private module; its router and connections only read these
    attributes (``Router.send`` files the reply under ``rq_id``, the connection packs the
    header), so a request is built here instead.
    """

    __slots__ = ("op", "payload", "rq_id", "size", "tx_id")

    def __init__(self, op: int, payload: bytes, rq_id: int, tx_id: int) -> None:
        self.op = op
        self.rq_id = rq_id
        self.tx_id = tx_id
        self.size = len(payload)
        self.payload = payload


#: Request ids, shared by every Store like pyxs's own counter (a router files replies by
#: id). ``next()`` on a count is atomic; the id is masked to the header's 32 bits.
_rq_ids = itertools.count()


class Access(enum.Enum):
    """One letter of a XenStore permission entry."""

    NONE = "n"
    READ = "r"
    WRITE = "w"
    BOTH = "b"


@dataclass(frozen=True)
class Perm:
    """One ACL entry: what ``domid`` may do."""

    domid: int
    access: Access

    def __str__(self) -> str:
        return f"{self.access.value}{self.domid}"

    @classmethod
    def parse(cls, text: str) -> Perm:
        if len(text) < 2 or not text[1:].isdigit() or not text[1:].isascii():
            raise ValueError(f"bad xenstore permission {text!r}")
        try:
            access = Access(text[0])
        except ValueError:
            raise ValueError(f"bad xenstore permission {text!r}") from None
        return cls(int(text[1:]), access)


@dataclass(frozen=True)
class Perms:
    """The permissions of a node as xenstored keeps them.

    ``owner`` may do anything; ``others`` is what every domain not in ``acl`` may do.
    On the wire this is ``<others><owner>`` followed by the ACL entries, e.g. ``n5 r0``
    (owner 5, nobody else, but domain 0 may read) — ``xenstore-ls -p`` prints ``(n5,r0)``.
    """

    owner: int
    others: Access = Access.NONE
    acl: tuple[Perm, ...] = ()

    def to_wire(self) -> list[str]:
        return [f"{self.others.value}{self.owner}", *map(str, self.acl)]

    def __str__(self) -> str:
        return ",".join(self.to_wire())

    @classmethod
    def from_wire(cls, entries: Sequence[str]) -> Perms:
        if not entries:
            raise ValueError("empty xenstore permission list")
        first, *rest = (Perm.parse(e) for e in entries)
        return cls(first.domid, first.access, tuple(rest))

    @classmethod
    def private(cls, owner: int, *readers: int) -> Perms:
        """Owned by ``owner``, readable by ``readers``, hidden from everybody else."""
        return cls(owner, Access.NONE, tuple(Perm(d, Access.READ) for d in readers))


@dataclass(frozen=True)
class WatchEvent:
    path: str
    token: str


def _errno_of(name: bytes) -> int:
    code = getattr(errno, name.decode("ascii", "replace"), None)
    return code if isinstance(code, int) else errno.EIO


def _checked_path(path: str, watch: bool = False) -> bytes:
    raw = path.encode("utf-8", "replace")
    try:
        (check_watch_path if watch else check_path)(raw)
    except InvalidPath:
        raise XenStoreError(errno.EINVAL, path, "not a valid xenstore path") from None
    return raw


class _Ops:
    """Requests that work both outside and inside a transaction (tx id 0 vs n)."""

    _store: Store
    _tx_id: int = 0

    def _request(self, op: int, payload: bytes, path: str, tolerated: int = 0) -> bytes:
        """Send one request. ``tolerated`` is an errno the caller treats as success (a
        transaction replay must not see a difference between the two)."""
        return self._store._call(op, payload, self._tx_id, path)

    def read_bytes(self, path: str) -> bytes:
        """The raw value; ``XenStoreError(ENOENT)`` when the node does not exist."""
        return self._request(Op.READ, _checked_path(path) + NUL, path)

    def read(self, path: str) -> str:
        """The value as text; undecodable bytes (a hostile guest) become U+FFFD."""
        return self.read_bytes(path).decode("utf-8", "replace")

    def get(self, path: str, default: str | None = None) -> str | None:
        """Like ``read`` but ``default`` for a missing node."""
        try:
            return self.read(path)
        except XenStoreError as e:
            if e.errno == errno.ENOENT:
                return default
            raise

    def read_int(self, path: str, lo: int = 0, hi: int = 2**32 - 1) -> int:
        """Strictly parse a decimal integer in [lo, hi]: for values a guest may have written."""
        raw = self.read_bytes(path)
        text = raw.decode("ascii", "replace")
        if not (0 < len(raw) <= 20 and (raw.isdigit() or (raw[:1] == b"-" and raw[1:].isdigit()))):
            raise XenStoreError(errno.EINVAL, path, f"not an integer: {text[:40]!r}")
        value = int(raw)
        if not lo <= value <= hi:
            raise XenStoreError(errno.ERANGE, path, f"{value} not in [{lo}, {hi}]")
        return value

    def exists(self, path: str) -> bool:
        try:
            self.read_bytes(path)
        except XenStoreError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def ls(self, path: str) -> list[str]:
        """Names of the children of ``path`` (not full paths)."""
        raw = self._request(Op.DIRECTORY, _checked_path(path) + NUL, path)
        return [n.decode("utf-8", "replace") for n in raw.split(NUL) if n]

    def write(self, path: str, value: str | bytes) -> None:
        data = value.encode() if isinstance(value, str) else bytes(value)
        if NUL in data:
            raise XenStoreError(errno.EINVAL, path, "value contains a NUL byte")
        self._ack(Op.WRITE, _checked_path(path) + NUL + data, path)

    def mkdir(self, path: str) -> None:
        """Create ``path`` and missing parents with empty values; existing ones are kept."""
        self._ack(Op.MKDIR, _checked_path(path) + NUL, path)

    def rm(self, path: str, missing_ok: bool = False) -> None:
        """Remove ``path`` and everything under it."""
        try:
            self._ack(Op.RM, _checked_path(path) + NUL, path,
                      tolerated=errno.ENOENT if missing_ok else 0)
        except XenStoreError as e:
            if not (missing_ok and e.errno == errno.ENOENT):
                raise

    def get_perms(self, path: str) -> Perms:
        raw = self._request(Op.GET_PERMS, _checked_path(path) + NUL, path)
        try:
            return Perms.from_wire([p.decode("ascii") for p in raw.split(NUL) if p])
        except (ValueError, UnicodeDecodeError) as e:
            raise XenStoreError(errno.EPROTO, path, str(e)) from None

    def set_perms(self, path: str, perms: Perms | Sequence[Perm]) -> None:
        """Set owner, default access and ACL; a sequence means owner/default first, then ACL."""
        if not isinstance(perms, Perms):
            if not perms:
                raise XenStoreError(errno.EINVAL, path, "empty permission list")
            perms = Perms(perms[0].domid, perms[0].access, tuple(perms[1:]))
        body = b"".join(p.encode() + NUL for p in perms.to_wire())
        self._ack(Op.SET_PERMS, _checked_path(path) + NUL + body, path)

    def write_node(self, path: str, value: str | bytes, perms: Perms | None = None) -> None:
        """Write and, if given, set permissions: the pair libxl does for every device node."""
        self.write(path, value)
        if perms is not None:
            self.set_perms(path, perms)

    def get_domain_path(self, domid: int) -> str:
        return self._request(Op.GET_DOMAIN_PATH, f"{int(domid)}".encode() + NUL,
                             f"<domain {domid}>").decode()

    def _ack(self, op: int, payload: bytes, path: str, tolerated: int = 0) -> None:
        reply = self._request(op, payload, path, tolerated)
        if reply != b"OK":
            raise XenStoreError(errno.EPROTO, path, f"unexpected reply {reply[:40]!r}")


class Store(_Ops):
    """A connection to xenstored. Thread-safe: requests are multiplexed by the pyxs router."""

    def __init__(self, router: _Router, where: str, timeout: float = REQUEST_TIMEOUT) -> None:
        self._store = self
        self._router = router
        self.where = where
        self.timeout = timeout
        self._tokens = itertools.count()

    # -- connection -----------------------------------------------------------------------

    @classmethod
    def connect(cls, path: str | None = None, timeout: float = REQUEST_TIMEOUT) -> Store:
        """Connect to ``path`` (a unix socket or the xenbus device) or the usual places.

        ``$XENSTORED_PATH`` overrides the default like it does for libxenstore.
        """
        candidates = [path] if path else [
            *filter(None, [os.environ.get("XENSTORED_PATH")]), *SOCKET_PATHS, XENBUS_PATH]
        last: Exception | None = None
        for where in candidates:
            conn = (XenBusConnection(where) if where.startswith(("/dev/", "/proc/"))
                    else UnixSocketConnection(where))
            router = Router(conn)
            try:
                router.start()
            except PyXSError as e:
                last = e
                continue
            log.debug("connected to xenstored at %s", where)
            return cls(router, where, timeout)
        tried = ", ".join(candidates)
        raise XenStoreError(errno.ECONNREFUSED, tried, f"cannot reach xenstored ({last})")

    def close(self) -> None:
        self._router.terminate()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.where!r})"

    # -- the one place requests go through --------------------------------------------------

    def _call(self, op: int, payload: bytes, tx_id: int, path: str) -> bytes:
        return self._wait(self._send(op, payload, tx_id, path), op, path)

    def _send(self, op: int, payload: bytes, tx_id: int, path: str) -> _RVar:
        """Send one request without waiting for its answer (see :meth:`_wait`)."""
        if len(payload) > PAYLOAD_MAX:
            raise XenStoreError(errno.E2BIG, path, f"request larger than {PAYLOAD_MAX} bytes")
        packet = _Request(op, payload, next(_rq_ids) & 0xFFFFFFFF, tx_id)
        try:
            return self._router.send(packet)
        except PyXSError as e:
            raise XenStoreError(errno.ENOTCONN, path, f"connection lost ({e})") from None

    def _wait(self, rvar: _RVar, op: int, path: str) -> bytes:
        """The answer to a request :meth:`_send` sent."""
        deadline = time.monotonic() + self.timeout
        with rvar.condition:
            while rvar.target is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise XenStoreError(errno.ETIMEDOUT, path, "xenstored did not answer")
                if not rvar.condition.wait(min(left, 0.5)) and not self._router.thread.is_alive():
                    raise XenStoreError(errno.ECONNRESET, path, "connection to xenstored lost")
        reply = rvar.target
        if reply.op == Op.ERROR:
            raise XenStoreError(_errno_of(reply.payload.rstrip(NUL)), path)
        if reply.op != op:
            raise XenStoreError(errno.EPROTO, path, f"reply to op {reply.op}, expected {op}")
        return reply.payload.rstrip(NUL)

    # -- transactions ---------------------------------------------------------------------

    def transaction(self, attempts: int = 16) -> Transaction:
        """``with store.transaction() as t:`` — see the module docstring for EAGAIN handling."""
        return Transaction(self, attempts)

    def transact(self, fn: Callable[[Transaction], T], attempts: int = 16) -> T:
        """Run ``fn(t)`` in a transaction, re-running it from scratch on conflict."""
        for attempt in itertools.count(1):
            t = Transaction(self, attempts=1)
            try:
                with t:
                    result = fn(t)
                return result
            except XenStoreError as e:
                if e.errno != errno.EAGAIN or attempt >= attempts:
                    raise
                _backoff(attempt)
        raise AssertionError("unreachable")

    # -- watches --------------------------------------------------------------------------

    def watch(self, path: str, token: str | None = None, timeout: float | None = None,
              events: queue.Queue[tuple[bytes, bytes]] | None = None) -> Watch:
        """Watch ``path`` (and everything below) or a special ``@introduceDomain`` /
        ``@releaseDomain``. xenstored fires once at registration, then on every change.
        ``events``: a queue several watches share, so one thread waits for any of them
        (each event names its path and token)."""
        if isinstance(self._router.connection, XenBusConnection):
            raise XenStoreError(errno.EOPNOTSUPP, path, "watches need the xenstored socket")
        return Watch(self, path, token or f"xentool-{os.getpid()}-{next(self._tokens)}", timeout,
                     events)

    def fileno(self) -> int | None:
        """The connection's descriptor (None once closed): a process forked from a threaded
        one (xentoold's children) closes the connections of the threads it does not have."""
        conn = self._router.connection
        return conn.fileno() if conn.is_connected else None

    # -- domains --------------------------------------------------------------------------

    def introduce_domain(self, domid: int, mfn: int, evtchn: int) -> None:
        """Tell xenstored to serve ``domid`` through its ring at ``mfn``/``evtchn``."""
        if domid <= 0:
            raise XenStoreError(errno.EINVAL, f"<domain {domid}>", "cannot introduce dom0")
        self._ack(Op.INTRODUCE, f"{domid}\0{mfn}\0{evtchn}\0".encode(), f"<domain {domid}>")

    def release_domain(self, domid: int) -> None:
        self._ack(Op.RELEASE, f"{domid}\0".encode(), f"<domain {domid}>")

    def is_domain_introduced(self, domid: int) -> bool:
        reply = self._request(Op.IS_DOMAIN_INTRODUCED, f"{domid}\0".encode(),
                              f"<domain {domid}>")
        return reply == b"T"

    def resume_domain(self, domid: int) -> None:
        self._ack(Op.RESUME, f"{domid}\0".encode(), f"<domain {domid}>")


def _backoff(attempt: int) -> None:
    import random  # only after a conflict: not at import (start-up cost of one-shot commands)

    # Exponential with full jitter, capped low: xenstore conflicts clear in milliseconds.
    time.sleep(random.uniform(0, min(0.2, 0.002 * 2 ** attempt)))


@dataclass
class _Record:
    op: int
    payload: bytes
    path: str
    outcome: bytes | int  # reply payload, or the errno it failed with
    tolerated: int = 0


def _outcome(e: XenStoreError, tolerated: int) -> bytes | int:
    """What the caller observed: a tolerated error looks like success to it."""
    err = e.errno or errno.EIO
    return b"OK" if tolerated and err == tolerated else err


class Transaction(_Ops):
    """One XenStore transaction; use as a context manager (see the module docstring).

    Not for sharing between threads: give each thread its own ``store.transaction()``.
    """

    def __init__(self, store: Store, attempts: int = 16) -> None:
        self._store = store
        self.attempts = max(1, attempts)
        self._tx_id = 0
        self._log: list[_Record] = []
        # Requests sent and not yet answered, while pipelined(): (op, payload, path,
        # tolerated errno, reply to come).
        self._pending: list[tuple[int, bytes, str, int, _RVar]] | None = None

    def __enter__(self) -> Transaction:
        self._log = []
        self._tx_id = self._start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self._abort()
            return
        if self._end(commit=True):
            return
        for attempt in range(1, self.attempts):
            _backoff(attempt)
            if self._replay():
                return
        raise XenStoreError(errno.EAGAIN, self._paths(),
                            f"transaction still conflicting after {self.attempts} attempts")

    @contextlib.contextmanager
    def pipelined(self) -> Iterator[None]:
        """Inside the block, writes, mkdirs, removals and permission changes are sent
        without waiting for each answer: xenstored answers a connection's requests in
        order, so N of them cost about one round trip instead of N.  The answers are
        collected before any request that returns data, every ``PIPELINE_WINDOW``
        requests, and at the end of the block; the first failure is raised then (the
        requests after it were still sent: in a transaction, the exception aborts it)."""
        if self._pending is not None:
            yield
            return
        self._pending = []
        try:
            yield
            self._collect()
        finally:
            self._pending = None

    def _collect(self) -> None:
        pending, self._pending = self._pending or [], []
        failure: XenStoreError | None = None
        for op, payload, path, tolerated, rvar in pending:
            try:
                self._logged(op, payload, path, tolerated,
                             functools.partial(self._acked, rvar, op, path))
            except XenStoreError as e:
                if not (tolerated and e.errno == tolerated):
                    failure = failure or e
        if failure is not None:
            raise failure

    def _acked(self, rvar: _RVar, op: int, path: str) -> bytes:
        reply = self._store._wait(rvar, op, path)
        if reply != b"OK":
            raise XenStoreError(errno.EPROTO, path, f"unexpected reply {reply[:40]!r}")
        return reply

    def _logged(self, op: int, payload: bytes, path: str, tolerated: int,
                answer: Callable[[], bytes]) -> bytes:
        """The reply ``answer`` gives to a request, logged as the caller saw it (a reply or
        an errno), so that a replay after a conflict can tell whether it changed."""
        try:
            reply = answer()
        except XenStoreError as e:
            self._log.append(_Record(op, payload, path, _outcome(e, tolerated), tolerated))
            raise
        self._log.append(_Record(op, payload, path, reply, tolerated))
        return reply

    def _request(self, op: int, payload: bytes, path: str, tolerated: int = 0) -> bytes:
        if not self._tx_id:
            raise XenStoreError(errno.EINVAL, path, "transaction used outside its 'with' block")
        if self._pending is not None:
            if op in _ACKED_OPS:
                rvar = self._store._send(op, payload, self._tx_id, path)
                self._pending.append((op, payload, path, tolerated, rvar))
                if len(self._pending) >= PIPELINE_WINDOW:
                    self._collect()
                return b"OK"
            self._collect()
        return self._logged(op, payload, path, tolerated, functools.partial(
            self._store._call, op, payload, self._tx_id, path))

    def _start(self) -> int:
        reply = self._store._call(Op.TRANSACTION_START, NUL, 0, "<transaction>")
        if not reply.isdigit() or int(reply) == 0:
            raise XenStoreError(errno.EPROTO, "<transaction>", f"bad transaction id {reply!r}")
        return int(reply)

    def _end(self, commit: bool) -> bool:
        tx, self._tx_id = self._tx_id, 0
        try:
            self._store._call(Op.TRANSACTION_END, b"T\0" if commit else b"F\0", tx,
                              "<transaction>")
        except XenStoreError as e:
            if commit and e.errno == errno.EAGAIN:
                return False
            raise
        return True

    def _abort(self) -> None:
        if self._tx_id:
            try:
                self._end(commit=False)
            except XenStoreError as e:
                log.debug("aborting transaction: %s", e)

    def _replay(self) -> bool:
        """Redo the recorded requests in a new transaction; commit if all answers match."""
        tx = self._start()
        for rec in self._log:
            try:
                got: bytes | int = self._store._call(rec.op, rec.payload, tx, rec.path)
            except XenStoreError as e:
                got = _outcome(e, rec.tolerated)
            if got != rec.outcome:
                self._store._call(Op.TRANSACTION_END, b"F\0", tx, "<transaction>")
                raise XenStoreError(errno.EAGAIN, rec.path,
                                    "changed by someone else during the transaction")
        self._tx_id = tx
        return self._end(commit=True)

    def _paths(self) -> str:
        return ", ".join(dict.fromkeys(r.path for r in self._log)) or "<transaction>"


class Watch:
    """A registered watch: iterate for ``WatchEvent``s; ``XenStoreError(ETIMEDOUT)`` when the
    deadline (``timeout`` seconds from creation) passes. Unregisters on ``close``/exit."""

    def __init__(self, store: Store, path: str, token: str, timeout: float | None,
                 events: queue.Queue[tuple[bytes, bytes]] | None = None) -> None:
        self._store = store
        self.path = path
        self.token = token
        self.events: queue.Queue[tuple[bytes, bytes]] = queue.Queue() if events is None \
            else events
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self._raw = _checked_path(path, watch=True)
        self._btoken = token.encode()
        store._router.subscribe(self._btoken, self)
        try:
            store._ack(Op.WATCH, self._raw + NUL + self._btoken + NUL, path)
        except BaseException:
            store._router.unsubscribe(self._btoken, self)
            raise
        self._active = True

    def get(self, timeout: float | None = None) -> WatchEvent | None:
        """The next event, or ``None`` after ``timeout`` seconds (or at the deadline)."""
        if self.deadline is not None:
            left = max(0.0, self.deadline - time.monotonic())
            timeout = left if timeout is None else min(timeout, left)
        while True:
            if not self._store._router.thread.is_alive() and self.events.empty():
                raise XenStoreError(errno.ECONNRESET, self.path, "connection to xenstored lost")
            try:
                # Wake up now and then to notice a dead router even without a deadline.
                step = 0.5 if timeout is None else min(timeout, 0.5)
                ev = self.events.get(timeout=step)
            except queue.Empty:
                if timeout is not None:
                    timeout -= step
                    if timeout <= 0:
                        return None
                continue
            path, token = ev
            return WatchEvent(path.decode("utf-8", "replace"), token.decode("utf-8", "replace"))

    def __iter__(self) -> Iterator[WatchEvent]:
        return self

    def __next__(self) -> WatchEvent:
        ev = self.get()
        if ev is None:
            raise XenStoreError(errno.ETIMEDOUT, self.path, "timed out waiting for a change")
        return ev

    def close(self) -> None:
        if not self._active:
            return
        self._active = False
        with contextlib.suppress(ValueError):  # not subscribed (any more)
            self._store._router.unsubscribe(self._btoken, self)
        if self._store._router.thread.is_alive():
            try:
                self._store._ack(Op.UNWATCH, self._raw + NUL + self._btoken + NUL, self.path)
            except XenStoreError as e:
                log.debug("unwatch %s: %s", self.path, e)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "Access",
    "InvalidPermission",
    "Perm",
    "Perms",
    "Store",
    "Transaction",
    "Watch",
    "WatchEvent",
    "XenStoreError",
]
