"""Domain shells: LightVM's split toolstack (SOSP'17) for PV guests.

Most of a create does not depend on the guest: making the domain, its vCPUs and limits,
the console and xenstore event channels, populating its memory, the xenstore nodes every
domain has.  With ``[prebuild] shells = N`` xentoold keeps N such **shells** ready
(:class:`Keeper`), paused and never started.  A create whose domain fits one (a PV guest
with the shell's ``memory=`` and maximum vCPUs, and the same ``XEN_DOMCTL_createdomain``
inputs but the handle) takes it (:func:`take`) instead of making a domain: it gives it the
guest's uuid as handle, writes the guest's own nodes, loads the kernel and start info,
and unpauses it.  The daemon then makes a new shell.

Each shell is a file ``<domid>.json`` in :func:`shell_dir` (root only, in the run
directory: gone at reboot, as the domains are) that says what a create needs of it: the
domain's own random handle (so a domid reused by another domain is never taken for a
shell), the createdomain inputs, the memory as runs of machine frames, the event channels.

* **Taking** one is renaming its file to ``<domid>.<pid>.taken``: of two creates only one
  wins; the winner's rollback journal notes the domid at once (a killed create's domain is
  then known to ``destroy``) and removes the file.  A create that fails after that destroys
  the shell with the rest of its work.  A ``.taken`` file whose process is gone (killed
  between the rename and the note) is the keeper's to destroy.
* **Making** one first writes ``<handle>.making``: a daemon killed half-way leaves a domain
  that the next keeper finds by that handle and destroys.
* ``xentool list`` does not show them (:func:`shell_domids`); ``xl list`` shows them as
  ``xentool-shell-<domid>``, paused, so an operator with xl knows what they are.
* The keeper destroys the shells when the daemon stops; a keeper that starts adopts the
  shells an earlier daemon left (killed, say) if they fit its shape, else destroys them.

A shell holds its memory: the keeper makes one only while the free memory stays at least
one shell's size, and makes none when xl.conf's autoballoon is on (it would shrink dom0
for guests that do not exist yet).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import typing
import uuid as uuidlib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from xentool.errors import XentoolError
from xentool.logs import get_logger
from xentool.state import private_dir, shell_dir_name, shell_domids

if TYPE_CHECKING:
    from collections.abc import Callable

    from domain_builder.pv import Memory
    from domain_builder.xenctrl import CreateConfig, XenCtrl
    from xenstore.client import Store

log = get_logger("xentool.daemon")

#: The name a shell goes by in XenStore (and so in ``xl list``) until a create takes it.
NAME_PREFIX = "xentool-shell-"
#: A shell's record is small (runs of frames); anything bigger is not one of ours.
MAX_RECORD = 1 << 20
#: How long the keeper waits between looks at its pool when nothing wakes it.
CHECK_S = 0.5
#: After a failure to make a shell (no memory, say) the keeper waits this long, doubled.
RETRY_S = 5.0
RETRY_MAX_S = 300.0


def available() -> bool:
    """Whether any shell is ready (a create without one does not look further)."""
    return bool(shell_domids())


# -- the record (pure) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """What a shell is made for: the createdomain inputs (handle aside) and the memory."""

    create: CreateConfig  # with a zero handle: each shell has its own
    nr_pages: int
    max_pages: int

    def fits(self, create: CreateConfig, nr_pages: int) -> bool:
        zero = bytes(16)
        return (nr_pages == self.nr_pages
                and replace(create, handle=zero) == replace(self.create, handle=zero))


@dataclass(frozen=True)
class Shell:
    """A shell as its file describes it."""

    domid: int
    handle: bytes
    shape: Shape
    memory: Memory

    def to_json(self) -> str:
        create = {k: v for k, v in asdict(self.shape.create).items() if k != "handle"}
        return json.dumps({
            "domid": self.domid, "handle": self.handle.hex(), "create": create,
            "nr_pages": self.shape.nr_pages, "max_pages": self.shape.max_pages,
            "p2m": runs(self.memory.p2m), "store_evtchn": self.memory.store_evtchn,
            "console_evtchn": self.memory.console_evtchn})

    @classmethod
    def from_json(cls, text: str) -> Shell:
        """The shell ``text`` describes; ValueError if it is not a well-formed record."""
        from domain_builder.pv import Memory
        from domain_builder.xenctrl import CreateConfig

        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        create = doc["create"]
        names = {f.name for f in fields(CreateConfig)} - {"handle"}
        if not isinstance(create, dict) or set(create) != names or not all(
                type(v) is int for v in create.values()):
            raise ValueError("bad createdomain inputs")
        handle = bytes.fromhex(_str(doc["handle"]))
        nr_pages, max_pages = _int(doc["nr_pages"]), _int(doc["max_pages"])
        p2m = unruns(doc["p2m"], limit=nr_pages)
        if len(p2m) != nr_pages:
            raise ValueError(f"{len(p2m)} frames for {nr_pages} pages")
        return cls(_int(doc["domid"]), handle,
                   Shape(CreateConfig(**create), nr_pages, max_pages),
                   Memory(p2m, _int(doc["store_evtchn"]), _int(doc["console_evtchn"])))


def _int(v: object) -> int:
    if type(v) is not int or v < 0:
        raise ValueError(f"{v!r} is not a count")
    return v


def _str(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{v!r} is not a string")
    return v


def runs(frames: tuple[int, ...] | list[int]) -> list[list[int]]:
    """``[first, count]`` runs of consecutive frames: a 2 MiB extent is one run."""
    out: list[list[int]] = []
    for mfn in frames:
        if out and out[-1][0] + out[-1][1] == mfn:
            out[-1][1] += 1
        else:
            out.append([mfn, 1])
    return out


def unruns(doc: object, *, limit: int) -> tuple[int, ...]:
    """The frames ``runs`` made runs of; at most ``limit`` of them (ValueError else)."""
    if not isinstance(doc, list):
        raise ValueError("frames are not a list")
    out: list[int] = []
    for run in doc:
        if (not isinstance(run, list) or len(run) != 2 or type(run[0]) is not int
                or type(run[1]) is not int or run[0] < 0 or run[1] < 1
                or len(out) + run[1] > limit):
            raise ValueError(f"bad run of frames {run!r}")
        out.extend(range(run[0], run[0] + run[1]))
    return tuple(out)


def _read(path: Path) -> Shell | None:
    """The shell in ``path``; None if it is gone (taken meanwhile) or not a record."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_RECORD + 1)
    except FileNotFoundError:
        return None
    try:
        if len(text) > MAX_RECORD:
            raise ValueError("too big")
        return Shell.from_json(text)
    except (ValueError, KeyError, TypeError) as e:
        log.warning("daemon: shells: %s is not a shell record (%s)", path, e)
        return None


def shell_dir() -> Path:
    return private_dir(Path(shell_dir_name()))


# -- taking one (a create) -----------------------------------------------------------------


@dataclass
class Taken:
    """A shell a create took: its file is ``<domid>.<pid>.taken`` until :meth:`adopted`."""

    shell: Shell
    path: Path

    @property
    def domid(self) -> int:
        return self.shell.domid

    def adopted(self) -> None:
        """The create's journal now names the domain: the file has done its part."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def take(xc: XenCtrl, create: CreateConfig, nr_pages: int) -> Taken | None:
    """Claim a ready shell that fits (its domain still the one the file describes), or
    None.  The caller owns the domain from here: it must destroy it if the create fails."""
    d = Path(shell_dir_name())
    for domid in sorted(shell_domids()):
        path = d / f"{domid}.json"
        shell = _read(path)
        if shell is None or not shell.shape.fits(create, nr_pages):
            continue
        taken = d / f"{domid}.{os.getpid()}.taken"
        try:
            os.rename(path, taken)
        except FileNotFoundError:
            continue  # another create took it first
        info = xc.domain_info(domid)
        if info is None or info.handle != shell.handle or info.dying:
            log.warning("shell %d is gone; looking for another", domid)
            with contextlib.suppress(FileNotFoundError):
                taken.unlink()
            continue
        log.info("took shell %d", domid)
        return Taken(shell, taken)
    return None


def remove_nodes(xs: Store, domid: int) -> None:
    """Remove the nodes a shell was made with (a failed create's undo of the take: the
    shell is destroyed with the rest, never put back)."""
    from xenstore.paths import domain_path, libxl_domain_path

    with xs.transaction() as t:
        t.rm(domain_path(domid), missing_ok=True)
        t.rm(libxl_domain_path(domid), missing_ok=True)


def _destroy(xc: XenCtrl, xs: Store, domid: int, handle: bytes) -> None:
    """Destroy domain ``domid`` if it still is the shell of ``handle``, and its nodes."""
    from domain_builder.errors import XenError

    info = xc.domain_info(domid)
    if info is None or info.handle != handle:
        return  # gone, or the domid is another domain's now
    with contextlib.suppress(XenError):  # already dying
        xc.destroy(domid)
    remove_nodes(xs, domid)


# -- making them (the daemon) -----------------------------------------------------------------


def make(xc: XenCtrl, xs: Store, shape: Shape, directory: Path) -> Shell:
    """Make a shell of ``shape`` and its file in ``directory``; nothing is left if it
    fails (a kill half-way leaves its ``.making`` file for the next keeper)."""
    from domain_builder import pv
    from xentool.nodes import shell_nodes, write_nodes

    handle = uuidlib.uuid4().bytes
    making = directory / f"{handle.hex()}.making"
    making.write_text("")
    domid = None
    try:
        domid = xc.create_domain(replace(shape.create, handle=handle))
        memory = pv.prepare(xc, domid, nr_pages=shape.nr_pages, max_pages=shape.max_pages,
                            max_vcpus=shape.create.max_vcpus)
        shell = Shell(domid, handle, shape, memory)
        with xs.transaction() as t, t.pipelined():
            write_nodes(t, shell_nodes(domid, f"{NAME_PREFIX}{domid}"))
        tmp = directory / f"{domid}.tmp"
        tmp.write_text(shell.to_json())
        os.replace(tmp, directory / f"{domid}.json")
    except BaseException:
        if domid is not None:
            _destroy(xc, xs, domid, handle)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            making.unlink()
    return shell


class Keeper:
    """Keeps ``count`` shells of ``shape`` ready until :meth:`stop`; xentoold runs
    :meth:`run` in a thread of its own.  :attr:`wake` makes it look at once (a domain was
    introduced: maybe a shell was taken)."""

    def __init__(self, count: int, shape: Shape, *, connect: Callable[[], Store],
                 close: Callable[[Store], None], xenctrl: Callable[[], XenCtrl],
                 stop: threading.Event, wake: threading.Event | None = None,
                 on_ready: Callable[[], None] = lambda: None) -> None:
        self.count = count
        self.shape = shape
        self.wake = wake or threading.Event()
        self._stop = stop
        self._connect = connect
        self._close = close
        self._xenctrl = xenctrl
        self._on_ready = on_ready

    def run(self) -> None:
        """Sweep, then keep the pool full until the stop event; then release it.
        ``on_ready`` is called once the first sweep is over (or the keeper gave up)."""
        from xentool.config.xlconf import load_global_config

        try:
            directory = shell_dir()
            lock = _keeper_lock(directory)
            if lock is None:
                raise XentoolError(f"another daemon keeps the shells in {directory}")
            with lock, self._xenctrl() as xc:
                if load_global_config().autoballoon_enabled(xc.version().commandline):
                    raise XentoolError("xl.conf's autoballoon is on: no shells are made "
                                       "(they would shrink dom0 for guests that do not "
                                       "exist yet)")
                xs = self._connect()
                try:
                    self.sweep(xc, xs, directory, adopt=True)
                    self._on_ready()
                    try:
                        self._keep(xc, xs, directory)
                    finally:
                        self.release(xc, xs, directory)
                finally:
                    self._close(xs)
        finally:
            self._on_ready()

    def _keep(self, xc: XenCtrl, xs: Store, directory: Path) -> None:
        delay = RETRY_S
        while not self._stop.is_set():
            self.sweep(xc, xs, directory, adopt=False)
            have = len(shell_domids())
            if have < self.count and self._room(xc):
                try:
                    shell = make(xc, xs, self.shape, directory)
                except Exception as e:
                    log.error("daemon: shells: making a shell failed: %s (again in %gs)",
                              e, delay)
                    self._stop.wait(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                log.info("daemon: shells: made shell %d (%d of %d ready)", shell.domid,
                         have + 1, self.count)
                delay = RETRY_S
                continue
            self.wake.wait(CHECK_S)
            self.wake.clear()

    def _room(self, xc: XenCtrl) -> bool:
        """Whether a shell leaves at least one shell's worth of memory free."""
        return xc.physinfo().free_pages >= 2 * self.shape.nr_pages

    def sweep(self, xc: XenCtrl, xs: Store, directory: Path, *, adopt: bool) -> None:
        """Destroy what no one will take: shells half made by a killed keeper, taken by a
        killed create (before its journal named the domain), whose domain went away, or
        (``adopt``: at the start) left by an earlier daemon in another shape."""
        from xentool.procs import process_alive

        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return
        handles: dict[bytes, int] | None = None
        for name in names:
            path = directory / name
            parts = name.split(".")
            if len(parts) == 2 and parts[1] == "making" and _hex(parts[0]):
                # Ours are gone before the next sweep (one keeper a host: the lock).
                if handles is None:
                    handles = {d.handle: d.domid for d in xc.domains()}
                domid = handles.get(bytes.fromhex(parts[0]))
                if domid is not None:
                    log.info("daemon: shells: destroying domain %d, a shell half made by "
                             "a daemon that was killed", domid)
                    _destroy(xc, xs, domid, bytes.fromhex(parts[0]))
                path.unlink(missing_ok=True)
            elif len(parts) == 3 and parts[2] == "taken" and parts[1].isdigit():
                if not process_alive(int(parts[1]), None):
                    shell = _read(path)
                    if shell is not None:
                        log.info("daemon: shells: shell %d was taken by a create that was "
                                 "killed; destroying it", shell.domid)
                        _destroy(xc, xs, shell.domid, shell.handle)
                    path.unlink(missing_ok=True)
            elif len(parts) == 2 and parts[1] == "json":
                shell = _read(path)
                info = None if shell is None else xc.domain_info(shell.domid)
                if shell is None or info is None or info.handle != shell.handle \
                        or info.dying:
                    path.unlink(missing_ok=True)  # destroyed by hand, say
                elif adopt and shell.shape != self.shape:
                    self._claim_and_destroy(xc, xs, path, shell)
                elif adopt:
                    log.info("daemon: shells: adopted shell %d", shell.domid)

    def _claim_and_destroy(self, xc: XenCtrl, xs: Store, path: Path, shell: Shell) -> None:
        """Destroy a ready shell unless a create takes it first (then it is the create's)."""
        release = path.with_suffix(".release")
        try:
            os.rename(path, release)
        except FileNotFoundError:
            return
        _destroy(xc, xs, shell.domid, shell.handle)
        release.unlink(missing_ok=True)

    def release(self, xc: XenCtrl, xs: Store, directory: Path) -> None:
        """The daemon stops: destroy every shell still ready."""
        n = 0
        for domid in sorted(shell_domids()):
            path = directory / f"{domid}.json"
            shell = _read(path)
            if shell is not None:
                self._claim_and_destroy(xc, xs, path, shell)
                n += 1
        log.info("daemon: shells: released %d shell(s)", n)


def _keeper_lock(directory: Path) -> typing.IO[bytes] | None:
    """The lock that makes one keeper a host (held while the file is open), or None."""
    import fcntl

    f = open(directory / "keeper.lock", "ab")  # noqa: SIM115 - returned, closed by the caller
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def _hex(s: str) -> bool:
    return len(s) == 32 and all(c in "0123456789abcdef" for c in s)


def wait_for_pool(count: int, timeout: float) -> bool:
    """Wait until ``count`` shells are ready (tests, benchmarks)."""
    deadline = time.monotonic() + timeout
    while len(shell_domids()) < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
