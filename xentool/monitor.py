"""One monitor for all domains: applies on_poweroff/on_reboot/on_crash/on_watchdog actions.

xl forks a daemon per domain that waits for its death; a logout or a killed shell can
orphan those and leave domains that never restart or never get cleaned up.  xentool runs
one process for all domains: ``xentool monitor`` as a systemd service (see
``contrib/systemd``), or, on a host without it, a transient one that ``create`` starts
when none runs and that leaves once no domain with a record is left (``create -F``
watches its one domain in the foreground instead; ``create -e`` records nothing).  It:

1. watches ``@releaseDomain`` (xenstored fires it when a domain shuts down or dies) and
   rescans every few seconds anyway;
2. for every domain that has shut down and has a *record* (saved by ``create``), maps the
   shutdown reason to the configured action, like xl's ``handle_domain_death``:
   poweroff -> on_poweroff, reboot -> on_reboot, crash -> on_crash, watchdog ->
   on_watchdog, soft_reset -> on_soft_reset, suspend -> nothing (a save is in progress),
   unknown -> destroy;
3. applies it under the domain's lock: ``destroy``; ``restart`` (destroy, then create again
   from the saved configuration with the same uuid); ``rename-restart`` (keep the dead
   domain under ``<name>-<UTC time>`` with a new uuid, then create again); ``preserve``
   (leave it); ``coredump-*`` (an ELF core to ``/var/lib/xen/dump/<name>`` as libxl
   writes it, then destroy/restart; a failed dump is logged and the action goes on);
   ``soft-reset`` (libxl cannot soft-reset a PV guest, and xl then destroys it: so do we).
4. Restarts back off against crash loops: a domain that dies less than ``stable_after``
   seconds after it was (re)started waits 1, 2, 4, ... (at most ``max_delay``) seconds
   before the next start, and after ``max_fast_restarts`` such deaths in a row it is left
   destroyed with an error in the log.  A domain destroyed by someone else before the
   monitor got to it is not restarted: the operator wanted it gone.
5. One record or one error does not stop it: a record file that cannot be read or is not
   valid is logged once (at error level) and its domain left alone until it is mended; a
   domain counts as handled only once its action succeeded, so a transient error (its
   lock timed out, xenstored was busy) is retried on the next scan, ``MAX_ATTEMPTS``
   times at most; and when xenstored goes away the loop reconnects with back-off
   (:func:`run`) and its next scan catches up.

Records (:mod:`xentool.records`) say how each domain was created and what its actions are;
records of domains that no longer exist and have no pending restart are removed after
``RECORD_GRACE`` seconds.

Domains without a record (created by ``xl``, whose own daemon handles them) are ignored.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from xenstore.paths import domain_path
from xentool import service
from xentool.errors import XentoolError
from xentool.logs import get_logger
from xentool.records import (
    REASON_NAMES,
    DomainRecord,
    RecordError,
    all_records,
    load_domain_config,
    record_path,
    remove_domain_config,
    write_record,
)
from xentool.state import records_dir, run_dir

if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from types import FrameType

    from domain_builder.xenctrl import DomainInfo
    from xenstore.client import Store, Transaction
    from xentool.locks import FileLock
    from xentool.session import Session

log = get_logger(__name__)

#: Records of vanished domains are kept this long (a create may save before it builds).
RECORD_GRACE = 600.0
#: Rescan this often even without a XenStore event.
POLL_S = 5.0
#: Attempts at one domain's action before the monitor gives up on it.
MAX_ATTEMPTS = 5
#: Reconnecting to xenstored: the first wait, doubled while it fails, up to the second.
RECONNECT_S = 1.0
RECONNECT_MAX_S = 60.0

# -- policy (pure) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What to do with a shut-down domain, in order."""

    coredump: bool
    then: str  # "destroy" | "restart" | "rename-restart" | "preserve"


def plan_for(action: str) -> Plan:
    if action.startswith("coredump-"):
        return Plan(True, action.removeprefix("coredump-"))
    if action == "soft-reset":
        # libxl_domain_soft_reset refuses PV guests, and xl then destroys the domain.
        return Plan(False, "destroy")
    return Plan(False, action)


@dataclass(frozen=True)
class Backoff:
    """Crash-loop policy for restarts (seconds)."""

    stable_after: float = 60.0
    base: float = 1.0
    factor: float = 2.0
    max_delay: float = 300.0
    max_fast_restarts: int = 10

    def next(self, uptime: float, fast_before: int) -> tuple[float | None, int]:
        """(delay before the restart or None to give up, quick deaths in a row now)."""
        if uptime >= self.stable_after:
            return 0.0, 0
        fast = fast_before + 1
        if fast > self.max_fast_restarts:
            return None, fast
        return min(self.base * self.factor ** (fast - 1), self.max_delay), fast


def preserved_name(name: str, now: float) -> str:
    """xl's rename-restart suffix: ``-%Y%m%dT%H%MZ`` in UTC."""
    return name + time.strftime("-%Y%m%dT%H%MZ", time.gmtime(now))


def restart_argv(rec: DomainRecord, cfg_file: str, create_cmd: Sequence[str]) -> list[str]:
    """The command that re-creates the domain: same config, overrides and uuid."""
    return [*create_cmd, cfg_file, *rec.overrides, f'uuid="{rec.uuid}"']


def default_create_cmd() -> list[str]:
    # Not -e: the domain keeps its record; the monitor that restarts it holds the monitor
    # lock, so the create starts no second monitor.
    return [sys.executable, "-m", "xentool", "create", "-q"]


# -- side effects, behind a protocol so the loop is tested with fakes ---------------------------


class DomainState(Protocol):
    """The part of ``domain_builder.xenctrl.DomainInfo`` the monitor reads."""

    @property
    def domid(self) -> int: ...

    @property
    def uuid(self) -> str: ...

    @property
    def shutdown(self) -> bool: ...

    @property
    def dying(self) -> bool: ...

    @property
    def shutdown_reason(self) -> int | None: ...


class Ops(Protocol):
    def domains(self) -> Sequence[DomainState]: ...

    def destroy(self, domid: int) -> bool: ...  # False: the domain was already gone

    def preserve(self, domid: int, new_name: str, new_uuid: str) -> None: ...

    def core_dump(self, domid: int, path: str) -> None: ...

    def create(self, rec: DomainRecord) -> None: ...

    def lock(self, domid: int) -> AbstractContextManager[object]: ...


@dataclass
class Monitor:
    """The decision loop; ``scan()`` handles everything that is due, ``run()`` loops."""

    ops: Ops
    backoff: Backoff = field(default_factory=Backoff)
    clock: Callable[[], float] = time.time
    handled: set[tuple[int, str]] = field(default_factory=set)
    #: Handle only the domain with this uuid (``create -F``, like xl's).
    only: str | None = None
    #: Stop once no domain with a record is alive and no restart is due.
    transient: bool = False
    #: Domains (by uuid) left alone: a per-domain watcher handles them.
    skip: Callable[[str], bool] = lambda uuid: False
    #: Attempts at one domain's action before giving up on it.
    max_attempts: int = MAX_ATTEMPTS
    #: Failed attempts so far, by (domid, uuid): retried on the next scan.
    failures: dict[tuple[int, str], int] = field(default_factory=dict)
    #: Record files known to be bad (logged once each, until they read fine again).
    bad_records: set[str] = field(default_factory=set)
    #: Domains (by uuid) seen alive: once gone (destroyed by xl, say), their records are
    #: forgotten at once, not after RECORD_GRACE (which covers creates still under way).
    seen_alive: set[str] = field(default_factory=set)
    #: The xl.cfg text ``config-update`` stored for (domid, uuid), if any.
    updated_config: Callable[[int, str], str | None] = \
        field(default=lambda domid, uuid: _updated_config(domid, uuid))

    def _mine(self, uuid: str) -> bool:
        return uuid == self.only if self.only is not None else not self.skip(uuid)

    def _bad_record(self, e: RecordError) -> None:
        if str(e.path) not in self.bad_records:
            self.bad_records.add(str(e.path))
            log.error("%s (its domain is left alone until the record is mended)", e)

    def _load(self, uuid: str) -> tuple[bool, DomainRecord | None]:
        """(whether the record of ``uuid`` could be read, the record or None if none)."""
        try:
            rec = load_domain_config(uuid)
        except RecordError as e:
            self._bad_record(e)
            return False, None
        self.bad_records.discard(str(record_path(uuid)))
        return True, rec

    def _records(self) -> list[DomainRecord]:
        if self.only is None:
            bad: set[str] = set()

            def on_error(e: RecordError) -> None:
                bad.add(str(e.path))
                self._bad_record(e)

            recs = all_records(on_error)
            self.bad_records = bad  # forget the mended and removed ones
            return recs
        _, rec = self._load(self.only)
        return [] if rec is None else [rec]

    def finished(self) -> bool:
        """Whether a watcher of one domain, or a transient monitor, has no more work: no
        domain of its records is alive and no restart is due.  The service never has."""
        if self.only is None and not self.transient:
            return False
        live = {i.uuid for i in self.ops.domains()}
        recs = self._records()
        if self.only is not None and str(record_path(self.only)) in self.bad_records:
            return self.only not in live  # unreadable: watch the domain while it lives
        return all(r.uuid not in live and r.restart_at is None for r in recs)

    def scan(self) -> None:
        infos = [i for i in self.ops.domains() if i.domid != 0 and self._mine(i.uuid)]
        live = {i.domid for i in infos}
        self.seen_alive.update(i.uuid for i in infos if not i.dying)
        self.handled = {k for k in self.handled if k[0] in live}
        self.failures = {k: n for k, n in self.failures.items() if k[0] in live}
        for info in infos:
            key = (info.domid, info.uuid)
            if not info.shutdown or info.dying or key in self.handled:
                continue
            readable, rec = self._load(info.uuid)
            if not readable:
                continue  # logged once; handled when the record is mended
            if rec is None:
                log.debug("domain %d has no xentool record: not ours", info.domid)
                self.handled.add(key)
                continue
            try:
                self.handle(info, rec)
            except Exception as e:  # one bad domain must not stop the monitor
                self._failed(key, rec, e)
                continue
            self.handled.add(key)  # only now: a failed action is tried again
            self.failures.pop(key, None)
        # Ask again: handling destroyed some, and a preserved domain has a new uuid.
        live_uuids = {i.uuid for i in self.ops.domains()}
        self.restart_due(live_uuids)
        self.collect(live_uuids | {i.uuid for i in self.ops.domains()})

    def _failed(self, key: tuple[int, str], rec: DomainRecord, e: Exception) -> None:
        """Handling domain ``key`` failed: retry on the next scan, or give up."""
        n = self.failures.get(key, 0) + 1
        if n < self.max_attempts:
            self.failures[key] = n
            log.error("domain %d (%s): handling its shutdown failed (attempt %d of %d, "
                      "retrying on the next scan): %s", key[0], rec.name, n,
                      self.max_attempts, e)
            return
        self.failures.pop(key, None)
        self.handled.add(key)
        log.error("domain %d (%s): handling its shutdown failed %d times, giving up: it "
                  "stays as it is until someone destroys it: %s", key[0], rec.name, n, e)

    def handle(self, info: DomainState, rec: DomainRecord) -> None:
        reason = info.shutdown_reason
        action = rec.action(reason)
        rname = REASON_NAMES.get(reason if reason is not None else -1, f"code {reason}")
        if action is None:
            log.info("domain %d (%s) has suspended: nothing to do", info.domid, rec.name)
            return
        plan = plan_for(action)
        log.info("domain %d (%s) shut down (%s): action %s", info.domid, rec.name, rname,
                 action)
        if plan.coredump:
            from xentool.hostops import core_dump_path

            path = core_dump_path(rec.name, info.domid)
            log.info("dumping core to %s", path)
            try:
                self.ops.core_dump(info.domid, path)
            except Exception as e:  # as xl: a failed dump does not stop the action
                log.error("core dump failed: %s", e)
        if plan.then == "preserve":
            return
        if plan.then != "destroy":
            rec = self._take_updated_config(info, rec)
        now = self.clock()
        self.seen_alive.discard(info.uuid)  # gone by our hand: the record says what next
        delay: float | None = None
        if plan.then != "destroy":
            delay, fast = self.backoff.next(now - rec.started_at, rec.fast_restarts)
        try:
            with self.ops.lock(info.domid):
                if plan.then != "destroy":
                    if load_domain_config(rec.uuid) is None:
                        # `xentool destroy` held the lock: the domain and its record are
                        # gone, and writing the record again would resurrect it
                        log.info("domain %d (%s) was destroyed by someone else meanwhile: "
                                 "not restarting it", info.domid, rec.name)
                        return
                    # Recorded before the domain goes: a monitor killed between the
                    # destroy and this write would leave the domain gone and its restart
                    # forgotten.  Killed before the destroy, the next monitor finds the
                    # domain still shut down.
                    write_record(dataclasses.replace(
                        rec, fast_restarts=fast,
                        restart_at=None if delay is None else now + delay))
                if plan.then == "rename-restart":
                    keep = preserved_name(rec.name, now)
                    log.info("preserving domain %d as %s", info.domid, keep)
                    self.ops.preserve(info.domid, keep, str(uuidlib.uuid4()))
                elif not self.ops.destroy(info.domid):
                    log.info("domain %d (%s) was destroyed by someone else meanwhile: not "
                             "%sing it", info.domid, rec.name,
                             "restart" if plan.then != "destroy" else "destroy")
                    if plan.then != "destroy":
                        write_record(rec)  # no restart is due after all
                    return
        except Exception:
            if plan.then != "destroy":
                write_record(rec)  # not done: the next scan tries again from the start
            raise
        if plan.then == "destroy":
            self._forget(rec)  # gone for good, by our hand: nothing left to act on
            return
        if delay is None:
            log.error("domain %s died %d times in a row less than %gs after its start: "
                      "not restarting it again", rec.name, fast - 1,
                      self.backoff.stable_after)
            return
        if delay:
            log.warning("domain %s restarts too quickly (%d in a row): next start in %gs",
                        rec.name, fast, delay)

    def _take_updated_config(self, info: DomainState, rec: DomainRecord) -> DomainRecord:
        """A restart creates the domain from what ``config-update`` stored, as xl's
        reload_domain_config does: read before the destroy removes it, kept in the
        record (overrides included in the text) for this and later restarts."""
        text = self.updated_config(info.domid, info.uuid)
        if text is None:
            return rec
        log.info("domain %d (%s): \"xl\" configuration found, using it", info.domid,
                 rec.name)
        rec = dataclasses.replace(rec, config_text=text, overrides=())
        write_record(rec)
        return rec

    def restart_due(self, live_uuids: set[str]) -> None:
        now = self.clock()
        for rec in self._records():
            if rec.restart_at is None or rec.restart_at > now or not self._mine(rec.uuid):
                continue
            try:
                # Cleared first: a create that fails (or kills us) must not loop.
                write_record(dataclasses.replace(rec, restart_at=None, started_at=now))
                if rec.uuid in live_uuids:
                    log.warning("domain %s (%s) is running again already: not restarting "
                                "it", rec.name, rec.uuid)
                    continue
                log.info("restarting domain %s", rec.name)
                self.ops.create(rec)
                log.info("restarted domain %s", rec.name)
            except Exception as e:  # one failed restart must not stop the others
                log.error("restarting domain %s failed: %s", rec.name, e)

    def collect(self, live_uuids: set[str]) -> None:
        now = self.clock()
        kept = set(live_uuids)
        for rec in self._records():
            gone = (rec.uuid not in live_uuids and rec.restart_at is None
                    and self._mine(rec.uuid)
                    and (rec.uuid in self.seen_alive
                         or now - max(rec.saved_at, rec.started_at) > RECORD_GRACE))
            if gone and self._forget(rec):
                continue
            kept.add(rec.uuid)
        self.seen_alive &= kept

    def _forget(self, rec: DomainRecord) -> bool:
        """Remove the record of a domain that is gone; False if it could not be."""
        log.debug("forgetting domain %s (%s): gone", rec.name, rec.uuid)
        try:
            remove_domain_config(rec.uuid)
            return True
        except OSError as e:
            log.error("forgetting domain %s (%s): %s", rec.name, rec.uuid, e)
            return False

    def next_wakeup(self) -> float:
        """Seconds until the earliest pending restart (or POLL_S)."""
        due = [r.restart_at for r in self._records() if r.restart_at is not None]
        if not due:
            return POLL_S
        return max(0.0, min(POLL_S, min(due) - self.clock()))


def _updated_config(domid: int, uuid: str) -> str | None:
    from xentool.retrieve import updated_config_text

    return updated_config_text(domid, uuid)


class XenOps:
    """The real side effects (hypervisor, XenStore, ``xentool create``/``destroy``)."""

    def __init__(self, session: Session, create_cmd: Sequence[str] | None = None) -> None:
        self.s = session
        self.create_cmd = list(create_cmd or default_create_cmd())

    def domains(self) -> list[DomainInfo]:
        return self.s.xc.domains()

    def lock(self, domid: int) -> FileLock:
        from xentool.locks import domain_lock

        return domain_lock(domid)

    def destroy(self, domid: int) -> bool:
        from xentool.destroy import destroy_domain
        from xentool.errors import DomainNotFound

        try:
            # The record stays: the monitor decides what happens to it next.
            destroy_domain(self.s, domid, forget=False)
        except DomainNotFound:
            return False
        return True

    def core_dump(self, domid: int, path: str) -> None:
        """Write the domain's core where libxl would; the directory is made if missing
        (private: a core holds the guest's memory)."""
        from xentool.hostops import dump_core

        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        dump_core(self.s, domid, path)

    def preserve(self, domid: int, new_name: str, new_uuid: str) -> None:
        """libxl_domain_preserve: new uuid and /vm path, renamed, left shut down."""
        from xentool.control import rename_domain

        self.s.xc.set_handle(domid, uuidlib.UUID(new_uuid).bytes)
        dom = domain_path(domid)
        vm = f"/vm/{new_uuid}"

        def move(t: Transaction) -> None:
            old_vm = t.get(f"{dom}/vm")
            t.mkdir(vm)
            t.write(f"{vm}/uuid", new_uuid)
            t.write(f"{dom}/vm", vm)
            if old_vm and old_vm != vm:
                t.rm(old_vm, missing_ok=True)

        self.s.xs.transact(move)
        # The monitor holds the domain lock already; taking the create lock now would
        # invert the lock order.  The time-stamped name is unique, and checked anyway.
        rename_domain(self.s, domid, new_name, lock=False)

    def create(self, rec: DomainRecord) -> None:
        cfg = records_dir() / f"{rec.uuid}.cfg"
        cfg.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        cfg.write_text(rec.config_text)
        argv = restart_argv(rec, str(cfg), self.create_cmd)
        cwd = rec.cwd if os.path.isdir(rec.cwd) else "/"
        log.debug("running %s", shlex.join(argv))
        # Its errors to a file, not a pipe, and in a session of its own: a monitor killed
        # meanwhile (SIGKILL, or a signal to its group) must not kill the create by a
        # broken pipe or the signal, which would roll the domain back and lose it.
        with tempfile.TemporaryFile("w+") as err:
            r = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=err, timeout=600,
                               start_new_session=True)
            err.seek(0)
            stderr = err.read()
        if r.returncode != 0:
            detail = (stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
            raise XentoolError(f"{shlex.join(argv)}: {detail}")


def run(monitor: Monitor, connect: Callable[[], Store], stop: threading.Event, *,
        reconnect_delay: float = RECONNECT_S, max_reconnect_delay: float = RECONNECT_MAX_S,
        sleep: Callable[[float], object] | None = None) -> None:
    """Scan on every ``@releaseDomain`` event, every POLL_S and when a restart is due, until
    ``stop`` is set or a watcher (or transient monitor) is finished.

    ``connect`` returns a fresh connection to xenstored (:meth:`Session.reopen_xs`).  When
    it fails, or the watch breaks (xenstored restarted, the connection was lost), the error
    is logged and ``run`` connects again after ``reconnect_delay`` seconds, doubled while
    it keeps failing up to ``max_reconnect_delay``; the scan after it catches up on what
    happened meanwhile.  ``sleep`` waits between attempts (default ``stop.wait``: a stop
    request cuts it short).  A scan that fails is logged and tried again.
    """
    from pyxs.exceptions import PyXSError

    wait = stop.wait if sleep is None else sleep
    delay = reconnect_delay
    while not stop.is_set():
        try:
            with connect().watch("@releaseDomain") as w:
                delay = reconnect_delay  # connected and watching again
                while not stop.is_set():
                    _scan(monitor)
                    if monitor.finished():
                        return
                    w.get(timeout=monitor.next_wakeup())
                    # Events come in bursts (shutdown, then release): let them settle.
                    while w.get(timeout=0.05) is not None:
                        pass
        except (OSError, PyXSError) as e:  # XenStoreError is an OSError
            log.error("monitor: lost the connection to xenstored (%s): reconnecting in %gs",
                      e, delay)
            wait(delay)
            delay = min(delay * 2, max_reconnect_delay)


def _scan(monitor: Monitor) -> None:
    service.alive()  # a scan at least every POLL_S: the unit's watchdog is fed here
    try:
        monitor.scan()
    except Exception as e:  # e.g. listing the domains failed: the next scan tries again
        log.error("monitor: scan failed: %s", e)



def _watch_lock(uuid: str) -> FileLock:
    from xentool.locks import FileLock

    return FileLock(run_dir() / f"watch-{uuidlib.UUID(uuid)}.lock", what=f"watcher of {uuid}",
                    timeout=0)


#: How long a transient monitor waits for the monitor lock before it concludes that another
#: monitor runs (checks by ``create`` hold it for milliseconds).
TRANSIENT_LOCK_WAIT = 3.0


def _monitor_lock() -> FileLock:
    from xentool.locks import FileLock

    return FileLock(run_dir() / "monitor.lock", what="monitor", timeout=0)


def _busy(lock: FileLock) -> bool:
    """Whether another process holds ``lock`` (tried without waiting)."""
    from xentool.locks import LockTimeout

    try:
        lock.acquire()
    except LockTimeout:
        return True
    lock.release()
    return False


def _watched(uuid: str) -> bool:
    """Whether a foreground watcher (``create -F``) handles domain ``uuid``."""
    lock = _watch_lock(uuid)
    return lock.path.exists() and _busy(lock)


def host_monitor_running() -> bool:
    """Whether a monitor for all domains (the service, or one ``create`` started) runs."""
    return _busy(_monitor_lock())


#: How long ``create`` waits for the monitor it started (several creates at once under
#: emulation take long to start Python).
SPAWN_WAIT = 120.0


def spawn_monitor(*, wait: bool = False, timeout: float = SPAWN_WAIT) -> int | None:
    """Make sure a monitor handles the domains' on_* actions, as the process ``xl create``
    forks does: start a transient one in the background unless one runs already.  It
    exits once no domain with a record is left.  Its log is
    ``/var/log/xen/xentool-monitor.log``.  Returns its pid, or None if one ran already.

    Call it after the domain's record is saved: a transient monitor that is about to exit
    looks at the records once more after letting its lock go (see :func:`serve`), so one
    of the two always sees the other.  Parallel creates take turns (a spawn lock), so one
    of them starts the monitor and the others find it running.  ``wait``: return only once
    a monitor holds its lock (it then scans before it waits for events), so a guest
    unpaused after this call is handled however soon it dies; a monitor that does not come
    up in ``timeout`` seconds is an error.
    """
    from xentool.locks import FileLock

    with FileLock(run_dir() / "monitor-spawn.lock", what="monitor start", timeout=timeout):
        if host_monitor_running():
            return None
        proc = _start_transient_monitor()
        deadline = time.monotonic() + timeout
        starts = 1
        while wait and not host_monitor_running():
            if time.monotonic() > deadline or starts > 3:
                raise XentoolError("the monitor for on_* actions did not start (see "
                                   "/var/log/xen/xentool-monitor.log)")
            if proc.poll() is not None:  # it found another monitor, or it failed
                if host_monitor_running():
                    break
                proc = _start_transient_monitor()
                starts += 1
            time.sleep(0.05)
        return proc.pid


def _start_transient_monitor() -> subprocess.Popen[bytes]:
    logdir = "/var/log/xen"
    err: int = subprocess.DEVNULL
    if os.path.isdir(logdir):
        err = os.open(os.path.join(logdir, "xentool-monitor.log"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "xentool", "-v", "monitor", "--transient"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            start_new_session=True, close_fds=True, cwd="/")
    finally:
        if err != subprocess.DEVNULL:
            os.close(err)


def serve(*, backoff: Backoff | None = None, create_cmd: Sequence[str] | None = None,
          once: bool = False, domain: str | None = None, transient: bool = False) -> None:
    """Run the monitor on this host: one scan (``once``), or until SIGTERM/SIGINT.

    Only one monitor for all domains runs per host (a lock under the run directory); a
    second one fails with the first one's pid.  ``transient``: the one ``create`` starts
    when none runs; it returns quietly if one runs already, and once no domain with a
    record is alive and no restart is due.  ``domain`` (a uuid): watch that domain only
    (``create -F``) and return once it is gone for good; the other monitors leave it alone
    meanwhile.
    """
    from xentool.locks import LockTimeout
    from xentool.session import Session

    single = _watch_lock(domain) if domain is not None else _monitor_lock()
    if transient:
        # ``create`` checks for a running monitor by taking its lock for an instant: wait
        # out such checks rather than mistake one for a monitor and leave no monitor.
        single.timeout = TRANSIENT_LOCK_WAIT
    try:
        single.acquire()
    except LockTimeout:
        if domain is not None or transient:
            return  # someone else does this job already
        raise XentoolError(f"another monitor is already running "
                           f"({single.holder() or 'unknown process'})") from None
    held = True
    try:
        with Session() as s:
            mon = Monitor(XenOps(s, create_cmd), backoff=backoff or Backoff(), only=domain,
                          transient=transient,
                          skip=_watched if domain is None else lambda uuid: False)
            if once:
                mon.scan()
                return
            stop = threading.Event()

            def on_signal(signum: int, frame: FrameType | None) -> None:
                log.info("monitor: %s, stopping", signal.Signals(signum).name)
                stop.set()

            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
            log.info("monitor: watching %s", f"domain {domain}" if domain else
                     "the domains created without a monitor" if transient else "all domains")
            if domain is None and not transient:
                service.ready("watching all domains")
            while True:
                run(mon, s.reopen_xs, stop)
                if domain is not None:
                    remove_domain_config(domain)  # gone for good: nothing left to act on
                if not transient or stop.is_set():
                    break
                # Publish that we leave, then look once more: a create that saved a record
                # just now saw our lock held and started no monitor of its own.
                single.release()
                held = False
                if mon.finished():
                    break
                try:
                    single.acquire()
                except LockTimeout:
                    break  # a new monitor took over
                held = True
    finally:
        if held:
            single.release()
