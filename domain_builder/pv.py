"""Execute a :class:`~domain_builder.layout.BuildPlan` on a created (paused) PV domain.

The order follows the PV boot protocol: memory first (populate gives the p2m), then every
page the guest finds at boot is written through foreign mappings, the mappings are dropped
(Xen refuses to make a page a page table while dom0 still maps it writable), then the
hypercall page, the top-level table pinned, the grant entries for the console and xenstore
backends seeded, and vCPU 0 given its boot registers. Starting the guest (unpause) and the
XenStore side are the caller's business.

Nothing here undoes itself: the caller destroys the domain on failure, which frees
everything this module gave it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from domain_builder.errors import XenError
from domain_builder.image import KernelImage
from domain_builder.layout import (
    PAGE_SIZE,
    BuildPlan,
    p2m_bytes,
    page_tables,
    write_kernel,
)
from domain_builder.layout import start_info as start_info_page

if TYPE_CHECKING:
    from domain_builder.xenctrl import VcpuContext

log = logging.getLogger(__name__)

SUPERPAGE_ORDER = 9  # 2 MiB extents: fewer, cheaper allocations than 4 KiB ones
SUPERPAGE = 1 << SUPERPAGE_ORDER
# LIBXL_MAXMEM_CONSTANT: libxl lets a domain exceed maxmem by 1 MiB (for its own pages).
MAXMEM_SLACK_KB = 1024

# x86_64 PV flat segment selectors (xen/arch-x86/xen-x86_64.h).
FLAT_KERNEL_CS = 0xE033
FLAT_KERNEL_SS = 0xE02B
FLAT_KERNEL_DS = 0x0000
X86_EFLAGS_IF = 1 << 9
# struct shared_info starts with XEN_LEGACY_MAX_VCPUS vcpu_info of 64 bytes each;
# evtchn_upcall_mask is byte 1 of each.
LEGACY_MAX_VCPUS = 32
VCPU_INFO_SIZE = 64


class _Domain(Protocol):
    """The part of ``domain_builder.xenctrl.DomainInfo`` the builder uses."""

    @property
    def shared_info_frame(self) -> int: ...


class _Xc(Protocol):
    """The part of ``domain_builder.xenctrl.XenCtrl`` the builder uses (fakes in tests)."""

    def set_max_vcpus(self, domid: int, n: int) -> None: ...
    def set_address_size(self, domid: int, bits: int) -> None: ...
    def set_max_mem(self, domid: int, max_memkb: int) -> None: ...
    def set_memmap_limit(self, domid: int, limit_kb: int) -> None: ...
    def populate_physmap(self, domid: int, pfns: Sequence[int], order: int = 0,
                         mem_flags: int = 0) -> list[int]: ...
    def tot_pages(self, domid: int) -> int: ...
    def map_foreign(self, domid: int, pfns: Sequence[int], writable: bool = True
                    ) -> AbstractContextManager[memoryview]: ...
    def evtchn_alloc_unbound(self, domid: int, remote_domid: int) -> int: ...
    def hypercall_init(self, domid: int, gmfn: int) -> None: ...
    def domain_info(self, domid: int) -> _Domain | None: ...
    def seed_grant_table(self, domid: int, console: tuple[int, int] | None,
                         xenstore: tuple[int, int] | None) -> None: ...
    def pin_l4_table(self, domid: int, mfn: int) -> None: ...
    def set_vcpu_context(self, domid: int, vcpu: int, ctx: VcpuContext) -> None: ...


@dataclass(frozen=True)
class BuiltPv:
    """What the XenStore side needs to know about the guest just built."""

    domid: int
    store_mfn: int
    store_evtchn: int
    console_mfn: int
    console_evtchn: int
    shared_info_mfn: int


def populate(xc: _Xc, domid: int, nr_pages: int) -> list[int]:
    """Give the domain ``nr_pages`` of memory; returns the p2m (pfn -> mfn).

    2 MiB extents where the heap has them, 4 KiB pages otherwise. A PV guest's pfns are
    ours to assign, so extent i simply becomes pfns [i*512, (i+1)*512).
    """
    big = nr_pages // SUPERPAGE
    p2m: list[int] = []
    if big:
        try:
            for base in xc.populate_physmap(domid, [i * SUPERPAGE for i in range(big)],
                                            SUPERPAGE_ORDER):
                p2m.extend(range(base, base + SUPERPAGE))
        except XenError as exc:
            # A partial success leaves extents we cannot name; only retry from nothing.
            if xc.tot_pages(domid) != 0:
                raise
            log.info("no 2 MiB extents (%s); populating with 4 KiB pages", exc)
            p2m = []
    rest = list(range(len(p2m), nr_pages))
    if rest:
        p2m.extend(xc.populate_physmap(domid, rest, 0))
    return p2m


def _write_pages(view: memoryview, offset: int, data: bytes | bytearray | memoryview,
                 pages: int) -> None:
    """Fill ``pages`` pages at ``offset`` of a mapping with ``data`` and zeros after it."""
    end = offset + pages * PAGE_SIZE
    n = len(data)
    view[offset:offset + n] = data
    if offset + n < end:
        view[offset + n:end] = bytes(end - offset - n)


def vcpu0_context(plan: BuildPlan, l4_mfn: int) -> VcpuContext:
    """Boot registers of vCPU 0 (PV ABI): rip=entry, rsp=stack top, rsi=&start_info."""
    from domain_builder.xenctrl import (
        VGCF_IN_KERNEL,
        VGCF_ONLINE,
        UserRegs,
        VcpuContext,
        xen_pfn_to_cr3,
    )

    regs = UserRegs(
        rip=plan.virt_entry, rsp=plan.stack_top, rsi=plan.start_info.vstart,
        rflags=X86_EFLAGS_IF, cs=FLAT_KERNEL_CS, ss=FLAT_KERNEL_SS,
        ds=FLAT_KERNEL_DS, es=FLAT_KERNEL_DS, fs=FLAT_KERNEL_DS, gs=FLAT_KERNEL_DS,
    )
    cr = [0] * 8
    cr[3] = xen_pfn_to_cr3(l4_mfn)
    # A 64-bit PV kernel registers its event/failsafe/syscall callbacks itself
    # (HYPERVISOR_callback_op) before enabling events, so they stay 0 here, as libxenguest
    # leaves them.
    return VcpuContext(user_regs=regs, flags=VGCF_IN_KERNEL | VGCF_ONLINE, ctrlreg=tuple(cr),
                       kernel_ss=FLAT_KERNEL_SS, kernel_sp=plan.stack_top)


@dataclass(frozen=True)
class Memory:
    """A PV domain made ready for a kernel (vCPUs, limits, event channels, memory), before
    any of its pages is written: what :func:`build` does first, and what a domain shell
    prepared ahead of time holds (``xentool.shells``)."""

    p2m: tuple[int, ...]  # pfn -> mfn
    store_evtchn: int
    console_evtchn: int


def prepare(xc: _Xc, domid: int, *, nr_pages: int, max_pages: int, max_vcpus: int,
            console_domid: int = 0, xenstore_domid: int = 0,
            claim: Callable[[int], None] | None = None) -> Memory:
    """Give the created (paused, empty) PV domain ``domid`` its vCPUs, memory limits,
    console and xenstore event channels and ``nr_pages`` of memory.

    ``claim(n)`` claims ``n`` pages for the domain (0 releases the claim): given, the
    guest's memory is claimed before it is populated, as libxl does with claim_mode.
    """
    xc.set_max_vcpus(domid, max_vcpus)
    xc.set_address_size(domid, 64)
    # Xen's limit starts at the target (libxl__build_pre): raising the target later
    # (mem-set) raises it too; the memory map reaches to maxmem for the balloon.
    xc.set_max_mem(domid, nr_pages * (PAGE_SIZE // 1024) + MAXMEM_SLACK_KB)
    xc.set_memmap_limit(domid, max_pages * (PAGE_SIZE // 1024))

    # Store first, then console: the order libxl allocates them in.
    store_evtchn = xc.evtchn_alloc_unbound(domid, xenstore_domid)
    console_evtchn = xc.evtchn_alloc_unbound(domid, console_domid)

    if claim is not None:
        claim(nr_pages)  # Xen refuses a claim above max_pages: it comes after
    p2m = populate(xc, domid, nr_pages)
    if claim is not None:
        claim(0)
    return Memory(tuple(p2m), store_evtchn, console_evtchn)


def build(xc: _Xc, domid: int, image: KernelImage, plan: BuildPlan, ramdisk: bytes | None,
          *, console_domid: int = 0, xenstore_domid: int = 0,
          claim: Callable[[int], None] | None = None) -> BuiltPv:
    """Build the PV guest ``domid`` (created, paused, no memory yet) according to ``plan``:
    :func:`prepare`, then :func:`load`.  ``claim`` as for :func:`prepare`."""
    mem = prepare(xc, domid, nr_pages=plan.nr_pages, max_pages=plan.max_pages,
                  max_vcpus=plan.max_vcpus, console_domid=console_domid,
                  xenstore_domid=xenstore_domid, claim=claim)
    return load(xc, domid, image, plan, ramdisk, mem, console_domid=console_domid,
                xenstore_domid=xenstore_domid)


def load(xc: _Xc, domid: int, image: KernelImage, plan: BuildPlan, ramdisk: bytes | None,
         mem: Memory, *, console_domid: int = 0, xenstore_domid: int = 0) -> BuiltPv:
    """Write the guest's boot pages into the memory :func:`prepare` gave ``domid`` (which
    must hold ``plan.nr_pages``), pin its page tables and give vCPU 0 its registers."""
    if (ramdisk is None) != (plan.ramdisk is None) or (
            ramdisk is not None and len(ramdisk) != plan.ramdisk_size):
        raise ValueError("ramdisk does not match the plan")
    if len(mem.p2m) != plan.nr_pages:
        raise ValueError(f"the domain has {len(mem.p2m)} pages, the plan {plan.nr_pages}")
    p2m = list(mem.p2m)
    store_evtchn, console_evtchn = mem.store_evtchn, mem.console_evtchn
    info = xc.domain_info(domid)
    if info is None:
        raise XenError("xc_domain_getinfo", 3, f"domain {domid} vanished while building")
    shared_info_mfn = info.shared_info_frame

    # Everything mapped at boot is one contiguous pfn range from the kernel to the stack.
    lo = plan.kernel.pfn
    hi = plan.bootstack.pfn_end
    with xc.map_foreign(domid, p2m[lo:hi]) as view:
        def at(pfn: int) -> int:
            return (pfn - lo) * PAGE_SIZE

        k = at(plan.kernel.pfn)
        write_kernel(view[k:k + plan.kernel.pages * PAGE_SIZE], image, plan)
        if ramdisk is not None and plan.ramdisk is not None and plan.ramdisk.mapped:
            _write_pages(view, at(plan.ramdisk.pfn), ramdisk, plan.ramdisk.pages)
        if plan.p2m.mapped:
            _write_pages(view, at(plan.p2m.pfn), p2m_bytes(plan, p2m), plan.p2m.pages)
        si = start_info_page(plan, p2m, shared_info_mfn=shared_info_mfn,
                             store_evtchn=store_evtchn, console_evtchn=console_evtchn)
        _write_pages(view, at(plan.start_info.pfn), si, 1)
        _write_pages(view, at(plan.xenstore.pfn), b"", 1)
        _write_pages(view, at(plan.console.pfn), b"", 1)
        _write_pages(view, at(plan.pagetables.pfn), page_tables(plan, p2m),
                     plan.pagetables.pages)
        _write_pages(view, at(plan.bootstack.pfn), b"", 1)
    # Pages outside the boot mapping: an unmapped ramdisk, an INIT_P2M p2m list.
    if ramdisk is not None and plan.ramdisk is not None and not plan.ramdisk.mapped:
        rd = plan.ramdisk
        with xc.map_foreign(domid, p2m[rd.pfn:rd.pfn_end]) as view:
            _write_pages(view, 0, ramdisk, rd.pages)
    if not plan.p2m.mapped:
        with xc.map_foreign(domid, p2m[plan.p2m.pfn:plan.p2m.pfn_end]) as view:
            _write_pages(view, 0, p2m_bytes(plan, p2m), plan.p2m.pages)

    # Events stay masked on every vCPU until the kernel has set up its handlers.
    with xc.map_foreign(domid, [shared_info_mfn]) as view:
        view[:] = bytes(PAGE_SIZE)
        for i in range(LEGACY_MAX_VCPUS):
            view[i * VCPU_INFO_SIZE + 1] = 1

    if plan.virt_hypercall is not None:
        pfn = (plan.virt_hypercall - plan.virt_base) // PAGE_SIZE
        xc.hypercall_init(domid, p2m[pfn])

    store_mfn = p2m[plan.xenstore.pfn]
    console_mfn = p2m[plan.console.pfn]
    xc.seed_grant_table(domid, console=(console_domid, console_mfn),
                        xenstore=(xenstore_domid, store_mfn))
    l4_mfn = p2m[plan.l4_pfn]
    xc.pin_l4_table(domid, l4_mfn)
    xc.set_vcpu_context(domid, 0, vcpu0_context(plan, l4_mfn))
    return BuiltPv(domid=domid, store_mfn=store_mfn, store_evtchn=store_evtchn,
                   console_mfn=console_mfn, console_evtchn=console_evtchn,
                   shared_info_mfn=shared_info_mfn)
