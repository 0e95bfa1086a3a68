"""One monitor for all domains: applies on_poweroff/on_reboot/on_crash/on_watchdog actions.

xl forks a daemon per domain that waits for its death; a logout or a killed shell can
orphan those and leave domains that never restart or never get cleaned up.  xentool runs
one process (``xentool monitor``, a systemd service, see ``contrib/systemd``) that:

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
   (leave it); ``coredump-*`` (no core dump support yet: logged, then destroy/restart);
   ``soft-reset`` (no soft reset support: treated as restart).
4. Restarts back off against crash loops: a domain that dies less than ``stable_after``
   seconds after it was (re)started waits 1, 2, 4, ... (at most ``max_delay``) seconds
   before the next start, and after ``max_fast_restarts`` such deaths in a row it is left
   destroyed with an error in the log.  A domain destroyed by someone else before the
   monitor got to it is not restarted: the operator wanted it gone.

Records (``save_domain_config`` / ``load_domain_config``) live in
``/var/lib/xentool/domains/<uuid>.json`` (``XENTOOL_STATE_DIR`` moves the top directory):
the config text as it was at create time (a restart uses it, like xl uses its stored
config, not the file that may have changed since), the KEY=VALUE overrides, the working
directory (relative paths in the config), the actions, and the monitor's own state
(last start, quick deaths in a row, a pending restart time) so a restarted monitor picks
up where the previous one stopped.  Records of domains that no longer exist and have no
pending restart are removed after ``RECORD_GRACE`` seconds.

Domains without a record (created by ``xl``, whose own daemon handles them) are ignored.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from xentool.errors import XentoolError

log = logging.getLogger(__name__)

STATE_DIR = "/var/lib/xentool"
STATE_DIR_ENV = "XENTOOL_STATE_DIR"
#: Records of vanished domains are kept this long (a create may save before it builds).
RECORD_GRACE = 600.0
#: Rescan this often even without a XenStore event.
POLL_S = 5.0

ACTION_KEYS = ("on_poweroff", "on_reboot", "on_watchdog", "on_crash", "on_soft_reset")
ACTIONS = ("destroy", "restart", "rename-restart", "preserve", "coredump-destroy",
           "coredump-restart", "soft-reset")

# SHUTDOWN_* (xen/sched.h) -> the record field with the action; suspend has none.
REASON_KEYS = {0: "on_poweroff", 1: "on_reboot", 2: None, 3: "on_crash", 4: "on_watchdog",
               5: "on_soft_reset"}
REASON_NAMES = {0: "poweroff", 1: "reboot", 2: "suspend", 3: "crash", 4: "watchdog",
                5: "soft_reset"}


def state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or STATE_DIR)


def records_dir() -> Path:
    return state_dir() / "domains"


# -- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainRecord:
    """What the monitor needs to handle one domain's shutdown (see the module docstring)."""

    uuid: str
    name: str
    config_path: str
    config_text: str
    overrides: tuple[str, ...] = ()
    cwd: str = "/"
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_watchdog: str = "destroy"
    on_crash: str = "destroy"
    on_soft_reset: str = "soft-reset"
    saved_at: float = 0.0
    started_at: float = 0.0  # last (re)start, for the crash-loop back-off
    fast_restarts: int = 0  # quick deaths in a row
    restart_at: float | None = None  # a restart is due at this time

    def __post_init__(self) -> None:
        try:
            uuidlib.UUID(self.uuid)
        except ValueError:
            raise XentoolError(f"domain record: invalid uuid '{self.uuid}'") from None
        for key in ACTION_KEYS:
            if getattr(self, key) not in ACTIONS:
                raise XentoolError(f"domain record {self.uuid}: invalid {key} "
                                   f"'{getattr(self, key)}'")

    def action(self, reason: int | None) -> str | None:
        """The configured action for SHUTDOWN_* ``reason``; None for suspend."""
        key = REASON_KEYS.get(reason if reason is not None else -1, "unknown")
        if key == "unknown":
            return "destroy"
        return None if key is None else getattr(self, key)

    def to_json(self) -> str:
        doc = dataclasses.asdict(self)
        doc["overrides"] = list(self.overrides)
        return json.dumps({"version": 1, **doc}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "<record>") -> DomainRecord:
        try:
            doc = json.loads(text)
            if doc.pop("version", None) != 1:
                raise ValueError("unknown record version")
            names = {f.name for f in dataclasses.fields(cls)}
            doc = {k: v for k, v in doc.items() if k in names}
            doc["overrides"] = tuple(doc.get("overrides", ()))
            return cls(**doc)
        except (ValueError, TypeError) as e:
            raise XentoolError(f"{source}: not a valid domain record: {e}") from None


def _record_path(uuid: str) -> Path:
    return records_dir() / f"{uuidlib.UUID(str(uuid))}.json"


def write_record(rec: DomainRecord) -> Path:
    path = _record_path(rec.uuid)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(rec.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def save_domain_config(config: Any, uuid: str | uuidlib.UUID, config_path: str,
                       overrides: Sequence[str] = (), *, config_text: str | None = None,
                       cwd: str | None = None) -> Path:
    """Record how domain ``uuid`` was created so the monitor can restart it.

    For the create path: call it once the domain exists (or just before), with the
    ``DomainConfig`` it built, the config file and the KEY=VALUE overrides it was given.
    ``config_text`` defaults to the file's current content.  Returns the record's path.
    """
    from xentool.config import read_config_text

    text = read_config_text(config_path) if config_text is None else config_text
    now = time.time()
    old = load_domain_config(uuid)
    rec = DomainRecord(
        uuid=str(uuidlib.UUID(str(uuid))), name=config.name,
        config_path=os.path.abspath(config_path) if config_path != "/dev/null" else
        config_path, config_text=text, overrides=tuple(overrides),
        cwd=cwd or os.getcwd(),
        **{k: getattr(config, k).value for k in ACTION_KEYS},
        saved_at=now, started_at=now,
        # a re-create by the monitor keeps the crash-loop count it is judging
        fast_restarts=old.fast_restarts if old else 0,
    )
    return write_record(rec)


def load_domain_config(uuid: str | uuidlib.UUID) -> DomainRecord | None:
    """The record of domain ``uuid``, or None if there is none."""
    path = _record_path(str(uuid))
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return DomainRecord.from_json(text, str(path))


def remove_domain_config(uuid: str | uuidlib.UUID) -> None:
    """Forget domain ``uuid`` (e.g. after an explicit destroy)."""
    try:
        _record_path(str(uuid)).unlink()
    except FileNotFoundError:
        pass


def all_records() -> list[DomainRecord]:
    out = []
    for p in sorted(records_dir().glob("*.json")):
        try:
            out.append(DomainRecord.from_json(p.read_text(), str(p)))
        except (OSError, XentoolError) as e:
            log.warning("ignoring %s: %s", p, e)
    return out


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
        return Plan(False, "restart")
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
    return [sys.executable, "-m", "xentool", "create", "-q"]


# -- side effects, behind a protocol so the loop is tested with fakes ---------------------------


class Ops(Protocol):
    def domains(self) -> list[Any]: ...  # DomainInfo-like: domid, uuid, shutdown, dying...

    def destroy(self, domid: int) -> bool: ...  # False: the domain was already gone

    def preserve(self, domid: int, new_name: str, new_uuid: str) -> None: ...

    def create(self, rec: DomainRecord) -> None: ...

    def lock(self, domid: int) -> Any: ...  # a context manager


@dataclass
class Monitor:
    """The decision loop; ``scan()`` handles everything that is due, ``run()`` loops."""

    ops: Ops
    backoff: Backoff = field(default_factory=Backoff)
    clock: Callable[[], float] = time.time
    handled: set[tuple[int, str]] = field(default_factory=set)

    def scan(self) -> None:
        infos = [i for i in self.ops.domains() if i.domid != 0]
        live = {i.domid for i in infos}
        self.handled = {k for k in self.handled if k[0] in live}
        for info in infos:
            if not info.shutdown or info.dying or (info.domid, info.uuid) in self.handled:
                continue
            rec = load_domain_config(info.uuid)
            self.handled.add((info.domid, info.uuid))
            if rec is None:
                log.debug("domain %d has no xentool record: not ours", info.domid)
                continue
            try:
                self.handle(info, rec)
            except Exception as e:  # noqa: BLE001 - one bad domain must not stop the monitor
                log.error("domain %d (%s): handling its shutdown failed: %s", info.domid,
                          rec.name, e)
        # Ask again: handling destroyed some, and a preserved domain has a new uuid.
        live_uuids = {i.uuid for i in self.ops.domains()}
        self.restart_due(live_uuids)
        self.collect(live_uuids | {i.uuid for i in self.ops.domains()})

    def handle(self, info: Any, rec: DomainRecord) -> None:
        reason = info.shutdown_reason
        action = rec.action(reason)
        rname = REASON_NAMES.get(reason, f"code {reason}")
        if action is None:
            log.info("domain %d (%s) has suspended: nothing to do", info.domid, rec.name)
            return
        plan = plan_for(action)
        log.info("domain %d (%s) shut down (%s): action %s", info.domid, rec.name, rname,
                 action)
        if plan.coredump:
            log.warning("domain %d (%s): core dumps are not supported yet; continuing with "
                        "%s", info.domid, rec.name, plan.then)
        if plan.then == "preserve":
            return
        now = self.clock()
        with self.ops.lock(info.domid):
            if plan.then == "rename-restart":
                keep = preserved_name(rec.name, now)
                log.info("preserving domain %d as %s", info.domid, keep)
                self.ops.preserve(info.domid, keep, str(uuidlib.uuid4()))
            elif not self.ops.destroy(info.domid):
                log.info("domain %d (%s) was destroyed by someone else meanwhile: not "
                         "%sing it", info.domid, rec.name,
                         "restart" if plan.then != "destroy" else "destroy")
                return
        if plan.then == "destroy":
            return
        delay, fast = self.backoff.next(now - rec.started_at, rec.fast_restarts)
        if delay is None:
            log.error("domain %s died %d times in a row less than %gs after its start: "
                      "not restarting it again", rec.name, fast - 1,
                      self.backoff.stable_after)
            write_record(dataclasses.replace(rec, fast_restarts=fast, restart_at=None))
            return
        if delay:
            log.warning("domain %s restarts too quickly (%d in a row): next start in %gs",
                        rec.name, fast, delay)
        write_record(dataclasses.replace(rec, fast_restarts=fast, restart_at=now + delay))

    def restart_due(self, live_uuids: set[str]) -> None:
        now = self.clock()
        for rec in all_records():
            if rec.restart_at is None or rec.restart_at > now:
                continue
            # Cleared first: a create that fails (or kills us) must not loop.
            write_record(dataclasses.replace(rec, restart_at=None, started_at=now))
            if rec.uuid in live_uuids:
                log.warning("domain %s (%s) is running again already: not restarting it",
                            rec.name, rec.uuid)
                continue
            log.info("restarting domain %s", rec.name)
            try:
                self.ops.create(rec)
            except Exception as e:  # noqa: BLE001
                log.error("restarting domain %s failed: %s", rec.name, e)

    def collect(self, live_uuids: set[str]) -> None:
        now = self.clock()
        for rec in all_records():
            if (rec.uuid not in live_uuids and rec.restart_at is None
                    and now - max(rec.saved_at, rec.started_at) > RECORD_GRACE):
                log.debug("forgetting domain %s (%s): gone", rec.name, rec.uuid)
                remove_domain_config(rec.uuid)

    def next_wakeup(self) -> float:
        """Seconds until the earliest pending restart (or POLL_S)."""
        due = [r.restart_at for r in all_records() if r.restart_at is not None]
        if not due:
            return POLL_S
        return max(0.0, min(POLL_S, min(due) - self.clock()))


class XenOps:
    """The real side effects (hypervisor, XenStore, ``xentool create``/``destroy``)."""

    def __init__(self, session: Any, create_cmd: Sequence[str] | None = None) -> None:
        self.s = session
        self.create_cmd = list(create_cmd or default_create_cmd())

    def domains(self) -> list[Any]:
        return self.s.xc.domains()

    def lock(self, domid: int) -> Any:
        from xentool.locks import domain_lock

        return domain_lock(domid)

    def destroy(self, domid: int) -> bool:
        from xentool.commands.control import destroy_domain
        from xentool.errors import DomainNotFound

        try:
            # The record stays: the monitor decides what happens to it next.
            destroy_domain(self.s, domid, forget=False)
        except DomainNotFound:
            return False
        return True

    def preserve(self, domid: int, new_name: str, new_uuid: str) -> None:
        """libxl_domain_preserve: new uuid and /vm path, renamed, left shut down."""
        from xentool.commands.domain_ops import rename_domain

        self.s.xc.set_handle(domid, uuidlib.UUID(new_uuid).bytes)
        dom = f"/local/domain/{domid}"
        vm = f"/vm/{new_uuid}"

        def move(t) -> None:
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
        r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            detail = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
            raise XentoolError(f"{shlex.join(argv)}: {detail}")


def run(monitor: Monitor, store: Any, stop: threading.Event) -> None:
    """Scan on every ``@releaseDomain`` event, every POLL_S and when a restart is due."""
    with store.watch("@releaseDomain") as w:
        while not stop.is_set():
            monitor.scan()
            w.get(timeout=monitor.next_wakeup())
            # Events come in bursts (shutdown, then release): let them settle a little.
            while w.get(timeout=0.05) is not None:
                pass

