"""``xl migrate`` and ``xl migrate-receive`` for x86 PV guests, over xl 4.17's transport.

The sender runs ``sh -c RUNE`` with pipes on its stdin and stdout, where RUNE is, as
``xl migrate`` builds it, ``exec SSH HOST xentool [-t] [-T] [-v..] migrate-receive [-e]
[-d] [-p]`` (``-s`` replaces ``ssh``; an empty ``-s`` makes HOST the whole command, the
way to run a receiver on this host).  Over those pipes (``tools/xl/xl_migrate.c``):

1. the receiver writes its banner; the sender writes xl's save-file header with the
   domain's stored configuration (or ``-C``'s), then the libxl stream with the libxc one
   in it, exactly what ``xl save`` would write;
2. the receiver restores the guest paused, named ``NAME--incoming``, and writes "ready";
3. the sender renames its copy ``NAME--migratedaway`` and gives permission to go (the
   point of no return); the receiver renames its copy ``NAME``, unpauses it and reports
   a status byte; 0: the sender destroys its copy.  Otherwise the receiver destroys its
   copy and hands the guest back: the sender renames and resumes it.

The stream is live, as xl's always is (``--live`` is accepted and changes nothing, as in
xl): pre-copy rounds under log-dirty mode while the guest runs -- all pages, then those
it dirtied meanwhile, until fewer than :data:`DIRTY_THRESHOLD` are dirty or after
:data:`MAX_ROUNDS` rounds (libxc's default policy) -- then the guest is suspended and the
pages dirtied since, with those a round had to leave for later, go in the final
stop-and-copy round before the vCPU state.

Under the rollback journal: whatever fails or interrupts the sender before the permission
to go leaves the guest running on the source (log-dirty off, resumed, its name back); a
sender killed with SIGKILL leaves a record that the next ``xentool migrate`` (or
:func:`recover_killed_migrations`) finishes the rollback from.  The receiver restores in
the create journal and destroys its copy on any failure after that, so it leaves nothing
(xl's receiver leaves a paused ``NAME--incoming`` when the sender vanishes; xentool does
not).
"""

from __future__ import annotations

import errno
import functools
import io
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, cast

from xentool.errors import XentoolError
from xentool.logs import get_logger
from xentool.migration.libxl_stream import (
    MIGRATE_PERMISSION_TO_GO,
    MIGRATE_RECEIVER_BANNER,
    MIGRATE_RECEIVER_READY,
    MIGRATE_REPORT,
    LibxcContext,
    LibxlEnd,
    LibxlStreamWriter,
    XlSaveHeader,
)
from xentool.migration.save import PvSaver, SaveError, SaveStats, resume, suspend
from xentool.migration.stream import PageTableError, page_table_level

if TYPE_CHECKING:
    from xentool.config.xlconf import GlobalConfig
    from xentool.journal import Journal
    from xentool.session import Session

log = get_logger(__name__)

Say = Callable[[str], None]

#: libxc's default pre-copy policy (xg_sr_save.c): stop and copy once fewer pages than
#: this are dirty, or after this many rounds following the first full pass.
DIRTY_THRESHOLD = 50
MAX_ROUNDS = 5
#: libxl's ERROR_FAIL, the status byte a receiver reports on failure (as -rc).
STATUS_FAIL = 3
#: How long a failed sender waits for the receiving end to clean up and exit (xl: 2 s).
FAILURE_WAIT = 60.0
#: What xl calls the stream in its receiver's messages.
INCOMING = "incoming migration stream"


class MigrateError(XentoolError):
    """A migration that did not happen; the guest runs on the source."""


class HandshakeLost(XentoolError):
    """The final handshake broke after the permission to go was given: where the guest
    runs is not known from here (xl's "failed during final handshake")."""


# -- transport -------------------------------------------------------------------------------


def rune(ssh_command: str, host: str, *, tty: bool = False, timestamps: bool = False,
         verbose: int = 0, daemonize: bool = True, debug: bool = False,
         pause_after: bool = False) -> str:
    """The shell command xl runs for the receiving end (``xentool`` where xl says ``xl``):
    with an empty ``ssh_command``, ``host`` itself."""
    if not ssh_command:
        return host
    return (f"exec {ssh_command} {host} xentool{' -t' if tty else ''}"
            f"{' -T' if timestamps else ''}{' -' + 'v' * verbose if verbose else ''}"
            f" migrate-receive{'' if daemonize else ' -e'}{' -d' if debug else ''}"
            f"{' -p' if pause_after else ''}")


def read_fixed(fp: BinaryIO, msg: bytes, what: str, command: str | None = None) -> None:
    """Read exactly ``msg`` from the peer (xl's migrate_read_fixedmessage)."""
    stream = "migration receiver stream" if command else "migration stream"
    got = b""
    while len(got) < len(msg):
        chunk = fp.read(len(msg) - len(got))
        if not chunk:
            where = f" (command run was: {command} )" if command else ""
            raise MigrateError(f"{stream}: end of stream before the {what}{where}")
        got += chunk
    if got != msg:
        where = f" (command run was: {command} )" if command else ""
        raise MigrateError(f"{stream} contained unexpected data instead of {what}{where}")


def _write(fp: BinaryIO, data: bytes) -> None:
    fp.write(data)
    fp.flush()


# -- the live stream -------------------------------------------------------------------------


def bitmap_pfns(bitmap: bytes, limit: int) -> list[int]:
    """The pfns whose bits are set in a log-dirty bitmap (bit i of byte i // 8), below
    ``limit``, ascending."""
    out: list[int] = []
    for w in range(0, len(bitmap), 8):
        word = int.from_bytes(bitmap[w:w + 8], "little")
        base = w * 8
        while word:
            low = word & -word
            pfn = base + low.bit_length() - 1
            if pfn >= limit:
                return out
            out.append(pfn)
            word ^= low
    return out


@dataclass
class LiveStats:
    rounds: list[int]  # pages sent in each pre-copy round
    final: int = 0  # pages sent while the guest was suspended
    deferred: int = 0  # pages a round left to the final one
    downtime: float = 0.0  # from the suspend to the end of the stream
    live: bool = True  # pre-copy rounds were made
    seconds: float = 0.0
    save: SaveStats | None = None


def _batches(pfns: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for i in range(0, len(pfns), size):
        yield pfns[i:i + size]


def send_round(saver: PvSaver, pfns: Sequence[int]) -> set[int]:
    """A pre-copy round: the pages of ``pfns`` while the guest runs.  A batch whose page
    tables cannot be made pseudo-physical now (the guest is changing them; libxc defers
    such pages too) is left for the final round: its pfns are returned."""
    from xentool.migration.stream import MAX_BATCH_SIZE

    later: set[int] = set()
    for batch in _batches(pfns, MAX_BATCH_SIZE):
        try:
            saver.send_pages(batch)
        except (PageTableError, SaveError) as e:
            # Send the rest of the batch now, its page tables later (a running Linux maps
            # frames outside its p2m, e.g. shared info, until it suspends).
            types = saver.xc.pfn_types(saver.domid, [saver.p2m[p] for p in batch])
            tables = [p for p, t in zip(batch, types, strict=True) if page_table_level(t)]
            rest = [p for p, t in zip(batch, types, strict=True) if not page_table_level(t)]
            log.debug("deferring %d page tables from %#x: %s", len(tables), batch[0], e)
            later.update(tables)
            try:
                saver.send_pages(rest)
            except (PageTableError, SaveError):
                later.update(rest)
    return later


def send_live(j: Journal, s: Session, domid: int, out: BinaryIO, *, live: bool = True,
              say: Say) -> LiveStats:
    """The libxl stream of ``domid`` onto ``out``; the guest is suspended (a journal step,
    undone by resuming it) for the final round."""
    xc = s.xc
    t0 = time.monotonic()
    libxl = LibxlStreamWriter(out)
    libxl.write_header()
    libxl.write(LibxcContext())
    saver = PvSaver(xc, domid, out)
    stats = LiveStats(rounds=[])

    def logdirty_on() -> bool:
        """Whether log-dirty mode is on: a Xen without shadow paging has none for PV
        guests (EOPNOTSUPP), and the migration is then stop-and-copy."""
        try:
            xc.logdirty(domid, True)
        except OSError as e:
            if e.errno == errno.EOPNOTSUPP:
                return False
            # Already in a shadow mode (libxc: turn it off and try again).
            xc.logdirty(domid, False)
            xc.logdirty(domid, True)
        return True

    def logdirty_off() -> None:
        info = xc.domain_info(domid)
        if info is not None and not info.dying:
            try:
                xc.logdirty(domid, False)
            except OSError as e:
                if e.errno != errno.EOPNOTSUPP:  # no shadow paging: nothing to turn off
                    raise

    def suspend_step() -> None:
        j.note("suspending", True)
        try:
            suspend(s, domid)
        except BaseException:
            resume(s, domid)  # the guest may have taken the request after all
            raise

    final: set[int] = set()
    if live and not j.do("log-dirty on", logdirty_on, undo=lambda _: logdirty_off()):
        log.warning("domain %d: Xen has no log-dirty mode for PV guests (built without "
                    "shadow paging): migrating with the guest suspended throughout", domid)
        live = False
    stats.live = live
    if live:
        j.do("setup", saver.setup)
        def static_data() -> None:
            saver.write_headers()
            saver.write_static_data()
            saver.write_p2m_frames()

        j.do("static data", static_data)
        n = saver.max_pfn + 1
        todo: Sequence[int] = range(n)
        deferred: set[int] = set()
        for rnd in range(MAX_ROUNDS + 1):
            sent_before = saver.stats.pages
            deferred |= j.do(f"pre-copy round {rnd + 1}",
                             functools.partial(send_round, saver, todo))
            stats.rounds.append(saver.stats.pages - sent_before)
            bitmap, _ = xc.logdirty_clean(domid, n)
            todo = bitmap_pfns(bitmap, n)
            log.info("pre-copy round %d: %d pages sent, %d dirtied meanwhile", rnd + 1,
                     stats.rounds[-1], len(todo))
            if len(todo) < DIRTY_THRESHOLD:
                break
        final = set(todo) | deferred
        stats.deferred = len(deferred)
        t_down = time.monotonic()
        j.do("suspend", suspend_step, undo=lambda _: resume(s, domid))

        def stop_and_copy() -> None:
            bitmap, _ = xc.logdirty_clean(domid, n)
            pages = sorted(final.union(bitmap_pfns(bitmap, n)))
            before = saver.stats.pages
            saver.send_pages(pages)
            stats.final = saver.stats.pages - before
            saver.write_end_of_checkpoint()
            saver.write_end()
            libxl.write(LibxlEnd())
            out.flush()

        j.do("stop and copy", stop_and_copy)
    else:
        t_down = time.monotonic()
        j.do("suspend", suspend_step, undo=lambda _: resume(s, domid))

        def whole() -> None:
            saver.save_suspended()
            libxl.write(LibxlEnd())
            out.flush()

        j.do("stream", whole)
    stats.downtime = time.monotonic() - t_down
    stats.seconds = time.monotonic() - t0
    stats.save = saver.stats
    if live:
        try:
            logdirty_off()
        except XentoolError as e:
            log.warning("domain %d: log-dirty mode not turned off: %s", domid, e)
    return stats


# -- the sender ------------------------------------------------------------------------------


def config_for(s: Session, domid: int, config_file: str | None) -> bytes:
    """xl's save-file header for the stream: the stored configuration, or ``config_file``
    (xl.cfg) turned into libxl JSON as xl does for ``-C``; domid 0 as without ``-D``."""
    from xentool.migration.save import config_json

    if config_file is None:
        try:
            return XlSaveHeader(config_json(s, domid)).encode()
        except XentoolError as e:
            raise MigrateError("No config file stored for running domain and none "
                               f"supplied - cannot migrate. ({e})") from None
    from xentool import config as xlcfg
    from xentool.config.libxl_json import to_libxl

    text = xlcfg.read_config_text(config_file)
    doc = to_libxl(xlcfg.loads(text, config_file))
    c_info = doc.get("c_info")
    if isinstance(c_info, dict):
        c_info["domid"] = 0
    return XlSaveHeader.for_config(doc).encode()


@dataclass
class Outcome:
    stats: LiveStats
    name: str


def migrate_domain(s: Session, domid: int, command: str, *, config_file: str | None = None,
                   live: bool = True, say: Say | None = None) -> Outcome:
    """``xl migrate``: see the module docstring.  ``command`` is the rune (:func:`rune`).
    Raises MigrateError (the guest runs here) or HandshakeLost."""
    from xentool.control import rename_domain
    from xentool.journal import Journal, default_record_dir

    emit = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if domid == 0:
        raise MigrateError("cannot migrate domain 0")
    info = s.xc.domain_info(domid)
    if info is None:
        raise MigrateError(f"domain {domid} does not exist")
    if info.hvm:
        raise MigrateError(f"domain {domid} is not a PV guest: xentool migrates PV guests "
                           "only")
    if info.shutdown or info.dying:
        raise MigrateError(f"domain {domid} is shut down: nothing to migrate")
    name = s.name(domid) or ""
    header = config_for(s, domid, config_file)

    # Buffered: a raw pipe write interrupted by a signal may write part of a record.
    child = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    send = cast(BinaryIO, child.stdin)
    recv = cast(BinaryIO, child.stdout)
    away = f"{name}--migratedaway"
    try:
        j = Journal("migrate", record_dir=default_record_dir())
        try:
            with j:
                j.note("domid", domid)
                j.note("uuid", str(info.uuid))
                j.note("name", name)
                j.do("banner", lambda: read_fixed(recv, MIGRATE_RECEIVER_BANNER, "banner",
                                                  command))
                j.do("header", lambda: _write(send, header))
                stats = send_live(j, s, domid, send, live=live, say=emit)
                j.do("ready", lambda: read_fixed(recv, MIGRATE_RECEIVER_READY,
                                                 "ready message", command))
                emit("migration sender: Target has acknowledged transfer.")
                if name:
                    j.do("rename away", lambda: rename_domain(s, domid, away, name),
                         undo=lambda _: rename_domain(s, domid, name, away))
                # The record's last word: a sender killed from here on has given (or was
                # about to give) the permission: its guest must not simply resume.
        except (XentoolError, OSError) as e:
            _close(send)
            cause = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            emit(f"migration sender: {cause}")
            _reap(child, FAILURE_WAIT)
            raise MigrateError("Migration failed, resuming at sender.") from None
        emit("migration sender: Giving target permission to start.")
        try:
            _write(send, MIGRATE_PERMISSION_TO_GO)
            read_fixed(recv, MIGRATE_REPORT, "success/failure report message", command)
            status = recv.read(1)
            if len(status) != 1:
                raise MigrateError("migration ack stream: end of stream before the "
                                   "success/failure status")
            if status[0]:
                emit("migration sender: Target reports startup failure (status code "
                     f"{status[0]}).")
                read_fixed(recv, MIGRATE_PERMISSION_TO_GO, "permission for sender to resume",
                           command)
                emit("migration sender: Trying to resume at our end.")
                if name:
                    rename_domain(s, domid, name, away)
                resume(s, domid)
                emit("migration sender: Resumed OK.")
                _reap(child, FAILURE_WAIT)
                raise MigrateError("Migration failed due to problems at target.")
        except (OSError, MigrateError) as e:
            if isinstance(e, MigrateError) and "problems at target" in str(e):
                raise
            _reap(child)
            raise HandshakeLost(
                "** Migration failed during final handshake **\n"
                "Domain state is now undefined !\n"
                "Please CHECK AT BOTH ENDS for running instances, before renaming and\n"
                " resuming at most one instance.  Two simultaneous instances of the domain\n"
                " would probably result in SEVERE DATA LOSS and it is now your\n"
                " responsibility to avoid that.  Sorry.") from None
        emit("migration sender: Target reports successful startup.")
        destroy_source(s, domid, str(info.uuid))
        _reap(child)
        return Outcome(stats, name)
    finally:
        _close(send)
        _close(recv)
        if child.poll() is None:
            _reap(child)


def destroy_source(s: Session, domid: int, uuid: str) -> None:
    """Destroy the migrated-away copy.  When the guest arrived on this same host (the same
    uuid runs in another domain), the ``/vm/<uuid>`` node and the record are the new
    copy's: the old one lets go of them instead of removing them."""
    from xenstore.paths import domain_path
    from xentool.destroy import destroy_domain

    twin = any(str(d.uuid) == uuid and d.domid != domid and not d.dying
               for d in s.xc.domains())
    if twin:
        s.xs.rm(f"{domain_path(domid)}/vm", missing_ok=True)
    destroy_domain(s, domid, forget=not twin)


def _close(fp: BinaryIO) -> None:
    try:
        fp.close()
    except OSError:
        pass


def _reap(child: subprocess.Popen[bytes], timeout: float = 2.0) -> None:
    """Wait a little for the transport to exit (xl waits 2 s), then leave it."""
    if child.stdin is not None:
        _close(cast(BinaryIO, child.stdin))
    try:
        rc = child.wait(timeout)
        if rc:
            log.info("migration transport process exited with status %d", rc)
    except subprocess.TimeoutExpired:
        log.info("migration child [%d] not exiting, no longer waiting", child.pid)


def recover_killed_migrations(s: Session) -> list[int]:
    """Finish the rollback of senders killed before the permission to go: log-dirty off,
    the original name back, the guest resumed.  Returns the domids resumed."""
    from xentool.control import rename_domain
    from xentool.journal import default_record_dir, forget_record, orphan_records

    done = []
    for rec in orphan_records(default_record_dir()):
        if rec.op != "migrate":
            continue
        domid, uuid, name = (rec.notes.get(k) for k in ("domid", "uuid", "name"))
        if isinstance(domid, int):
            info = s.xc.domain_info(domid)
            if info is not None and str(info.uuid) == uuid and not info.dying:
                try:
                    s.xc.logdirty(domid, False)
                except XentoolError:
                    pass
                if isinstance(name, str) and name and s.name(domid) != name:
                    rename_domain(s, domid, name)
                resume(s, domid)
                done.append(domid)
        forget_record(rec)
    return done


# -- the receiver ----------------------------------------------------------------------------


def migrate_receive(gconf: GlobalConfig, *, debug: bool = False, monitor: bool = True,
                    foreground: bool = False, pause_after: bool = False, proto_in: int = 0,
                    proto_out: int = 1) -> int:
    """``xl migrate-receive``: the stream on ``proto_in``, the acks on ``proto_out``; the
    guest arrives as NAME--incoming and runs as NAME once the sender says so.  Returns
    the process's exit status."""
    from xentool import Host
    from xentool.control import rename_domain
    from xentool.migration.restore import restore
    from xentool.session import Session

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    out = io.FileIO(proto_out, "wb", closefd=False)
    inp = io.FileIO(proto_in, "rb", closefd=False)
    say("migration target: Ready to receive domain.")
    _write(out, MIGRATE_RECEIVER_BANNER)
    try:
        domid = restore(INCOMING, stream=io.FileIO(proto_in, "rb", closefd=False),
                        paused=True, handle_signals=True, gconf=gconf, record=monitor,
                        debug=debug, name_suffix="--incoming")
    except (XentoolError, OSError) as e:
        say(f"migration target: {e}")
        say("migration target: Domain creation failed (code -3).")
        return 1
    with Session() as s:
        info = s.xc.domain_info(domid)
        uuid = str(info.uuid) if info is not None else ""
        incoming = s.name(domid) or ""
        name = incoming.removesuffix("--incoming")
        say("migration target: Transfer complete, requesting permission to start domain.")
        rc = 0
        try:
            _write(out, MIGRATE_RECEIVER_READY)
            read_fixed(inp, MIGRATE_PERMISSION_TO_GO, "GO message")
        except (OSError, MigrateError) as e:
            # The sender is gone or refused: the guest is still its own.
            say(f"migration target: {e.strerror if isinstance(e, OSError) else e}")
            say("migration target: Failure, destroying our copy.")
            destroy_source(s, domid, uuid)
            return 1
        say("migration target: Got permission, starting domain.")
        try:
            if incoming != name:
                rename_domain(s, domid, name, incoming)
            with Host(handle_signals=True) as host:
                dom = host.domain(domid)
                if monitor and not foreground:
                    dom.watch(background=True)
                if not pause_after:
                    dom.unpause()
            say("migration target: Domain started successsfully.")
        except XentoolError as e:
            say(f"migration target: {e}")
            rc = STATUS_FAIL
        try:
            _write(out, MIGRATE_REPORT + bytes([rc]))
        except OSError:
            if rc:
                destroy_source(s, domid, uuid)
            return 1
        if rc:
            say("migration target: Failure, destroying our copy.")
            destroy_source(s, domid, uuid)
            say("migration target: Cleanup OK, granting sender permission to resume.")
            try:
                _write(out, MIGRATE_PERMISSION_TO_GO)
            except OSError:
                pass
            return 1
    say("migration target: All done.")
    if monitor and foreground:
        with Host(handle_signals=True) as host:
            host.domain(domid).watch(background=False)
    return 0
