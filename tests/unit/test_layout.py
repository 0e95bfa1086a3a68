"""PV boot layout: invariants checked by walking the generated page tables like an MMU would."""

from __future__ import annotations

import itertools
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_image_kit import (
    KSTART_PADDR,
    VIRT_BASE,
    linux_notes,
    make_elf,
    q,
    real_kernel_path,
)

from domain_builder.errors import LayoutError
from domain_builder.image import load_kernel, parse_kernel
from domain_builder.layout import (
    BOOT_PADDING,
    L1_PROT,
    L1_PROT_RO,
    MAP_ALIGN,
    PAGE_SIZE,
    PTE_MFN_MASK,
    SIF_MOD_START_PFN,
    BuildPlan,
    compute,
    kernel_pages,
    mapped_areas,
    p2m_bytes,
    page_tables,
    start_info,
    write_kernel,
)


def kernel(kstart: int = KSTART_PADDR, size: int = 0x3000, virt_base: int = VIRT_BASE,
           mod_start_pfn: bool = True):
    notes = linux_notes(n3=q(virt_base), n1=q(virt_base + kstart), n2=None,
                        n16=struct.pack("<I", int(mod_start_pfn)))
    return parse_kernel(make_elf(segments=[(kstart, b"\xcc" * 64, size)], notes=notes))


def shuffled_p2m(n: int, seed: int = 1) -> list[int]:
    """A p2m as Xen might hand it out: distinct MFNs, in no particular order."""
    mfns = list(range(0x10000, 0x10000 + n))
    random.Random(seed).shuffle(mfns)
    return mfns


def walk(plan: BuildPlan, tables: bytes, m2p: dict[int, int], va: int) -> tuple[int, int] | None:
    """Translate va through the tables: (pfn, L1 flags), or None when not mapped."""
    def entry(table_pfn: int, idx: int) -> int:
        off = (table_pfn - plan.pagetables.pfn) * PAGE_SIZE + idx * 8
        assert 0 <= off < len(tables), f"pfn {table_pfn:#x} is not a page-table page"
        return struct.unpack_from("<Q", tables, off)[0]

    table = plan.l4_pfn
    for shift in (39, 30, 21, 12):
        e = entry(table, (va >> shift) & 511)
        if not e & 1:
            return None
        pfn = m2p[(e & PTE_MFN_MASK) >> 12]
        if shift == 12:
            return pfn, e & 0xFFF
        assert plan.pagetables.pfn <= pfn < plan.pagetables.pfn_end
        table = pfn
    raise AssertionError("unreachable")


def check_invariants(plan: BuildPlan) -> None:
    # Regions: page aligned, in order, non-overlapping, inside memory.
    mapped = [r for r in plan.regions if r.mapped]
    for a, b in itertools.pairwise(mapped):
        assert a.pfn_end <= b.pfn, (a, b)
    for r in plan.regions:
        assert r.vstart % PAGE_SIZE == 0 and r.pages > 0
        if r.name != "p2m" or r.mapped:
            assert r.vstart == plan.virt_base + r.pfn * PAGE_SIZE
        assert r.pfn_end <= plan.nr_pages
    unmapped = sorted((r for r in plan.regions if not r.mapped), key=lambda r: r.pfn)
    for a, b in itertools.pairwise(unmapped):
        assert a.pfn_end <= b.pfn
    if unmapped:
        assert unmapped[0].pfn >= plan.map_pages
    assert plan.virt_map_end % MAP_ALIGN == 0
    assert plan.virt_map_end - plan.bootstack.vend >= BOOT_PADDING
    for r in mapped:
        assert plan.virt_base <= r.vstart and r.vend <= plan.virt_map_end
    if plan.ramdisk is not None and not plan.ramdisk.mapped:
        assert plan.ramdisk.pfn >= plan.map_pages
        assert plan.flags & SIF_MOD_START_PFN and plan.mod_start == plan.ramdisk.pfn
    # The p2m holds exactly nr_pages 8-byte entries.
    assert plan.p2m.pages == -(-plan.nr_pages * 8 // PAGE_SIZE)
    assert plan.kernel.vstart <= plan.virt_entry < plan.kernel.vend
    assert plan.stack_top == plan.bootstack.vend
    assert sum(plan.pt_counts) == plan.pagetables.pages and plan.pt_counts[0] == 1


def check_tables(plan: BuildPlan, p2m: list[int], every: int = 1) -> None:
    tables = page_tables(plan, p2m)
    assert len(tables) == plan.pagetables.pages * PAGE_SIZE
    m2p = {m: p for p, m in enumerate(p2m)}
    areas = mapped_areas(plan)
    assert areas[0] == (plan.virt_base, plan.virt_map_end, 0)
    for lo, hi, first in areas:
        for i in range(0, (hi - lo) // PAGE_SIZE, every):
            pfn = first + i
            got = walk(plan, tables, m2p, lo + i * PAGE_SIZE)
            ro = plan.pagetables.pfn <= pfn < plan.pagetables.pfn_end
            assert got == (pfn, L1_PROT_RO if ro else L1_PROT), hex(pfn)
        # Exactly these areas: the page after each and the page before each are not mapped.
        assert walk(plan, tables, m2p, hi) is None
        if lo:
            assert walk(plan, tables, m2p, lo - PAGE_SIZE) is None
    # Every table page is used by the walk (no stray, unreferenced tables).
    referenced = {plan.l4_pfn}
    for off in range(0, len(tables), 8):
        e = struct.unpack_from("<Q", tables, off)[0]
        tbl = plan.pagetables.pfn + off // PAGE_SIZE
        if e & 1 and tbl < plan.pagetables.pfn + sum(plan.pt_counts[:3]):
            referenced.add(m2p[(e & PTE_MFN_MASK) >> 12])
    assert referenced == set(range(plan.pagetables.pfn, plan.pagetables.pfn_end))


def test_linux_like_layout_and_tables() -> None:
    img = kernel(size=0x200000)
    plan = compute(img, memory_mib=64, vcpus=2, ramdisk_size=5000, cmdline="console=hvc0")
    check_invariants(plan)
    assert plan.kernel.pfn == KSTART_PADDR // PAGE_SIZE
    assert plan.ramdisk is not None and plan.ramdisk.pfn == plan.kernel.pfn_end
    assert plan.ramdisk.pages == 2 and plan.mod_start == plan.ramdisk.vstart
    assert plan.p2m.pfn == plan.ramdisk.pfn_end and plan.p2m.pages == 16384 * 8 // PAGE_SIZE
    assert [r.name for r in plan.regions] == ["kernel", "ramdisk", "p2m", "start_info",
                                              "xenstore", "console", "pagetables", "bootstack"]
    check_tables(plan, shuffled_p2m(plan.nr_pages))


def test_kernel_pages_places_segments() -> None:
    text = bytes(range(200))
    elf = make_elf(segments=[(KSTART_PADDR, text, 0x1000), (KSTART_PADDR + 0x2000, b"DATA", 16)],
                   notes=linux_notes(n2=None))
    img = parse_kernel(elf)
    plan = compute(img, memory_mib=32)
    buf = kernel_pages(img, plan)
    assert len(buf) == plan.kernel.pages * PAGE_SIZE == 0x3000
    assert buf[:200] == text and buf[200:0x2000] == bytes(0x2000 - 200)
    assert buf[0x2000:0x2004] == b"DATA" and not any(buf[0x2004:])
    # In place over dirty memory (what the builder does on the guest's pages): same bytes.
    dirty = bytearray(b"\xff" * len(buf))
    write_kernel(memoryview(dirty), img, plan)
    assert dirty == buf
    with pytest.raises(LayoutError, match="buffer is"):
        write_kernel(memoryview(dirty)[:-1], img, plan)


def test_start_info_fields() -> None:
    plan = compute(kernel(), memory_mib=32, ramdisk_size=10_000, cmdline="root=/dev/ram0 quiet")
    p2m = shuffled_p2m(plan.nr_pages, seed=7)
    page = start_info(plan, p2m, shared_info_mfn=0xABCDE, store_evtchn=3, console_evtchn=2)
    assert len(page) == PAGE_SIZE
    assert page[:15] == b"xen-3.0-x86_64\0"
    nr_pages, shared, flags = struct.unpack_from("<QQI", page, 32)
    assert (nr_pages, shared, flags) == (plan.nr_pages, 0xABCDE000, 0)
    store_mfn, store_ev = struct.unpack_from("<QI", page, 56)
    con_mfn, con_ev = struct.unpack_from("<QI", page, 72)
    assert (store_mfn, store_ev) == (p2m[plan.xenstore.pfn], 3)
    assert (con_mfn, con_ev) == (p2m[plan.console.pfn], 2)
    pt_base, nr_pt, mfn_list, mod_start, mod_len = struct.unpack_from("<5Q", page, 88)
    assert pt_base == plan.pagetables.vstart and nr_pt == plan.pagetables.pages
    assert mfn_list == plan.p2m.vstart
    assert (mod_start, mod_len) == (plan.ramdisk.vstart, 10_000)
    assert page[128:128 + 21] == b"root=/dev/ram0 quiet\0"


def test_p2m_bytes() -> None:
    plan = compute(kernel(), memory_mib=32)
    p2m = shuffled_p2m(plan.nr_pages)
    raw = p2m_bytes(plan, p2m)
    assert len(raw) == plan.p2m.pages * PAGE_SIZE
    assert list(struct.unpack_from(f"<{plan.nr_pages}Q", raw)) == p2m
    with pytest.raises(LayoutError, match="expected nr_pages"):
        p2m_bytes(plan, p2m[:-1])


def test_unmapped_ramdisk_when_mapped_does_not_fit() -> None:
    img = kernel()
    # 40 MiB of ramdisk in 48 MiB: mapped, the 4 MiB rounding of the mapping still fits...
    plan = compute(img, memory_mib=64, ramdisk_size=40 << 20)
    check_invariants(plan)
    assert plan.ramdisk.mapped
    # ...forced unmapped, it goes after the mapping and is found by pfn.
    plan = compute(img, memory_mib=64, ramdisk_size=40 << 20, unmapped_ramdisk=True)
    check_invariants(plan)
    assert not plan.ramdisk.mapped and plan.flags == SIF_MOD_START_PFN
    check_tables(plan, shuffled_p2m(plan.nr_pages))
    with pytest.raises(LayoutError, match="MOD_START_PFN"):
        compute(kernel(mod_start_pfn=False), memory_mib=64, ramdisk_size=1,
                unmapped_ramdisk=True)


@pytest.mark.parametrize("kw, message", [
    ({"memory_mib": 16, "ramdisk_size": 16 << 20}, r"memory=16 MiB is too small"),
    ({"memory_mib": 0}, "must be positive"),
    ({"memory_mib": 64, "maxmem_mib": 32}, "below memory"),
    ({"memory_mib": 64, "vcpus": 3, "max_vcpus": 2}, "between 1 and maxvcpus=2"),
    ({"memory_mib": 64, "cmdline": "x" * 1024}, "at most 1023 bytes"),
])
def test_layout_errors(kw: dict, message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        compute(kernel(mod_start_pfn=False), **kw)


def test_required_auto_translated_refused() -> None:
    notes = linux_notes(n10=b"!auto_translated_physmap\0", n2=None)
    img = parse_kernel(make_elf(notes=notes))
    with pytest.raises(LayoutError, match="auto_translated_physmap"):
        compute(img, memory_mib=64)


def test_elf32_refused() -> None:
    notes = linux_notes(n3=struct.pack("<I", 0xC0000000), n4=struct.pack("<I", 0xC0000000),
                        n1=struct.pack("<I", 0xC0100010), n2=None, n15=None)
    img = parse_kernel(make_elf(cls=32, machine=3, notes=notes,
                                segments=[(0xC0100000, b"x", 0x1000)], e_entry=0xC0100010))
    with pytest.raises(LayoutError, match="x86_32 PV guests are not supported"):
        compute(img, memory_mib=64)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kstart_pages=st.integers(0, 0x3000),
    ksize=st.integers(64, 8 << 20),
    virt_base=st.sampled_from([0, 0x400000, VIRT_BASE, 0xFFFF800000000000, 0x7F8000000000]),
    memory_mib=st.integers(16, 2048),
    ramdisk=st.integers(0, 24 << 20),
    unmapped=st.sampled_from([None, False, True]),
    vcpus=st.integers(1, 8),
    init_p2m=st.booleans(),
)
def test_layout_invariants_fuzz(kstart_pages: int, ksize: int, virt_base: int, memory_mib: int,
                                ramdisk: int, unmapped: bool | None, vcpus: int,
                                init_p2m: bool) -> None:
    img = kernel(kstart=kstart_pages * PAGE_SIZE, size=ksize, virt_base=virt_base)
    # INIT_P2M (0x8000000000 in these kernels) only works below VIRT_BASE.
    init_p2m = init_p2m and virt_base > 0x8000000000 + (memory_mib << 11)
    try:
        plan = compute(img, memory_mib=memory_mib, vcpus=vcpus, ramdisk_size=ramdisk,
                       unmapped_ramdisk=unmapped, cmdline="x", init_p2m=init_p2m)
    except LayoutError as exc:
        assert "too small" in str(exc), exc
        # It only refuses when the boot structures really do not fit: an upper bound of
        # what they need (4 MiB rounding, 512 KiB padding, generous page tables).
        nr = memory_mib * 256
        need = (kstart_pages + -(-ksize // PAGE_SIZE) + -(-ramdisk // PAGE_SIZE)
                + -(-nr * 8 // PAGE_SIZE) + 5)
        need += need // 512 + 8 + 128 + 1024
        assert nr < need, exc
        return
    check_invariants(plan)
    # Walking every page of a 4 GiB guest's mapping is slow in Python; sample instead.
    check_tables(plan, shuffled_p2m(plan.nr_pages), every=max(1, plan.map_pages // 2000))


def test_real_kernel_layout() -> None:
    path = real_kernel_path()
    if path is None:
        pytest.skip("no real vmlinuz: set XENTOOL_TEST_VMLINUZ, or provide /boot/vmlinuz-* or "
                    "the testbed cache ~/.cache/xentool-testbed/")
    img = load_kernel(path)
    plan = compute(img, memory_mib=512, vcpus=2, ramdisk_size=2 << 20, cmdline="console=hvc0")
    check_invariants(plan)
    check_tables(plan, shuffled_p2m(plan.nr_pages))
    buf = kernel_pages(img, plan)
    seg = img.segments[0]
    off = img.vaddr_of(seg.paddr) - plan.kernel.vstart
    assert buf[off:off + 64] == img.elf[seg.offset:seg.offset + 64]


def test_init_p2m_maps_the_list_at_its_own_address() -> None:
    img = kernel(size=0x200000)
    plan = compute(img, memory_mib=256, ramdisk_size=3 << 20, init_p2m=True)
    check_invariants(plan)
    assert not plan.p2m.mapped and plan.p2m.vstart == 0x8000000000
    assert plan.p2m.pfn >= plan.map_pages and plan.p2m.pages == 256 * 256 * 8 // PAGE_SIZE
    # The boot mapping no longer holds the p2m: start_info follows the ramdisk directly.
    assert plan.start_info.pfn == plan.ramdisk.pfn_end
    p2m = shuffled_p2m(plan.nr_pages, seed=3)
    check_tables(plan, p2m)
    page = start_info(plan, p2m, shared_info_mfn=1, store_evtchn=1, console_evtchn=2)
    assert struct.unpack_from("<Q", page, 104)[0] == 0x8000000000  # mfn_list
    assert struct.unpack_from("<QQ", page, 1152) == (plan.p2m.pfn, plan.p2m.pages)
    # Without it, those fields stay 0 and mfn_list points into the boot mapping.
    classic = compute(img, memory_mib=256, ramdisk_size=3 << 20)
    page = start_info(classic, p2m, shared_info_mfn=1, store_evtchn=1, console_evtchn=2)
    assert struct.unpack_from("<QQ", page, 1152) == (0, 0)
    assert classic.p2m.mapped and classic.map_pages >= plan.map_pages


def test_init_p2m_needs_the_note() -> None:
    img = parse_kernel(make_elf(notes=linux_notes(n15=None, n2=None)))
    with pytest.raises(LayoutError, match="INIT_P2M note"):
        compute(img, memory_mib=64, init_p2m=True)
