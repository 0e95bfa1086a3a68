"""The pure side of ``xentool save``: PAGE_DATA batches (types, which frames carry data,
page tables made pseudo-physical), the machine to pseudo-physical rewriting of vCPU
contexts, and the walk of a guest's linear p2m list (against hand-built page tables)."""

from __future__ import annotations

import contextlib
import io
import struct
import types
from collections.abc import Sequence
from typing import ClassVar

import pytest

from xentool.migration import save as sv
from xentool.migration import stream as st

PAGE = 4096


M2P = {0x1000 + i: i for i in range(64)}


def page(entries: dict[int, int]) -> bytes:
    ptes = [0] * 512
    for i, v in entries.items():
        ptes[i] = v
    return struct.pack("<512Q", *ptes)


def ptes(data: bytes) -> list[int]:
    return list(struct.unpack("<512Q", data))


LAYOUT = sv.VcpuLayout(size=256, rdx=8, ctrlreg=64, gdt_frames=128, gdt_ents=120)


def vcpu_raw(rdx: int, cr1: int, cr3: int, ents: int, gdt: Sequence[int]) -> bytes:
    buf = bytearray(LAYOUT.size)
    struct.pack_into("<Q", buf, LAYOUT.rdx, rdx)
    struct.pack_into("<Q", buf, LAYOUT.ctrlreg + 8, cr1)
    struct.pack_into("<Q", buf, LAYOUT.ctrlreg + 24, cr3)
    struct.pack_into("<Q", buf, LAYOUT.gdt_ents, ents)
    for i, f in enumerate(gdt):
        struct.pack_into("<Q", buf, LAYOUT.gdt_frames + 8 * i, f)
    return bytes(buf)


def test_vcpu0_frames_become_pfns() -> None:
    raw = vcpu_raw(0x1009, (0x100A << 12) | 1, 0x100B << 12, 513, [0x100C, 0x100D, 0x4242])
    out = sv.normalise_vcpu(raw, 0, LAYOUT, M2P)

    def q(off: int) -> int:
        return int(struct.unpack_from("<Q", out, off)[0])

    assert q(LAYOUT.rdx) == 9  # start info of the suspend record
    assert q(LAYOUT.ctrlreg + 8) == (10 << 12) | 1
    assert q(LAYOUT.ctrlreg + 24) == 11 << 12
    # 513 entries: two frames; the third slot is not in use and stays as it was.
    assert [q(LAYOUT.gdt_frames + 8 * i) for i in range(3)] == [12, 13, 0x4242]


def test_other_vcpus_keep_rdx_and_a_zero_cr1() -> None:
    raw = vcpu_raw(0x5555, 0, 0x1001 << 12, 0, [])
    out = sv.normalise_vcpu(raw, 1, LAYOUT, M2P)
    assert struct.unpack_from("<Q", out, LAYOUT.rdx)[0] == 0x5555
    assert struct.unpack_from("<Q", out, LAYOUT.ctrlreg + 8)[0] == 0


def test_bad_vcpu_frames_are_refused() -> None:
    with pytest.raises(sv.SaveError, match="cr3"):
        sv.normalise_vcpu(vcpu_raw(0x1000, 0, 0x77 << 12, 0, []), 0, LAYOUT, M2P)
    with pytest.raises(sv.SaveError, match="GDT entry count"):
        sv.normalise_vcpu(vcpu_raw(0x1000, 0, 0x1000 << 12, 9000, []), 0, LAYOUT, M2P)


class Tables:
    """Guest page tables mapping ``leaves`` at ``vaddr`` (4-level, 4 KiB pages)."""

    def __init__(self, vaddr: int, l1_tables: Sequence[Sequence[int]],
                 l2_entries: Sequence[int] | None = None) -> None:
        self.frames: dict[int, bytes] = {}
        self.next = 0x5000
        l1_mfns = [self.add({(vaddr >> 12 & 511) + i if k == 0 else i: (m << 12) | 1
                             for i, m in enumerate(t)}) for k, t in enumerate(l1_tables)]
        l2_idx = vaddr >> 21 & 511
        l2 = self.add({l2_idx + i: (m << 12) | 1
                       for i, m in enumerate(l2_entries or l1_mfns)})
        l3 = self.add({vaddr >> 30 & 511: (l2 << 12) | 1})
        self.l4 = self.add({vaddr >> 39 & 511: (l3 << 12) | 1})
        self.l1_mfns = l1_mfns

    def add(self, entries: dict[int, int]) -> int:
        mfn = self.next
        self.next += 1
        self.frames[mfn] = page(entries)
        return mfn

    def read(self, mfns: Sequence[int]) -> bytes:
        return b"".join(self.frames[m] for m in mfns)


VADDR = 0xFFFFC90000000000


def test_the_p2m_list_walk_finds_the_leaf_frames() -> None:
    leaves = list(range(0x2000, 0x2000 + 64))  # 64 p2m frames: 32768 pfns
    t = Tables(VADDR, [leaves])
    found, max_pfn = sv.p2m_list_frames(t.read, t.l4 << 12, VADDR, 32767, 1 << 40)
    assert found == leaves and max_pfn == 32767


def test_the_walk_crosses_level_1_tables() -> None:
    leaves = list(range(0x2000, 0x2000 + 600))
    t = Tables(VADDR, [leaves[:512], leaves[512:]])
    found, max_pfn = sv.p2m_list_frames(t.read, t.l4 << 12, VADDR, 600 * 512 - 1, 1 << 40)
    assert found == leaves and max_pfn == 600 * 512 - 1


def test_trailing_identical_level_2_entries_lower_max_pfn() -> None:
    # A guest whose p2m reserves room for 3 GiB of pfns while the last two level-2 entries
    # share one table (of invalid entries): libxc stops at the first table.
    first = list(range(0x2000, 0x2200))
    t = Tables(VADDR, [first, [0x3000] * 512], l2_entries=[0x5000, 0x5001, 0x5001])
    assert t.l1_mfns == [0x5000, 0x5001]
    found, max_pfn = sv.p2m_list_frames(t.read, t.l4 << 12, VADDR, 3 * 512 * 512 - 1,
                                        1 << 40)
    assert max_pfn == 512 * 512 - 1 and found == first


def test_a_bad_walk_is_one_error() -> None:
    t = Tables(VADDR, [[0x2000]])
    with pytest.raises(sv.SaveError, match="Bad mfn"):
        sv.p2m_list_frames(t.read, t.l4 << 12, VADDR, 1023, 1 << 40)  # 2nd leaf missing
    with pytest.raises(sv.SaveError, match="Bad virtual p2m address range"):
        sv.p2m_list_frames(t.read, t.l4 << 12, 0xFFFF800000000000, 511, 1 << 40)


class FakeXc:
    """Guest frames for PvSaver: frame m holds bytes of value m % 251; types by frame."""

    def __init__(self, types: dict[int, int]) -> None:
        self.types = types

    def pfn_types(self, domid: int, mfns: Sequence[int]) -> list[int]:
        return [self.types.get(m, st.XEN_DOMCTL_PFINFO_NOTAB) for m in mfns]

    def map_foreign(self, domid: int, mfns: Sequence[int], writable: bool = True
                    ) -> contextlib.AbstractContextManager[memoryview]:
        data = b"".join(self.frame(m) for m in mfns)
        return contextlib.nullcontext(memoryview(data))

    @staticmethod
    def frame(m: int) -> bytes:
        if m == 0x1003:  # a page table with one entry, frame 0x1001 (pfn 1)
            return page({0: (0x1001 << 12) | 1})
        return bytes([m % 251]) * PAGE


def test_page_data_records_list_every_frame_and_carry_data_for_real_pages() -> None:
    xc = FakeXc({0x1002: st.XEN_DOMCTL_PFINFO_XTAB, 0x1003: st.XEN_DOMCTL_PFINFO_L1TAB})
    out = io.BytesIO()
    saver = sv.PvSaver(xc, 1, out)  # type: ignore[arg-type]
    saver.p2m = [0x1000 + i for i in range(6)]
    saver.m2p = {m: i for i, m in enumerate(saver.p2m)}
    saver.send_pages(range(6))
    data = out.getvalue()
    rtype, length = struct.unpack_from("<II", data)
    assert rtype == st.RecordType.PAGE_DATA and len(data) == 8 + length
    count, _ = struct.unpack_from("<II", data, 8)
    words = struct.unpack_from(f"<{count}Q", data, 16)
    assert [w & 0xFFFFFFFF for w in words] == list(range(6))
    assert [w >> 32 for w in words] == [0, 0, st.XEN_DOMCTL_PFINFO_XTAB,
                                        st.XEN_DOMCTL_PFINFO_L1TAB, 0, 0]
    pages = data[16 + 8 * count:]
    assert len(pages) == 5 * PAGE  # the XTAB frame has no data
    got = [pages[i * PAGE:(i + 1) * PAGE] for i in range(5)]
    assert got[0] == FakeXc.frame(0x1000) and got[1] == FakeXc.frame(0x1001)
    assert ptes(got[2])[0] == (1 << 12) | 1  # normalised: pfn 1, not frame 0x1001
    assert got[3] == FakeXc.frame(0x1004) and got[4] == FakeXc.frame(0x1005)
    assert (saver.stats.frames, saver.stats.pages, saver.stats.pagetables) == (6, 5, 1)


def test_an_unknown_page_type_is_refused() -> None:
    saver = sv.PvSaver(FakeXc({0x1000: 0x5 << 28}), 1, io.BytesIO())  # type: ignore[arg-type]
    saver.p2m = [0x1000]
    with pytest.raises(sv.SaveError, match="Unknown type"):
        saver.send_pages([0])


class FakeGuest:
    """A 16-page 64-bit PV guest for PvSaver, suspended: pfn i is frame 0x1000 + i; its
    p2m list (one page, pfn 4) is mapped at VADDR by page tables in pfns 0-3 (L4 .. L1);
    pfn 5 is the start info; the shared info frame is 0x3000."""

    SHINFO_MFN = 0x3000
    LAYOUT: ClassVar[dict[str, int]] = {"size": 5168, "rdx": 616, "ctrlreg": 4984,
                                        "gdt_frames": 4832, "gdt_ents": 4960}

    def __init__(self) -> None:
        mfn = [0x1000 + i for i in range(16)]
        self.frames: dict[int, bytes] = {m: bytes([i]) * PAGE for i, m in enumerate(mfn)}
        self.frames[mfn[0]] = page({VADDR >> 39 & 511: (mfn[1] << 12) | 0x67,
                                    256: (0x7777 << 12) | 0x63})  # a Xen slot
        self.frames[mfn[1]] = page({VADDR >> 30 & 511: (mfn[2] << 12) | 0x67})
        self.frames[mfn[2]] = page({VADDR >> 21 & 511: (mfn[3] << 12) | 0x67})
        self.frames[mfn[3]] = page({VADDR >> 12 & 511: (mfn[4] << 12) | 0x67})
        self.frames[mfn[4]] = struct.pack("<512Q", *(mfn + [sv.INVALID_MFN] * 496))
        shinfo = bytearray(PAGE)
        struct.pack_into("<Q", shinfo, sv.SHINFO_MAX_PFN, 16)
        struct.pack_into("<QQ", shinfo, sv.SHINFO_P2M_CR3, mfn[0] << 12, VADDR)
        self.frames[self.SHINFO_MFN] = bytes(shinfo)
        self.types = {mfn[0]: st.XEN_DOMCTL_PFINFO_L4TAB | st.XEN_DOMCTL_PFINFO_LPINTAB,
                      mfn[1]: st.XEN_DOMCTL_PFINFO_L3TAB, mfn[2]: st.XEN_DOMCTL_PFINFO_L2TAB,
                      mfn[3]: st.XEN_DOMCTL_PFINFO_L1TAB}
        vcpu = bytearray(5168)
        struct.pack_into("<Q", vcpu, self.LAYOUT["rdx"], mfn[5])
        struct.pack_into("<Q", vcpu, self.LAYOUT["ctrlreg"] + 24, mfn[0] << 12)
        self.vcpu = bytes(vcpu)

    def domain_info(self, domid: int) -> object:
        return types.SimpleNamespace(hvm=False, shared_info_frame=self.SHINFO_MFN,
                                     max_vcpu_id=1)

    def vcpu_info(self, domid: int, vcpu: int) -> object:
        return types.SimpleNamespace(online=vcpu == 0)  # vCPU 1 is offline: no records

    def guest_width(self, domid: int) -> int:
        return 8

    def maximum_ram_page(self) -> int:
        return 1 << 20

    def version(self) -> object:
        return types.SimpleNamespace(major=4, minor=17)

    def cpu_policy_serialised(self, domid: int) -> tuple[bytes, bytes]:
        return struct.pack("<6I", 0, 0xFFFFFFFF, 0xD, 1, 2, 3), struct.pack("<IIQ", 0xCE, 0, 1)

    def tsc_info(self, domid: int) -> tuple[int, int, int, int]:
        return 0, 123456789, 2000000, 1

    def vcpu_context_offsets(self) -> dict[str, int]:
        return self.LAYOUT

    def vcpu_context_raw(self, domid: int, vcpu: int) -> bytes:
        return self.vcpu

    def ext_vcpu_context(self, domid: int, vcpu: int) -> bytes:
        return b"\x01" * 40

    def vcpu_xsave(self, domid: int, vcpu: int) -> bytes:
        return b""

    def vcpu_msrs(self, domid: int, vcpu: int) -> bytes:
        return struct.pack("<IIQ", 0xC0000103, 0, 7)

    def pfn_types(self, domid: int, mfns: Sequence[int]) -> list[int]:
        return [self.types.get(m, st.XEN_DOMCTL_PFINFO_NOTAB) if m in self.frames
                else st.XEN_DOMCTL_PFINFO_XTAB for m in mfns]

    def map_foreign(self, domid: int, mfns: Sequence[int], writable: bool = True
                    ) -> contextlib.AbstractContextManager[memoryview]:
        return contextlib.nullcontext(memoryview(b"".join(self.frames[m] for m in mfns)))


def test_a_whole_stream_reads_back_with_the_codec() -> None:
    guest = FakeGuest()
    out = io.BytesIO()
    stats = sv.PvSaver(guest, 7, out).save_suspended()  # type: ignore[arg-type]
    out.seek(0)
    reader = st.StreamReader(out)
    _, dhdr = reader.read_headers()
    assert (dhdr.type, dhdr.xen_major, dhdr.xen_minor) == (st.DomainType.X86_PV, 4, 17)
    recs = list(reader)
    names = [type(r).__name__ for r in recs]
    assert names == ["X86PvInfo", "X86CpuidPolicy", "X86MsrPolicy", "StaticDataEnd",
                     "X86PvP2mFrames", "PageData", "X86TscInfo", "SharedInfo",
                     "X86PvVcpuBasic", "X86PvVcpuExtended", "X86PvVcpuMsrs", "End"]
    p2m = recs[4]
    assert isinstance(p2m, st.X86PvP2mFrames)
    assert (p2m.end_pfn, p2m.p2m_pfns) == (15, (4,))
    pd = recs[5]
    assert isinstance(pd, st.PageData) and pd.pfns == tuple(range(16))
    contents = {pfn: bytes(data) for pfn, _, data in pd.pages() if data is not None}
    l4 = ptes(contents[0])
    assert l4[VADDR >> 39 & 511] == (1 << 12) | 0x67 and l4[256] == 0
    assert ptes(contents[3])[VADDR >> 12 & 511] == (4 << 12) | 0x67
    assert contents[9] == bytes([9]) * PAGE
    basic = recs[8]
    assert isinstance(basic, st.X86PvVcpuBasic) and basic.vcpu_id == 0
    assert struct.unpack_from("<Q", basic.context, FakeGuest.LAYOUT["rdx"])[0] == 5
    tsc = recs[6]
    assert isinstance(tsc, st.X86TscInfo) and (tsc.nsec, tsc.khz) == (123456789, 2000000)
    assert (stats.frames, stats.pages, stats.pagetables) == (16, 16, 4)
    assert stats.bytes == len(out.getvalue())
