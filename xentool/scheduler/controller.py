"""The controller: keeps every domain's weight and cap as the policy says, on events, on
reload and periodically (see :mod:`xentool.scheduler`)."""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from xenstore.paths import domain_path
from xentool import service
from xentool.logs import get_logger
from xentool.scheduler.policy import (
    MAX_POLICY_BYTES,
    SCHEDULERS,
    Current,
    Decision,
    DomainView,
    Params,
    Policy,
    PolicyError,
    decide,
    libxl_config_path,
    load_policy,
    sched_params_from_libxl_json,
)
from xentool.state import LIBXL_USERDATA_DIR

if TYPE_CHECKING:
    from domain_builder.xenctrl import XenCtrl
    from xenstore.client import Store
    from xentool.locks import FileLock

log = get_logger("xentool.scheduler")


# --------------------------------------------------------------------------------------
# The controller
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainBrief:
    """The hypervisor's view of a domain the controller needs (from getdomaininfolist)."""

    domid: int
    uuid: str
    cpupool: int
    vcpus: int
    dying: bool = False


class Backend(Protocol):
    """Xen and XenStore as the controller uses them; errors are ``OSError`` exceptions."""

    def domains(self) -> list[DomainBrief]: ...

    def name(self, domid: int) -> str | None: ...

    def pool(self, poolid: int) -> tuple[str | None, str]: ...  # (name, scheduler label)

    def get(self, domid: int, scheduler: str) -> Current: ...

    def set(self, domid: int, scheduler: str, value: Current) -> None: ...

    def config(self, domid: int, uuid: str) -> Params: ...

    def introduced(self, domid: int) -> bool: ...  # xenstored serves it: its build is done


_GONE = (errno.ESRCH, errno.ENOENT, errno.EINVAL)  # what a vanished domain makes calls fail with


@dataclass
class Controller:
    """Keeps every domain's weight and cap as the policy says.

    ``reconcile`` is one pass; ``on_introduce`` the fast path for new domains (``Daemon``
    drives both).  In ``dry_run`` nothing is set and each intended change is reported once.
    """

    backend: Backend
    policy: Policy
    dry_run: bool = False
    report: Callable[[str], None] = log.info
    known: dict[int, str] = field(default_factory=dict)  # domid -> uuid already handled
    _reported: dict[int, Current] = field(default_factory=dict)
    _pools: dict[int, tuple[str | None, str]] = field(default_factory=dict)
    _nameless: set[int] = field(default_factory=set)  # seen before their name was written

    def _pool(self, poolid: int) -> tuple[str | None, str]:
        if poolid not in self._pools:
            self._pools[poolid] = self.backend.pool(poolid)
        return self._pools[poolid]

    def view(self, dom: DomainBrief) -> DomainView | None:
        name = self.backend.name(dom.domid)
        if name is None:  # not (or no longer) in XenStore: dying, or not yet set up
            self._nameless.add(dom.domid)
            return None
        self._nameless.discard(dom.domid)
        pool_name, sched = self._pool(dom.cpupool)
        if sched not in SCHEDULERS.values():
            return DomainView(dom.domid, name, pool_name, sched, dom.vcpus, Current(0, 0))
        current = self.backend.get(dom.domid, sched)
        config = self.backend.config(dom.domid, dom.uuid) if dom.domid != 0 else Params()
        return DomainView(dom.domid, name, pool_name, sched, dom.vcpus, current, config)

    def apply(self, dom: DomainBrief, retry: bool = True) -> Decision | None:
        """Bring one domain in line; a domain that vanishes meanwhile is skipped quietly."""
        try:
            v = self.view(dom)
            if v is None:
                return None
            d = decide(self.policy, v)
            if d is None:
                return None
            if d.problem:
                if self._reported.get(dom.domid) != d.target:
                    log.warning("%s", d.describe())
                    self._reported[dom.domid] = d.target
                return d
            if not d.changed:
                self._reported.pop(dom.domid, None)
                return d
            if self.dry_run:
                if self._reported.get(dom.domid) != d.target:
                    self.report(f"would set {d.describe()}")
                    self._reported[dom.domid] = d.target
                return d
            self.backend.set(dom.domid, d.scheduler, d.target)
            self.report(f"set {d.describe()}")
            return d
        except OSError as e:
            if e.errno not in _GONE:
                raise
            if self.backend_has(dom.domid) and dom.cpupool in self._pools and retry:
                # Alive but refused: the cached pool (and scheduler) may be stale.
                del self._pools[dom.cpupool]
                return self.apply(dom, retry=False)
            log.debug("domain %d went away during the update: %s", dom.domid, e)
            return None

    def backend_has(self, domid: int) -> bool:
        return any(d.domid == domid and not d.dying for d in self.backend.domains())

    def _ready(self, doms: list[DomainBrief]) -> list[DomainBrief]:
        # A domain still being built is left alone: its toolstack has yet to set the xl.cfg
        # weight, which would silently replace ours.  Introduction marks the end of the build.
        out = []
        for d in doms:
            try:
                if not d.dying and self.backend.introduced(d.domid):
                    out.append(d)
            except OSError as e:
                if e.errno not in _GONE:
                    raise
        return out

    def reconcile(self, refresh_pools: bool = True) -> list[Decision]:
        """One pass over every domain."""
        if refresh_pools:
            self._pools.clear()
        doms = self._ready(self.backend.domains())
        out = [d for d in map(self.apply, doms) if d is not None]
        self.known = {d.domid: d.uuid for d in doms}
        for gone in set(self._reported) - set(self.known):
            del self._reported[gone]
        return out

    def on_introduce(self) -> list[Decision]:
        """Handle domains not seen before (new domid, or a domid reused by a new uuid)."""
        doms = [d for d in self.backend.domains() if not d.dying]
        new = self._ready([d for d in doms if self.known.get(d.domid) != d.uuid])
        ready = {d.domid for d in new}
        out = []
        for d in new:
            dec = self.apply(d)
            if dec is not None:
                out.append(dec)
        # Domains still being built, or without a name yet, are tried again next time.
        self.known = {d.domid: d.uuid for d in doms
                      if (d.domid in ready or self.known.get(d.domid) == d.uuid)
                      and d.domid not in self._nameless}
        return out

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        self._reported.clear()


# --------------------------------------------------------------------------------------
# The daemon loop
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileStamp:
    """Identity of the policy file's current contents, to notice edits without inotify."""

    mtime_ns: int
    size: int
    ino: int

    @classmethod
    def of(cls, path: str) -> FileStamp | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return cls(st.st_mtime_ns, st.st_size, st.st_ino)


class Daemon:
    """The ``sched-controller`` loop around a ``Controller``.

    Events: ``@introduceDomain`` (new domains, fast path), SIGHUP or a change of the policy
    file (reload, full pass), ``resync`` seconds without events (full pass: renames, pool
    moves, manual changes).  A lost xenstored connection is re-established with backoff
    and followed by a full pass.  A policy that fails to load is reported and the previous
    one stays in force.  Where the connection cannot watch (``/dev/xen/xenbus`` instead of
    xenstored's socket), new domains are found by polling the domain list every
    ``fast_poll`` seconds (one hypercall).
    """

    def __init__(self, controller: Controller, policy_path: str | None,
                 connect: Callable[[], Store], resync: float = 30.0,
                 poll: float = 1.0, fast_poll: float = 0.02) -> None:
        self.ctl = controller
        self.fast_poll = fast_poll
        self.policy_path = policy_path
        self.connect = connect
        self.resync = resync
        self.poll = poll
        self.stop = threading.Event()
        self.reload = threading.Event()
        self._stamp = FileStamp.of(policy_path) if policy_path else None

    def install_signals(self) -> None:
        signal.signal(signal.SIGHUP, lambda *_: self.reload.set())
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())

    def _maybe_reload(self) -> bool:
        if self.policy_path is None:
            return False
        stamp = FileStamp.of(self.policy_path)
        if not self.reload.is_set() and stamp == self._stamp:
            return False
        self.reload.clear()
        self._stamp = stamp
        try:
            policy = load_policy(self.policy_path)
        except PolicyError as e:
            log.error("%s (keeping the previous policy)", e)
            return False
        self.ctl.set_policy(policy)
        log.info("loaded policy %s: %d rule(s)", self.policy_path, len(policy.rules))
        return True

    def run(self) -> None:
        from domain_builder.xenctrl import preload

        preload()
        backoff = 0.1
        while not self.stop.is_set():
            service.alive()
            try:
                store = self.connect()
            except OSError as e:
                log.warning("xenstored unreachable (%s); retrying in %.1fs", e, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            try:
                self._serve(store)
                backoff = 0.1
            except OSError as e:
                log.warning("lost xenstored (%s); reconnecting", e)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                try:
                    store.close()
                except Exception:  # the connection is gone either way
                    pass

    def _serve(self, store: Store) -> None:
        try:
            intro = store.watch("@introduceDomain")
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            log.warning("no watches on this xenstore connection (%s): looking for new domains "
                        "every %.0f ms instead", e, self.fast_poll * 1000)
            return self._serve_polling()
        with intro:
            intro.get(timeout=5)  # fires once at registration; the full pass covers it
            self._maybe_reload()
            self.ctl.reconcile()
            last_full = time.monotonic()
            while not self.stop.is_set():
                service.alive()
                ev = intro.get(timeout=self.poll)
                if ev is not None:
                    t0 = time.monotonic()
                    for d in self.ctl.on_introduce():
                        if d.changed:
                            log.info("domain %d handled %.1f ms after @introduceDomain "
                                     "reached us", d.domid, (time.monotonic() - t0) * 1000)
                    continue
                if self._maybe_reload() or time.monotonic() - last_full >= self.resync:
                    self.ctl.reconcile()
                    last_full = time.monotonic()


    def _serve_polling(self) -> None:
        self._maybe_reload()
        self.ctl.reconcile()
        last_full = time.monotonic()
        while not self.stop.wait(self.fast_poll):
            service.alive()
            self.ctl.on_introduce()
            if self._maybe_reload() or time.monotonic() - last_full >= self.resync:
                self.ctl.reconcile()
                last_full = time.monotonic()


# --------------------------------------------------------------------------------------
# Production backend
# --------------------------------------------------------------------------------------


class XenBackend:
    """``Backend`` over ``XenCtrl`` and a XenStore connection that may be replaced."""

    def __init__(self, xc: XenCtrl, store: Callable[[], Store],
                 userdata_dir: str = LIBXL_USERDATA_DIR) -> None:
        self.xc = xc
        self._store = store
        self.userdata_dir = userdata_dir

    def domains(self) -> list[DomainBrief]:
        return [DomainBrief(i.domid, i.uuid, i.cpupool, i.max_vcpu_id + 1, i.dying)
                for i in self.xc.domains()]

    def name(self, domid: int) -> str | None:
        return self._store().get(f"{domain_path(domid)}/name")

    def pool(self, poolid: int) -> tuple[str | None, str]:
        info = self.xc.cpupool_info(poolid)
        if info.poolid != poolid:  # libxenctrl returns the next pool up
            raise OSError(errno.ENOENT, f"cpupool {poolid} does not exist")
        name = self._store().get(f"/local/pool/{poolid}/name")
        return name, SCHEDULERS.get(info.sched_id, f"scheduler-{info.sched_id}")

    def get(self, domid: int, scheduler: str) -> Current:
        p = (self.xc.sched_credit if scheduler == "credit" else self.xc.sched_credit2)(domid)
        return Current(p.weight, p.cap)

    def set(self, domid: int, scheduler: str, value: Current) -> None:
        from domain_builder.xenctrl import SchedCredit

        setter = self.xc.set_sched_credit if scheduler == "credit" else \
            self.xc.set_sched_credit2
        setter(domid, SchedCredit(value.weight, value.cap))

    def introduced(self, domid: int) -> bool:
        return domid == 0 or self._store().is_domain_introduced(domid)

    def config(self, domid: int, uuid: str) -> Params:
        try:
            with open(libxl_config_path(domid, uuid, self.userdata_dir)) as f:
                return sched_params_from_libxl_json(f.read(MAX_POLICY_BYTES))
        except OSError:
            return Params()


def sched_lock() -> FileLock:
    """The lock of the one sched-controller of a host (xentoold's, or ``xentool
    sched-controller``'s): two would fight over the weights."""
    from xentool.locks import FileLock
    from xentool.state import run_dir

    return FileLock(run_dir() / "sched-controller.lock", what="sched-controller", timeout=0)


def serve(policy_path: str, policy: Policy, *, dry_run: bool = False, once: bool = False,
          resync: float = 30.0, report: Callable[[str], None] | None = None) -> None:
    """Run the controller on this host: one pass (``once``), or as a daemon until SIGTERM
    or SIGINT, reloading ``policy_path`` on SIGHUP.  ``report`` gets every change (a log
    line at INFO by default)."""
    slog = log
    if report is None:
        def report(msg: str) -> None:
            slog.info("%s", msg)

    from domain_builder.xenctrl import XenCtrl
    from xenstore.client import Store

    def thread_died(a: threading.ExceptHookArgs) -> None:
        # pyxs's reader thread ends with an exception when xenstored goes away; the daemon
        # notices and reconnects, so one line is enough.
        slog.warning("xenstore connection thread ended: %s", a.exc_value or a.exc_type)

    threading.excepthook = thread_died
    with XenCtrl() as xc:
        current: dict[str, Store] = {}

        def store() -> Store:
            if "xs" not in current:
                current["xs"] = Store.connect()
            return current["xs"]

        def connect() -> Store:
            old = current.pop("xs", None)
            if old is not None:
                try:
                    old.close()
                except Exception:  # replacing a dead connection
                    pass
            return store()

        ctl = Controller(XenBackend(xc, store), policy, dry_run=dry_run, report=report)
        if once:
            try:
                ctl.reconcile()
            finally:
                if "xs" in current:
                    current["xs"].close()
            return
        daemon = Daemon(ctl, policy_path, connect, resync=resync, poll=0.25)
        daemon.install_signals()
        service.ready(f"policy {policy_path}")
        lock = sched_lock()
        if not dry_run and not _wait_for(lock, daemon.stop):
            return
        slog.info("controlling weights with %s (%d rule(s))%s", policy_path,
                  len(policy.rules), ", dry run" if dry_run else "")
        try:
            daemon.run()
        finally:
            if not dry_run:
                lock.release()
        service.stopping()


def _wait_for(lock: FileLock, stop: threading.Event) -> bool:
    """Take the sched-controller lock, waiting while another controller (xentoold's)
    holds it, so the two take turns rather than fight; False if stopped first."""
    from xentool.locks import LockTimeout

    said = False
    while not stop.is_set():
        try:
            lock.acquire()
            return True
        except LockTimeout:
            if not said:
                log.warning("another sched-controller runs (%s): waiting for it to end",
                            lock.holder() or "unknown process")
                said = True
        stop.wait(5.0)
    return False
