"""``xl save`` of x86 PV guests: suspend, write xl's save file, destroy (or resume).

The file is what ``xl save`` 4.17 writes, so ``xl restore`` reads it (and the other way):

* xl's save-file header (``tools/xl/xl_saverestore.c``): magic, byte order, the mandatory
  flags STREAMv2|JSON and, as optional data, the domain's configuration in libxl-json
  (as ``xl list -l`` retrieves it, with ``c_info.domid`` 0);
* the libxl stream v2 (``docs/specs/libxl-migration-stream.pandoc``): its header, a
  LIBXC_CONTEXT record, the libxc stream inline, END;
* the libxc stream v2 for x86 PV (``docs/specs/libxc-migration-stream.pandoc``) in the
  order ``xg_sr_save.c`` writes it: image and domain headers; X86_PV_INFO, the CPUID and
  MSR policies, STATIC_DATA_END; X86_PV_P2M_FRAMES; PAGE_DATA in batches of 1024 frames
  with their types, page-table pages rewritten from machine to pseudo-physical frames;
  X86_TSC_INFO, SHARED_INFO, and for each online vCPU X86_PV_VCPU_BASIC (start-info,
  GDT, CR3 and CR1 frames made pseudo-physical), _EXTENDED, _XSAVE, _MSRS; END.

The guest is suspended through the PV protocol first (``control/shutdown`` = ``suspend``,
acknowledged by the guest clearing the node, then the domain shuts down with reason
suspend; 60 s for each, as libxl), so this is a stop-and-copy save.  The stream is written
by :class:`PvSaver`, whose :meth:`PvSaver.send_pages` takes any set of frames: live
migration's pre-copy rounds will call it with the log-dirty bitmap's frames before the
final suspended round.

Under the rollback journal: whatever fails or interrupts the save before the file is
complete resumes the guest (``xc_domain_resume`` in its fast, cooperative form: the
guest's suspend hypercall returns "cancelled" and it carries on) and removes the partial
file.  A save killed with SIGKILL leaves its crash record (``save-<pid>.json``, noting the
domain and file): :func:`recover_killed_saves` finishes the rollback.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from xenstore.paths import domain_path
from xentool.errors import DomainNotFound, XentoolError
from xentool.logs import get_logger
from xentool.migration.libxl_stream import (
    LibxcContext,
    LibxlEnd,
    LibxlStreamWriter,
    XlSaveHeader,
)
from xentool.migration.stream import (
    MAX_BATCH_SIZE,
    PAGE_SHIFT,
    PAGE_SIZE,
    DomainHeader,
    DomainType,
    End,
    SharedInfo,
    StaticDataEnd,
    StreamWriter,
    X86CpuidPolicy,
    X86MsrPolicy,
    X86PvInfo,
    X86PvP2mFrames,
    X86PvVcpuBasic,
    X86PvVcpuExtended,
    X86PvVcpuMsrs,
    X86PvVcpuXsave,
    X86TscInfo,
    normalise_page_table,
    page_table_level,
    page_type_has_data,
    page_type_known,
    pte_frame,
)

if TYPE_CHECKING:
    from domain_builder.xenctrl import XenCtrl
    from xenstore.client import Transaction
    from xentool.journal import Journal
    from xentool.session import Session

log = get_logger(__name__)

Progress = Callable[[str], None]

INVALID_MFN = (1 << 64) - 1
#: libxl's waits: the guest's acknowledgement of the request, then its suspension.
ACK_TIMEOUT = 60.0
SUSPEND_TIMEOUT = 60.0

#: GDT entries a guest may have (Xen keeps the rest).
FIRST_RESERVED_GDT_ENTRY = 14 * 512

# struct shared_info (x86_64): offsets in arch_shared_info.
SHINFO_MAX_PFN = 3088
SHINFO_FLL = 3096
SHINFO_P2M_CR3 = 3112
SHINFO_P2M_VADDR = 3120


class SaveError(XentoolError):
    """The save could not be made; ``resumed``: the guest had been suspended and runs
    again (the partial file is removed either way)."""

    def __init__(self, message: str, resumed: bool = False) -> None:
        super().__init__(message)
        self.resumed = resumed


# -- machine <-> pseudo-physical (pure) ------------------------------------------------------


@dataclass(frozen=True)
class VcpuLayout:
    """Where the frames are in the raw x86_64 vcpu_guest_context (from the binding)."""

    size: int
    rdx: int
    ctrlreg: int
    gdt_frames: int
    gdt_ents: int


def normalise_vcpu(raw: bytes, vcpu: int, lay: VcpuLayout, m2p: Mapping[int, int]) -> bytes:
    """X86_PV_VCPU_BASIC's context: machine frames made pseudo-physical (vCPU 0's rdx is
    the start-info frame of the suspend record; the GDT frames; CR3; CR1 when set)."""
    buf = bytearray(raw)

    def to_pfn(mfn: int, what: str) -> int:
        pfn = m2p.get(mfn)
        if pfn is None:
            raise SaveError(f"Bad mfn {mfn:#x} for {what}")
        return pfn

    def get(off: int) -> int:
        return int(struct.unpack_from("<Q", buf, off)[0])

    def put(off: int, value: int) -> None:
        struct.pack_into("<Q", buf, off, value)

    if vcpu == 0:
        put(lay.rdx, to_pfn(get(lay.rdx), "suspend record"))
    ents = get(lay.gdt_ents)
    if ents > FIRST_RESERVED_GDT_ENTRY:
        raise SaveError(f"GDT entry count ({ents}) out of range (max "
                        f"{FIRST_RESERVED_GDT_ENTRY})")
    for i in range((ents + 511) // 512):
        off = lay.gdt_frames + 8 * i
        put(off, to_pfn(get(off), f"frame {i} of vcpu{vcpu}'s GDT"))
    cr3 = lay.ctrlreg + 3 * 8
    put(cr3, to_pfn(get(cr3) >> PAGE_SHIFT, f"vcpu{vcpu}'s cr3") << PAGE_SHIFT)
    cr1 = lay.ctrlreg + 8
    if get(cr1):
        put(cr1, 1 | (to_pfn(get(cr1) >> PAGE_SHIFT, f"vcpu{vcpu}'s cr1") << PAGE_SHIFT))
    return bytes(buf)


def _canonical(va: int) -> bool:
    top = va >> 47
    return top in (0, 0x1FFFF)


def p2m_list_frames(read: Callable[[Sequence[int]], bytes], p2m_cr3: int, p2m_vaddr: int,
                    max_pfn: int, max_mfn: int) -> tuple[list[int], int]:
    """The machine frames of a 64-bit guest's linear p2m list and the max_pfn they cover
    (libxc's map_p2m_list): walk the guest page tables from ``p2m_cr3`` over the virtual
    range of the list; trailing level-2 entries that all name the same page only map
    invalid entries, so max_pfn is lowered to the last distinct one.  ``read(mfns)``: the
    frames' contents, concatenated."""
    fpp = PAGE_SIZE // 8
    mask = (1 << 48) - 1
    frames = max_pfn // fpp + 1
    end = p2m_vaddr + frames * PAGE_SIZE - 1
    if (not _canonical(p2m_vaddr) or not _canonical(end) or end < p2m_vaddr
            or (p2m_vaddr <= 0xFFFF880000000000 and end > 0xFFFF800000000000)):
        raise SaveError(f"Bad virtual p2m address range {p2m_vaddr:#x}-{end:#x}")
    mfns = [p2m_cr3 >> PAGE_SHIFT]
    off = 0
    idx_start = idx_end = 0
    for level in (4, 3, 2, 1):
        ptes = read(mfns)
        shift = level * 9 + 3
        idx_start = ((p2m_vaddr - off) & mask) >> shift
        idx_end = ((end - off) & mask) >> shift
        mfns = []
        saved_mfn, saved_idx = 0, 0
        for idx in range(idx_start, idx_end + 1):
            (pte,) = struct.unpack_from("<Q", ptes, idx * 8)
            mfn = pte_frame(pte)
            if mfn == 0 or mfn > max_mfn:
                raise SaveError(f"Bad mfn {mfn:#x} during page table walk for vaddr "
                                f"{off + (idx << shift):#x} at level {level} of p2m list")
            mfns.append(mfn)
            if level == 2 and mfn != saved_mfn:
                saved_mfn, saved_idx = mfn, idx - idx_start
        if level == 2:
            if saved_idx == idx_end:
                saved_idx += 1
            lower = ((saved_idx << 9) * fpp) - 1
            if lower < max_pfn:
                max_pfn = lower
                frames = (max_pfn + fpp) // fpp
                end = p2m_vaddr + frames * PAGE_SIZE - 1
                idx_end = idx_start + saved_idx
                mfns = mfns[:saved_idx + 1]
        off = p2m_vaddr & ((mask >> shift) << shift)
    return mfns[:idx_end - idx_start + 1], max_pfn


# -- the saver -------------------------------------------------------------------------------


@dataclass
class SaveStats:
    pages: int = 0  # frames with data in the stream
    frames: int = 0  # frames listed (with or without data)
    pagetables: int = 0
    bytes: int = 0
    seconds: float = 0.0


@dataclass
class PvSaver:
    """Writes the libxc stream of a suspended (or, for live rounds, running) PV domain."""

    xc: XenCtrl
    domid: int
    out: BinaryIO
    stats: SaveStats = field(default_factory=SaveStats)

    def __post_init__(self) -> None:
        self.w = StreamWriter(self.out)
        self.p2m: list[int] = []
        self.m2p: dict[int, int] = {}
        self.p2m_pfns: list[int] = []
        self.max_pfn = 0
        self.shinfo = b""

    def _read_frames(self, mfns: Sequence[int]) -> bytes:
        with self.xc.map_foreign(self.domid, mfns, writable=False) as view:
            return bytes(view)

    # -- setup: the guest's own view of its memory ---------------------------------------
    def setup(self) -> None:
        info = self.xc.domain_info(self.domid)
        if info is None:
            raise DomainNotFound(str(self.domid))
        if info.hvm:
            raise SaveError(f"domain {self.domid} is not a PV guest: only PV guests can be "
                            "saved")
        width = self.xc.guest_width(self.domid)
        if width != 8:
            raise SaveError(f"domain {self.domid} is a {width * 8}-bit PV guest: only "
                            "64-bit PV guests can be saved")
        self.shinfo = self._read_frames([info.shared_info_frame])
        self.refresh_p2m()

    def refresh_p2m(self) -> None:
        """Read the guest's p2m (its pfn -> mfn list) and build the reverse map."""
        max_pfn = struct.unpack_from("<Q", self.shinfo, SHINFO_MAX_PFN)[0] - 1
        p2m_cr3, p2m_vaddr = struct.unpack_from("<QQ", self.shinfo, SHINFO_P2M_CR3)
        max_mfn = self.xc.maximum_ram_page()
        if not p2m_cr3:
            # TODO: guests without a linear p2m list (the 3-level frame-list tree).
            raise SaveError(f"domain {self.domid} publishes no p2m list (arch.p2m_cr3 is "
                            "0): it cannot be saved")
        leaves, self.max_pfn = p2m_list_frames(self._read_frames, p2m_cr3, p2m_vaddr,
                                               max_pfn, max_mfn)
        raw = self._read_frames(leaves)
        n = self.max_pfn + 1
        self.p2m = list(struct.unpack_from(f"<{n}Q", raw))
        self.m2p = {mfn: pfn for pfn, mfn in enumerate(self.p2m)
                    if mfn != INVALID_MFN and mfn <= max_mfn}
        try:
            self.p2m_pfns = [self.m2p[m] for m in leaves]
        except KeyError as e:
            raise SaveError(f"Bad mfn {e.args[0]:#x} in the p2m frame list") from None

    # -- records ---------------------------------------------------------------------------
    def write_headers(self) -> None:
        ver = self.xc.version()
        self.w.write_headers(DomainHeader(DomainType.X86_PV, ver.major, ver.minor))

    def write_static_data(self) -> None:
        self.w.write(X86PvInfo(guest_width=8, pt_levels=4))
        leaves, msrs = self.xc.cpu_policy_serialised(self.domid)
        if leaves:
            self.w.write(X86CpuidPolicy.decode_body(leaves))
        if msrs:
            self.w.write(X86MsrPolicy.decode_body(msrs))
        self.w.write(StaticDataEnd())

    def write_p2m_frames(self) -> None:
        self.w.write(X86PvP2mFrames(0, self.max_pfn, tuple(self.p2m_pfns)))

    def send_pages(self, pfns: Sequence[int]) -> None:
        """PAGE_DATA records for ``pfns`` (ascending), MAX_BATCH_SIZE frames each."""
        for i in range(0, len(pfns), MAX_BATCH_SIZE):
            self._send_batch(pfns[i:i + MAX_BATCH_SIZE])

    def send_all_pages(self) -> None:
        self.send_pages(range(self.max_pfn + 1))

    def _send_batch(self, pfns: Sequence[int]) -> None:
        mfns = [self.p2m[p] for p in pfns]
        types = self.xc.pfn_types(self.domid, mfns)
        with_data = []
        for pfn, mfn, t in zip(pfns, mfns, types, strict=True):
            if not page_type_known(t):
                raise SaveError(f"Unknown type {t:#x} for pfn {pfn:#x}")
            if page_type_has_data(t):
                with_data.append((mfn, t))
        if not with_data:
            self.w.write_page_data(pfns, types, b"")
        else:
            with self.xc.map_foreign(self.domid, [m for m, _ in with_data],
                                     writable=False) as view:
                tables = [k for k, (_, t) in enumerate(with_data) if page_table_level(t)]
                data: memoryview | bytearray = view
                if tables:  # rewritten in a copy: the guest's own pages stay as they are
                    data = bytearray(view)
                    for k in tables:
                        at = slice(k * PAGE_SIZE, (k + 1) * PAGE_SIZE)
                        data[at] = normalise_page_table(data[at], with_data[k][1],
                                                        self.m2p.get)
                    self.stats.pagetables += len(tables)
                self.w.write_page_data(pfns, types, data)
        self.stats.frames += len(pfns)
        self.stats.pages += len(with_data)

    def write_end_of_checkpoint(self) -> None:
        mode, nsec, khz, inc = self.xc.tsc_info(self.domid)
        self.w.write(X86TscInfo(mode=mode, khz=khz, nsec=nsec, incarnation=inc))
        info = self.xc.domain_info(self.domid)
        assert info is not None
        self.w.write(SharedInfo(self._read_frames([info.shared_info_frame])))
        lay = VcpuLayout(**self.xc.vcpu_context_offsets())
        for vcpu in range(info.max_vcpu_id + 1):
            if not self.xc.vcpu_info(self.domid, vcpu).online:
                continue
            raw = self.xc.vcpu_context_raw(self.domid, vcpu)
            self.w.write(X86PvVcpuBasic(vcpu, normalise_vcpu(raw, vcpu, lay, self.m2p)))
            ext = self.xc.ext_vcpu_context(self.domid, vcpu)
            if ext:
                self.w.write(X86PvVcpuExtended(vcpu, ext))
            xsave = self.xc.vcpu_xsave(self.domid, vcpu)
            if xsave:
                self.w.write(X86PvVcpuXsave(vcpu, xsave))
            msrs = self.xc.vcpu_msrs(self.domid, vcpu)
            if msrs:
                self.w.write(X86PvVcpuMsrs(vcpu, msrs))

    def write_end(self) -> None:
        self.w.write(End())

    def save_suspended(self) -> SaveStats:
        """The whole libxc stream of a domain that is already suspended."""
        t0 = time.monotonic()
        start = self.w.offset
        self.setup()
        self.write_headers()
        self.write_static_data()
        self.write_p2m_frames()
        self.send_all_pages()
        self.write_end_of_checkpoint()
        self.write_end()
        self.stats.seconds = time.monotonic() - t0
        self.stats.bytes = self.w.offset - start
        return self.stats


# -- suspend / resume --------------------------------------------------------------------------


def _suspended(s: Session, domid: int) -> bool:
    info = s.xc.domain_info(domid)
    if info is None or info.dying:
        raise SaveError(f"domain {domid} went away while being suspended")
    if info.shutdown and info.shutdown_reason != 2:  # SHUTDOWN_suspend
        raise SaveError(f"domain {domid} shut down (reason {info.shutdown_reason}) instead "
                        "of suspending")
    return bool(info.shutdown)


def suspend(s: Session, domid: int, ack_timeout: float = ACK_TIMEOUT,
            timeout: float = SUSPEND_TIMEOUT) -> None:
    """Suspend a PV guest cooperatively, as libxl does without a suspend event channel."""
    from xentool.control import _acked, _wait_until

    node = f"{domain_path(domid)}/control/shutdown"
    s.xs.write(node, "suspend")
    if not _wait_until(s, node, lambda: _acked(s, domid), ack_timeout):
        # Withdraw the request unless the guest took it at the last moment.
        def cancel(t: Transaction) -> bool:
            if not t.get(node):
                return False
            t.write(node, "")
            return True

        if s.xs.transact(cancel):
            raise SaveError(f"domain {domid}: guest didn't acknowledge suspend, request "
                            "cancelled")
    if not _wait_until(s, "@releaseDomain", lambda: _suspended(s, domid), timeout):
        raise SaveError(f"domain {domid}: guest did not suspend within {timeout:g}s")


def resume(s: Session, domid: int) -> None:
    """Undo a suspend: a suspended guest runs again (it sees its suspend cancelled); a
    request it has not taken yet is withdrawn."""
    info = s.xc.domain_info(domid)
    if info is None or info.dying:
        return
    if info.shutdown and info.shutdown_reason == 2:
        s.xc.resume(domid, fast=True)
        s.xs.resume_domain(domid)
    else:
        node = f"{domain_path(domid)}/control/shutdown"
        if s.xs.get(node) == "suspend":
            s.xs.write(node, "")


# -- the verb's library side -------------------------------------------------------------------


def config_json(s: Session, domid: int) -> bytes:
    """The configuration xl puts in the save file: libxl_retrieve_domain_configuration's,
    domid zeroed (xl save without -D), printed as libxl prints it, NUL-terminated."""
    from xentool.retrieve import retrieve

    doc = retrieve(s, domid).config
    c_info = doc.get("c_info")
    if isinstance(c_info, dict):
        c_info["domid"] = 0
    return XlSaveHeader.for_config(doc).config


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def save_domain(s: Session, domid: int, path: str, *, checkpoint: bool = False,
                leave_paused: bool = False, progress: Progress | None = None) -> SaveStats:
    """``xl save [-c] [-p] DOMAIN FILE``: see the module docstring."""
    from xentool.destroy import destroy_domain
    from xentool.journal import Journal, default_record_dir
    from xentool.locks import domain_lock

    say = progress or (lambda msg: log.info("%s", msg))
    if domid == 0:
        raise SaveError("cannot save domain 0: it runs this toolstack")
    with domain_lock(domid):
        info = s.xc.domain_info(domid)
        if info is None:
            raise DomainNotFound(str(domid))
        if info.hvm:
            raise SaveError(f"domain {domid} is not a PV guest: only PV guests can be saved")
        if info.shutdown or info.dying:
            raise SaveError(f"domain {domid} is shut down: nothing to save")
        config = config_json(s, domid)
        j = Journal("save", record_dir=default_record_dir())
        try:
            stats = _save_steps(j, s, domid, path, config, info.uuid, say)
        except SaveError as e:
            e.resumed = bool(j.notes.get("suspending"))
            raise
        except (XentoolError, OSError) as e:
            # The journal has resumed the guest if it got as far as suspending it.
            cause = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise SaveError(f"{path}: {cause}",
                            resumed=bool(j.notes.get("suspending"))) from None
    if checkpoint or leave_paused:
        if leave_paused:
            s.xc.pause(domid)
        resume(s, domid)
    else:
        destroy_domain(s, domid)
    return stats


def _save_steps(j: Journal, s: Session, domid: int, path: str, config: bytes, uuid: object,
            say: Progress) -> SaveStats:
    with j:
        j.note("domid", domid)
        j.note("uuid", str(uuid))
        j.note("file", os.path.abspath(path))

        def open_file() -> BinaryIO:
            try:
                return open(path, "wb")
            except OSError as e:
                raise SaveError(f"Failed to open temp file {path} for writing: "
                                f"{e.strerror}") from None

        def drop(f: BinaryIO) -> None:
            f.close()
            _remove(path)

        f = j.do("open file", open_file, undo=drop)
        header = XlSaveHeader(config)
        j.do("write header", lambda: f.write(header.encode()))
        say(f"Saving to {path} new xl format (info 0x{header.mandatory_flags:x}"
            f"/0x{header.optional_flags:x}/{len(header.optional_data)})")
        def suspend_step() -> None:
            j.note("suspending", True)
            try:
                suspend(s, domid)
            except BaseException:
                # The guest may have taken the request after all: the step has no undo
                # yet, so take it back here.
                resume(s, domid)
                raise

        j.do("suspend", suspend_step, undo=lambda _: resume(s, domid))
        saver = PvSaver(s.xc, domid, f)

        def stream() -> SaveStats:
            libxl = LibxlStreamWriter(f)
            libxl.write_header()
            libxl.write(LibxcContext())
            stats = saver.save_suspended()
            libxl.write(LibxlEnd())
            return stats

        # Flushed, not fsynced, as xl: a sync of the whole image to disk made a save
        # four times slower than xl's in the testbed.
        stats = j.do("write stream", stream)
        j.do("flush file", f.flush)
        f.close()
    log.info("domain %d saved: %d frames, %d with data (%d page tables), %d bytes of "
             "stream in %.2f s", domid, stats.frames, stats.pages, stats.pagetables,
             stats.bytes, stats.seconds)
    return stats


def recover_killed_saves(s: Session) -> list[int]:
    """Finish the rollback of saves killed mid-way (SIGKILL): resume their guests if
    still suspended, remove their partial files.  Returns the domids resumed."""
    from xentool.journal import default_record_dir, forget_record, orphan_records

    done = []
    for rec in orphan_records(default_record_dir()):
        if rec.op != "save":
            continue
        domid = rec.notes.get("domid")
        uuid = rec.notes.get("uuid")
        path = rec.notes.get("file")
        if isinstance(domid, int):
            info = s.xc.domain_info(domid)
            if info is not None and str(info.uuid) == uuid:
                resume(s, domid)
                done.append(domid)
        # The record outlives the commit only if the save never finished: its file is
        # partial (or the guest is running again, which makes it stale).
        if isinstance(path, str) and rec.steps:
            _remove(path)
        forget_record(rec)
    return done
