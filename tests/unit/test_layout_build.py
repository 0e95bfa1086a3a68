"""pv.build against a fake hypervisor that keeps guest memory in a dict of pages.

The fake enforces what Xen enforces and what this test can see: no page may still be
mapped by the toolstack when the L4 is pinned, maps must name populated frames, and the
pages the guest reads at boot are checked by walking its page tables from cr3.
"""

from __future__ import annotations

import struct
from contextlib import contextmanager

import pytest
from test_image_kit import KSTART_PADDR, VIRT_BASE, linux_notes, make_elf, q

from domain_builder import pv
from domain_builder.errors import XenError
from domain_builder.image import parse_kernel
from domain_builder.layout import PAGE_SIZE, PTE_MFN_MASK, compute
from xenstore.client import Perms
from xentool.nodes import build_post_nodes, domain_make_nodes


class FakeXc:
    def __init__(self, superpages: bool = True) -> None:
        self.pages: dict[int, bytearray] = {}
        self.calls: list[tuple] = []
        self.open_maps = 0
        self.superpages = superpages
        self.next_mfn = 0x80000
        self.shared_info = 0x7000
        self.pages[self.shared_info] = bytearray(b"\xff" * PAGE_SIZE)
        self.ports = iter(range(1, 100))
        self.grants: dict = {}
        self.ctx = None

    def _log(self, *call) -> None:
        self.calls.append(call)

    def set_max_vcpus(self, domid, n): self._log("max_vcpus", n)
    def set_address_size(self, domid, bits): self._log("address_size", bits)
    def set_max_mem(self, domid, kb): self._log("max_mem", kb)
    def set_memmap_limit(self, domid, kb): self._log("memmap_limit", kb)

    def tot_pages(self, domid):
        return len(self.pages) - 1

    def populate_physmap(self, domid, pfns, order=0, mem_flags=0):
        self._log("populate", len(pfns), order)
        if order and not self.superpages:
            raise XenError("xc_domain_populate_physmap_exact", 12)
        out = []
        for _ in pfns:
            # Extents come back in a scrambled order, as from a fragmented heap.
            base = self.next_mfn
            self.next_mfn += (1 << order) * 3
            for i in range(1 << order):
                self.pages[base + i] = bytearray(PAGE_SIZE)
            out.append(base)
        return out[::-1]

    @contextmanager
    def map_foreign(self, domid, mfns, writable=True):
        buf = bytearray(b"".join(self.pages[m] for m in mfns))
        self.open_maps += 1
        view = memoryview(buf)
        try:
            yield view
        finally:
            view.release()
            self.open_maps -= 1
            for i, m in enumerate(mfns):
                self.pages[m][:] = buf[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]

    def evtchn_alloc_unbound(self, domid, remote):
        self._log("evtchn", remote)
        return next(self.ports)

    def hypercall_init(self, domid, mfn): self._log("hypercall_init", mfn)

    def domain_info(self, domid):
        class Info:
            shared_info_frame = self.shared_info
        return Info()

    def seed_grant_table(self, domid, console, xenstore):
        assert self.open_maps == 0
        self.grants = {"console": console, "xenstore": xenstore}

    def pin_l4_table(self, domid, mfn):
        assert self.open_maps == 0, "Xen refuses to pin while dom0 maps guest pages"
        self._log("pin", mfn)

    def set_vcpu_context(self, domid, vcpu, ctx):
        self._log("ctx", vcpu)
        self.ctx = ctx


def image(hypercall: bool = True):
    text = b"\x90" * 0x1800 + b"\xc3" * 0x100
    notes = linux_notes() if hypercall else linux_notes(n2=None)
    return parse_kernel(make_elf(segments=[(KSTART_PADDR, text, 0x4000)], notes=notes))


def read_va(xc: FakeXc, cr3: int, va: int, n: int) -> bytes:
    """Read guest memory the way the vCPU will: through the page tables from cr3."""
    out = b""
    while n:
        table = cr3 >> 12
        for shift in (39, 30, 21, 12):
            e = struct.unpack_from("<Q", xc.pages[table], ((va >> shift) & 511) * 8)[0]
            assert e & 1, f"{va:#x} not mapped"
            table = (e & PTE_MFN_MASK) >> 12
        off = va & 0xFFF
        k = min(n, PAGE_SIZE - off)
        out += bytes(xc.pages[table][off:off + k])
        va += k
        n -= k
    return out


@pytest.mark.parametrize("superpages", [True, False])
def test_build_boots_what_the_plan_says(superpages: bool) -> None:
    img = image()
    ramdisk = bytes(range(256)) * 40
    plan = compute(img, memory_mib=32, vcpus=2, max_vcpus=4, ramdisk_size=len(ramdisk),
                   cmdline="console=hvc0 hello")
    xc = FakeXc(superpages)
    built = pv.build(xc, 5, img, plan, ramdisk)
    names = [c[0] for c in xc.calls]
    assert names[:4] == ["max_vcpus", "address_size", "max_mem", "memmap_limit"]
    assert xc.calls[0] == ("max_vcpus", 4) and xc.calls[1] == ("address_size", 64)
    assert xc.calls[2] == ("max_mem", 32 * 1024 + 1024)
    assert names[-2:] == ["pin", "ctx"]
    assert xc.tot_pages(5) == plan.nr_pages
    if not superpages:
        assert ("populate", plan.nr_pages, 0) in xc.calls

    ctx = xc.ctx
    cr3 = ctx.ctrlreg[3]
    assert ("pin", cr3 >> 12) in xc.calls
    assert ctx.user_regs.rip == img.virt_entry == plan.virt_entry
    assert ctx.user_regs.rsi == plan.start_info.vstart
    assert ctx.user_regs.rsp == ctx.kernel_sp == plan.stack_top
    assert ctx.user_regs.cs == 0xE033 and ctx.user_regs.ss == ctx.kernel_ss == 0xE02B
    assert ctx.user_regs.rflags & (1 << 9)

    # What the guest sees through its own page tables.
    seg = img.segments[0]
    assert read_va(xc, cr3, img.virt_kstart, seg.filesz) == bytes(img.segment_data(seg))
    assert read_va(xc, cr3, img.virt_kstart + seg.filesz, 0x100) == bytes(0x100)
    si = read_va(xc, cr3, plan.start_info.vstart, 1168)
    assert si.startswith(b"xen-3.0-x86_64\0")
    nr_pages, shared = struct.unpack_from("<QQ", si, 32)
    assert nr_pages == plan.nr_pages and shared == xc.shared_info << 12
    store_mfn, store_port = struct.unpack_from("<QI", si, 56)
    con_mfn, con_port = struct.unpack_from("<QI", si, 72)
    assert (store_mfn, store_port) == (built.store_mfn, built.store_evtchn)
    assert (con_mfn, con_port) == (built.console_mfn, built.console_evtchn)
    assert built.store_evtchn != built.console_evtchn
    assert xc.grants == {"console": (0, con_mfn), "xenstore": (0, store_mfn)}
    _, _, mfn_list, mod_start, mod_len = struct.unpack_from("<5Q", si, 88)
    assert read_va(xc, cr3, mod_start, mod_len) == ramdisk
    assert si[128:128 + 19] == b"console=hvc0 hello\0"
    # The p2m the guest reads maps every pfn to the frame the walk lands on.
    p2m = struct.unpack(f"<{plan.nr_pages}Q", read_va(xc, cr3, mfn_list, plan.nr_pages * 8))
    assert len(set(p2m)) == plan.nr_pages and set(p2m) <= set(xc.pages)
    assert p2m[plan.xenstore.pfn] == store_mfn
    assert read_va(xc, cr3, plan.console.vstart, PAGE_SIZE) == bytes(PAGE_SIZE)
    # Events masked on every legacy vCPU slot.
    assert all(xc.pages[xc.shared_info][i * 64 + 1] == 1 for i in range(32))
    assert xc.pages[xc.shared_info][0] == 0
    hyp_pfn = (img.virt_hypercall - VIRT_BASE) >> 12
    assert ("hypercall_init", p2m[hyp_pfn]) in xc.calls


def test_build_unmapped_ramdisk() -> None:
    img = image(hypercall=False)
    ramdisk = b"RD" * 5000
    plan = compute(img, memory_mib=32, ramdisk_size=len(ramdisk), unmapped_ramdisk=True)
    xc = FakeXc()
    pv.build(xc, 1, img, plan, ramdisk)
    assert not any(c[0] == "hypercall_init" for c in xc.calls)
    si = read_va(xc, xc.ctx.ctrlreg[3], plan.start_info.vstart, 1168)
    flags, = struct.unpack_from("<I", si, 48)
    _, _, p2m_va, mod_start, mod_len = struct.unpack_from("<5Q", si, 88)
    assert flags & 8 and mod_start == plan.ramdisk.pfn and mod_len == len(ramdisk)
    mfn = struct.unpack_from("<Q", read_va(xc, xc.ctx.ctrlreg[3], p2m_va + mod_start * 8, 8))[0]
    assert bytes(xc.pages[mfn][:10]) == ramdisk[:10]


def test_build_init_p2m() -> None:
    img = image(hypercall=False)
    plan = compute(img, memory_mib=32, ramdisk_size=5000, init_p2m=True)
    xc = FakeXc()
    pv.build(xc, 1, img, plan, b"r" * 5000)
    cr3 = xc.ctx.ctrlreg[3]
    si = read_va(xc, cr3, plan.start_info.vstart, 1168)
    mfn_list = struct.unpack_from("<Q", si, 104)[0]
    first, count = struct.unpack_from("<QQ", si, 1152)
    assert mfn_list == 0x8000000000 and (first, count) == (plan.p2m.pfn, plan.p2m.pages)
    p2m = struct.unpack(f"<{plan.nr_pages}Q", read_va(xc, cr3, mfn_list, plan.nr_pages * 8))
    # The list maps itself: its own pfns resolve to the frames holding it.
    assert bytes(xc.pages[p2m[first]][:8]) == struct.pack("<Q", p2m[0])
    mod_start = struct.unpack_from("<Q", si, 112)[0]
    assert read_va(xc, cr3, mod_start, 5000) == b"r" * 5000


def test_a_prepared_domain_boots_as_one_built_at_once() -> None:
    """A domain shell's memory, prepared ahead (pv.prepare) and loaded at create
    (pv.load), ends with the same pages and registers as pv.build makes in one go."""
    img = image()
    plan = compute(img, memory_mib=32, vcpus=1, max_vcpus=2, cmdline="console=hvc0")
    at_once, split = FakeXc(), FakeXc()
    built = pv.build(at_once, 5, img, plan, None)
    mem = pv.prepare(split, 5, nr_pages=plan.nr_pages, max_pages=plan.max_pages,
                     max_vcpus=plan.max_vcpus)
    assert split.calls == at_once.calls[:len(split.calls)]
    assert pv.load(split, 5, img, plan, None, mem) == built
    assert split.pages == at_once.pages and split.ctx == at_once.ctx
    assert split.calls == at_once.calls
    other = compute(img, memory_mib=48, vcpus=1, max_vcpus=2)
    with pytest.raises(ValueError, match="has 8192 pages, the plan 12288"):
        pv.load(FakeXc(), 5, img, other, None, mem)


def test_build_rejects_mismatched_ramdisk() -> None:
    img = image()
    plan = compute(img, memory_mib=32, ramdisk_size=100)
    with pytest.raises(ValueError, match="ramdisk does not match"):
        pv.build(FakeXc(), 1, img, plan, b"x" * 99)


# --- the XenStore side of create (xentool.create), pure ------------------------------------

def test_domain_nodes_have_libxl_permissions() -> None:
    nodes = {p: (v, perms) for p, v, perms in domain_make_nodes(7, "g", "u-1")}
    assert nodes["/local/domain/7"] == ("", Perms.private(0, 7))
    assert nodes["/vm/u-1"] == ("", Perms.private(0, 7))
    assert nodes["/libxl/7"] == ("", Perms.private(0))
    assert nodes["/local/domain/7/control/shutdown"] == ("", Perms.private(7))
    for node in ("data", "drivers", "feature", "attr", "error",
                 "device/suspend/event-channel"):
        assert nodes[f"/local/domain/7/{node}"][1] == Perms.private(7)
    assert nodes["/local/domain/7/name"] == ("g", None)  # inherits n0,r7
    assert nodes["/local/domain/7/vm"] == ("/vm/u-1", None)
    assert nodes["/vm/u-1/uuid"] == ("u-1", None)
    paths = [p for p, _, _ in domain_make_nodes(7, "g", "u-1")]
    assert paths.index("/local/domain/7") < paths.index("/local/domain/7/control/shutdown")
    assert str(Perms.private(0, 7)) == "n0,r7"


def test_xen_limit_starts_at_the_target_and_the_memory_map_at_maxmem() -> None:
    """As libxl__build_pre: maxmem only bounds what mem-set may give later."""
    plan = compute(image(), memory_mib=32, maxmem_mib=48)
    xc = FakeXc(True)
    pv.build(xc, 5, image(), plan, None)
    assert xc.calls[2] == ("max_mem", 32 * 1024 + 1024)
    assert xc.calls[3] == ("memmap_limit", 48 * 1024)


def test_build_post_nodes() -> None:
    nodes = {p: v for p, v, _ in build_post_nodes(
        3, "u", max_memkb=262144, target_memkb=131072, vcpus=2, max_vcpus=3, store_port=4,
        store_mfn=0x1234, start_time=100.5, kernel="/k", cmdline="quiet")}
    assert nodes["/local/domain/3/memory/static-max"] == "262144"
    assert nodes["/local/domain/3/memory/target"] == "131072"
    assert nodes["/local/domain/3/store/ring-ref"] == str(0x1234)
    assert nodes["/local/domain/3/store/port"] == "4"
    assert [nodes[f"/local/domain/3/cpu/{i}/availability"] for i in range(3)] == \
        ["online", "online", "offline"]
    assert nodes["/vm/u/start_time"] == "100.50"
    # libxl__build_pv's /vm entries: no ramdisk given, none written
    assert {p: v for p, v in nodes.items() if "/image/" in p} == {
        "/vm/u/image/ostype": "linux", "/vm/u/image/kernel": "/k",
        "/vm/u/image/cmdline": "quiet"}


def test_hypercall_page_outside_kernel_is_refused() -> None:
    notes = linux_notes(n2=q(VIRT_BASE + KSTART_PADDR + 0x10000))
    with pytest.raises(Exception, match="HYPERCALL_PAGE"):
        parse_kernel(make_elf(segments=[(KSTART_PADDR, b"x", 0x4000)], notes=notes))
