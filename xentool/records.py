"""Domain records: how each domain was created and what its on_* actions are.

``create`` saves one per domain in ``<state dir>/domains/<uuid>.json`` (see
:mod:`xentool.state`): the config text as it was at create time (a restart uses it, like xl
uses its stored config, not the file that may have changed since), the KEY=VALUE overrides,
the working directory (relative paths in the config), the actions, and the monitor's own
state (last start, quick deaths in a row, a pending restart time) so a restarted monitor
picks up where the previous one stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from xentool.errors import XentoolError
from xentool.logs import get_logger
from xentool.state import records_dir

if TYPE_CHECKING:
    from xentool.config.model import DomainConfig

log = get_logger(__name__)

ACTION_KEYS = ("on_poweroff", "on_reboot", "on_watchdog", "on_crash", "on_soft_reset")
ACTIONS = ("destroy", "restart", "rename-restart", "preserve", "coredump-destroy",
           "coredump-restart", "soft-reset")

# SHUTDOWN_* (xen/sched.h) -> the record field with the action; suspend has none.
REASON_KEYS = {0: "on_poweroff", 1: "on_reboot", 2: None, 3: "on_crash", 4: "on_watchdog",
               5: "on_soft_reset"}
REASON_NAMES = {0: "poweroff", 1: "reboot", 2: "suspend", 3: "crash", 4: "watchdog",
                5: "soft_reset"}


class RecordError(XentoolError):
    """A record file that cannot be read or holds no valid record; ``path`` names it."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path




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
            if not isinstance(doc, dict):
                raise ValueError(f"a JSON {type(doc).__name__}, not an object")
            if doc.pop("version", None) != 1:
                raise ValueError("unknown record version")
            names = {f.name for f in dataclasses.fields(cls)}
            doc = {k: v for k, v in doc.items() if k in names}
            doc["overrides"] = tuple(doc.get("overrides", ()))
            return cls(**doc)
        except (ValueError, TypeError, AttributeError) as e:  # AttributeError: a wrong type
            raise XentoolError(f"{source}: not a valid domain record: {e}") from None


def record_path(uuid: str | uuidlib.UUID) -> Path:
    """The file of domain ``uuid``'s record."""
    return records_dir() / f"{uuidlib.UUID(str(uuid))}.json"


def read_record(path: Path) -> DomainRecord:
    """The record in ``path``; ``RecordError`` naming it if it is unreadable or invalid
    (``FileNotFoundError`` if there is none)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:  # ValueError: not text
        raise RecordError(path, f"{path}: cannot read the domain record: {e}") from None
    try:
        return DomainRecord.from_json(text, str(path))
    except XentoolError as e:
        msg = str(e)
        raise RecordError(path, msg if str(path) in msg else f"{path}: {msg}") from None


def write_record(rec: DomainRecord) -> Path:
    path = record_path(rec.uuid)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(rec.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def save_domain_config(config: DomainConfig, uuid: str | uuidlib.UUID, config_path: str,
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
    try:
        old = load_domain_config(uuid)
    except RecordError as e:
        log.warning("replacing %s", e)
        old = None
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
    """The record of domain ``uuid``, or None if there is none; ``RecordError`` if its file
    is unreadable or invalid."""
    try:
        return read_record(record_path(uuid))
    except FileNotFoundError:
        return None


def remove_domain_config(uuid: str | uuidlib.UUID) -> None:
    """Forget domain ``uuid`` (e.g. after an explicit destroy): its record and the config
    file a restart wrote next to it."""
    path = record_path(uuid)
    for p in (path, path.with_suffix(".cfg")):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def all_records(on_error: Callable[[RecordError], object] | None = None
                ) -> list[DomainRecord]:
    """Every readable, valid record.  A bad file is skipped: passed to ``on_error``, or
    logged as a warning without one."""
    out = []
    for p in sorted(records_dir().glob("*.json")):
        try:
            out.append(read_record(p))
        except FileNotFoundError:
            continue  # removed meanwhile
        except RecordError as e:
            if on_error is not None:
                on_error(e)
            else:
                log.warning("ignoring %s", e)
    return out
