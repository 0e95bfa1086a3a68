"""The pure side of ``xentool save``: the framing xl/libxl/libxc expect, the machine to
pseudo-physical rewriting of page tables and vCPU contexts, and the walk of a guest's
linear p2m list (against hand-built page tables)."""

from __future__ import annotations

import contextlib
import io
import struct
from collections.abc import Sequence

import pytest

from xentool.migration import save as sv

PAGE = 4096


def test_records_are_padded_to_8_bytes() -> None:
    assert sv.record(0x10) == struct.pack("<II", 0x10, 0)
    r = sv.record(2, b"abc")
    assert r[:8] == struct.pack("<II", 2, 3) and r[8:11] == b"abc" and len(r) == 16
    assert len(sv.record(1, b"x" * 8)) == 16


def test_headers_as_the_specs_lay_them_out() -> None:
    ih = sv.image_header()
    assert len(ih) == 24 and ih[:8] == b"\xff" * 8 and ih[8:12] == b"XENF"
    assert struct.unpack(">IH", ih[12:18]) == (3, 0)  # version 3, little-endian stream
    assert sv.domain_header(4, 17) == struct.pack("<IHHII", 1, 12, 0, 4, 17)
    assert sv.libxl_header() == b"LibxlFmt" + struct.pack(">II", 2, 0)


def test_xl_header_carries_the_config_with_its_nul() -> None:
    cfg = b'{"c_info": {"name": "g"}}\n'
    h = sv.xl_header(cfg)
    assert h[:32] == b"Xen saved domain, xl format\n \0 \r"
    order, mandatory, optional, optlen = struct.unpack("<IIII", h[32:48])
    assert (order, mandatory, optional) == (0x01020304, 3, 0)
    assert optlen == len(h) - 48 == 4 + len(cfg) + 1
    (n,) = struct.unpack("<I", h[48:52])
    assert h[52:52 + n] == cfg + b"\0"
    # No configuration: only the stream flag and an empty optional block.
    bare = sv.xl_header(None)
    assert struct.unpack("<IIII", bare[32:48]) == (0x01020304, 2, 0, 4)


M2P = {0x1000 + i: i for i in range(64)}


def page(entries: dict[int, int]) -> bytes:
    ptes = [0] * 512
    for i, v in entries.items():
        ptes[i] = v
    return struct.pack("<512Q", *ptes)


def ptes(data: bytes) -> list[int]:
    return list(struct.unpack("<512Q", data))


def test_l4_frames_become_pfns_and_xen_slots_are_cleared() -> None:
    nx = 1 << 63
    src = page({0: (0x1005 << 12) | 0x67, 256: (0x9999 << 12) | 0x63,
                272: (0x1001 << 12) | 0x63, 273: nx | (0x1007 << 12) | 0x63,
                300: 0x1006 << 12})  # not present: left as it is
    out = ptes(sv.normalise_pagetable(src, sv.PFINFO_L4TAB | sv.PFINFO_LPINTAB, M2P))
    assert out[0] == (5 << 12) | 0x67
    assert out[256] == 0 and out[272] == 0  # Xen's slots, 256..272 as libxc takes them
    assert out[273] == nx | (7 << 12) | 0x63
    assert out[300] == 0x1006 << 12


def test_lower_levels_keep_every_slot() -> None:
    src = page({256: (0x1002 << 12) | 1, 511: (0x1003 << 12) | 1})
    out = ptes(sv.normalise_pagetable(src, sv.PFINFO_L1TAB, M2P))
    assert out[256] == (2 << 12) | 1 and out[511] == (3 << 12) | 1


def test_foreign_frames_and_superpages_are_refused() -> None:
    with pytest.raises(sv.SaveError, match=r"Bad mfn 0x5 for L1\[3\]"):
        sv.normalise_pagetable(page({3: (5 << 12) | 1}), sv.PFINFO_L1TAB, M2P)
    with pytest.raises(sv.SaveError, match="superpage"):
        sv.normalise_pagetable(page({0: (0x1000 << 12) | 0x81}), sv.PFINFO_L2TAB, M2P)
    # In an L1 bit 7 is PAT, not a superpage.
    sv.normalise_pagetable(page({0: (0x1000 << 12) | 0x81}), sv.PFINFO_L1TAB, M2P)


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
        return [self.types.get(m, sv.PFINFO_NOTAB) for m in mfns]

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
    xc = FakeXc({0x1002: sv.PFINFO_XTAB, 0x1003: sv.PFINFO_L1TAB})
    out = io.BytesIO()
    saver = sv.PvSaver(xc, 1, out)  # type: ignore[arg-type]
    saver.p2m = [0x1000 + i for i in range(6)]
    saver.m2p = {m: i for i, m in enumerate(saver.p2m)}
    saver.send_pages(range(6))
    data = out.getvalue()
    rtype, length = struct.unpack_from("<II", data)
    assert rtype == sv.REC_PAGE_DATA and len(data) == 8 + length
    count, _ = struct.unpack_from("<II", data, 8)
    words = struct.unpack_from(f"<{count}Q", data, 16)
    assert [w & 0xFFFFFFFF for w in words] == list(range(6))
    assert [w >> 32 for w in words] == [0, 0, sv.PFINFO_XTAB, sv.PFINFO_L1TAB, 0, 0]
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
