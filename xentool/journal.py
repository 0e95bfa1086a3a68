"""Rollback journal for multi-step operations, with built-in fault injection.

A ``Journal`` runs the steps of an operation (``create``, a monitor restart, ...) and keeps
the undo of every step that succeeded.  If anything escapes the ``with`` block — an
exception, a failed hypercall, an injected fault, SIGINT/SIGTERM — the undos run newest
first and the *original* exception is re-raised, so the operator sees the cause, not the
clean-up.  Leaving the block normally commits (the undos are forgotten)::

    with Journal("create") as j:
        domid = j.do("create domain", lambda: xc.create_domain(cc), undo=xc.destroy)
        j.do("max memory", lambda: xc.set_max_mem(domid, kb))      # nothing to undo
        j.do("xenstore nodes", lambda: write(domid), undo=lambda _: rm_nodes(domid))
        j.note("domid", domid)                                     # for crash recovery

Contract:

* ``do(name, action, undo=None)`` is step K (1-based, in call order).  The fault point of
  step K is checked *before* ``action`` runs; ``undo(result)`` is registered only after
  ``action`` returned, so an action must clean up after itself if it fails half-way.
* ``push(name, undo)`` registers an undo (taking no argument) for work done inline;
  it is not a step and has no fault point.
* Every undo runs even if an earlier one fails; undo failures are logged, attached to the
  original exception as notes (``exc.__notes__``) and listed in ``Journal.leftovers``.
* SIGINT and SIGTERM during the block raise ``Interrupted`` (a ``KeyboardInterrupt``) and
  so roll back.  A signal that arrives while a step's action runs is held until the
  action returned and its undo is registered, then raised; one that arrives after the last
  step but before the commit aborts the operation too.  During the rollback signals are
  held and dropped (the operation is being aborted anyway).  Only the main thread can
  install handlers; elsewhere the journal works without them.  Work done inline in the
  block (outside ``do``) can be interrupted anywhere: put anything that needs an undo in
  a step.
* With ``record_dir`` the journal keeps ``<record_dir>/<op>-<pid>.json`` up to date (steps
  done, ``note``s).  It is removed on commit and after a complete rollback, so a file
  whose pid is dead is the trace of a process killed mid-operation: ``orphan_records``
  finds them for ``destroy``/``list`` to recover what it left (e.g. the noted domid);
  ``half_built_domains()`` maps the domids noted by killed creates to their records.
  Recommended: ``Journal("create", record_dir=default_record_dir())`` and
  ``j.note("domid", domid)`` right after the domain exists.
* ``resume=True`` is for operations that cannot be undone, only finished (``destroy``):
  the record is kept after a failure too, so that a later run finds what is left to do.

Fault injection (for tests; see ``FaultPlan.parse``): ``XENTOOL_FAULT_INJECT=step:K``
makes step K raise ``InjectedFault``, ``kill:K`` makes the process SIGKILL itself at step
K.  ``step:K@create`` restricts a spec to journals of that operation; several specs are
separated by commas.  ``XENTOOL_FAULT_TRACE=FILE`` appends ``<op> <K> <name>`` for every
step reached, so a test can count the steps of an operation and then walk all of them.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import TypeVar

from xentool.errors import XentoolError
from xentool.logs import get_logger
from xentool.procs import proc_start_time, process_alive
from xentool.state import journal_dir, private_dir

log = get_logger(__name__)

T = TypeVar("T")

FAULT_ENV = "XENTOOL_FAULT_INJECT"
TRACE_ENV = "XENTOOL_FAULT_TRACE"

#: Signals that abort a journaled operation (and trigger its rollback).
ABORT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class InjectedFault(XentoolError):
    """The failure ``XENTOOL_FAULT_INJECT=step:K`` asked for."""

    def __init__(self, op: str, step: int, name: str) -> None:
        super().__init__(f"{op}: injected fault at step {step} ({name})")
        self.op = op
        self.step = step
        self.name = name


class Interrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived during a journaled operation.

    A ``KeyboardInterrupt`` so that ``except Exception`` in step code cannot swallow it and
    the CLI reports it as an interruption (exit status 130).
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    def __str__(self) -> str:
        message: str = self.args[0]
        return message


# -- fault injection -----------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    kind: str  # "step" (raise InjectedFault) or "kill" (SIGKILL ourselves)
    step: int
    op: str | None = None  # only journals of this operation; None: any

    def matches(self, op: str, step: int) -> bool:
        return self.step == step and (self.op is None or self.op == op)


@dataclass(frozen=True)
class FaultPlan:
    """The faults to inject, parsed from ``XENTOOL_FAULT_INJECT``."""

    faults: tuple[Fault, ...] = ()

    @classmethod
    def parse(cls, text: str) -> FaultPlan:
        """``step:K``, ``kill:K``, optionally ``@op``, comma-separated; K >= 1."""
        faults = []
        for raw in text.split(","):
            spec = raw.strip()
            if not spec:
                continue
            body, _, op = spec.partition("@")
            kind, sep, num = body.partition(":")
            if (not sep or kind not in ("step", "kill") or not num.isascii()
                    or not num.isdigit() or int(num) < 1 or (_ and not op)):
                raise XentoolError(f"{FAULT_ENV}: bad value '{spec}': expected step:K or "
                                   f"kill:K (K >= 1), optionally followed by @OPERATION")
            faults.append(Fault(kind, int(num), op or None))
        return cls(tuple(faults))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FaultPlan:
        text = (os.environ if env is None else env).get(FAULT_ENV, "")
        return cls.parse(text) if text else cls()

    def at(self, op: str, step: int) -> Fault | None:
        return next((f for f in self.faults if f.matches(op, step)), None)


# -- crash records -------------------------------------------------------------------------


@dataclass(frozen=True)
class OrphanRecord:
    """What a process killed in the middle of a journaled operation had done."""

    path: Path
    op: str
    pid: int
    steps: tuple[str, ...]
    notes: dict[str, object]  # as read back from the JSON record


def orphan_records(record_dir: Path | str) -> list[OrphanRecord]:
    """Records left by journals whose process is gone (unreadable files are skipped)."""
    out = []
    for p in sorted(Path(record_dir).glob("*.json")):
        try:
            doc = json.loads(p.read_text())
            pid, start = int(doc["pid"]), doc.get("start_time")
            rec = OrphanRecord(p, str(doc["op"]), pid, tuple(doc["steps"]), dict(doc["notes"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not process_alive(pid, start):
            out.append(rec)
    return out


def default_record_dir() -> Path:
    """Where journaled operations keep their crash records (:func:`xentool.state.journal_dir`)."""
    return journal_dir()


def half_built_domains(record_dir: Path | str | None = None) -> dict[int, OrphanRecord]:
    """Domains that a killed ``create`` (or ``restore``, which runs the create steps) left,
    by the domid it ``note``d: for ``list`` to flag them and for ``destroy`` to know they
    are debris."""
    out = {}
    for rec in orphan_records(record_dir or default_record_dir()):
        domid = rec.notes.get("domid")
        if rec.op not in ("create", "restore"):
            continue
        if isinstance(domid, int):
            out[domid] = rec
        elif not rec.steps:
            forget_record(rec)  # died before it made anything: nothing to recover
    return out


def forget_record(rec: OrphanRecord) -> None:
    """Drop the crash record once what it describes has been cleaned up."""
    try:
        rec.path.unlink()
    except FileNotFoundError:
        pass


# -- the journal ---------------------------------------------------------------------------


@dataclass
class _Undo:
    name: str
    fn: Callable[[], object]


@dataclass
class Journal:
    """See the module docstring."""

    op: str
    faults: FaultPlan | None = None  # None: from the environment
    record_dir: Path | str | None = None
    handle_signals: bool = True
    resume: bool = False  # keep the record after a failure: a later run finishes the job
    steps_done: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.faults is None:
            self.faults = FaultPlan.from_env()
        self._undos: list[_Undo] = []
        self._step = 0
        self._saved_handlers: dict[
            int, Callable[[int, FrameType | None], object] | int | None] = {}
        self._pending: list[int] = []
        self._deferring = False
        self._active = False
        self._record: Path | None = None

    # -- context management ---------------------------------------------------------------

    def __enter__(self) -> Journal:
        if self._active:
            raise RuntimeError("journal already active")
        self._active = True
        self._undos.clear()
        self.steps_done.clear()
        self.leftovers.clear()
        self._step = 0
        if self.record_dir is not None:
            d = private_dir(Path(self.record_dir))  # under the run dir: root's alone
            # Written when the first step's action starts, not here: a process killed
            # before it did anything leaves no record to clean up.
            self._record = d / f"{self.op}-{os.getpid()}.json"
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            for sig in ABORT_SIGNALS:
                self._saved_handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._deferring = True  # from here on a signal must not cut the clean-up short
        try:
            if exc is None and self._pending:
                # Asked to stop before the commit: the operation is aborted as a whole.
                exc = Interrupted(self._pending[0])
                self._rollback(exc)
                raise exc
            if exc is None:
                self.commit()
            else:
                self._rollback(exc)
        finally:
            self._active = False
            self._deferring = False
            self._restore_signals()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._deferring:
            self._pending.append(signum)
            return
        raise Interrupted(signum)

    def _restore_signals(self) -> None:
        for sig, old in self._saved_handlers.items():
            signal.signal(sig, old)
        self._saved_handlers.clear()
        if self._pending:
            log.info("%s: signal %s arrived during the clean-up; the operation was already "
                     "being aborted", self.op, self._pending[0])
        self._pending.clear()

    # -- steps ------------------------------------------------------------------------------

    def do(self, name: str, action: Callable[[], T],
           undo: Callable[[T], object] | None = None) -> T:
        """Run step ``name``; on success register ``undo(result)``; return the result."""
        if not self._active:
            raise RuntimeError("Journal.do outside its 'with' block")
        self._step += 1
        self._check_pending()
        self._fault_point(name)
        if self._step == 1:
            self._write_record()
        # A signal during the action is acted on once its undo is registered: interrupting
        # between "done" and "undo known" is exactly how debris is left behind.
        self._deferring = True
        t0 = time.perf_counter()
        try:
            result = action()
            log.debug("%s: step %d %r took %.3f s", self.op, self._step, name,
                      time.perf_counter() - t0)
            self.steps_done.append(name)
            if undo is not None:
                self._undos.append(_Undo(name, lambda: undo(result)))
        finally:
            self._deferring = False
        self._write_record()
        self._check_pending()
        return result

    def _check_pending(self) -> None:
        if self._pending:
            raise Interrupted(self._pending.pop(0))

    def push(self, name: str, undo: Callable[[], object]) -> None:
        """Register the undo of work done outside ``do``."""
        if not self._active:
            raise RuntimeError("Journal.push outside its 'with' block")
        self._undos.append(_Undo(name, undo))

    def note(self, key: str, value: object) -> None:
        """Remember a fact (a domid, a uuid) in the crash record."""
        self.notes[key] = value
        self._write_record()

    @property
    def step_count(self) -> int:
        return self._step

    def commit(self) -> None:
        """Success: forget the undos and the crash record."""
        self._undos.clear()
        self._drop_record()

    def _fault_point(self, name: str) -> None:
        trace = os.environ.get(TRACE_ENV)
        if trace:
            with open(trace, "a", encoding="utf-8") as f:
                f.write(f"{self.op} {self._step} {name}\n")
        assert self.faults is not None
        fault = self.faults.at(self.op, self._step)
        if fault is None:
            return
        log.warning("%s: fault injection at step %d (%s): %s", self.op, self._step, name,
                    fault.kind)
        if fault.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(10)  # SIGKILL is asynchronous only in theory; never go on
        raise InjectedFault(self.op, self._step, name)

    # -- rollback ---------------------------------------------------------------------------

    def _rollback(self, cause: BaseException) -> None:
        if self._undos:
            log.info("%s failed (%s): undoing %d step(s)", self.op, cause or type(cause).__name__,
                     len(self._undos))
        while self._undos:
            u = self._undos.pop()
            try:
                u.fn()
            except Exception as e:  # any failure: keep undoing the rest
                self.leftovers.append(u.name)
                log.warning("%s: rollback could not undo '%s': %s", self.op, u.name, e)
                cause.add_note(f"rollback could not undo '{u.name}': {e}")
        if self.leftovers or self.resume:
            self._write_record()
        else:
            self._drop_record()

    # -- crash record -------------------------------------------------------------------------

    def _write_record(self) -> None:
        if self._record is None:
            return
        doc = {"op": self.op, "pid": os.getpid(), "start_time": proc_start_time(os.getpid()),
               "steps": self.steps_done, "notes": self.notes, "leftovers": self.leftovers}
        tmp = self._record.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, default=str))
        os.replace(tmp, self._record)

    def _drop_record(self) -> None:
        if self._record is not None:
            try:
                self._record.unlink()
            except FileNotFoundError:
                pass


def traced_steps(trace_file: Path | str, op: str | None = None) -> Iterator[tuple[str, int, str]]:
    """Parse an ``XENTOOL_FAULT_TRACE`` file: (op, K, name) per step reached."""
    for line in Path(trace_file).read_text().splitlines():
        o, k, name = line.split(" ", 2)
        if op is None or o == op:
            yield o, int(k), name
