"""Telling systemd how a daemon is doing (sd_notify(3)), when it runs under systemd.

The units in ``contrib/systemd`` are ``Type=notify`` with a watchdog: the daemons say
``READY=1`` once they serve, and ``WATCHDOG=1`` from their main loop.  The messages go
through python3-systemd's ``systemd.daemon.notify``; without that package (a pip install,
a daemon run by hand) every call here does nothing, so xentool runs the same without it.
"""

from __future__ import annotations

import logging
import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

_notify: Callable[[str], object] | bool | None = False  # False: not looked up yet
_last_ping = 0.0


def _sender() -> Callable[[str], object] | None:
    global _notify
    if _notify is False:
        _notify = None
        if os.environ.get("NOTIFY_SOCKET"):
            try:
                from systemd.daemon import notify  # type: ignore[import-not-found]
            except ImportError:
                pass
            else:
                _notify = notify
    return _notify if callable(_notify) else None


def ready(status: str = "") -> None:
    """Tell systemd the daemon serves now (``READY=1``), with an optional status line."""
    send = _sender()
    if send is not None:
        send("READY=1" + (f"\nSTATUS={status}" if status else ""))


def alive() -> None:
    """Ping the watchdog (``WATCHDOG=1``); called from a main loop, sent at most once a
    second so a busy loop costs nothing."""
    global _last_ping
    send = _sender()
    if send is None:
        return
    now = time.monotonic()
    if now - _last_ping >= 1.0:
        _last_ping = now
        send("WATCHDOG=1")


def stopping() -> None:
    """Tell systemd the daemon is shutting down on purpose (``STOPPING=1``)."""
    send = _sender()
    if send is not None:
        send("STOPPING=1")


def forget() -> None:
    """Forget what was looked up: for a process forked from a daemon to run a command
    with another environment (xentoold), which must not notify the daemon's systemd."""
    global _notify, _last_ping
    _notify = False
    _last_ping = 0.0


def stderr_is_journal() -> bool:
    """Whether stderr is the journal's stream: systemd.exec(5) puts its device and inode
    in ``JOURNAL_STREAM``."""
    try:
        dev, ino = (int(n) for n in os.environ["JOURNAL_STREAM"].split(":"))
        st = os.fstat(2)
    except (KeyError, ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


#: Syslog priority of each log level in the journal: errors ``err``, warnings ``warning``,
#: what a daemon did (INFO) ``notice``, detail (DEBUG) ``debug``.
JOURNAL_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4,
                    logging.INFO: 5, logging.DEBUG: 7}


class JournalPriorityFormatter(logging.Formatter):
    """Prefixes each line with sd-daemon(3)'s ``<N>``, which journald reads as its
    priority (``SyslogLevelPrefix=yes``, the default)."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{JOURNAL_PRIORITY.get(record.levelno, 6)}>"
        return prefix + super().format(record).replace("\n", "\n" + prefix)


def journal_priorities() -> None:
    """When stderr is the journal, give the root logger's handlers priority prefixes
    (keeping their format); otherwise leave logging alone."""
    if not stderr_is_journal():
        return
    for handler in logging.getLogger().handlers:
        fmt = handler.formatter
        handler.setFormatter(JournalPriorityFormatter(
            fmt._fmt if fmt is not None else None,
            fmt.datefmt if fmt is not None else None))
