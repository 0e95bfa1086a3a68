"""PVH guests: the layout (pure) and the build (on a created, paused HVM-container domain).

A PVH guest is an HVM container without a device model: Xen emulates only the local APICs,
the kernel starts in 32-bit protected mode with paging off at its
``XEN_ELFNOTE_PHYS32_ENTRY``, ``ebx`` pointing at ``struct hvm_start_info``
(xen/include/public/arch-x86/hvm/start_info.h, docs/misc/pvh.pandoc).  It finds the command
line, its modules (the ramdisk), the memory map and the ACPI RSDP through that structure,
and the xenstore and console rings through HVM parameters.

The guest-physical layout is libxl 4.17's (libxl__build_hvm, libxl_x86.c, libxenguest's
xg_dom_x86.c), so that a guest built here sees what it sees under xl:

    [0, lowmem_end)          RAM: the kernel at its ELF physical addresses, then the
                             start info page(s) and the ramdisk (the ramdisk first if the
                             kernel lacks XEN_ELFNOTE_MOD_START_PFN)
    [0xFC000000, +4 KiB)     ACPI info page, then the ACPI tables, then the RSDP
    [0xFEFF8000, +32 KiB)    8 special pages: paging/access/sharing rings, buffered and
                             plain ioreq, xenstore, identity page table, console
    [4 GiB, highmem_end)     the RAM that did not fit below the MMIO hole

The MMIO hole starts at 0xFC000000 (the lowest of the ACPI info page, the local APIC and
the special pages).  The memory map (e820) given to Xen and to the guest lists, in libxl's
order: low RAM, the special pages (reserved), the three ACPI modules, high RAM.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from domain_builder import acpi
from domain_builder.errors import LayoutError, XenError
from domain_builder.image import KernelImage

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

log = logging.getLogger(__name__)

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
GiB = 1 << 30

# Special pages (xenguest.h X86_HVM_END_SPECIAL_REGION/NR_SPECIAL_PAGES and the SPECIALPAGE_*
# order of xg_dom_x86.c).
SPECIAL_END_PFN = 0xFF000
NR_SPECIAL_PAGES = 8
SPECIAL_BASE_PFN = SPECIAL_END_PFN - NR_SPECIAL_PAGES
SPECIAL = {"paging": 0, "access": 1, "sharing": 2, "bufioreq": 3, "xenstore": 4,
           "ioreq": 5, "ident_pt": 6, "console": 7}
MMIO_START = min(SPECIAL_BASE_PFN << PAGE_SHIFT, acpi.LAPIC_BASE, acpi.ACPI_INFO_ADDR)

E820_RAM, E820_RESERVED, E820_ACPI = 1, 2, 3

START_INFO_MAGIC = 0x336EC578  # XEN_HVM_START_MAGIC_VALUE
_START_INFO = struct.Struct("<IIIIQQQQII")  # struct hvm_start_info, version 1: 56 bytes
_MODLIST_ENTRY = struct.Struct("<QQQQ")  # struct hvm_modlist_entry: 32 bytes
_MEMMAP_ENTRY = struct.Struct("<QQII")  # struct hvm_memmap_table_entry: 24 bytes
# libxenguest reserves room for two modules and their command lines (HVMLOADER_MODULE_*).
MODULE_SLOTS = 2
MODULE_CMDLINE_SIZE = 1024

XENFEAT_LINUX_RSDP_UNRESTRICTED = 15
# libxenguest refuses to inflate a module claiming more than this (XC_DOM_DECOMPRESS_MAX).
DECOMPRESS_MAX = 1 << 30

# HVM parameters (xen/include/public/hvm/params.h).
HVM_PARAM_STORE_PFN = 1
HVM_PARAM_STORE_EVTCHN = 2
HVM_PARAM_IOREQ_PFN = 5
HVM_PARAM_BUFIOREQ_PFN = 6
HVM_PARAM_TIMER_MODE = 10
HVM_PARAM_IDENT_PT = 12
HVM_PARAM_CONSOLE_PFN = 17
HVM_PARAM_CONSOLE_EVTCHN = 18
HVM_PARAM_PAGING_RING_PFN = 27
HVM_PARAM_MONITOR_RING_PFN = 28
HVM_PARAM_SHARING_RING_PFN = 29
HVM_PARAM_ALTP2M = 35
#: libxl's default timer mode for PVH and HVM guests (no_delay_for_missed_ticks).
TIMER_MODE_DEFAULT = 1

# HVM save records (xen/include/public/hvm/save.h, arch-x86/hvm/save.h).
HVM_CODE_END, HVM_CODE_HEADER, HVM_CODE_CPU, HVM_CODE_MTRR = 0, 1, 2, 14
_DESCRIPTOR = struct.Struct("<HHI")
MTRR_DEF_TYPE_WB_ENABLED = 6 | (1 << 11)  # write-back default type, MTRRs enabled

XENMEMF_POPULATE_ON_DEMAND = 1 << 16
SUPERPAGE_2M = 512  # pages
SUPERPAGE_1G = 1 << 18
# LIBXL_MAXMEM_CONSTANT: Xen's limit is the target plus 1 MiB (libxl__build_pre).
MAXMEM_SLACK_KB = 1024


def _pages(nbytes: int) -> int:
    return (nbytes + PAGE_SIZE - 1) >> PAGE_SHIFT


def special_pfn(name: str) -> int:
    return SPECIAL_BASE_PFN + SPECIAL[name]


def paging_pool_kb(max_memkb: int, max_vcpus: int, *, hap: bool = True) -> int:
    """The p2m/shadow pool libxl gives a PVH or HVM guest by default
    (libxl__get_required_paging_memory): 1 MiB per vCPU, a page per MiB of RAM for the
    p2m, one more per MiB with shadow paging."""
    return 4 * (256 * max_vcpus + (1 + (0 if hap else 1)) * (max_memkb // 1024))


def module_image(data: bytes) -> bytes:
    """A module (the ramdisk) as libxenguest puts it in guest memory: a gzip file is
    inflated, into a buffer 16 bytes longer than the size its trailer claims (which the
    guest is told it is); anything else, or gzip that does not inflate, goes as is."""
    if len(data) < 6 or data[:2] != b"\x1f\x8b":
        return data
    claimed = int.from_bytes(data[-4:], "little")
    if claimed > DECOMPRESS_MAX:
        return data
    size = max(claimed + 16, len(data))
    try:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out = d.decompress(data, size)
        if not d.eof:
            raise zlib.error("truncated or longer than its trailer says")
    except zlib.error as exc:
        log.info("ramdisk looks gzipped but does not inflate (%s): passed as is", exc)
        return data + bytes(size - len(data))
    return out + bytes(size - len(out))


@dataclass(frozen=True)
class Segment:
    """``pages`` guest pages from guest frame ``pfn``; ``size`` bytes of it are data."""

    name: str
    pfn: int
    pages: int
    size: int

    @property
    def addr(self) -> int:
        return self.pfn << PAGE_SHIFT

    @property
    def pfn_end(self) -> int:
        return self.pfn + self.pages


@dataclass(frozen=True)
class PvhPlan:
    """Everything the PVH build will do, decided before touching Xen."""

    entry: int  # XEN_ELFNOTE_PHYS32_ENTRY
    nr_pages: int  # populated at boot (memory=)
    max_pages: int  # the guest-physical RAM (maxmem=)
    vcpus: int
    max_vcpus: int
    lowmem_end: int  # bytes
    highmem_end: int  # bytes, 0 without high memory
    kernel: Segment
    start_info: Segment
    ramdisk: Segment | None
    cmdline: str | None
    e820: tuple[tuple[int, int, int], ...]  # (address, size, type)
    acpi: acpi.AcpiModules
    paging_pool_kb: int

    @property
    def start_info_addr(self) -> int:
        return self.start_info.addr

    @property
    def pod(self) -> bool:
        """Memory below maxmem is populate-on-demand (libxl: target < max)."""
        return self.nr_pages < self.max_pages

    @property
    def ram_ranges(self) -> list[tuple[int, int]]:
        """Guest frame ranges [start, end) of RAM, as libxenguest populates them."""
        ranges = [(0, self.lowmem_end >> PAGE_SHIFT)]
        if self.highmem_end:
            ranges.append((4 * GiB >> PAGE_SHIFT, self.highmem_end >> PAGE_SHIFT))
        return ranges

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly, addresses in hex (``xentool create --plan``)."""
        def seg(s: Segment | None) -> dict[str, object] | None:
            if s is None:
                return None
            return {"addr": f"{s.addr:#x}", "pfn": f"{s.pfn:#x}", "pages": s.pages,
                    "size": s.size}

        a = self.acpi
        return {
            "type": "pvh",
            "entry": f"{self.entry:#x}",
            "max_pages": self.max_pages,
            "nr_pages": self.nr_pages,
            "populate_on_demand": self.pod,
            "vcpus": self.vcpus,
            "max_vcpus": self.max_vcpus,
            "lowmem_end": f"{self.lowmem_end:#x}",
            "highmem_end": f"{self.highmem_end:#x}",
            "mmio_start": f"{MMIO_START:#x}",
            "kernel": seg(self.kernel),
            "start_info": seg(self.start_info),
            "ramdisk": seg(self.ramdisk),
            "cmdline": self.cmdline,
            "e820": [{"addr": f"{ad:#x}", "size": f"{sz:#x}",
                      "type": {1: "ram", 2: "reserved", 3: "acpi"}[ty]}
                     for ad, sz, ty in self.e820],
            "acpi": {"rsdp": f"{a.rsdp_addr:#x}", "info": f"{a.info_addr:#x}",
                     "tables": f"{a.tables_addr:#x}", "table_pages": a.table_pages,
                     **{k.lower(): f"{v:#x}" for k, v in a.table_addrs.items()}},
            "special_pages": {k: f"{special_pfn(k):#x}" for k in SPECIAL},
            "paging_pool_kb": self.paging_pool_kb,
        }


def rsdp_unrestricted(image: KernelImage) -> bool:
    """libxl puts the RSDP next to the tables unless the kernel is Linux without
    XENFEAT_linux_rsdp_unrestricted (then at 0xFFFC0, where old Linux scans for it)."""
    n = image.notes
    if not n.guest_os.startswith("linux"):
        return True
    return bool(n.supported_features_mask >> XENFEAT_LINUX_RSDP_UNRESTRICTED & 1) or \
        "linux_rsdp_unrestricted" in n.features_supported


def start_info_size(cmdline: str | None, e820_entries: int) -> int:
    return (_START_INFO.size + MODULE_SLOTS * (_MODLIST_ENTRY.size + MODULE_CMDLINE_SIZE)
            + e820_entries * _MEMMAP_ENTRY.size + _cmdline_size(cmdline))


def _cmdline_size(cmdline: str | None) -> int:
    if cmdline is None:
        return 0
    return (len(cmdline.encode()) + 1 + 7) & ~7


def compute(image: KernelImage, *, memory_mib: int, maxmem_mib: int | None = None,
            vcpus: int = 1, max_vcpus: int | None = None, ramdisk_size: int = 0,
            cmdline: str | None = None, paging_pool_mib: int | None = None,
            pool_vcpus: int | None = None) -> PvhPlan:
    """The PVH layout of ``image`` in a guest of ``memory_mib`` MiB (``maxmem_mib`` of
    guest-physical RAM).  ``ramdisk_size`` is the size of the module as it goes to the
    guest (:func:`module_image`).  The paging pool is ``paging_pool_mib``, or libxl's
    default for ``pool_vcpus`` vCPUs (``max_vcpus`` if None)."""
    entry = image.notes.phys32_entry
    if entry is None:
        raise LayoutError("the kernel has no XEN_ELFNOTE_PHYS32_ENTRY note: it cannot boot "
                          "as a PVH guest (use type=\"pv\")")
    if memory_mib <= 0:
        raise LayoutError(f"memory={memory_mib} MiB: must be positive")
    maxmem = memory_mib if maxmem_mib is None else maxmem_mib
    if maxmem < memory_mib:
        raise LayoutError(f"maxmem={maxmem} MiB is below memory={memory_mib} MiB")
    max_v = vcpus if max_vcpus is None else max_vcpus
    if not 1 <= vcpus <= max_v:
        raise LayoutError(f"vcpus={vcpus} must be between 1 and maxvcpus={max_v}")
    if max_v > acpi.HVM_MAX_VCPUS:
        raise LayoutError(f"maxvcpus={max_v}: a PVH guest has at most "
                          f"{acpi.HVM_MAX_VCPUS} vCPUs")
    if cmdline is not None and "\0" in cmdline:
        raise LayoutError("the kernel command line contains a NUL byte")
    max_pages = maxmem << (20 - PAGE_SHIFT)
    mem_size = max_pages << PAGE_SHIFT
    lowmem_end, highmem_end = mem_size, 0
    if lowmem_end > MMIO_START:
        highmem_end = 4 * GiB + lowmem_end - MMIO_START
        lowmem_end = MMIO_START

    acpi_mods = acpi.build(max_v, range(vcpus), rsdp_legacy=not rsdp_unrestricted(image))
    e820: list[tuple[int, int, int]] = [
        (0, lowmem_end, E820_RAM),
        (SPECIAL_BASE_PFN << PAGE_SHIFT, NR_SPECIAL_PAGES << PAGE_SHIFT, E820_RESERVED)]
    for addr, data in acpi_mods.modules():
        off = addr & (PAGE_SIZE - 1)
        e820.append((addr - off, len(data) + off, E820_ACPI))
    if highmem_end:
        e820.append((4 * GiB, highmem_end - 4 * GiB, E820_RAM))

    # Boot data is allocated page by page from the kernel's end, as xc_dom_alloc_segment
    # does; the ramdisk goes after the start info if the kernel finds it by address
    # (MOD_START_PFN), before it otherwise.
    if image.pstart % PAGE_SIZE:
        raise LayoutError(f"the kernel's physical start {image.pstart:#x} is not page "
                          f"aligned")
    kernel = Segment("kernel", image.pstart >> PAGE_SHIFT, _pages(image.pend - image.pstart),
                     image.pend - image.pstart)
    nxt = kernel.pfn_end
    ramdisk = None
    if ramdisk_size and not image.notes.mod_start_pfn:
        ramdisk = Segment("ramdisk", nxt, _pages(ramdisk_size), ramdisk_size)
        nxt = ramdisk.pfn_end
    si_size = start_info_size(cmdline, len(e820))
    start_info = Segment("start_info", nxt, _pages(si_size), si_size)
    nxt = start_info.pfn_end
    if ramdisk_size and ramdisk is None:
        ramdisk = Segment("ramdisk", nxt, _pages(ramdisk_size), ramdisk_size)
        nxt = ramdisk.pfn_end
    if nxt > max_pages:
        raise LayoutError(
            f"memory={maxmem} MiB is too small: the kernel, ramdisk and boot structures "
            f"end at {nxt << PAGE_SHIFT:#x} ({_pages(nxt << PAGE_SHIFT) >> 8} MiB)")
    if nxt << PAGE_SHIFT > lowmem_end:
        raise LayoutError(f"the kernel and ramdisk reach {nxt << PAGE_SHIFT:#x}, into the "
                          f"MMIO hole at {MMIO_START:#x}")
    pool = paging_pool_kb(max_pages * 4, max_v if pool_vcpus is None else pool_vcpus) \
        if paging_pool_mib is None else paging_pool_mib * 1024
    return PvhPlan(entry=entry, max_pages=max_pages,
                   nr_pages=memory_mib << (20 - PAGE_SHIFT), vcpus=vcpus,
                   max_vcpus=max_v, lowmem_end=lowmem_end, highmem_end=highmem_end,
                   kernel=kernel, start_info=start_info, ramdisk=ramdisk, cmdline=cmdline,
                   e820=tuple(e820), acpi=acpi_mods, paging_pool_kb=pool)


def start_info(plan: PvhPlan) -> bytes:
    """The start info segment (``plan.start_info.pages`` pages): struct hvm_start_info,
    the command line, the module list with room for two, their command lines, the
    memory map -- libxenguest's arrangement."""
    base = plan.start_info.addr
    buf = bytearray(plan.start_info.pages * PAGE_SIZE)
    off = _START_INFO.size
    cmdline_paddr = 0
    if plan.cmdline is not None:
        raw = plan.cmdline.encode()
        buf[off:off + len(raw)] = raw
        cmdline_paddr = base + off
        off += _cmdline_size(plan.cmdline)
    modlist = off
    nr_modules = 0
    if plan.ramdisk is not None:
        _MODLIST_ENTRY.pack_into(buf, modlist, plan.ramdisk.addr, plan.ramdisk.size, 0, 0)
        nr_modules = 1
    memmap = modlist + MODULE_SLOTS * (_MODLIST_ENTRY.size + MODULE_CMDLINE_SIZE)
    for i, (addr, size, kind) in enumerate(plan.e820):
        _MEMMAP_ENTRY.pack_into(buf, memmap + i * _MEMMAP_ENTRY.size, addr, size, kind, 0)
    _START_INFO.pack_into(buf, 0, START_INFO_MAGIC, 1, 0, nr_modules,
                          base + modlist if nr_modules else 0, cmdline_paddr,
                          plan.acpi.rsdp_addr, base + memmap, len(plan.e820), 0)
    return bytes(buf)


def ident_pt_page() -> bytes:
    """The identity-map page directory (4 MiB pages) Intel EPT needs to run a vCPU with
    paging off: entry i maps i * 4 MiB, present, writable, user, accessed, dirty, large."""
    flags = 0x1 | 0x2 | 0x4 | 0x20 | 0x40 | 0x80
    return struct.pack("<1024I", *((i << 22) | flags for i in range(1024)))


# ---------------------------------------------------------------------------------------------
# HVM save records for the boot vCPU


def parse_records(data: bytes) -> list[tuple[int, int, bytes]]:
    """(typecode, instance, payload) of every record in an HVM context buffer."""
    out = []
    pos = 0
    while pos + _DESCRIPTOR.size <= len(data):
        code, inst, length = _DESCRIPTOR.unpack_from(data, pos)
        pos += _DESCRIPTOR.size
        if pos + length > len(data):
            raise XenError("xc_domain_hvm_getcontext", 5, "truncated HVM save record")
        out.append((code, inst, data[pos:pos + length]))
        pos += length
        if code == HVM_CODE_END:
            break
    return out


def record(code: int, instance: int, payload: bytes) -> bytes:
    return _DESCRIPTOR.pack(code, instance, len(payload)) + payload


def boot_records(context: bytes, cpu: bytes, max_vcpus: int, mtrr_def_type_at: int
                 ) -> list[bytes]:
    """The HVM context loads that start the guest, in order: each vCPU's MTRRs enabled
    with write-back as the default type (a PVH guest has no firmware to set them), then
    vCPU 0's registers (``cpu``, a CPU record payload) -- last, since every load takes
    all vCPUs down.  ``context`` is the domain's current context: its header record
    (which only Xen can write: it carries the CPUID Xen checks) is reused."""
    records = parse_records(context)
    header = next((p for c, _, p in records if c == HVM_CODE_HEADER), None)
    mtrr = next((p for c, i, p in records if c == HVM_CODE_MTRR and i == 0), None)
    if header is None or mtrr is None:
        raise XenError("xc_domain_hvm_getcontext", 5,
                       "the domain's HVM context has no header or MTRR record")
    end = record(HVM_CODE_END, 0, b"")
    head = record(HVM_CODE_HEADER, 0, header)
    m = bytearray(mtrr)
    struct.pack_into("<Q", m, mtrr_def_type_at, MTRR_DEF_TYPE_WB_ENABLED)
    loads = [head + record(HVM_CODE_MTRR, v, bytes(m)) + end for v in range(max_vcpus)]
    loads.append(head + record(HVM_CODE_CPU, 0, cpu) + end)
    return loads


# ---------------------------------------------------------------------------------------------
# The build


class _Xc(Protocol):
    """The part of ``domain_builder.xenctrl.XenCtrl`` the builder uses (fakes in tests)."""

    def set_max_vcpus(self, domid: int, n: int) -> None: ...
    def set_max_mem(self, domid: int, max_memkb: int) -> None: ...
    def evtchn_alloc_unbound(self, domid: int, remote_domid: int) -> int: ...
    def set_hvm_param(self, domid: int, param: int, value: int) -> None: ...
    def set_paging_mempool_size(self, domid: int, size_bytes: int) -> None: ...
    def populate_physmap(self, domid: int, pfns: Sequence[int], order: int = 0,
                         mem_flags: int = 0) -> list[int]: ...
    def tot_pages(self, domid: int) -> int: ...
    def set_pod_target(self, domid: int, target_pages: int) -> None: ...
    def set_memory_map(self, domid: int, entries: Sequence[tuple[int, int, int]]
                       ) -> None: ...
    def map_foreign(self, domid: int, pfns: Sequence[int], writable: bool = True
                    ) -> AbstractContextManager[memoryview]: ...
    def hvm_context(self, domid: int) -> bytes: ...
    def set_hvm_context(self, domid: int, records: bytes) -> None: ...
    def seed_grant_table(self, domid: int, console: tuple[int, int] | None,
                         xenstore: tuple[int, int] | None) -> None: ...


@dataclass(frozen=True)
class BuiltPvh:
    """What the XenStore side needs to know about the guest just built (frames are gfns)."""

    domid: int
    store_mfn: int
    store_evtchn: int
    console_mfn: int
    console_evtchn: int


@dataclass(frozen=True)
class CpuState:
    """How to make the boot vCPU's record and the MTRR offset (from the binding)."""

    cpu_record: Callable[[int, int], bytes]  # (rip, rbx) -> CPU record payload
    mtrr_def_type_at: int


def populate(xc: _Xc, domid: int, plan: PvhPlan) -> None:
    """Back the guest's RAM ranges with memory: 1 GiB extents where aligned, else 2 MiB
    ones (at most four per call), 4 KiB pages for what is left, as libxenguest does.  With
    populate-on-demand the same extents are PoD entries, backed from the cache Xen keeps
    at the target."""
    flags = XENMEMF_POPULATE_ON_DEMAND if plan.pod else 0
    for start, end in plan.ram_ranges:
        cur = start
        while cur < end:
            if cur % SUPERPAGE_1G == 0 and end - cur >= SUPERPAGE_1G and \
                    _try(xc, domid, [cur], 18, flags):
                cur += SUPERPAGE_1G
                continue
            count = min(end - cur, 4 * SUPERPAGE_2M)
            if cur % SUPERPAGE_2M and count > -cur % SUPERPAGE_2M:
                count = -cur % SUPERPAGE_2M  # up to the next 2 MiB boundary
            elif count % SUPERPAGE_2M and count > SUPERPAGE_2M:
                count -= count % SUPERPAGE_2M  # the 4 KiB tail in a later round
            if (cur | count) % SUPERPAGE_2M == 0 and _try(
                    xc, domid, [cur + i for i in range(0, count, SUPERPAGE_2M)], 9, flags):
                cur += count
                continue
            xc.populate_physmap(domid, list(range(cur, cur + count)), 0, flags)
            cur += count


def _try(xc: _Xc, domid: int, extents: list[int], order: int, flags: int) -> bool:
    """Populate superpage extents, or nothing: a partial success is undone by trying
    again with smaller extents only where nothing was populated."""
    before = xc.tot_pages(domid)
    try:
        xc.populate_physmap(domid, extents, order, flags)
        return True
    except XenError:
        if xc.tot_pages(domid) != before:
            raise
        return False


def _write(xc: _Xc, domid: int, pfn: int, data: bytes | memoryview, pages: int) -> None:
    with xc.map_foreign(domid, list(range(pfn, pfn + pages))) as view:
        n = len(data)
        view[:n] = data
        if n < len(view):
            view[n:] = bytes(len(view) - n)


def _write_kernel(xc: _Xc, domid: int, image: KernelImage, seg: Segment) -> None:
    with xc.map_foreign(domid, list(range(seg.pfn, seg.pfn_end))) as view:
        view[:] = bytes(len(view))
        for s in image.segments:
            off = s.paddr - seg.addr
            view[off:off + s.filesz] = image.segment_data(s)


def build(xc: _Xc, domid: int, image: KernelImage, plan: PvhPlan, ramdisk: bytes | None,
          cpu: CpuState, *, console_domid: int = 0, xenstore_domid: int = 0,
          timer_mode: int = TIMER_MODE_DEFAULT, altp2m: int = 0,
          cpuid: Callable[[], None] | None = None,
          claim: Callable[[int], None] | None = None) -> BuiltPvh:
    """Build the PVH guest ``domid`` (created as an HVM container, paused, no memory yet)
    according to ``plan``; ``ramdisk`` is the module as :func:`module_image` made it.
    With ``memory`` below ``maxmem`` the RAM is populate-on-demand: Xen holds the target
    and the guest's balloon driver gives the rest back, as libxl builds it.

    The order is libxl's: vCPUs, memory limit, event channels, the HVM parameters of the
    domain config, the paging pool, ``cpuid()`` (the CPUID policy), then libxenguest's:
    RAM, memory map, kernel, ACPI, special pages, start info and ramdisk, vCPU state,
    grant table.  ``claim(n)`` claims n pages while RAM is populated (0 releases).
    """
    if (ramdisk is None) != (plan.ramdisk is None) or (
            ramdisk is not None and plan.ramdisk is not None
            and len(ramdisk) != plan.ramdisk.size):
        raise ValueError("ramdisk does not match the plan")
    xc.set_max_vcpus(domid, plan.max_vcpus)
    xc.set_max_mem(domid, plan.nr_pages * (PAGE_SIZE // 1024) + MAXMEM_SLACK_KB)
    store_evtchn = xc.evtchn_alloc_unbound(domid, xenstore_domid)
    console_evtchn = xc.evtchn_alloc_unbound(domid, console_domid)
    xc.set_hvm_param(domid, HVM_PARAM_TIMER_MODE, timer_mode)
    xc.set_hvm_param(domid, HVM_PARAM_ALTP2M, altp2m)
    xc.set_paging_mempool_size(domid, plan.paging_pool_kb * 1024)
    if cpuid is not None:
        cpuid()

    if claim is not None:
        claim(plan.nr_pages)
    try:
        if plan.pod:  # after the claim: this allocates the cache
            xc.set_pod_target(domid, plan.nr_pages)
        populate(xc, domid, plan)
    finally:
        if claim is not None:
            claim(0)
    xc.set_memory_map(domid, plan.e820)

    _write_kernel(xc, domid, image, plan.kernel)
    for addr, data in plan.acpi.modules():
        first = addr >> PAGE_SHIFT
        n = _pages((addr & (PAGE_SIZE - 1)) + len(data))
        for pfn in range(first, first + n):
            xc.populate_physmap(domid, [pfn], 0)
        with xc.map_foreign(domid, list(range(first, first + n))) as view:
            off = addr & (PAGE_SIZE - 1)
            view[off:off + len(data)] = data
    specials = [special_pfn(k) for k in SPECIAL]
    xc.populate_physmap(domid, specials, 0)
    _write(xc, domid, SPECIAL_BASE_PFN, b"", NR_SPECIAL_PAGES)
    for param, page in ((HVM_PARAM_STORE_PFN, "xenstore"), (HVM_PARAM_BUFIOREQ_PFN, "bufioreq"),
                        (HVM_PARAM_IOREQ_PFN, "ioreq"), (HVM_PARAM_CONSOLE_PFN, "console"),
                        (HVM_PARAM_PAGING_RING_PFN, "paging"),
                        (HVM_PARAM_MONITOR_RING_PFN, "access"),
                        (HVM_PARAM_SHARING_RING_PFN, "sharing")):
        xc.set_hvm_param(domid, param, special_pfn(page))
    _write(xc, domid, special_pfn("ident_pt"), ident_pt_page(), 1)
    xc.set_hvm_param(domid, HVM_PARAM_IDENT_PT, special_pfn("ident_pt") << PAGE_SHIFT)
    if ramdisk is not None and plan.ramdisk is not None:
        _write(xc, domid, plan.ramdisk.pfn, ramdisk, plan.ramdisk.pages)
    _write(xc, domid, plan.start_info.pfn, start_info(plan), plan.start_info.pages)
    xc.set_hvm_param(domid, HVM_PARAM_CONSOLE_EVTCHN, console_evtchn)
    xc.set_hvm_param(domid, HVM_PARAM_STORE_EVTCHN, store_evtchn)

    loads = boot_records(xc.hvm_context(domid), cpu.cpu_record(plan.entry,
                                                               plan.start_info_addr),
                         plan.max_vcpus, cpu.mtrr_def_type_at)
    for data in loads:
        xc.set_hvm_context(domid, data)

    store_gfn, console_gfn = special_pfn("xenstore"), special_pfn("console")
    xc.seed_grant_table(domid, console=(console_domid, console_gfn),
                        xenstore=(xenstore_domid, store_gfn))
    return BuiltPvh(domid=domid, store_mfn=store_gfn, store_evtchn=store_evtchn,
                    console_mfn=console_gfn, console_evtchn=console_evtchn)
