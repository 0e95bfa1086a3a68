"""``restore``: an x86 PV guest from an ``xl save`` file, as ``xl restore`` does.

The file is xl's save-file header with the domain's stored configuration (libxl JSON),
then the libxl stream v2 whose LIBXC_CONTEXT record carries the libxc stream.  The domain
is made by the create path (:func:`xentool.create._create_steps`: same name, uuid, vCPUs,
memory, XenStore tree, console, disks and vifs, stored config, journal); only its build
step differs: instead of booting a kernel it fills the domain from the stream, the way
libxenguest's x86 PV restore does (``xg_sr_restore.c``, ``xg_sr_restore_x86_pv.c``):

* memory: every pfn of a PAGE_DATA record is populated (4 KiB at a time, so the guest's
  pseudo-physical map is what it was), its contents written, page-table pages first
  *localised* (each present entry's pfn turned into the new machine frame; frames a table
  names before their own page arrives are populated on the spot);
* once the stream has ended: vCPU contexts (vCPU 0's start-info page, GDT frames, cr3 and
  the user cr1 translated to machine frames), pinned page tables, the guest's own p2m
  written into the frames X86_PV_P2M_FRAMES named, and the grant entries of the console
  and XenStore rings;
* SHARED_INFO, TSC_INFO and the CPUID/MSR policy (at STATIC_DATA_END) as they arrive.

The XenStore and console rings are the guest's own pages: the start-info page says where
they are, and new event channels are allocated for them before the stream is read (what
libxl hands ``xc_domain_restore``).  Everything runs in the create journal, so a failed
or killed restore leaves nothing; errors are one line naming the file.
"""

from __future__ import annotations

import sys
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from xentool.errors import XentoolError
from xentool.logs import get_logger
from xentool.migration import libxl_stream as lx
from xentool.migration import stream as sr

if TYPE_CHECKING:
    from domain_builder.pv import BuiltPv
    from domain_builder.xenctrl import XenCtrl
    from xentool.config.model import DomainConfig
    from xentool.config.xlconf import GlobalConfig

log = get_logger(__name__)


class RestoreError(XentoolError):
    """A save file xentool cannot restore; the message names the file."""


# ---------------------------------------------------------------------------------------
# xl's save-file header


def describe(header: lx.XlSaveHeader, path: str) -> str:
    """The line xl prints on loading a save file."""
    return (f"Loading new save file {path} (new xl fmt info {header.mandatory_flags:#x}/"
            f"{header.optional_flags:#x}/{len(header.optional_data)})")


def read_save_header(src: sr.ExactReader) -> lx.XlSaveHeader:
    """xl's header, with xl's message for a file that is none."""
    try:
        return lx.XlSaveHeader.read(src)
    except sr.StreamTruncated:
        raise
    except sr.StreamError as e:
        if "wrong magic" in str(e):
            raise RestoreError(f"{src.name}: File has wrong magic number - corrupt or for a "
                               "different tool?") from None
        raise


# ---------------------------------------------------------------------------------------
# The stored configuration


#: libxl's on_* action names (IDL) as xl.cfg spells them.
_ACTIONS = {"destroy": "destroy", "restart": "restart", "restart_rename": "rename-restart",
            "preserve": "preserve", "coredump_destroy": "coredump-destroy",
            "coredump_restart": "coredump-restart", "soft_reset": "soft-reset"}
#: What xentool turns back into xl.cfg; anything else non-empty at the top is refused.
_TOP_KEYS = {"c_info", "b_info", "disks", "nics", "on_poweroff", "on_reboot",
             "on_watchdog", "on_crash", "on_soft_reset"}
_EMPTY_OK = {"vfbs", "vkbs", "pcidevs", "rdms", "dtdevs", "vtpms", "p9s", "pvcallsifs",
             "vdispls", "channels", "usbctrls", "usbdevs", "vsnds", "connectors",
             "virtios"}


def _q(v: object) -> str:
    """A value as an xl.cfg string literal."""
    text = str(v)
    if "\n" in text or ("'" in text and '"' in text):
        raise ValueError(f"cannot be written as an xl.cfg string: {text!r}")
    return f"'{text}'" if '"' in text else f'"{text}"'


def _disk_spec(d: dict[str, object]) -> str:
    parts = []
    if d.get("format"):
        parts.append(f"format={d['format']}")
    parts.append(f"vdev={d['vdev']}")
    parts.append("access=rw" if d.get("readwrite") else "access=ro")
    if d.get("backend") and d["backend"] != "unknown":
        parts.append(f"backendtype={d['backend']}")
    if d.get("backend_domname"):
        parts.append(f"backend={d['backend_domname']}")
    if d.get("script"):
        parts.append(f"script={d['script']}")
    if d.get("is_cdrom"):
        parts.append("devtype=cdrom")
    parts.append(f"target={d.get('pdev_path') or ''}")  # last: it may hold commas
    return ",".join(parts)


def _nic_spec(n: dict[str, object]) -> str:
    keys = (("mac", "mac"), ("bridge", "bridge"), ("ip", "ip"), ("script", "script"),
            ("ifname", "vifname"), ("backend_domname", "backend"), ("model", "model"),
            ("gatewaydev", "gatewaydev"), ("mtu", "mtu"))
    parts = [f"{xl}={n[k]}" for k, xl in keys if n.get(k) not in (None, "", 0)]
    if n.get("nictype") not in (None, "vif"):
        parts.append(f"type={n['nictype']}")
    return ",".join(parts)


def config_text_from_json(doc: dict[str, object], where: str) -> str:
    """The xl.cfg text of a libxl_domain_config JSON document (what ``xl save`` stores),
    for the keys xentool builds; a document with devices xentool does not build is
    refused (restoring without them would be a different guest)."""
    extra = sorted(k for k, v in doc.items()
                   if k not in _TOP_KEYS and not (k in _EMPTY_OK and not v))
    if extra:
        raise RestoreError(f"{where}: the saved configuration has {', '.join(extra)}, "
                           "which xentool cannot restore")
    c = doc.get("c_info")
    b = doc.get("b_info")
    if not isinstance(c, dict) or not isinstance(b, dict):
        raise RestoreError(f"{where}: the saved configuration has no c_info/b_info")
    lines: list[str] = []

    def put(key: str, value: object) -> None:
        lines.append(f"{key} = {value}")

    put("type", _q(c.get("type", "pv")))
    if c.get("name"):
        put("name", _q(c["name"]))
    if c.get("uuid"):
        put("uuid", _q(c["uuid"]))
    if c.get("pool_name"):
        put("pool", _q(c["pool_name"]))
    for key, xl in (("kernel", "kernel"), ("ramdisk", "ramdisk"), ("cmdline", "extra")):
        if b.get(key):
            put(xl, _q(b[key]))
    if b.get("max_memkb"):
        put("maxmem", -(-int(str(b["max_memkb"])) // 1024))
    if b.get("target_memkb"):
        put("memory", -(-int(str(b["target_memkb"])) // 1024))
    if b.get("max_vcpus"):
        put("maxvcpus", int(str(b["max_vcpus"])))
    avail = b.get("avail_vcpus")
    if isinstance(avail, list) and avail:
        put("vcpus", len(avail))
    sched = b.get("sched_params")
    if isinstance(sched, dict):
        if sched.get("weight") not in (None, -1):
            put("cpu_weight", int(str(sched["weight"])))
        if sched.get("cap") not in (None, -1, 0):
            put("cap", int(str(sched["cap"])))
    if b.get("tsc_mode") not in (None, "default"):
        put("tsc_mode", _q(b["tsc_mode"]))
    if b.get("disable_migrate") is not None:
        put("nomigrate", 1 if b["disable_migrate"] == "True" else 0)
    for key, xl in (("max_grant_frames", "max_grant_frames"),
                    ("max_maptrack_frames", "max_maptrack_frames"),
                    ("event_channels", "max_event_channels")):
        if b.get(key):
            put(xl, int(str(b[key])))
    disks = doc.get("disks") or []
    nics = doc.get("nics") or []
    if not isinstance(disks, list) or not isinstance(nics, list):
        raise RestoreError(f"{where}: the saved configuration's disks/nics are no lists")
    if disks:
        put("disk", "[" + ", ".join(_q(_disk_spec(d)) for d in disks) + "]")
    if nics:
        put("vif", "[" + ", ".join(_q(_nic_spec(n)) for n in nics) + "]")
    for key in ("on_poweroff", "on_reboot", "on_watchdog", "on_crash", "on_soft_reset"):
        act = doc.get(key)
        if act is not None:
            if act not in _ACTIONS:
                raise RestoreError(f"{where}: {key} = {act!r} is no libxl action")
            put(key, _q(_ACTIONS[str(act)]))
    return "\n".join(lines) + "\n"


def saved_config(header: lx.XlSaveHeader, path: str, config_file: str | None
                 ) -> tuple[DomainConfig, str, str]:
    """The configuration to restore with, as xl chooses it: ``config_file`` if given, else
    the one in the save file.  Returns (config, its xl.cfg text, its source name)."""
    from xentool import config as xlcfg
    from xentool.config import ConfigError

    if config_file is not None:
        text = xlcfg.read_config_text(config_file)
        return xlcfg.loads(text, config_file), text, config_file
    if not header.config:
        raise RestoreError(f"{path}: Config file not specified and none in save file")
    try:
        text = (config_text_from_json(header.config_json(), path) if header.json
                else header.config_text())
        return xlcfg.loads(text, "<saved>"), text, "<saved>"
    except (ValueError, ConfigError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RestoreError(f"{path}: the saved configuration: {msg}") from None


# ---------------------------------------------------------------------------------------
# Filling the domain from the libxc stream

INVALID_MFN = (1 << 64) - 1
#: The page types that get a frame (libxc's page_type_to_populate).
_POPULATES = frozenset(n << 28 for n in range(16) if sr.page_type_populates(n << 28))
VGCF_ONLINE = 1 << 5
#: FIRST_RESERVED_GDT_ENTRY: a PV guest's GDT ends below Xen's 14 pages of it.
MAX_GDT_ENTRIES = 14 * 512
#: struct start_info (x86_64) offsets.
_SI_NR_PAGES, _SI_SHARED_INFO, _SI_FLAGS = 32, 40, 48
_SI_STORE_MFN, _SI_STORE_EVTCHN, _SI_CONSOLE_MFN, _SI_CONSOLE_EVTCHN = 56, 64, 72, 80
#: struct shared_info (x86_64): 32 vcpu_info of 64 bytes, the event-channel words, the
#: wallclock, then arch_shared_info (its second word is the p2m frame-list list).
_SH_VCPU_INFO_END = 32 * 64
_SH_PENDING, _SH_MASK, _SH_ARCH, _SH_ARCH_LEN = 2048, 2560, 3088, 48
_SH_FLL = _SH_ARCH + 8
_LIBXL_MAXMEM_SLACK_KB = 1024


@dataclass
class _Vcpu:
    basic: bytes | None = None
    extended: bytes | None = None
    xsave: bytes | None = None
    msrs: bytes | None = None


@dataclass
class PvRestore:
    """Restores one libxc x86 PV stream into a created, empty domain (libxenguest's
    restore for PV guests).  ``store_evtchn``/``console_evtchn`` are the new ports."""

    xc: XenCtrl
    domid: int
    name: str
    max_vcpus: int
    store_evtchn: int
    console_evtchn: int
    p2m: array[int] = field(default_factory=lambda: array("Q"))
    types: array[int] = field(default_factory=lambda: array("L"))
    p2m_pfns: list[int] = field(default_factory=list)
    vcpus: dict[int, _Vcpu] = field(default_factory=dict)
    cpuid: bytes | None = None
    msr_policy: bytes | None = None
    shared_info_mfn: int = 0
    populated: int = 0
    rings: tuple[int, int] | None = None  # (XenStore, console) frames, once complete

    def fail(self, message: str) -> RestoreError:
        return RestoreError(f"{self.name}: {message}")

    # -- records -----------------------------------------------------------------------
    def run(self, reader: sr.StreamReader) -> None:
        _, dhdr = reader.read_headers()
        if dhdr.type != sr.DomainType.X86_PV:
            raise self.fail(f"a {sr.DomainType(dhdr.type).name} stream; xentool restores "
                            "x86 PV guests only")
        if dhdr.page_shift != sr.PAGE_SHIFT:
            raise self.fail(f"page shift {dhdr.page_shift}, expected {sr.PAGE_SHIFT}")
        info = self.xc.domain_info(self.domid)
        if info is None:
            raise self.fail(f"domain {self.domid} vanished")
        self.shared_info_mfn = info.shared_info_frame
        log.info("found x86 PV domain from Xen %d.%d", dhdr.xen_major, dhdr.xen_minor)
        for rec in reader:
            self.record(rec)
            if isinstance(rec, sr.Checkpoint):
                raise self.fail("a CHECKPOINT record in a plain (not checkpointed) stream")
        if not reader.finished:
            raise self.fail("the libxc stream has no END record")
        self.rings = self.complete()
        log.info("restored %d pages; XenStore: mfn %#x, evt %d; console: mfn %#x, evt %d",
                 self.populated, self.rings[0], self.store_evtchn, self.rings[1],
                 self.console_evtchn)

    def record(self, rec: sr.Record) -> None:
        if isinstance(rec, sr.PageData):
            self.page_data(rec)
        elif isinstance(rec, sr.X86PvInfo):
            if rec.guest_width != 8:
                raise self.fail("a 32-bit PV guest; xentool restores 64-bit ones only")
            self.xc.set_address_size(self.domid, 64)
        elif isinstance(rec, sr.X86PvP2mFrames):
            self.p2m_frames(rec)
        elif isinstance(rec, sr.X86PvVcpuBasic | sr.X86PvVcpuExtended | sr.X86PvVcpuXsave
                        | sr.X86PvVcpuMsrs):
            self.vcpu_blob(rec)
        elif isinstance(rec, sr.SharedInfo):
            self.shared_info(rec.data)
        elif isinstance(rec, sr.X86TscInfo):
            self.xc.set_tsc_info(self.domid, rec.mode, rec.nsec, rec.khz, rec.incarnation)
        elif isinstance(rec, sr.X86CpuidPolicy):
            self.cpuid = rec.body()
        elif isinstance(rec, sr.X86MsrPolicy):
            self.msr_policy = rec.body()
        elif isinstance(rec, sr.StaticDataEnd):
            self.static_data_end()
        elif isinstance(rec, sr.Verify):
            raise self.fail("a VERIFY record (a debugging stream), not restorable")
        elif isinstance(rec, sr.End | sr.OptionalRecord | sr.Checkpoint):
            pass
        else:
            raise self.fail(f"a {rec.type_name} record, which a PV restore cannot use")

    def static_data_end(self) -> None:
        if self.cpuid is not None or self.msr_policy is not None:
            self.xc.set_cpu_policy(self.domid, self.cpuid or b"", self.msr_policy or b"")
        if self.cpuid is None:  # an older sender: the policy a new domain gets (libxl)
            self.xc.apply_cpuid_policy(self.domid, [])

    def p2m_frames(self, rec: sr.X86PvP2mFrames) -> None:
        if self.p2m_pfns:
            raise self.fail("a second X86_PV_P2M_FRAMES record")
        top = rec.end_pfn + 1
        self.p2m = array("Q", [INVALID_MFN]) * top
        self.types = array("L", [0]) * top
        start = rec.start_pfn // 512
        self.p2m_pfns = [INVALID_MFN] * start + list(rec.p2m_pfns)

    def populate(self, pfns: list[int]) -> None:
        """Give the guest new frames at ``pfns`` (not yet populated, no repeats)."""
        if not pfns:
            return
        for i in range(0, len(pfns), 1024):
            chunk = pfns[i:i + 1024]
            for pfn, mfn in zip(chunk, self.xc.populate_physmap(self.domid, chunk, 0),
                                strict=True):
                self.p2m[pfn] = mfn
        self.populated += len(pfns)

    def _pfn(self, pfn: int, what: str) -> int:
        if pfn >= len(self.p2m):
            raise self.fail(f"{what}: pfn {pfn:#x} beyond the guest's p2m "
                            f"({len(self.p2m)} entries)")
        return pfn

    def page_data(self, rec: sr.PageData) -> None:
        self._pfn(max(rec.pfns), "PAGE_DATA")
        p2m, types = self.p2m, self.types
        todo: dict[int, None] = {}  # ordered, without repeats
        for pfn, ptype in zip(rec.pfns, rec.types, strict=True):
            types[pfn] = ptype
            if p2m[pfn] == INVALID_MFN and ptype in _POPULATES:
                todo[pfn] = None
        self.populate(list(todo))
        pages = [(pfn, ptype, data) for pfn, ptype, data in rec.pages() if data is not None]
        if not pages:
            return
        tables = [(i, ptype, data) for i, (_, ptype, data) in enumerate(pages)
                  if sr.page_table_level(ptype)]
        localised = {i: self.localise(ptype, data) for i, ptype, data in tables}
        with self.xc.map_foreign(self.domid, [self.p2m[pfn] for pfn, _, _ in pages]) as view:
            view[:] = rec.data
            for i, page in localised.items():
                view[i * sr.PAGE_SIZE:(i + 1) * sr.PAGE_SIZE] = page

    def localise(self, ptype: int, page: memoryview) -> bytes:
        """A page table with the new machine frames; frames it names that have no page
        yet are populated first (libxc's x86_pv_localise_page)."""
        table = array("Q")
        table.frombytes(page)
        if sys.byteorder != "little":
            table.byteswap()
        named = {(pte & sr.PTE_FRAME_MASK) >> sr.PAGE_SHIFT for pte in table
                 if pte & sr.PTE_PRESENT}
        if named:
            self._pfn(max(named), f"L{sr.page_table_level(ptype)} entry")
        p2m = self.p2m
        missing = sorted(pfn for pfn in named if p2m[pfn] == INVALID_MFN)
        self.populate(missing)
        try:
            return sr.localise_page_table(page, ptype, self._mfn_or_none)
        except sr.PageTableError as e:
            raise self.fail(str(e)) from None

    def _mfn_or_none(self, pfn: int) -> int | None:
        if pfn >= len(self.p2m) or self.p2m[pfn] == INVALID_MFN:
            return None
        return int(self.p2m[pfn])

    def mfn(self, pfn: int, what: str, *, want_type: int | None = sr.XEN_DOMCTL_PFINFO_NOTAB,
            mask: int = 0xFFFFFFFF) -> int:
        """The new frame of ``pfn``, which must be populated (and of ``want_type``)."""
        self._pfn(pfn, what)
        if want_type is not None and self.types[pfn] & mask != want_type:
            raise self.fail(f"{what} (pfn {pfn:#x}) has page type "
                            f"{self.types[pfn] >> 28:#x}, expected {want_type >> 28:#x}")
        mfn = int(self.p2m[pfn])
        if mfn == INVALID_MFN:
            raise self.fail(f"{what} (pfn {pfn:#x}) has no page in the stream")
        return mfn

    def vcpu_blob(self, rec: sr.X86PvVcpuBasic | sr.X86PvVcpuExtended | sr.X86PvVcpuXsave
                  | sr.X86PvVcpuMsrs) -> None:
        if not rec.context:
            return  # older senders wrote empty blobs; libxc skips them too
        if rec.vcpu_id >= self.max_vcpus:
            raise self.fail(f"{rec.type_name} record for vcpu {rec.vcpu_id}, the domain has "
                            f"{self.max_vcpus}")
        v = self.vcpus.setdefault(rec.vcpu_id, _Vcpu())
        if isinstance(rec, sr.X86PvVcpuBasic):
            v.basic = rec.context
        elif isinstance(rec, sr.X86PvVcpuExtended):
            v.extended = rec.context
        elif isinstance(rec, sr.X86PvVcpuXsave):
            v.xsave = rec.context
        else:
            v.msrs = rec.context

    def shared_info(self, old: bytes) -> None:
        """The saved vCPU info and arch fields, with no event pending and all masked
        until the guest has re-bound its channels (libxc's handle_shared_info)."""
        with self.xc.map_foreign(self.domid, [self.shared_info_mfn]) as view:
            view[:_SH_VCPU_INFO_END] = old[:_SH_VCPU_INFO_END]
            view[_SH_ARCH:_SH_ARCH + _SH_ARCH_LEN] = old[_SH_ARCH:_SH_ARCH + _SH_ARCH_LEN]
            view[_SH_FLL:_SH_FLL + 8] = bytes(8)
            view[_SH_PENDING:_SH_MASK] = bytes(_SH_MASK - _SH_PENDING)
            for i in range(32):  # evtchn_pending_sel of each vcpu_info
                view[i * 64 + 8:i * 64 + 16] = bytes(8)
            view[_SH_MASK:_SH_MASK + 512] = b"\xff" * 512

    # -- after END -----------------------------------------------------------------------
    def complete(self) -> tuple[int, int]:
        """vCPUs, pinned tables, the guest's p2m, grant entries; returns the (store,
        console) machine frames."""
        if not self.p2m_pfns:
            raise self.fail("the stream has no X86_PV_P2M_FRAMES record")
        if 0 not in self.vcpus or self.vcpus[0].basic is None:
            raise self.fail("the stream has no vCPU 0 context")
        rings = (0, 0)
        for vcpu in sorted(self.vcpus):
            got = self.restore_vcpu(vcpu, self.vcpus[vcpu])
            if got is not None:
                rings = got
        self.pin_tables()
        self.write_guest_p2m()
        self.xc.seed_grant_table(self.domid, console=(0, rings[1]), xenstore=(0, rings[0]))
        return rings

    def restore_vcpu(self, vcpu: int, v: _Vcpu) -> tuple[int, int] | None:
        rings = None
        if v.basic is not None:
            ctx, rings = self.translate_basic(vcpu, v.basic)
            self.xc.set_vcpu_context_raw(self.domid, vcpu, ctx)
        if v.extended is not None:
            self.xc.set_ext_vcpu_context(self.domid, v.extended)
        if v.xsave is not None:
            self.xc.set_vcpu_extstate(self.domid, vcpu, v.xsave)
        if v.msrs is not None:
            self.xc.set_vcpu_msrs(self.domid, vcpu, v.msrs)
        return rings

    def translate_basic(self, vcpu: int, raw: bytes) -> tuple[bytes, tuple[int, int] | None]:
        """The saved context with machine frames (process_vcpu_basic); for vCPU 0 also
        the start-info page fixed up, and the rings it names."""
        off = self.xc.vcpu_field_offsets()
        ctx = bytearray(raw)

        def u64(at: int) -> int:
            return int.from_bytes(ctx[at:at + 8], "little")

        def put(at: int, v: int) -> None:
            ctx[at:at + 8] = v.to_bytes(8, "little")

        rings = None
        if vcpu == 0:
            si_mfn = self.mfn(u64(off["rdx"]), "start info")
            put(off["rdx"], si_mfn)
            rings = self.start_info(si_mfn)
        put(off["flags"], u64(off["flags"]) | VGCF_ONLINE)
        ents = u64(off["gdt_ents"])
        if ents > MAX_GDT_ENTRIES:
            raise self.fail(f"vcpu {vcpu}: {ents} GDT entries, at most {MAX_GDT_ENTRIES}")
        for i in range((ents + 511) // 512):
            at = off["gdt_frames"] + 8 * i
            put(at, self.mfn(u64(at), f"vcpu {vcpu} GDT frame {i}"))
        l4 = sr.XEN_DOMCTL_PFINFO_L4TAB
        mask = sr.XEN_DOMCTL_PFINFO_LTABTYPE_MASK
        cr3 = off["ctrlreg"] + 3 * 8
        pfn = sr.cr3_to_frame(u64(cr3), 8)
        assert pfn is not None  # a 64-bit cr3 always names a frame
        put(cr3, self.mfn(pfn, f"vcpu {vcpu} cr3", want_type=l4, mask=mask) << sr.PAGE_SHIFT)
        cr1 = off["ctrlreg"] + 8
        if u64(cr1) & 1:  # the user page table of a 64-bit guest
            mfn = self.mfn(u64(cr1) >> sr.PAGE_SHIFT, f"vcpu {vcpu} cr1", want_type=l4,
                           mask=mask)
            put(cr1, mfn << sr.PAGE_SHIFT)
        return bytes(ctx), rings

    def start_info(self, mfn: int) -> tuple[int, int]:
        """Point the start-info page at the new rings, ports and shared info."""
        with self.xc.map_foreign(self.domid, [mfn]) as si:
            def get(at: int) -> int:
                return int.from_bytes(si[at:at + 8], "little")

            store = self.mfn(get(_SI_STORE_MFN), "XenStore ring", want_type=None)
            console = self.mfn(get(_SI_CONSOLE_MFN), "console ring", want_type=None)
            si[_SI_STORE_MFN:_SI_STORE_MFN + 8] = store.to_bytes(8, "little")
            si[_SI_STORE_EVTCHN:_SI_STORE_EVTCHN + 4] = self.store_evtchn.to_bytes(4, "little")
            si[_SI_CONSOLE_MFN:_SI_CONSOLE_MFN + 8] = console.to_bytes(8, "little")
            si[_SI_CONSOLE_EVTCHN:_SI_CONSOLE_EVTCHN + 4] = \
                self.console_evtchn.to_bytes(4, "little")
            si[_SI_NR_PAGES:_SI_NR_PAGES + 8] = len(self.p2m).to_bytes(8, "little")
            si[_SI_SHARED_INFO:_SI_SHARED_INFO + 8] = \
                (self.shared_info_mfn << sr.PAGE_SHIFT).to_bytes(8, "little")
            si[_SI_FLAGS:_SI_FLAGS + 4] = bytes(4)
        return store, console

    def pin_tables(self) -> None:
        """Pin what the guest had pinned (libxc's pin_pagetables)."""
        from domain_builder.xenctrl import (
            MMUEXT_PIN_L1_TABLE,
            MMUEXT_PIN_L2_TABLE,
            MMUEXT_PIN_L3_TABLE,
            MMUEXT_PIN_L4_TABLE,
        )

        cmds = {1: MMUEXT_PIN_L1_TABLE, 2: MMUEXT_PIN_L2_TABLE, 3: MMUEXT_PIN_L3_TABLE,
                4: MMUEXT_PIN_L4_TABLE}
        ops = []
        for pfn, ptype in enumerate(self.types):
            if ptype & sr.XEN_DOMCTL_PFINFO_LPINTAB:
                level = sr.page_table_level(ptype)
                if level and self.p2m[pfn] != INVALID_MFN:
                    ops.append((cmds[level], int(self.p2m[pfn])))
        for i in range(0, len(ops), 512):
            self.xc.mmuext_ops(self.domid, ops[i:i + 512])

    def write_guest_p2m(self) -> None:
        """The guest's own pfn-to-mfn list, in the frames X86_PV_P2M_FRAMES named."""
        frames = [self.mfn(pfn, f"p2m frame {i}") for i, pfn in enumerate(self.p2m_pfns)]
        data = self.p2m.tobytes() if sys.byteorder == "little" else _swapped(self.p2m)
        if len(data) > len(frames) * sr.PAGE_SIZE:
            raise self.fail(f"{len(frames)} p2m frames cannot hold {len(self.p2m)} entries")
        with self.xc.map_foreign(self.domid, frames) as view:
            view[:len(data)] = data


def _swapped(a: array[int]) -> bytes:
    b = array(a.typecode, a)
    b.byteswap()
    return b.tobytes()


# ---------------------------------------------------------------------------------------
# The whole restore


def stream_limits(max_memkb: int) -> sr.Limits:
    """What a stream for a guest of ``max_memkb`` may ask: its pages (and libxl's slack),
    pfns up to four times that (a PV guest's map has holes), never less than 1 GiB."""
    pages = max_memkb // 4 + _LIBXL_MAXMEM_SLACK_KB // 4
    return sr.Limits(max_pfn=max(4 * pages, 1 << 18), max_pages=pages)


def build_from_stream(fp: BinaryIO, src: sr.ExactReader, name: str, config: DomainConfig,
                      xc: XenCtrl, domid: int) -> BuiltPv:
    """The build step of a restore: the domain's limits and event channels as libxl sets
    them before ``xc_domain_restore``, then the libxl stream with the libxc one in it."""
    from domain_builder.pv import BuiltPv

    max_vcpus = max(config.maxvcpus, config.vcpus)
    xc.set_max_vcpus(domid, max_vcpus)
    xc.set_max_mem(domid, config.memory_kib + _LIBXL_MAXMEM_SLACK_KB)
    xc.set_memmap_limit(domid, max(config.maxmem_kib, config.memory_kib))
    store_evtchn = xc.evtchn_alloc_unbound(domid, 0)
    console_evtchn = xc.evtchn_alloc_unbound(domid, 0)
    job = PvRestore(xc, domid, name, max_vcpus, store_evtchn, console_evtchn)
    libxl = lx.LibxlStreamReader(
        fp, limits=stream_limits(max(config.maxmem_kib, config.memory_kib)), source=src)
    header = libxl.read_header()
    if header.options & lx.LIBXL_OPT_BIG_ENDIAN:
        raise RestoreError(f"{name}: a big-endian libxl stream")
    if header.legacy:
        raise RestoreError(f"{name}: a stream converted from the legacy (pre-Xen 4.6) "
                           "format, which xentool cannot restore")
    rings: tuple[int, int] | None = None
    while True:
        rec = libxl.read_record()
        if isinstance(rec, lx.LibxlEnd):
            break
        if isinstance(rec, lx.LibxcContext):
            if rings is not None:
                raise RestoreError(f"{name}: a second LIBXC_CONTEXT record")
            job.run(libxl.libxc())
            rings = job.rings
        elif not isinstance(rec, lx.LibxlOptionalRecord):
            raise RestoreError(f"{name}: a libxl {rec.type_name} record, which a PV "
                               "restore cannot use")
    if rings is None:
        raise RestoreError(f"{name}: the libxl stream has no LIBXC_CONTEXT record")
    return BuiltPv(domid=domid, store_mfn=rings[0], store_evtchn=store_evtchn,
                   console_mfn=rings[1], console_evtchn=console_evtchn,
                   shared_info_mfn=job.shared_info_mfn)


def restore(path: str, *, config_file: str | None = None, paused: bool = False,
            handle_signals: bool = False, gconf: GlobalConfig | None = None,
            record: bool = False, quiet: bool = False, debug: bool = False,
            stream: BinaryIO | None = None, name_suffix: str = "") -> int:
    """Restore the guest saved in ``path`` (``xl restore``); returns its domid.

    ``config_file`` replaces the configuration in the file, as with xl.  The guest runs
    unless ``paused``.  With ``record`` it gets a record so its on_* actions are applied.
    On any failure nothing is left behind (the create journal).  ``stream``: read that
    instead of opening ``path`` (migrate-receive's stdin; ``path`` names it in messages);
    ``name_suffix`` goes after the saved name (``--incoming``)."""
    import contextlib

    from xentool import create as cr
    from xentool.config.xlconf import GlobalConfig, apply_global_defaults
    from xentool.devices import preflight

    try:
        # closed below, after the domain exists
        fp = stream if stream is not None else open(path, "rb")  # noqa: SIM115
    except OSError as e:
        raise RestoreError(f"Can't open restore file: {e.strerror}: {path}") from None
    with fp:
        src = sr.ExactReader(fp, path)
        try:
            header = read_save_header(src)
            if not quiet:
                print(describe(header, path), file=sys.stderr)
                if header.config:
                    print(" Savefile contains xl domain config"
                          f"{' in JSON format' if header.json else ''}", file=sys.stderr)
            config, text, source_name = saved_config(header, path, config_file)
        except sr.StreamError as e:
            raise RestoreError(str(e)) from None
        if not quiet:
            print(f"Parsing config from {source_name}", file=sys.stderr)
        if config.refusals:
            raise XentoolError(config.refusals[0])
        if config.type.value != "pv":
            raise RestoreError(f"{path}: a type={config.type.value} guest; xentool "
                               "restores PV guests only")
        gconf = gconf or GlobalConfig()
        gconf.check_applicable()
        config = apply_global_defaults(config, gconf)
        if name_suffix:
            import dataclasses

            config = dataclasses.replace(config, name=config.name + name_suffix)
        if debug:  # xl restore -d: the configuration as libxl JSON
            from xentool.config.libxl_json import dumps, to_libxl

            sys.stderr.write(dumps(to_libxl(config)))
        preflight(config)

        from domain_builder.xenctrl import XenCtrl
        from xenstore.client import Store
        from xentool.balloon import freemem, global_lock, need_memkb
        from xentool.journal import Journal, default_record_dir

        def build(xc: XenCtrl, domid: int) -> BuiltPv:
            try:
                return build_from_stream(fp, src, path, config, xc, domid)
            except sr.StreamError as e:
                raise RestoreError(str(e)) from None

        prep = cr.Restoring(vcpus=config.vcpus, max_vcpus=max(config.maxvcpus, config.vcpus),
                            target_memkb=config.memory_kib,
                            max_memkb=max(config.maxmem_kib, config.memory_kib), build=build)
        source = cr.Source(path, text=text) if record else None
        with XenCtrl() as xc, Store.connect() as xs:
            balloon = gconf.autoballoon_enabled(xc.version().commandline)
            with global_lock(gconf.lockfile) if balloon else contextlib.nullcontext():
                if balloon:
                    freemem(xc, xs, need_memkb(prep.target_memkb))
                with Journal("restore", record_dir=default_record_dir(),
                             handle_signals=handle_signals) as j:
                    return cr._create_steps(j, xc, xs, config, prep, paused, source, gconf,
                                            False)
