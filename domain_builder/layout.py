"""Pure computation of the x86_64 PV boot layout (no Xen, no I/O).

The PV boot protocol (xen/include/public/xen.h, "start_info"): the guest starts with paging
on, its initial page tables mapping one contiguous virtual region from VIRT_BASE, in this
order, page after page:

    kernel | ramdisk | p2m list | start_info | xenstore | console | page tables | stack
    | at least 512 KiB of padding, the whole region rounded up to 4 MiB

Guest pseudo-physical frame ``pfn`` is mapped at ``VIRT_BASE + pfn * 4096``. The page tables
themselves are mapped read-only (Xen refuses writable mappings of pinned tables). A kernel
announcing MOD_START_PFN may get its ramdisk *outside* the mapping, after the stack, and
find it by pfn (SIF_MOD_START_PFN).

Everything here is expressed in pfns; :func:`page_tables` and :func:`start_info` take the
p2m (pfn -> mfn) that populating memory produced and return the exact bytes to write.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from domain_builder.errors import LayoutError
from domain_builder.image import KernelImage

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PTES_PER_TABLE = 512
BOOT_PADDING = 512 << 10
MAP_ALIGN = 4 << 20
MAX_CMDLINE = 1024  # MAX_GUEST_CMDLINE, including the NUL

_PAGE_PRESENT = 0x001
_PAGE_RW = 0x002
_PAGE_USER = 0x004
_PAGE_ACCESSED = 0x020
_PAGE_DIRTY = 0x040
# A 64-bit PV kernel runs in ring 3, hence _PAGE_USER on every level.
L1_PROT = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_USER
L1_PROT_RO = L1_PROT & ~_PAGE_RW
UPPER_PROT = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_USER
PTE_MFN_MASK = ((1 << 52) - 1) & ~(PAGE_SIZE - 1)

SIF_MOD_START_PFN = 1 << 3
START_INFO_MAGIC = b"xen-3.0-x86_64"
# struct start_info offsets for x86_64 (checked against xen/xen.h with a C compiler).
_SI_HEAD = struct.Struct("<32sQQI4xQI4xQI4xQQQQQ")  # up to mod_len, 128 bytes
_SI_CMDLINE = 128
_SI_TAIL = struct.Struct("<QQ")  # first_p2m_pfn, nr_p2m_frames at 1152
SI_SIZE = 1168

# Shifts of the page-table levels L1..L4: bits of virtual address each entry covers.
_LEVEL_SHIFT = {1: 12, 2: 21, 3: 30, 4: 39}
_VA_MASK = (1 << 48) - 1

# Features a PV guest can be given by this builder (it cannot do auto-translated PV).
_UNSATISFIABLE = frozenset({"auto_translated_physmap", "supervisor_mode_kernel",
                            "hvm_callback_vector", "dom0"})


def _pages(nbytes: int) -> int:
    return (nbytes + PAGE_SIZE - 1) >> PAGE_SHIFT


def _round_up(v: int, align: int) -> int:
    return (v + align - 1) // align * align


@dataclass(frozen=True)
class Region:
    """``pages`` guest pages from ``pfn``; mapped at ``vstart`` unless ``mapped`` is False."""

    name: str
    pfn: int
    pages: int
    vstart: int
    mapped: bool = True

    @property
    def pfn_end(self) -> int:
        return self.pfn + self.pages

    @property
    def vend(self) -> int:
        return self.vstart + self.pages * PAGE_SIZE


@dataclass(frozen=True)
class BuildPlan:
    """Everything the builder will do, decided before touching Xen."""

    virt_base: int
    virt_entry: int
    virt_hypercall: int | None
    nr_pages: int  # populated at boot (memory=)
    max_pages: int  # the balloon ceiling (maxmem=)
    vcpus: int  # online at boot
    max_vcpus: int
    kernel: Region
    ramdisk: Region | None
    ramdisk_size: int
    p2m: Region
    start_info: Region
    xenstore: Region
    console: Region
    pagetables: Region
    pt_counts: tuple[int, int, int, int]  # tables at L4, L3, L2, L1
    bootstack: Region
    virt_map_end: int  # the boot mapping is [virt_base, virt_map_end)
    cmdline: str
    flags: int  # SIF_*
    mod_start: int  # virtual address of the ramdisk, or its pfn with SIF_MOD_START_PFN
    mod_len: int

    @property
    def regions(self) -> tuple[Region, ...]:
        rs = [self.kernel, self.ramdisk, self.p2m, self.start_info, self.xenstore,
              self.console, self.pagetables, self.bootstack]
        return tuple(r for r in rs if r is not None)

    @property
    def map_pages(self) -> int:
        return (self.virt_map_end - self.virt_base) >> PAGE_SHIFT

    @property
    def stack_top(self) -> int:
        return self.bootstack.vend

    @property
    def l4_pfn(self) -> int:
        return self.pagetables.pfn

    def pfn_to_va(self, pfn: int) -> int:
        return self.virt_base + (pfn << PAGE_SHIFT)

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly, addresses in hex (``xentool create --plan``)."""

        def hx(v: object) -> object:
            return f"{v:#x}" if isinstance(v, int) and not isinstance(v, bool) else v

        out: dict[str, object] = {}
        for k, v in asdict(self).items():
            if isinstance(v, dict):  # a Region
                v = {rk: (hx(rv) if rk == "vstart" else rv) for rk, rv in v.items()}
                v["pfn"] = hx(v["pfn"])
            elif k in ("virt_base", "virt_entry", "virt_hypercall", "virt_map_end", "mod_start",
                       "flags"):
                v = hx(v)
            elif isinstance(v, tuple):
                v = list(v)
            out[k] = v
        out["stack_top"] = hx(self.stack_top)
        return out


def _table_keys(areas: Sequence[tuple[int, int]]) -> dict[int, list[int]]:
    """For levels 3, 2, 1: the sorted keys (va >> span of one table) of the tables needed
    to map every [vstart, vend) in ``areas`` with 4 KiB pages; the one L4 is implied."""
    keys: dict[int, list[int]] = {}
    for level in (3, 2, 1):
        shift = _LEVEL_SHIFT[level + 1]  # an L<n> table covers what one L<n+1> entry does
        found: set[int] = set()
        for lo, hi in areas:
            found.update(range(lo >> shift, ((hi - 1) >> shift) + 1))
        keys[level] = sorted(found)
    return keys


def _table_counts(areas: Sequence[tuple[int, int]]) -> tuple[int, int, int, int]:
    k = _table_keys(areas)
    return 1, len(k[3]), len(k[2]), len(k[1])


def compute(image: KernelImage, *, memory_mib: int, maxmem_mib: int | None = None,
            vcpus: int = 1, max_vcpus: int | None = None, ramdisk_size: int = 0,
            cmdline: str = "", unmapped_ramdisk: bool | None = None,
            init_p2m: bool = False) -> BuildPlan:
    """The x86_64 PV layout of ``image`` in a guest of ``memory_mib`` MiB.

    ``unmapped_ramdisk``: place the ramdisk outside the boot mapping (needs MOD_START_PFN);
    None means only when the kernel supports it and the mapped layout would not fit.
    ``init_p2m``: map the p2m list at the kernel's INIT_P2M address, outside the boot
    mapping, instead of inside it (needs the note; keeps the boot mapping small).
    """
    if image.arch != "x86_64":
        raise LayoutError(f"{image.arch} PV guests are not supported, only x86_64")
    bad = image.notes.features_required & _UNSATISFIABLE
    if bad:
        raise LayoutError(f"the kernel requires feature(s) {', '.join(sorted(bad))}, which a "
                          f"PV guest built here cannot have")
    if memory_mib <= 0:
        raise LayoutError(f"memory={memory_mib} MiB: must be positive")
    maxmem = memory_mib if maxmem_mib is None else maxmem_mib
    if maxmem < memory_mib:
        raise LayoutError(f"maxmem={maxmem} MiB is below memory={memory_mib} MiB")
    max_v = vcpus if max_vcpus is None else max_vcpus
    if not 1 <= vcpus <= max_v:
        raise LayoutError(f"vcpus={vcpus} must be between 1 and maxvcpus={max_v}")
    raw_cmdline = cmdline.encode()
    if len(raw_cmdline) >= MAX_CMDLINE or b"\0" in raw_cmdline:
        raise LayoutError(f"kernel command line is {len(raw_cmdline)} bytes; at most "
                          f"{MAX_CMDLINE - 1} bytes without NUL fit in start_info")
    if ramdisk_size < 0:
        raise LayoutError(f"ramdisk size {ramdisk_size} is negative")
    nr_pages = memory_mib << (20 - PAGE_SHIFT)
    if unmapped_ramdisk and not image.notes.mod_start_pfn:
        raise LayoutError("an unmapped ramdisk needs a kernel with the MOD_START_PFN note")
    p2m_base = None
    if init_p2m:
        p2m_base = image.notes.init_p2m
        if p2m_base is None:
            raise LayoutError("init_p2m needs a kernel with the INIT_P2M note")
        if p2m_base % PAGE_SIZE or p2m_base >= image.virt_base:
            raise LayoutError(f"INIT_P2M {p2m_base:#x} must be page aligned and below "
                              f"VIRT_BASE {image.virt_base:#x}")

    if unmapped_ramdisk is None:
        # Mapped first (every kernel understands it), unmapped if that does not fit.
        order = [False] + ([True] if image.notes.mod_start_pfn and ramdisk_size else [])
    else:
        order = [bool(unmapped_ramdisk and ramdisk_size)]
    err: LayoutError | None = None
    for unmapped in order:
        try:
            return _compute(image, nr_pages, maxmem << (20 - PAGE_SHIFT), vcpus, max_v,
                            ramdisk_size, cmdline, unmapped, p2m_base)
        except LayoutError as exc:
            err = err or exc
    assert err is not None
    raise err


def _compute(image: KernelImage, nr_pages: int, max_pages: int, vcpus: int, max_vcpus: int,
             ramdisk_size: int, cmdline: str, unmapped: bool,
             p2m_base: int | None) -> BuildPlan:
    vbase = image.virt_base
    if vbase % PAGE_SIZE:
        raise LayoutError(f"VIRT_BASE {vbase:#x} is not page aligned")

    def region(name: str, pfn: int, pages: int) -> Region:
        return Region(name, pfn, pages, vbase + (pfn << PAGE_SHIFT))

    kpfn = (image.virt_kstart - vbase) >> PAGE_SHIFT
    kernel = region("kernel", kpfn, _pages(image.virt_kend - vbase) - kpfn)
    nxt = kernel.pfn_end
    ramdisk = None
    if ramdisk_size and not unmapped:
        ramdisk = region("ramdisk", nxt, _pages(ramdisk_size))
        nxt = ramdisk.pfn_end
    p2m_pages = _pages(nr_pages * 8)
    p2m: Region | None = None
    if p2m_base is None:
        p2m = region("p2m", nxt, p2m_pages)
        nxt = p2m.pfn_end
        extra: list[tuple[int, int]] = []
    else:
        # Mapped at INIT_P2M by tables of its own; its pfns come after everything else.
        extra = [(p2m_base, p2m_base + p2m_pages * PAGE_SIZE)]
    start_info = region("start_info", nxt, 1)
    xenstore = region("xenstore", start_info.pfn_end, 1)
    console = region("console", xenstore.pfn_end, 1)
    pt_pfn = console.pfn_end
    alloc_end = vbase + (pt_pfn << PAGE_SHIFT)

    # The tables must map themselves, the stack and the padding: iterate to the fixed point
    # (the count only grows with the region, so this ends in a step or two).
    n = 0
    while True:
        map_end = _round_up(alloc_end + (n + 1) * PAGE_SIZE + BOOT_PADDING, MAP_ALIGN)
        if map_end > 1 << 64:
            raise LayoutError(f"the boot mapping would end at {map_end:#x}, past the top of "
                              f"the address space (VIRT_BASE {vbase:#x} is too high for "
                              f"this much memory)")
        counts = _table_counts([(vbase, map_end), *extra])
        need = sum(counts)
        if need <= n:
            break
        n = need
    # Keep n == sum(counts) exactly: every table page is a real, used table.
    pagetables = region("pagetables", pt_pfn, sum(counts))
    bootstack = region("bootstack", pagetables.pfn_end, 1)
    map_end = _round_up(bootstack.vend + BOOT_PADDING, MAP_ALIGN)
    # Padding rounding never crosses; be sure.
    if _table_counts([(vbase, map_end), *extra]) != counts:
        raise LayoutError("internal: page-table count changed after placing the stack")
    map_pages = (map_end - vbase) >> PAGE_SHIFT

    flags = 0
    mod_start = mod_len = 0
    if ramdisk is not None:
        mod_start, mod_len = ramdisk.vstart, ramdisk_size
    elif ramdisk_size:
        ramdisk = Region("ramdisk", map_pages, _pages(ramdisk_size),
                         vbase + (map_pages << PAGE_SHIFT), mapped=False)
        flags |= SIF_MOD_START_PFN
        mod_start, mod_len = ramdisk.pfn, ramdisk_size
    used = max(map_pages, ramdisk.pfn_end if ramdisk else 0)
    if p2m is None:
        assert p2m_base is not None
        p2m = Region("p2m", used, p2m_pages, p2m_base, mapped=False)
        used = p2m.pfn_end
        if p2m_base + p2m_pages * PAGE_SIZE > vbase:
            raise LayoutError(f"the p2m list at INIT_P2M {p2m_base:#x} would run into the "
                              f"kernel at VIRT_BASE {vbase:#x}")
    if used > nr_pages:
        raise LayoutError(
            f"memory={nr_pages >> 8} MiB is too small: the kernel, ramdisk and boot structures "
            f"need {used} pages ({_round_up(used, 256) >> 8} MiB) before the guest even starts")
    if image.virt_hypercall is not None and not (
            kernel.vstart <= image.virt_hypercall < kernel.vend):
        raise LayoutError(f"HYPERCALL_PAGE {image.virt_hypercall:#x} is outside the kernel")

    return BuildPlan(
        virt_base=vbase, virt_entry=image.virt_entry, virt_hypercall=image.virt_hypercall,
        nr_pages=nr_pages, max_pages=max_pages, vcpus=vcpus, max_vcpus=max_vcpus,
        kernel=kernel, ramdisk=ramdisk, ramdisk_size=ramdisk_size, p2m=p2m,
        start_info=start_info, xenstore=xenstore, console=console, pagetables=pagetables,
        pt_counts=counts, bootstack=bootstack, virt_map_end=map_end, cmdline=cmdline,
        flags=flags, mod_start=mod_start, mod_len=mod_len,
    )


# ---------------------------------------------------------------------------------------------
# Page contents (pure functions of the plan and the p2m)


def kernel_pages(image: KernelImage, plan: BuildPlan) -> bytearray:
    """The kernel region's bytes: each PT_LOAD segment's file data at its place, zeros around."""
    buf = bytearray(plan.kernel.pages * PAGE_SIZE)
    write_kernel(memoryview(buf), image, plan, zeroed=True)
    return buf


def write_kernel(dest: memoryview, image: KernelImage, plan: BuildPlan, *,
                 zeroed: bool = False) -> None:
    """Fill ``dest`` (the kernel region, ``plan.kernel.pages`` pages) in place, so the builder
    copies the kernel once, straight into the guest's pages."""
    size = plan.kernel.pages * PAGE_SIZE
    if len(dest) != size:
        raise LayoutError(f"kernel region is {size} bytes, buffer is {len(dest)}")
    base = plan.kernel.vstart
    placed: list[tuple[int, int]] = []
    for seg in image.segments:
        off = image.vaddr_of(seg.paddr) - base
        if off < 0 or off + seg.memsz > size:
            raise LayoutError(f"segment at paddr {seg.paddr:#x} falls outside the kernel "
                              f"region")
        dest[off:off + seg.filesz] = image.segment_data(seg)
        placed.append((off, off + seg.filesz))
    if zeroed:
        return
    # Zero only the gaps; the image parser guarantees the segments do not overlap.
    pos = 0
    for lo, hi in sorted(placed):
        if lo > pos:
            dest[pos:lo] = bytes(lo - pos)
        pos = max(pos, hi)
    if pos < size:
        dest[pos:size] = bytes(size - pos)


def _u64le(values: Sequence[int] | array[int]) -> bytes:
    a = values if isinstance(values, array) else array("Q", values)
    if sys.byteorder != "little":
        a = array("Q", a)
        a.byteswap()
    return a.tobytes()


def p2m_bytes(plan: BuildPlan, p2m: Sequence[int]) -> bytes:
    """The guest's pfn -> mfn list as it finds it at ``start_info.mfn_list``."""
    if len(p2m) != plan.nr_pages:
        raise LayoutError(f"p2m has {len(p2m)} entries, expected nr_pages={plan.nr_pages}")
    raw = _u64le(p2m)
    return raw + bytes(plan.p2m.pages * PAGE_SIZE - len(raw))


def mapped_areas(plan: BuildPlan) -> list[tuple[int, int, int]]:
    """(vstart, vend, first pfn) of every area the initial page tables map."""
    areas = [(plan.virt_base, plan.virt_map_end, 0)]
    if not plan.p2m.mapped:  # INIT_P2M: the p2m list has a mapping of its own
        areas.append((plan.p2m.vstart, plan.p2m.vend, plan.p2m.pfn))
    return areas


def page_tables(plan: BuildPlan, p2m: Sequence[int]) -> bytes:
    """The L4, L3s, L2s and L1s (in that order, each level by address) mapping exactly the
    areas of :func:`mapped_areas`.

    Entries hold MFNs from ``p2m``; pages of the tables themselves are mapped read-only.
    """
    areas = mapped_areas(plan)
    keys = _table_keys([(lo, hi) for lo, hi, _ in areas])
    if (1, len(keys[3]), len(keys[2]), len(keys[1])) != plan.pt_counts:
        raise LayoutError("internal: page-table counts do not match the plan")
    # pfn of each table: (level, key) -> pfn, laid out L4, L3..., L2..., L1...
    pfn_of: dict[tuple[int, int], int] = {(4, 0): plan.pagetables.pfn}
    nxt = plan.pagetables.pfn + 1
    for level in (3, 2, 1):
        for key in keys[level]:
            pfn_of[(level, key)] = nxt
            nxt += 1
    base = plan.pagetables.pfn
    entries = [0] * (plan.pagetables.pages * PTES_PER_TABLE)

    def put(level: int, table_key: int, va: int, value: int) -> None:
        slot = (pfn_of[(level, table_key)] - base) * PTES_PER_TABLE
        entries[slot + ((va >> _LEVEL_SHIFT[level]) & (PTES_PER_TABLE - 1))] = value

    # Upper levels: every lower table is referenced from its parent.
    for level in (3, 2, 1):
        span = _LEVEL_SHIFT[level + 1]  # va >> span is the key of the level-<level> table
        for key in keys[level]:
            va = key << span
            parent_key = 0 if level == 3 else va >> _LEVEL_SHIFT[level + 2]
            child_mfn = p2m[pfn_of[(level, key)]]
            put(level + 1, parent_key, va, (child_mfn << PAGE_SHIFT) | UPPER_PROT)
    # L1: the L1 tables of an area are consecutive (keys sorted, allocated in order), so its
    # PTEs are one contiguous run of slots, filled with one slice assignment.
    pt_lo, pt_hi = plan.pagetables.pfn, plan.pagetables.pfn_end
    for lo, hi, first_pfn in areas:
        last_pfn = first_pfn + ((hi - lo) >> PAGE_SHIFT)
        ptes = [(mfn << PAGE_SHIFT) | L1_PROT for mfn in p2m[first_pfn:last_pfn]]
        for pfn in range(max(pt_lo, first_pfn), min(pt_hi, last_pfn)):
            ptes[pfn - first_pfn] = (p2m[pfn] << PAGE_SHIFT) | L1_PROT_RO  # the tables
        first = (pfn_of[(1, lo >> _LEVEL_SHIFT[2])] - base) * PTES_PER_TABLE \
            + ((lo >> PAGE_SHIFT) & (PTES_PER_TABLE - 1))
        entries[first:first + len(ptes)] = ptes
    return _u64le(entries)


def start_info(plan: BuildPlan, p2m: Sequence[int], *, shared_info_mfn: int,
               store_evtchn: int, console_evtchn: int) -> bytes:
    """The start_info page (struct start_info of xen/xen.h, x86_64) for this plan."""
    head = _SI_HEAD.pack(
        START_INFO_MAGIC, plan.nr_pages, shared_info_mfn << PAGE_SHIFT, plan.flags,
        p2m[plan.xenstore.pfn], store_evtchn, p2m[plan.console.pfn], console_evtchn,
        plan.pagetables.vstart, plan.pagetables.pages, plan.p2m.vstart,
        plan.mod_start, plan.mod_len,
    )
    page = bytearray(PAGE_SIZE)
    page[:len(head)] = head
    cmd = plan.cmdline.encode()
    page[_SI_CMDLINE:_SI_CMDLINE + len(cmd)] = cmd
    if not plan.p2m.mapped:  # INIT_P2M: tell the kernel which pfns hold its p2m list
        _SI_TAIL.pack_into(page, _SI_CMDLINE + MAX_CMDLINE, plan.p2m.pfn, plan.p2m.pages)
    return bytes(page)
