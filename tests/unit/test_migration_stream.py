"""The libxc/libxl migration stream codecs and xl's save-file header.

Round trips of every record type (hypothesis), the byte layout of headers and records
against Xen's specs and against files written by ``xl save`` (a committed fixture derived
from one, and the full samples in .scratch/samples when present), the reader's bounds,
the PV page-table arithmetic, and a mutation fuzz of real streams: a hostile stream gets a
StreamError, in bounded time and memory, and nothing else.

``XENTOOL_FUZZ_EXAMPLES=5000 pytest tests/unit/test_migration_stream.py -k fuzz`` runs a
longer fuzz campaign (default 200 examples).
"""

from __future__ import annotations

import functools
import io
import json
import os
import struct
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from xentool.config.libxl_json import yajl_dumps
from xentool.errors import XentoolError
from xentool.migration import libxl_stream as lx
from xentool.migration import stream as s

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "data" / "xl-pv-busybox-derived.save"
SAMPLES = HERE.parents[1] / ".scratch" / "samples"

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
KNOWN = sorted(s._KNOWN)
WITH_DATA = sorted(s._WITH_DATA)


def page(fill: int, salt: bytes = b"") -> bytes:
    return (salt + bytes([fill & 0xFF]) * s.PAGE_SIZE)[:s.PAGE_SIZE]


@st.composite
def page_data(draw: st.DrawFn) -> s.PageData:
    n = draw(st.integers(1, 6))
    pfns = draw(st.lists(st.integers(0, s.PAGE_DATA_PFN_MASK), min_size=n, max_size=n))
    types = draw(st.lists(st.sampled_from(KNOWN), min_size=n, max_size=n))
    salt = draw(st.binary(max_size=16))
    data = b"".join(page(i, salt) for i, t in enumerate(types) if t in s._WITH_DATA)
    return s.PageData(tuple(pfns), tuple(types), data)


@st.composite
def p2m_frames(draw: st.DrawFn) -> s.X86PvP2mFrames:
    start = draw(st.integers(0, 2**20))
    end = draw(st.integers(start, start + 4 * 512))
    n = end // 512 - start // 512 + 1  # 64-bit guest: 512 entries per p2m page
    frames = draw(st.lists(U64, min_size=n, max_size=n))
    return s.X86PvP2mFrames(start, end, tuple(frames))


def vcpu(cls: type[s._VcpuRecord], sizes: st.SearchStrategy[int]) -> st.SearchStrategy[
        s.Record]:
    return st.builds(cls, U32, sizes.flatmap(lambda n: st.binary(min_size=n, max_size=n)))


RECORDS: st.SearchStrategy[s.Record] = st.one_of(
    st.just(s.End()), st.just(s.Verify()), st.just(s.Checkpoint()), st.just(s.StaticDataEnd()),
    page_data(),
    st.sampled_from([s.X86PvInfo(4, 3), s.X86PvInfo(8, 4)]),
    p2m_frames(),
    vcpu(s.X86PvVcpuBasic, st.sampled_from([0, 2800, 5168])),
    vcpu(s.X86PvVcpuExtended, st.integers(0, 128)),
    vcpu(s.X86PvVcpuXsave, st.one_of(st.just(0), st.integers(16, 900))),
    vcpu(s.X86PvVcpuMsrs, st.integers(0, 8).map(lambda n: 16 * n)),
    st.builds(s.SharedInfo, st.binary(max_size=8).map(lambda b: page(7, b))),
    st.builds(s.X86TscInfo, U32, U32, U64, U32),
    st.builds(s.HvmContext, st.binary(max_size=300)),
    st.builds(s.HvmParams, st.lists(st.builds(s.HvmParam, U64, U64), max_size=8).map(tuple)),
    st.builds(s.Toolstack, st.binary(max_size=100)),
    st.builds(s.CheckpointDirtyPfnList, st.lists(U64, max_size=20).map(tuple)),
    st.builds(s.X86CpuidPolicy, st.lists(st.builds(s.CpuidLeaf, U32, U32, U32, U32, U32, U32),
                                         min_size=1, max_size=8).map(tuple)),
    st.builds(s.X86MsrPolicy, st.lists(st.builds(s.MsrEntry, U32, U32, U64),
                                       min_size=1, max_size=8).map(tuple)),
    st.builds(s.OptionalRecord, st.integers(0x8000_0000, 2**32 - 1),
              st.binary(max_size=40)),
)


def split_record(raw: bytes) -> tuple[int, int, bytes]:
    rtype, length = struct.unpack_from("<II", raw)
    return rtype, length, raw[8:]


# --- round trips ------------------------------------------------------------------------


def test_every_record_type_has_a_class_and_a_strategy() -> None:
    assert set(s.RECORD_CLASSES) == set(s.RecordType)
    assert set(lx.LIBXL_RECORD_CLASSES) == set(lx.LibxlRecordType)


@given(RECORDS)
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_record_round_trip(rec: s.Record) -> None:
    raw = rec.encode()
    rtype, length, rest = split_record(raw)
    assert rtype == rec.record_type
    assert length == len(rec.body())
    assert len(raw) % 8 == 0 and len(raw) - 8 - length == s.padding(length) < 8
    assert rest[length:] == bytes(len(rest) - length)  # zero padding
    ctx = s.DecodeContext(guest_width=8) if isinstance(rec, s.X86PvP2mFrames) else \
        s.DecodeContext()
    assert s.decode_record(rtype, rest[:length], ctx) == rec


@given(st.lists(RECORDS, max_size=12))
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
def test_records_through_writer_and_raw_framing(recs: list[s.Record]) -> None:
    buf = io.BytesIO()
    w = s.StreamWriter(buf)
    for r in recs:
        w.write(r)
    assert buf.getvalue() == b"".join(r.encode() for r in recs)
    assert w.offset == len(buf.getvalue())


@given(st.lists(st.one_of(
    st.just(lx.LibxlEnd()), st.just(lx.LibxcContext()), st.just(lx.CheckpointEnd()),
    st.builds(lx.CheckpointState, U32),
    st.builds(lx.EmulatorContext, U32, U32, st.binary(max_size=50)),
    st.builds(lx.EmulatorXenstoreData, U32, U32, st.lists(st.tuples(
        st.text("abcXYZ019-/_@", min_size=1).filter(lambda k: not k.startswith("/")),
        st.text(st.characters(min_codepoint=1, max_codepoint=0x7FF))), max_size=5).map(tuple)),
    st.builds(lx.LibxlOptionalRecord, st.integers(0x8000_0000, 2**32 - 1),
              st.binary(max_size=20)))))
def test_libxl_record_round_trip(recs: list[lx.LibxlRecord]) -> None:
    for rec in recs:
        rtype, length, rest = split_record(rec.encode())
        assert rtype == rec.record_type and len(rest) % 8 == 0
        assert lx.decode_libxl_record(rtype, rest[:length]) == rec


# --- exact layout (from the specs) ------------------------------------------------------


def test_header_layouts() -> None:
    assert s.ImageHeader().encode() == bytes.fromhex(
        "ffffffffffffffff" "58454e46" "00000003" "0000" "0000" "00000000")
    assert s.DomainHeader(s.DomainType.X86_PV, 4, 17).encode() == bytes.fromhex(
        "01000000" "0c00" "0000" "04000000" "11000000")
    assert lx.LibxlHeader().encode() == b"LibxlFmt" + bytes.fromhex("00000002" "00000000")
    assert s.End().encode() == bytes(8)
    assert lx.LibxcContext().encode() == bytes.fromhex("0100000000000000")


def test_page_data_layout() -> None:
    rec = s.PageData((5, 6, 0x123456789),
                     (s.XEN_DOMCTL_PFINFO_L4TAB | s.XEN_DOMCTL_PFINFO_LPINTAB,
                      s.XEN_DOMCTL_PFINFO_XTAB, s.XEN_DOMCTL_PFINFO_NOTAB),
                     page(1) + page(2))
    raw = rec.encode()
    assert raw[:16] == struct.pack("<IIII", 1, 8 + 24 + 8192, 3, 0)
    # the type goes to bits 60-63 of the pfn word: (type << 32) | pfn
    assert struct.unpack_from("<3Q", raw, 16) == (0xC000_0000_0000_0005,
                                                 0xF000_0000_0000_0006, 0x1_2345_6789)
    assert raw[40:] == page(1) + page(2)
    assert [(p, t, bytes(d) if d is not None else None) for p, t, d in rec.pages()] == [
        (5, rec.types[0], page(1)), (6, s.XEN_DOMCTL_PFINFO_XTAB, None), (0x123456789, 0,
                                                                          page(2))]


def test_fixed_record_layouts() -> None:
    assert s.X86PvInfo(8, 4).encode() == bytes.fromhex("0200000008000000" "0804000000000000")
    assert s.X86TscInfo(1, 2, 3, 4).encode() == struct.pack("<IIIIQII", 8, 24, 1, 2, 3, 4, 0)
    assert s.X86PvVcpuExtended(3, b"abc").encode() == struct.pack(
        "<IIII", 5, 11, 3, 0) + b"abc" + bytes(5)
    assert s.HvmParams((s.HvmParam(1, 2),)).body() == struct.pack("<IIQQ", 1, 0, 1, 2)
    assert lx.CheckpointState(2).encode() == struct.pack("<III", 5, 4, 2) + bytes(4)
    assert lx.EmulatorXenstoreData(2, 0, (("a", "b"), ("c/d", ""))).body() == \
        struct.pack("<II", 2, 0) + b"a\0b\0c/d\0\0"


def test_page_types() -> None:
    assert s.XEN_DOMCTL_PFINFO_XTAB == 0xF000_0000 and s.XEN_DOMCTL_PFINFO_LPINTAB == 1 << 31
    for t in range(16):
        v = t << 28
        assert s.page_type_known(v) == (t not in (5, 6, 7, 8))
        assert s.page_type_has_data(v) == (t in (0, 1, 2, 3, 4, 9, 10, 11, 12))
        assert s.page_type_populates(v) == (t in (0, 1, 2, 3, 4, 9, 10, 11, 12, 14))
        assert s.page_table_level(v) == (t & 7 if t in (1, 2, 3, 4, 9, 10, 11, 12) else 0)


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(("rtype", "body", "match"), [
    (0, b"\0" * 8, "END record: 8 bytes of body"),
    (0x13, b"", "unknown mandatory record type 0x00000013"),
    (1, b"", "shorter than its header"),
    (1, struct.pack("<II", 0, 0), "count must be > 0"),
    (1, struct.pack("<II", 2, 0) + bytes(8), "too short for 2 pfns"),
    (1, struct.pack("<IIQ", 1, 0, 5 << 60), "unknown page type 0x50000000"),
    (1, struct.pack("<IIQ", 1, 0, 7), "0 bytes of page data for 1 pages"),
    (1, struct.pack("<IIQ", 1, 0, 0xF << 60) + bytes(4096), "4096 bytes of page data for 0"),
    (2, b"\x08\x03" + bytes(6), "width 8 with 3 page-table levels"),
    (2, b"\x08\x04", "2 bytes, expected 8"),
    (3, struct.pack("<II", 9, 8) + bytes(8), "pfn range 0x9-0x8"),
    (3, struct.pack("<II", 0, 1024) + bytes(8), "1 frames for pfns 0x0-0x400, expected 3"),
    (4, struct.pack("<II", 0, 0) + bytes(100), "100 bytes of context"),
    (5, struct.pack("<II", 0, 0) + bytes(129), "129 bytes, max 128"),
    (6, struct.pack("<II", 0, 0) + bytes(8), "8 bytes, min 16"),
    (0x0C, struct.pack("<II", 0, 0) + bytes(17), "not whole 16-byte entries"),
    (7, bytes(4095), "4095 bytes, expected 4096"),
    (8, bytes(16), "16 bytes, expected 24"),
    (0x0A, struct.pack("<II", 2, 0) + bytes(16), "for 2 parameters"),
    (0x0F, bytes(12), "not whole pfns"),
    (0x11, b"", "not whole 24-byte leaves"),
    (0x12, bytes(24), "not whole 16-byte entries"),
])
def test_malformed_records(rtype: int, body: bytes, match: str) -> None:
    with pytest.raises(s.StreamError, match=match) as e:
        s.decode_record(rtype, body, s.DecodeContext(guest_width=8))
    assert isinstance(e.value, XentoolError) and isinstance(e.value, ValueError)
    assert "\n" not in str(e.value)


def test_vcpu_basic_size_follows_guest_width() -> None:
    body = struct.pack("<II", 1, 0) + bytes(2800)
    assert s.decode_record(4, body, s.DecodeContext(guest_width=4)) == \
        s.X86PvVcpuBasic(1, bytes(2800))
    with pytest.raises(s.StreamError, match="expected 5168 for guest width 8"):
        s.decode_record(4, body, s.DecodeContext(guest_width=8))
    # empty blobs from older senders are tolerated
    assert s.decode_record(6, struct.pack("<II", 1, 0)) == s.X86PvVcpuXsave(1, b"")


def test_optional_unknown_record_is_kept() -> None:
    rec = s.decode_record(0x8000_0042, b"xyz")
    assert rec == s.OptionalRecord(0x8000_0042, b"xyz") and rec.type_name == "0x80000042"


@pytest.mark.parametrize(("patch", "match"), [
    ((0, b"\xfe"), "marker 0xfeffffffffffffff"),
    ((8, b"XENG"), "id 0x58454e47"),
    ((12, b"\0\0\0\x04"), "version 4 unsupported"),
    ((16, b"\0\x01"), "big-endian"),
    ((24, b"\x03"), "guest type 0x3"),
    ((28, b"\x0d"), "page shift 13"),
])
def test_bad_headers(patch: tuple[int, bytes], match: str) -> None:
    raw = bytearray(s.ImageHeader().encode() + s.DomainHeader(1, 4, 17).encode())
    at, new = patch
    raw[at:at + len(new)] = new
    with pytest.raises(s.StreamError, match=match):
        s.StreamReader(io.BytesIO(bytes(raw)), name="x.save").read_headers()


def test_version_2_stream_infers_static_data_end() -> None:
    recs = [s.X86PvInfo(8, 4), s.X86PvP2mFrames(0, 511, (9,)),
            s.PageData((1,), (0,), page(1)), s.End()]
    for version, ok in ((2, True), (3, False)):
        buf = io.BytesIO()
        w = s.StreamWriter(buf)
        w.write_headers(s.DomainHeader(1, 4, 17), s.ImageHeader(version))
        for r in recs:
            w.write(r)
        reader = s.StreamReader(io.BytesIO(buf.getvalue()))
        if ok:
            assert list(reader) == recs
        else:
            with pytest.raises(s.StreamError, match="X86_PV_P2M_FRAMES record before "
                               "STATIC_DATA_END"):
                list(reader)


# --- synthetic whole streams -------------------------------------------------------------


def pv_stream(pages: int = 20, vcpus: int = 2, batch: int = 7, memkb: int = 0,
              extra: list[s.Record] | None = None) -> bytes:
    """A complete xl save file, in the order libxc 4.17 writes a PV guest."""
    doc = {"c_info": {"type": "pv", "name": "synth"},
           "b_info": {"max_memkb": memkb or pages * 4, "target_memkb": memkb or pages * 4}}
    out = io.BytesIO()
    out.write(lx.XlSaveHeader.for_config(doc).encode())
    lw = lx.LibxlStreamWriter(out)
    lw.write_header()
    lw.write(lx.LibxcContext())
    w = lw.libxc()
    w.write_headers(s.DomainHeader(s.DomainType.X86_PV, 4, 17))
    w.write(s.X86PvInfo(8, 4))
    w.write(s.X86CpuidPolicy((s.CpuidLeaf(0, 0xFFFFFFFF, 0xD, 1, 2, 3),)))
    w.write(s.X86MsrPolicy((s.MsrEntry(0xCE, 0, 0),)))
    w.write(s.StaticDataEnd())
    w.write(s.X86PvP2mFrames(0, pages - 1, tuple(range(100, 100 + (pages - 1) // 512 + 1))))
    types = [s.XEN_DOMCTL_PFINFO_L4TAB | s.XEN_DOMCTL_PFINFO_LPINTAB,
             s.XEN_DOMCTL_PFINFO_L1TAB, s.XEN_DOMCTL_PFINFO_XTAB] + [0] * pages
    for lo in range(0, pages, batch):
        pfns = list(range(lo, min(pages, lo + batch)))
        ts = [types[p] for p in pfns]
        w.write_page_data(pfns, ts, b"".join(page(p) for p, t in zip(pfns, ts, strict=True)
                                              if s.page_type_has_data(t)))
    for r in extra or []:
        w.write(r)
    w.write(s.X86TscInfo(0, 2_000_000, 123456789, 1))
    w.write(s.SharedInfo(page(0xAA)))
    for v in range(vcpus):
        w.write(s.X86PvVcpuBasic(v, bytes(5168)))
        w.write(s.X86PvVcpuExtended(v, bytes(72)))
        w.write(s.X86PvVcpuXsave(v, bytes(16 + 832)))
        w.write(s.X86PvVcpuMsrs(v, bytes(32)))
    w.write(s.End())
    lw.write(lx.LibxlEnd())
    return out.getvalue()


def read_all(data: bytes, limits: s.Limits | None = None,
             fp: io.RawIOBase | io.BytesIO | None = None) -> tuple[
                 list[lx.SaveItem], lx.SaveFileReader]:
    r = lx.SaveFileReader(fp or io.BytesIO(data), name="f.save", limits=limits)  # type: ignore[arg-type]
    return list(r), r


def test_synthetic_save_file_reads_back() -> None:
    data = pv_stream(pages=20)
    items, r = read_all(data)
    kinds = [type(i).__name__ for i in items]
    assert kinds[:8] == ["XlSaveHeader", "LibxlHeader", "LibxcContext", "ImageHeader",
                         "DomainHeader", "X86PvInfo", "X86CpuidPolicy", "X86MsrPolicy"]
    assert kinds[-2:] == ["End", "LibxlEnd"]
    assert r.libxc_reader is not None
    assert r.libxc_reader.pages_populated == 19  # one XTAB pfn is not populated
    assert r.libxc_reader.data_pages == 19 and r.libxc_reader.page_entries == 20
    assert r.xl_header is not None
    assert r.xl_header.config_json()["c_info"] == {"type": "pv", "name": "synth"}
    assert r.src.offset == len(data)


class Trickle(io.RawIOBase):
    """A pipe-like source returning at most a few bytes per read."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at, self.n = data, 0, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        self.n = self.n % 7 + 1
        chunk = self.data[self.at:self.at + min(len(b), self.n)]
        b[:len(chunk)] = chunk
        self.at += len(chunk)
        return len(chunk)


def test_short_reads_are_assembled() -> None:
    data = pv_stream(pages=5)
    items, _ = read_all(data, fp=Trickle(data))
    assert items == read_all(data)[0]


def test_limits() -> None:
    data = pv_stream(pages=20, batch=7)
    with pytest.raises(s.StreamLimitError, match="PAGE_DATA record of 24640 bytes, over "
                       "the limit 16424"):  # 6 pages of data: over what 4 pages may need
        read_all(data, s.Limits(max_batch=4))
    xtabs = struct.pack("<II5Q", 5, 0, *[(0xF << 60) | p for p in range(5)])
    with pytest.raises(s.StreamLimitError, match="5 pfns, over the batch limit 4"):
        s.decode_record(1, xtabs, s.DecodeContext(max_batch=4))
    with pytest.raises(s.StreamLimitError, match="more than 10 distinct pages"):
        read_all(data, s.Limits(max_pages=10))
    with pytest.raises(s.StreamLimitError, match="end pfn 0x13 over the limit 0x10"):
        read_all(data, s.Limits(max_pfn=16))
    with pytest.raises(s.StreamLimitError, match="over 14 page entries"):
        read_all(data, s.Limits(max_page_records=14))
    with pytest.raises(s.StreamLimitError, match="X86_PV_VCPU_BASIC record of 5176 bytes"):
        read_all(data, s.Limits(max_small_record=4096))
    # the stored config's max_memkb bounds the pages when the caller gave no bound
    small = pv_stream(pages=300, memkb=4)
    with pytest.raises(s.StreamLimitError, match="more than 257 distinct pages"):
        read_all(small)


def test_pfn_outside_the_p2m_is_refused() -> None:
    data = pv_stream(pages=8, extra=[s.PageData((8,), (0,), page(8))])
    with pytest.raises(s.StreamLimitError, match="pfn 0x8 over the guest's maximum 0x7"):
        read_all(data)


def test_record_order_is_checked() -> None:
    def stream(recs: list[s.Record], dtype: int = 1) -> bytes:
        buf = io.BytesIO()
        w = s.StreamWriter(buf)
        w.write_headers(s.DomainHeader(dtype, 4, 17))
        for r in recs:
            w.write(r)
        return buf.getvalue()

    cases: list[tuple[list[s.Record], int, str]] = [
        ([s.SharedInfo(page(0))], 1, "SHARED_INFO record before X86_PV_INFO"),
        ([s.X86PvInfo(8, 4), s.X86PvInfo(8, 4)], 1, "a second X86_PV_INFO"),
        ([s.X86PvInfo(8, 4), s.StaticDataEnd(), s.PageData((0,), (0,), page(0))], 1,
         "PAGE_DATA record before X86_PV_P2M_FRAMES"),
        ([s.HvmParams(())], 1, "HVM_PARAMS record in an X86_PV stream"),
        ([s.X86PvInfo(8, 4)], 2, "X86_PV_INFO record in an X86_HVM stream"),
        ([s.StaticDataEnd(), s.StaticDataEnd()], 2, "a second STATIC_DATA_END"),
    ]
    for recs, dtype, match in cases:
        with pytest.raises(s.StreamError, match=match):
            list(s.StreamReader(io.BytesIO(stream(recs, dtype))))
    r = s.StreamReader(io.BytesIO(stream([s.End()])))
    assert list(r) == [s.End()] and r.finished
    with pytest.raises(s.StreamError, match="read past the END record"):
        r.read_record()


def test_checkpoint_pauses_iteration() -> None:
    buf = io.BytesIO()
    w = s.StreamWriter(buf)
    w.write_headers(s.DomainHeader(2, 4, 17))
    for r in (s.StaticDataEnd(), s.Checkpoint(), s.HvmContext(b"x"), s.End()):
        w.write(r)
    reader = s.StreamReader(io.BytesIO(buf.getvalue()))
    assert list(reader) == [s.StaticDataEnd(), s.Checkpoint()]
    assert list(reader) == [s.HvmContext(b"x"), s.End()]


def test_truncation_anywhere_is_an_error_not_a_hang() -> None:
    data = pv_stream(pages=3, vcpus=1)
    _, bounds = fuzz_seeds()[0]
    # every cut in and around headers and record headers, a sample inside bodies
    cuts = {c for b in bounds for c in range(max(0, b - 9), b + 25)} | set(
        range(0, len(data), 97))
    for cut in sorted(c for c in cuts if c < len(data)):
        with pytest.raises(s.StreamTruncated, match=f"f.save: truncated at offset {cut}: "):
            read_all(data[:cut])


def test_claimed_length_costs_no_memory() -> None:
    head = pv_stream(pages=1, vcpus=0)
    cut = head.index(s.X86PvInfo(8, 4).encode())
    hostile = head[:cut] + struct.pack("<II", 0x0B, s.REC_LENGTH_MAX) + b"x" * 100
    tracemalloc.start()
    try:
        with pytest.raises(s.StreamTruncated, match="TOOLSTACK record body needs 134217728"):
            read_all(hostile)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


# --- xl header -------------------------------------------------------------------------


def test_xl_header_layout_and_checks() -> None:
    hdr = lx.XlSaveHeader(b"{}\0")
    raw = hdr.encode()
    assert raw[:32] == b"Xen saved domain, xl format\n \x00 \r"
    assert struct.unpack_from("<IIII", raw, 32) == (0x01020304, 3, 0, 7)
    assert raw[48:] == struct.pack("<I", 3) + b"{}\0"
    assert lx.XlSaveHeader.decode(raw) == hdr
    no_config = lx.XlSaveHeader(b"").encode()
    assert struct.unpack_from("<IIII", no_config, 32) == (0x01020304, 2, 0, 0)
    for at, new, match in ((0, b"Y", "wrong magic"), (32, b"\x01\x02\x03\x04", "byte order"),
                           (36, b"\x07", "unsupported mandatory flags 0x4"),
                           (36, b"\x01", "legacy"),
                           (44, b"\x02", "has no config length"),
                           (48, b"\x09", "config of 9 bytes in 3 bytes")):
        bad = bytearray(raw)
        bad[at:at + len(new)] = new
        with pytest.raises(s.StreamError, match=match):
            lx.XlSaveHeader.decode(bytes(bad))


# --- page tables -------------------------------------------------------------------------


def table(entries: dict[int, int]) -> bytes:
    out = [0] * 512
    for i, v in entries.items():
        out[i] = v
    return struct.pack("<512Q", *out)


@given(st.dictionaries(st.integers(0, 511), U64, max_size=40), st.integers(1, 4))
def test_normalise_then_localise_round_trips(entries: dict[int, int], level: int) -> None:
    entries = {i: v & ~s.PTE_PSE if level > 1 else v for i, v in entries.items()
               if not 256 <= i <= 271 or level != 4}
    m2p: Callable[[int], int] = lambda mfn: mfn ^ 0x5A5A  # noqa: E731 - a bijection
    ptype = level << 28
    normal = s.normalise_page_table(table(entries), ptype, m2p)
    got = struct.unpack("<512Q", normal)
    for i in range(512):
        pte = entries.get(i, 0)
        want = s.pte_with_frame(pte, s.pte_frame(pte) ^ 0x5A5A) if pte & 1 else pte
        assert got[i] == want
        assert got[i] & ~s.PTE_FRAME_MASK == pte & ~s.PTE_FRAME_MASK  # flags untouched
    assert s.localise_page_table(normal, ptype | s.XEN_DOMCTL_PFINFO_LPINTAB, m2p) == \
        table(entries)


def test_normalise_clears_xen_slots_and_refuses_what_it_cannot_map() -> None:
    l4 = table({0: 0x1003, 256: 0x2003, 271: 0x3003, 272: 0x4003})
    got = struct.unpack("<512Q", s.normalise_page_table(l4, s.XEN_DOMCTL_PFINFO_L4TAB,
                                                        lambda m: m + 1))
    assert got[0] == 0x2003 and got[256] == got[271] == 0 and got[272] == 0x5003
    l3 = table({3: 0x1001, 4: 0x2001})
    got = struct.unpack("<512Q", s.normalise_page_table(l3, s.XEN_DOMCTL_PFINFO_L3TAB,
                                                        lambda m: m, guest_width=4))
    assert got[3] == 0x1001 and got[4] == 0
    with pytest.raises(s.PageTableError, match=r"L2\[5\] = 0x0000000000200083: superpage"):
        s.normalise_page_table(table({5: 0x200083}), s.XEN_DOMCTL_PFINFO_L2TAB, lambda m: m)
    with pytest.raises(s.PageTableError, match=r"L1\[9\].*mfn 0x7 not in") as e:
        s.normalise_page_table(table({9: 0x7001}), s.XEN_DOMCTL_PFINFO_L1TAB, lambda m: None)
    assert (e.value.level, e.value.slot, e.value.pte) == (1, 9, 0x7001)
    with pytest.raises(s.PageTableError, match="L4 page table in a 32-bit guest"):
        s.normalise_page_table(l4, s.XEN_DOMCTL_PFINFO_L4TAB, lambda m: m, guest_width=4)
    data = page(3)
    assert s.normalise_page_table(data, s.XEN_DOMCTL_PFINFO_NOTAB, lambda m: None) == data


@given(st.integers(0, 2**40))
def test_cr3_round_trip(frame: int) -> None:
    assert s.cr3_to_frame(s.frame_to_cr3(frame, 8) or 0, 8) == frame
    if frame < 2**32:
        cr3 = s.frame_to_cr3(frame, 4)
        assert cr3 is not None and s.cr3_to_frame(cr3, 4) == frame
    else:
        assert s.frame_to_cr3(frame, 4) is None


# --- xl's own files ----------------------------------------------------------------------


def check_xl_save_file(data: bytes, name: str) -> lx.SaveFileReader:
    """Parse a whole file written by ``xl save``; check what xl and libxc guarantee."""
    items, r = read_all(data)
    assert r.src.offset == len(data), "bytes left after the libxl END"
    assert isinstance(items[-1], lx.LibxlEnd)
    hdr = r.xl_header
    assert hdr is not None and hdr.json and hdr.config.endswith(b"\0")
    doc = hdr.config_json()
    # libxl prints the stored config with yajl; our printer reproduces it byte for byte
    assert yajl_dumps(doc) == hdr.config_text(), name
    assert r.libxc_reader is not None and r.libxc_reader.finished
    ihdr, dhdr = r.libxc_reader.read_headers()
    assert (ihdr.version, dhdr.type, dhdr.xen_major, dhdr.xen_minor) == (3, 1, 4, 17)
    # every record re-encodes to the very bytes xl wrote
    assert b"".join(i.encode() for i in items) == data
    return r


def test_committed_fixture_parses_fully() -> None:
    r = check_xl_save_file(FIXTURE.read_bytes(), FIXTURE.name)
    assert r.libxc_reader is not None and r.libxc_reader.data_pages > 0


def samples() -> list[Path]:
    return sorted(SAMPLES.glob("*.save")) if SAMPLES.is_dir() else []


@pytest.mark.skipif(not samples(), reason="no xl save samples in .scratch/samples")
@pytest.mark.parametrize("path", samples(), ids=lambda p: p.name)
def test_xl_samples_parse_fully(path: Path) -> None:
    data = path.read_bytes()
    if data.endswith(lx.LibxcContext().encode()):
        # xl leaves its headers behind when the save fails before libxc starts (a guest
        # that never suspends): the reader must say where the stream stops
        with pytest.raises(s.StreamTruncated, match=f"truncated at offset {len(data)}: "
                           "image header"):
            read_all(data)
        return
    r = check_xl_save_file(data, path.name)
    assert r.xl_header is not None and r.libxc_reader is not None
    b_info = r.xl_header.config_json()["b_info"]
    assert isinstance(b_info, dict)
    # a saved (not live) guest sends each of its pages once: all its memory
    assert r.libxc_reader.pages_populated == r.libxc_reader.page_entries
    assert r.libxc_reader.pages_populated * 4 == b_info["target_memkb"]
    # the vCPU contexts point at pages of the right types: GDTs normal, cr3/cr1 top tables
    items = read_all(data)[0]
    types = {p: t for i in items if isinstance(i, s.PageData)
             for p, t in zip(i.pfns, i.types, strict=True)}
    width = next(i for i in items if isinstance(i, s.X86PvInfo)).guest_width
    for v in (i for i in items if isinstance(i, s.X86PvVcpuBasic)):
        s.localise_vcpu_context(v.context, v.vcpu_id, width, lambda p: p, types.get)


# --- fuzz -------------------------------------------------------------------------------

INTERESTING = (0, 1, 7, 8, 0xFF, 0x1000, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 1 << 32,
               (1 << 63), (1 << 64) - 1)
FUZZ_EXAMPLES = int(os.environ.get("XENTOOL_FUZZ_EXAMPLES", "200"))
FUZZ_SECONDS = 2.0
FUZZ_PEAK = 32 << 20


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    seed, bounds = draw(st.sampled_from(fuzz_seeds()))
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        op = draw(st.sampled_from(("flip", "word", "field", "truncate", "insert", "delete")))
        at = draw(st.integers(0, len(data) - 1))
        if op == "field":  # a record's type or length, or a body's first fields
            at = draw(st.sampled_from(bounds)) + draw(st.sampled_from((0, 4, 8, 12, 16)))
            v = draw(st.sampled_from(INTERESTING + tuple(range(0x14))))
            data[at:at + 4] = (v & 0xFFFF_FFFF).to_bytes(4, "little")
        elif op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "word":
            size = draw(st.sampled_from((4, 8)))
            v = draw(st.sampled_from(INTERESTING)) & ((1 << (8 * size)) - 1)
            data[at:at + size] = v.to_bytes(size, "little")
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at:at + draw(st.integers(1, 64))]
    return bytes(data)


@functools.cache
def fuzz_seeds() -> list[tuple[bytes, tuple[int, ...]]]:
    """Valid streams, each with the offsets where its headers and records start."""
    out = []
    for seed in (pv_stream(pages=3, vcpus=1), pv_stream(pages=6, vcpus=1, batch=4),
                 FIXTURE.read_bytes()):
        bounds, at = [], 0
        for item in read_all(seed)[0]:
            bounds.append(at)
            at += len(item.encode())
        out.append((seed, tuple(bounds)))
    return out


@given(mutated())
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_fuzz_hostile_streams_give_stream_errors(data: bytes) -> None:
    assume(data)
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        try:
            read_all(data)
        except s.StreamError as e:
            assert str(e) and "\n" not in str(e)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - t0 < FUZZ_SECONDS
    assert peak < FUZZ_PEAK + 4 * len(data)


def test_fuzz_seeds_are_valid() -> None:
    for seed, bounds in fuzz_seeds():
        assert isinstance(read_all(seed)[0][-1], lx.LibxlEnd) and len(bounds) > 15


def test_config_json_errors() -> None:
    for config, match in ((b"{\0", "not valid JSON"), (b"[1]\0", "not a JSON object"),
                          (b"\xff\0", "not UTF-8")):
        with pytest.raises(s.StreamError, match=match):
            lx.XlSaveHeader(config).config_json()
    with pytest.raises(s.StreamError, match="not JSON"):
        lx.XlSaveHeader(b"name='x'\n", mandatory_flags=lx.XL_MANDATORY_FLAG_STREAMV2
                        ).config_json()
    assert lx.XlSaveHeader(json.dumps({"b_info": {"max_memkb": 4096}}).encode()
                           ).guest_pages() == 1024 + 256


def test_real_page_tables_are_normalised_as_the_helpers_expect() -> None:
    """xl's stream carries page tables with pfns in the frame bits and Xen's L4 slots
    cleared: our normalise/localise pair maps them and back without changing a byte."""
    items, _ = read_all(FIXTURE.read_bytes())
    p2m = next(i for i in items if isinstance(i, s.X86PvP2mFrames))
    tables = [(t, bytes(d)) for i in items if isinstance(i, s.PageData)
              for _, t, d in i.pages() if d is not None and s.page_table_level(t)]
    assert sorted(s.page_table_level(t) for t, _ in tables) == [1, 2, 3, 4]
    for ptype, data in tables:
        entries = struct.unpack("<512Q", data)
        present = [e for e in entries if e & s.PTE_PRESENT]
        assert present, "a guest page table with no present entry"
        assert all(s.pte_frame(e) <= p2m.end_pfn for e in present)
        if s.page_table_level(ptype) == 4:
            assert not any(entries[256:272])
        mfns = s.localise_page_table(data, ptype, lambda pfn: pfn + 0x100000)
        assert s.normalise_page_table(mfns, ptype, lambda mfn: mfn - 0x100000) == data


def test_hostile_stored_config() -> None:
    for config in (b"[" * 100_000 + b"\0", b'{"a": ' + b"9" * 100_000 + b"}\0"):
        hdr = lx.XlSaveHeader(config)
        with pytest.raises(s.StreamError, match="not valid JSON"):
            hdr.config_json()
        # the file still reads: the config fails where it is used
        data = hdr.encode() + pv_stream(pages=2)[len(lx.XlSaveHeader.for_config(
            {"c_info": {"type": "pv", "name": "synth"},
             "b_info": {"max_memkb": 8, "target_memkb": 8}}).encode()):]
        items, r = read_all(data)
        assert isinstance(items[-1], lx.LibxlEnd) and r.limits.max_pages is None


def test_pfn_list_limit() -> None:
    data = pv_stream(pages=2048)  # four p2m frames
    with pytest.raises(s.StreamLimitError, match="X86_PV_P2M_FRAMES record of 40 bytes"):
        read_all(data, s.Limits(max_pfn_list=3))


# --- vCPU context and shared info ------------------------------------------------------


def fixture_records() -> list[lx.SaveItem]:
    return read_all(FIXTURE.read_bytes())[0]


def test_vcpu_context_layout_matches_xl_streams() -> None:
    """xl normalised these contexts: vCPU 0's cr3 is the pinned L4 table's pfn."""
    items = fixture_records()
    l4 = next(p for i in items if isinstance(i, s.PageData)
              for p, t in zip(i.pfns, i.types, strict=True) if s.page_table_level(t) == 4)
    vcpus = [i for i in items if isinstance(i, s.X86PvVcpuBasic)]
    lay = s.VCPU_CONTEXT_LAYOUT[8]
    ctx0 = vcpus[0].context
    assert struct.unpack_from("<Q", ctx0, lay.cr3)[0] == l4 << 12
    assert struct.unpack_from("<Q", ctx0, lay.flags)[0] & s.VGCF_ONLINE
    shift = 0x100000
    for v in vcpus:
        local = s.localise_vcpu_context(v.context, v.vcpu_id, 8, lambda p: p + shift)
        cr3 = struct.unpack_from("<Q", local, lay.cr3)[0]
        assert cr3 == struct.unpack_from("<Q", v.context, lay.cr3)[0] + (shift << 12)
        ents = struct.unpack_from("<Q", local, lay.gdt_ents)[0]
        assert 0 < ents <= 512  # Linux: one GDT page
        gdt = struct.unpack_from("<Q", local, lay.gdt_frames)[0]
        assert gdt == struct.unpack_from("<Q", v.context, lay.gdt_frames)[0] + shift
        assert struct.unpack_from("<Q", local, lay.gdt_frames + 8)[0] == 0  # unused frame
        assert s.normalise_vcpu_context(local, v.vcpu_id, 8, lambda m: m - shift) == \
            v.context


def blank_context(width: int, **fields: int) -> bytearray:
    lay = s.VCPU_CONTEXT_LAYOUT[width]
    buf = bytearray(lay.size)
    for name, value in fields.items():
        struct.pack_into(lay.word, buf, getattr(lay, name), value)
    return buf


def test_vcpu_context_32_bit_and_errors() -> None:
    lay = s.VCPU_CONTEXT_LAYOUT[4]
    # a 32-bit cr3 holds the frame folded: (frame << 12) | (frame >> 20)
    ctx = blank_context(4, edx=0x11, gdt_ents=513, gdt_frames=0x22, cr3=s.frame_to_cr3(
        0x1234_5678, 4) or 0)
    struct.pack_into("<I", ctx, lay.gdt_frames + 4, 0x23)
    pfn = s.normalise_vcpu_context(ctx, 0, 4, lambda m: m - 0x10)
    assert struct.unpack_from("<I", pfn, lay.edx)[0] == 0x1
    assert struct.unpack_from("<2I", pfn, lay.gdt_frames) == (0x12, 0x13)  # two frames
    assert s.cr3_to_frame(struct.unpack_from("<I", pfn, lay.cr3)[0], 4) == 0x1234_5668
    types = {0x12: 0, 0x13: 0, 0x1234_5668: s.XEN_DOMCTL_PFINFO_L3TAB | 1 << 31}
    back = s.localise_vcpu_context(pfn, 0, 4, lambda p: p + 0x10, types.get)
    assert back == bytes(ctx[:lay.flags]) + struct.pack("<I", s.VGCF_ONLINE) + bytes(
        ctx[lay.flags + 4:])
    # vCPUs other than 0 keep edx
    assert struct.unpack_from("<I", s.normalise_vcpu_context(
        ctx, 1, 4, lambda m: m), lay.edx)[0] == 0x11
    with pytest.raises(s.StreamError, match=r"vcpu 0: cr3 pfn 0x12345668 has page type "
                       r"0x0, expected 0x30000000"):
        s.localise_vcpu_context(pfn, 0, 4, lambda p: p, lambda p: 0)
    with pytest.raises(s.StreamError, match="vcpu 2: GDT frame 0x22 not in the guest"):
        s.normalise_vcpu_context(ctx, 2, 4, lambda m: None if m == 0x22 else m)
    with pytest.raises(s.StreamError, match="vcpu 1: 7169 GDT entries, max 7168"):
        s.normalise_vcpu_context(blank_context(4, gdt_ents=7169), 1, 4, lambda m: m)
    with pytest.raises(s.StreamError, match="vcpu context of 5168 bytes, expected 2800"):
        s.normalise_vcpu_context(bytes(5168), 0, 4, lambda m: m)


def test_vcpu_cr1_64_bit() -> None:
    lay = s.VCPU_CONTEXT_LAYOUT[8]
    assert lay.cr1 is not None and s.VCPU_CONTEXT_LAYOUT[4].cr1 is None
    ctx = blank_context(8, cr3=0x5000, cr1=0x7000)
    pfn = s.normalise_vcpu_context(ctx, 1, 8, lambda m: m + 1)
    assert struct.unpack_from("<Q", pfn, lay.cr1)[0] == (0x8 << 12) | 1
    back = s.localise_vcpu_context(pfn, 1, 8, lambda p: p - 1)
    assert struct.unpack_from("<Q", back, lay.cr1)[0] == 0x7000
    # cr1 0: no user page tables, left alone both ways
    assert struct.unpack_from("<Q", s.normalise_vcpu_context(
        blank_context(8, cr3=0x5000), 1, 8, lambda m: m + 1), lay.cr1)[0] == 0


def test_shared_info_from_xl_stream() -> None:
    items = fixture_records()
    saved = next(i for i in items if isinstance(i, s.SharedInfo)).data
    p2m = next(i for i in items if isinstance(i, s.X86PvP2mFrames))
    arch = s.shared_info_arch(saved, 8)
    assert arch.max_pfn == p2m.end_pfn + 1  # the guest's p2m size, as xl's saver read it
    assert arch.p2m_vaddr >> 47 == 0x1FFFF  # a kernel address: the linear p2m list
    current = bytes([0x5A]) * s.PAGE_SIZE
    new = s.restored_shared_info(saved, current, 8)
    for v in range(32):
        at = v * 64
        assert new[at:at + 8] == saved[at:at + 8] and new[at + 16:at + 64] == saved[
            at + 16:at + 64]
        assert new[at + 8:at + 16] == bytes(8)  # evtchn_pending_sel
    assert new[2048:2560] == bytes(512) and new[2560:3072] == b"\xff" * 512
    assert new[3072:3088] == current[3072:3088]  # wallclock of the new domain
    assert s.shared_info_arch(new, 8) == arch._replace(pfn_to_mfn_frame_list_list=0)
    assert new[3136:] == current[3136:]
