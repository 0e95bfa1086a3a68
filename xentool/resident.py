"""What xentoold runs besides commands: the domain table, the monitor and the
sched-controller, as threads of the daemon's own process (never of the children it forks
for commands), so a host runs one xentool daemon.

* The **domain table** (:class:`DomainTable`) is the daemon's view of the host's domains:
  one xenstored connection watches ``@introduceDomain`` and ``@releaseDomain`` (xenstored
  fires the latter when a domain shuts down or dies); on each event, and every
  ``POLL_S`` anyway, the hypervisor's list is read again and the differences wake the
  services: new domains the sched-controller, shut-down or vanished ones the monitor.
* The **monitor** is :class:`xentool.monitor.Monitor` (on_poweroff/on_reboot/on_crash of
  every domain with a record, whatever started it), under the host's monitor lock: while
  ``xentool monitor`` (the service, or a transient one ``create`` started) holds it, the
  daemon's monitor waits and takes over when it ends; while the daemon holds it, ``create``
  starts none and ``xentool monitor`` refuses to run.
* The **sched-controller** is :class:`xentool.scheduler.controller.Controller` with the
  policy file (reloaded on SIGHUP to the daemon and when the file changes; none: weights
  are left alone until one appears), under the sched-controller lock that ``xentool
  sched-controller`` takes too.

Recovery needs no state of its own: after a restart, or a SIGKILL, the table is read
again from the hypervisor and xenstore, and the monitor's first scan finds what happened
meanwhile from the domains and their records (the stored configs under
``/var/lib/xentool``): a guest that rebooted or crashed while no daemon ran is still shut
down, waiting for its action, and is handled then; a restart that was due is started.

Each service can be turned off: ``xentool daemon --no-monitor --no-sched`` or the
daemon's config file (:func:`load_options`).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from xentool.errors import XentoolError
from xentool.logs import get_logger

if TYPE_CHECKING:
    from collections.abc import Sequence
    from contextlib import AbstractContextManager
    from typing import Protocol

    from xenstore.client import Store
    from xentool.locks import FileLock
    from xentool.monitor import DomainState
    from xentool.scheduler.policy import Policy

    class Lister(Protocol):
        """What the domain table reads from the hypervisor (XenCtrl's ``domains``)."""

        def domains(self) -> Sequence[DomainState]: ...

log = get_logger("xentool.daemon")

#: The daemon's config file; a missing one means the defaults.
CONFIG_PATH = "/etc/xen/xentoold.toml"
#: Default policy of the sched-controller (as ``xentool sched-controller``).
POLICY_PATH = "/etc/xen/sched-policy.toml"
#: Read the domain list again this often even without a xenstore event.
POLL_S = 5.0
#: Reconnecting to xenstored: the first wait, doubled while it fails, up to the second.
RECONNECT_S = 1.0
RECONNECT_MAX_S = 30.0
#: A service that failed is started again after RECONNECT_S, doubled up to this.
RESTART_MAX_S = 300.0
#: How long the monitor waits for the table's first look before its first scan.
LOOK_WAIT_S = 30.0
#: How often a service waiting for its lock (another process holds it) tries again.
LOCK_RETRY_S = 5.0
#: How long the daemon waits for its services' first pass before serving commands.
SETTLE_S = 60.0


# -- options (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """What the daemon runs besides commands (defaults: everything)."""

    monitor: bool = True
    stable_after: float = 60.0
    max_delay: float = 300.0
    max_fast_restarts: int = 10
    sched: bool = True
    policy: str = POLICY_PATH
    resync: float = 30.0
    #: Domain shells kept ready (:mod:`xentool.shells`; 0: none), their memory and vCPUs.
    prebuild: int = 0
    prebuild_memory: int = 32  # MiB: xl's default memory=
    prebuild_vcpus: int = 1


_KEYS: dict[str, dict[str, type]] = {
    "monitor": {"enabled": bool, "stable_after": float, "max_delay": float,
                "max_fast_restarts": int},
    "sched": {"enabled": bool, "policy": str, "resync": float},
    "prebuild": {"shells": int, "memory": int, "vcpus": int},
}
#: The Options field each key of a table sets (the rest: the key's own name).
_FIELDS: dict[tuple[str, str], str] = {
    ("monitor", "enabled"): "monitor", ("sched", "enabled"): "sched",
    ("prebuild", "shells"): "prebuild", ("prebuild", "memory"): "prebuild_memory",
    ("prebuild", "vcpus"): "prebuild_vcpus"}


def parse_options(text: str, source: str) -> Options:
    """The options a config file sets, checked: an unknown table or key, or a value of
    the wrong type, is an error naming the file and the key."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise XentoolError(f"{source}: {e}") from None
    values: dict[str, object] = {}
    for table, body in doc.items():
        keys = _KEYS.get(table)
        if keys is None or not isinstance(body, dict):
            raise XentoolError(f"{source}: unknown setting {table!r} (known: "
                               f"{', '.join(f'[{k}]' for k in _KEYS)})")
        for key, value in body.items():
            kind = keys.get(key)
            if kind is None:
                raise XentoolError(f"{source}: unknown setting {table}.{key} (known: "
                                   f"{', '.join(keys)})")
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise XentoolError(f"{source}: {table}.{key} must be "
                                   f"{'a number' if kind is float else kind.__name__}, "
                                   f"not {value!r}")
            if kind in (int, float) and value < 0:  # type: ignore[operator]
                raise XentoolError(f"{source}: {table}.{key} must not be negative")
            values[_FIELDS.get((table, key)) or key] = value
    opts = Options(**values)  # type: ignore[arg-type]
    if opts.resync <= 0:
        raise XentoolError(f"{source}: sched.resync must be positive")
    if opts.prebuild_memory < 1 or opts.prebuild_vcpus < 1:
        raise XentoolError(f"{source}: prebuild.memory and prebuild.vcpus must be at "
                           "least 1")
    return opts


def load_options(path: str | None = None) -> Options:
    """The options of config file ``path`` (default :data:`CONFIG_PATH`, whose absence
    means the defaults; a file named on the command line must exist)."""
    where = path or CONFIG_PATH
    try:
        with open(where, encoding="utf-8") as f:
            text = f.read(1 << 20)
    except FileNotFoundError:
        if path is None:
            return Options()
        raise XentoolError(f"{where}: no such file") from None
    except OSError as e:
        raise XentoolError(f"{where}: {e.strerror}") from None
    return parse_options(text, where)


def with_overrides(opts: Options, *, monitor: bool | None = None, sched: bool | None = None,
                   policy: str | None = None, prebuild: int | None = None) -> Options:
    """``opts`` with what the command line gave (None: not given)."""
    return replace(opts, monitor=opts.monitor if monitor is None else monitor,
                   sched=opts.sched if sched is None else sched,
                   policy=opts.policy if policy is None else policy,
                   prebuild=opts.prebuild if prebuild is None else prebuild)


# -- the domain table (pure) ----------------------------------------------------------------


@dataclass(frozen=True)
class DomainEntry:
    """One domain as the daemon last saw it."""

    domid: int
    uuid: str
    shutdown: bool
    dying: bool
    reason: int | None


@dataclass(frozen=True)
class Changes:
    """What one look at the hypervisor's list found since the previous one."""

    introduced: tuple[int, ...] = ()  # new domids (or a domid reused by a new domain)
    shut_down: tuple[int, ...] = ()  # shut down or dying since last seen running
    released: tuple[int, ...] = ()  # gone from the list

    def __bool__(self) -> bool:
        return bool(self.introduced or self.shut_down or self.released)


@dataclass
class DomainTable:
    """domid -> :class:`DomainEntry`, kept by :meth:`update` from the hypervisor's list.
    Read by other threads through :meth:`snapshot`."""

    entries: dict[int, DomainEntry] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def update(self, infos: Iterable[DomainState]) -> Changes:
        new = {i.domid: DomainEntry(i.domid, i.uuid, i.shutdown, i.dying, i.shutdown_reason)
               for i in infos}
        with self._lock:
            old, self.entries = self.entries, new
        introduced, shut_down = [], []
        for domid, e in sorted(new.items()):
            before = old.get(domid)
            if before is None or before.uuid != e.uuid:
                introduced.append(domid)
                before = None
            stopped = e.shutdown or e.dying
            if stopped and (before is None or not (before.shutdown or before.dying)):
                shut_down.append(domid)
        released = [d for d, e in sorted(old.items())
                    if d not in new or new[d].uuid != e.uuid]
        return Changes(tuple(introduced), tuple(shut_down), tuple(released))

    def snapshot(self) -> dict[int, DomainEntry]:
        with self._lock:
            return dict(self.entries)


# -- the services ---------------------------------------------------------------------------


def _take(lock: FileLock, stop: threading.Event, what: str,
          waiting: Callable[[], None] = lambda: None) -> bool:
    """Wait for ``lock`` (another process may do the job now); False if stopped first.
    ``waiting`` is called once if it has to wait."""
    from xentool.locks import LockTimeout

    said = False
    while not stop.is_set():
        try:
            lock.acquire()
            if said:
                log.info("daemon: %s: took over from the process that held %s", what,
                         lock.path)
            return True
        except LockTimeout:
            if not said:
                log.warning("daemon: %s: %s holds %s; taking over when it ends", what,
                            lock.holder() or "another process", lock.path)
                said = True
                waiting()
        stop.wait(LOCK_RETRY_S)
    return False


class Services:
    """The daemon's threads: :meth:`start` after the daemon went to the background,
    :meth:`stop` when it stops; :meth:`reload` on SIGHUP; :meth:`check` from its loop."""

    def __init__(self, options: Options, *, connect: Callable[[], Store] | None = None,
                 xenctrl: Callable[[], AbstractContextManager[Lister]] | None = None) -> None:
        self.options = options
        self.table = DomainTable()
        self.stop_event = threading.Event()
        self.monitor_wake = threading.Event()
        self.sched_wake = threading.Event()
        self.reload_event = threading.Event()
        #: Set once the table has been read at the start: the monitor acts after that.
        self.looked = threading.Event()
        self.threads: dict[str, threading.Thread] = {}
        #: Per service, set once its first pass is over (or it failed): see settle().
        self.settled: dict[str, threading.Event] = {}
        # The table only feeds the services: with neither, the daemon watches nothing.
        self._targets: dict[str, Callable[[], None]] = {}
        if options.monitor or options.sched or options.prebuild:
            self._targets["domains"] = self._domains_main
        if options.monitor:
            self._targets["monitor"] = self._monitor_main
        if options.sched:
            self._targets["sched"] = self._sched_main
        if options.prebuild:
            self._targets["shells"] = self._shells_main
        self.shells_wake = threading.Event()
        self._connect = connect
        self._xenctrl = xenctrl
        self._stores: set[Store] = set()
        self._stores_lock = threading.Lock()

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        for name in self._targets:
            self.settled[name] = threading.Event()
            self._start(name)

    def settle(self, timeout: float = SETTLE_S) -> None:
        """Wait until every service has made its first pass (connections and handles
        opened, the table read, the first scan done).  The daemon forks its first command
        child only then: a fork while a thread is half-way through its start-up (inside
        an import, a library's process-wide lock) leaves the child with that lock taken
        forever."""
        deadline = time.monotonic() + timeout
        for name, done in self.settled.items():
            if not done.wait(max(0.0, deadline - time.monotonic())):
                log.warning("daemon: the %s service is still starting after %gs", name,
                            timeout)

    def _start(self, name: str) -> None:
        t = threading.Thread(target=self._run, args=(name,), name=f"xentoold-{name}",
                             daemon=True)
        self.threads[name] = t
        t.start()

    def _run(self, name: str) -> None:
        """Run one service until the daemon stops; one that fails (no hypervisor, say) is
        logged and started again later, waiting longer each time."""
        delay = RECONNECT_S
        while not self.stop_event.is_set():
            try:
                self._targets[name]()
                return
            except Exception as e:
                log.error("daemon: the %s service failed: %s (again in %gs)", name, e, delay)
            finally:
                self._settled(name)  # a service that failed is not waited for either
            self.stop_event.wait(delay)
            delay = min(delay * 2, RESTART_MAX_S)

    def _settled(self, name: str) -> None:
        event = self.settled.get(name)
        if event is not None:
            event.set()

    def check(self) -> None:
        """Start again a service whose thread ended (it logged why)."""
        if self.stop_event.is_set():
            return
        for name, t in list(self.threads.items()):
            if not t.is_alive():
                log.error("daemon: the %s service ended; starting it again", name)
                self._start(name)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the threads, waiting up to ``timeout`` seconds (default: 10, and a second
        for each shell the pool may have to destroy)."""
        if timeout is None:
            timeout = 10.0 + self.options.prebuild
        self.stop_event.set()
        self.monitor_wake.set()
        self.sched_wake.set()
        self.shells_wake.set()
        deadline = time.monotonic() + timeout
        for name, t in self.threads.items():
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():  # a restart's create, say: it ends on its own
                log.warning("daemon: the %s service is still busy; leaving it", name)

    def reload(self) -> None:
        """SIGHUP: read the sched policy again (safe in a signal handler)."""
        self.reload_event.set()
        self.sched_wake.set()

    def child_fds(self) -> list[int]:
        """Descriptors of the threads' xenstored connections: a forked child closes them
        (it has not the threads; and a command that outlives the daemon must not keep the
        daemon's watches registered).  Called in the child, where no other thread runs:
        without the lock, which a thread may have held at the fork."""
        fds = []
        for s in list(self._stores):
            with contextlib.suppress(Exception):
                fd = s.fileno()
                if fd is not None:
                    fds.append(fd)
        return fds

    # -- xenstored connections -----------------------------------------------------------------

    def _open_store(self) -> Store:
        if self._connect is not None:
            store = self._connect()
        else:
            from xenstore.client import Store

            store = Store.connect()
        with self._stores_lock:
            self._stores.add(store)
        return store

    def _close_store(self, store: Store | None) -> None:
        if store is None:
            return
        with self._stores_lock:
            self._stores.discard(store)
        with contextlib.suppress(Exception):  # replacing a dead connection
            store.close()

    # -- the domain table ------------------------------------------------------------------------

    def _domains_main(self) -> None:
        if self._xenctrl is None:
            from domain_builder.xenctrl import XenCtrl

            self._xenctrl = lambda: XenCtrl(one_thread=True)
        with self._xenctrl() as xc:
            delay = RECONNECT_S
            first = True
            while not self.stop_event.is_set():
                store: Store | None = None
                try:
                    store = self._open_store()
                    events: queue.Queue[tuple[bytes, bytes]] = queue.Queue()
                    with store.watch("@introduceDomain", events=events), \
                            store.watch("@releaseDomain", events=events) as rel:
                        delay = RECONNECT_S
                        while not self.stop_event.is_set():
                            changes = self.table.update(xc.domains())
                            if first:
                                self._rebuilt()
                                self.looked.set()
                                self._settled("domains")
                                first = False
                            self._dispatch(changes)
                            if rel.get(timeout=POLL_S) is not None:
                                while rel.get(timeout=0.02) is not None:
                                    pass  # a burst (shutdown, then release): one look
                except Exception as e:  # XenStoreError is an OSError; pyxs's own errors
                    if self.stop_event.is_set():
                        break
                    log.error("daemon: domain table: %s: looking again in %gs", e, delay)
                    self.stop_event.wait(delay)
                    delay = min(delay * 2, RECONNECT_MAX_S)
                finally:
                    self._close_store(store)

    def _rebuilt(self) -> None:
        """Say what the daemon found at its start: the domains, those with a record."""
        from xentool.records import record_path

        entries = self.table.snapshot()
        guests = [e for e in entries.values() if e.domid != 0]
        managed = [e for e in guests if record_path(e.uuid).exists()]
        waiting = [e for e in managed if e.shutdown and not e.dying]
        log.info("daemon: %d domain(s), %d with a xentool record, %d shut down and waiting "
                 "for their action", len(guests), len(managed), len(waiting))

    def _dispatch(self, changes: Changes) -> None:
        if not changes:
            return
        log.debug("daemon: domains introduced %s, shut down %s, released %s",
                  list(changes.introduced), list(changes.shut_down), list(changes.released))
        if changes.introduced:
            self.sched_wake.set()
            self.shells_wake.set()  # a create may have taken a shell
        if changes.released:
            self.shells_wake.set()  # or taken one and failed
        if changes.shut_down or changes.released:
            self.monitor_wake.set()

    # -- the monitor ---------------------------------------------------------------------------

    def _monitor_main(self) -> None:
        from xentool import monitor
        from xentool.session import Session

        lock = monitor._monitor_lock()
        if not _take(lock, self.stop_event, "monitor", lambda: self._settled("monitor")):
            return
        # The view first (what happened while no daemon ran), then the actions on it; a
        # table that cannot be read (no xenstored) does not hold the monitor up for long.
        self.looked.wait(LOOK_WAIT_S)
        try:
            o = self.options
            backoff = monitor.Backoff(stable_after=o.stable_after, max_delay=o.max_delay,
                                      max_fast_restarts=o.max_fast_restarts)
            with Session(one_thread=True) as s:
                mon = monitor.Monitor(monitor.XenOps(s), backoff=backoff,
                                      skip=monitor._watched)
                log.info("daemon: monitor: watching all domains")
                failures = 0
                while not self.stop_event.is_set():
                    try:
                        mon.scan()
                        failures = 0
                        wait = mon.next_wakeup()
                    except Exception as e:  # listing failed, xenstored went away: next scan
                        failures += 1
                        wait = min(POLL_S * 2 ** (failures - 1), RESTART_MAX_S)
                        log.error("daemon: monitor: scan failed: %s (again in %gs)", e, wait)
                        with contextlib.suppress(Exception):
                            s.reopen_xs()
                    self._settled("monitor")
                    if self.monitor_wake.wait(wait):
                        self.stop_event.wait(0.05)  # let a burst of events settle
                        self.monitor_wake.clear()
        finally:
            lock.release()

    # -- the sched-controller ------------------------------------------------------------------

    def _sched_main(self) -> None:
        from domain_builder.xenctrl import XenCtrl
        from xentool.scheduler.controller import Controller, FileStamp, XenBackend, sched_lock
        from xentool.scheduler.policy import Policy

        lock = sched_lock()
        if not _take(lock, self.stop_event, "sched-controller",
                     lambda: self._settled("sched")):
            return
        current: dict[str, Store] = {}

        def store() -> Store:
            if "xs" not in current:
                current["xs"] = self._open_store()
            return current["xs"]

        path = self.options.policy
        try:
            with XenCtrl(one_thread=True) as xc:
                ctl = Controller(XenBackend(xc, store), Policy(source=path))
                policy: Policy | None = None
                stamp: FileStamp | None = None
                said_missing = False
                last_full = 0.0
                self.reload_event.set()  # the first pass reads the policy
                self.sched_wake.set()
                while not self.stop_event.is_set():
                    woke = self.sched_wake.wait(1.0)  # new domains, SIGHUP, or a second
                    self.sched_wake.clear()
                    if stamp is not None or said_missing:
                        self._settled("sched")  # the first pass (policy read) is over
                    if self.stop_event.is_set():
                        break
                    try:
                        now_stamp = FileStamp.of(path)
                        full = False
                        if self.reload_event.is_set() or now_stamp != stamp:
                            self.reload_event.clear()
                            stamp = now_stamp
                            if now_stamp is None:
                                if not said_missing:
                                    log.info("daemon: sched-controller: no policy %s: "
                                             "weights are left alone until there is one",
                                             path)
                                    said_missing = True
                                policy = None
                            else:
                                said_missing = False
                                loaded = _load_policy(path)
                                if loaded is not None:
                                    policy = loaded
                                    ctl.set_policy(policy)
                                    full = True
                        if policy is None:
                            continue
                        if full or time.monotonic() - last_full >= self.options.resync:
                            ctl.reconcile()
                            last_full = time.monotonic()
                        elif woke:
                            ctl.on_introduce()
                    except Exception as e:  # xenstored went away: a new connection
                        log.error("daemon: sched-controller: %s", e)
                        self._close_store(current.pop("xs", None))
                        last_full = 0.0  # a full pass once it is back
                        self.stop_event.wait(RECONNECT_S)
        finally:
            self._close_store(current.pop("xs", None))
            lock.release()


    # -- the shell pool ------------------------------------------------------------------------

    def _shells_main(self) -> None:
        from domain_builder.xenctrl import XenCtrl
        from xentool import shells
        from xentool.create import shell_shape

        o = self.options
        keeper = shells.Keeper(
            o.prebuild, shell_shape(o.prebuild_memory, o.prebuild_vcpus),
            connect=self._open_store, close=self._close_store,
            xenctrl=lambda: XenCtrl(one_thread=True),
            stop=self.stop_event, on_ready=lambda: self._settled("shells"),
            wake=self.shells_wake)
        log.info("daemon: shells: keeping %d shell(s) of %d MiB, %d vCPU(s)", o.prebuild,
                 o.prebuild_memory, o.prebuild_vcpus)
        keeper.run()


def _load_policy(path: str) -> Policy | None:
    """The policy in ``path``, or None (logged) if it does not load: the previous one
    stays in force."""
    from xentool.scheduler.policy import PolicyError, load_policy

    try:
        policy = load_policy(path)
    except PolicyError as e:
        log.error("daemon: sched-controller: %s (keeping the previous policy)", e)
        return None
    log.info("daemon: sched-controller: loaded policy %s: %d rule(s)", path,
             len(policy.rules))
    return policy


def describe(options: Options) -> str:
    """One line for the log: what the daemon runs besides commands."""
    parts = []
    if options.monitor:
        parts.append("the monitor")
    if options.sched:
        parts.append(f"the sched-controller ({options.policy})")
    if options.prebuild:
        parts.append(f"{options.prebuild} domain shell(s)")
    return ", ".join(parts) if parts else "nothing else"

