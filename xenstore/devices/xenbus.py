"""The xenbus state machine (xen/include/public/io/xenbus.h) and waiting for states.

Waiting uses a XenStore watch: xenstored fires it once at registration, so the current
state is seen without a separate read, and then on every change; no sleep loops.
State nodes of frontends are guest-writable: a value that is not a small decimal
number is treated as "unknown" and never raises out of here.
"""

from __future__ import annotations

import enum
import errno
import logging
import time

from xenstore.client import Store
from xenstore.errors import XenStoreError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Iterable

log = logging.getLogger(__name__)


class XenbusState(enum.IntEnum):
    UNKNOWN = 0
    INITIALISING = 1
    INIT_WAIT = 2
    INITIALISED = 3
    CONNECTED = 4
    CLOSING = 5
    CLOSED = 6
    RECONFIGURING = 7
    RECONFIGURED = 8

    @classmethod
    def parse(cls, raw: str | bytes | None) -> XenbusState | None:
        """Strictly parse a state node's value; ``None`` for anything that is not a state."""
        if raw is None:
            return None
        if isinstance(raw, bytes):
            raw = raw.decode("ascii", "replace")
        if not (1 <= len(raw) <= 2 and raw.isascii() and raw.isdigit()):
            return None
        try:
            return cls(int(raw))
        except ValueError:
            return None


def read_state(store: Store, path: str) -> XenbusState | None:
    """The state at ``path``; ``None`` when missing or garbage."""
    try:
        return XenbusState.parse(store.read_bytes(path))
    except XenStoreError as e:
        if e.errno == errno.ENOENT:
            return None
        raise


def wait_for_state(store: Store, path: str, states: Iterable[XenbusState],
                   timeout: float, *, missing_ok: bool = False) -> XenbusState | None:
    """Block until the node at ``path`` holds one of ``states``; return it.

    Raises ``XenStoreError(ETIMEDOUT)`` (naming the last state seen) after ``timeout``
    seconds and ``XenStoreError(ENOENT)`` if the node disappears, unless ``missing_ok``,
    in which case ``None`` is returned (a removed backend counts as closed).
    """
    wanted = frozenset(states)
    last: XenbusState | str | None = "never read"
    deadline = time.monotonic() + timeout
    with store.watch(path) as w:
        while True:
            try:
                raw: bytes | None = store.read_bytes(path)
            except XenStoreError as e:
                if e.errno != errno.ENOENT:
                    raise
                raw = None
            if raw is None:
                if missing_ok:
                    return None
                raise XenStoreError(errno.ENOENT, path, "removed while waiting for "
                                    + _names(wanted))
            state = XenbusState.parse(raw)
            if state in wanted:
                return state
            if state != last:
                log.debug("%s: state %s, waiting for %s", path,
                          state.name if state is not None else repr(raw[:16]), _names(wanted))
            last = state
            left = deadline - time.monotonic()
            if left <= 0 or w.get(timeout=left) is None:
                seen = last.name if isinstance(last, XenbusState) else "garbage"
                raise XenStoreError(errno.ETIMEDOUT, path,
                                    f"still {seen} after {timeout:g}s, wanted {_names(wanted)}")


def _names(states: Iterable[XenbusState]) -> str:
    return "/".join(s.name for s in sorted(states))
