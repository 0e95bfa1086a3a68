"""The libxc migration stream (v2 and v3), as Xen 4.17's ``xc_domain_save`` writes it.

The format is Xen's ``docs/specs/libxc-migration-stream.pandoc``: a 24-byte image header
(big-endian marker ``0xFFFFFFFFFFFFFFFF``, id ``"XENF"``, version, options), a 16-byte
domain header (guest type, page shift, Xen version), then records of ``type``, ``length``,
body and zero padding to 8 bytes, until an END record.  Xen 4.17 writes version 3 and
reads 2 and 3; only little-endian x86 streams with 4 KiB pages exist in practice, and only
those are accepted here.

This module is pure: it encodes and decodes bytes, and checks everything a hostile stream
could get wrong.  The hypercall side (save, restore) builds on it.

API
---
Errors, all under :class:`StreamError` (a :class:`xentool.errors.XentoolError` and a
``ValueError``):

* :class:`StreamTruncated` -- the stream ended inside a header or record;
* :class:`StreamLimitError` -- a record, batch or page count over a :class:`Limits` bound;
* :class:`PageTableError` -- a page-table entry that cannot be translated (see below).

Headers: :class:`ImageHeader` ``(version=3, options=0)`` and :class:`DomainHeader`
``(type, xen_major, xen_minor, page_shift=12)`` (``type`` a :class:`DomainType`); each has
``SIZE``, ``encode()`` and ``decode(data)``.

Records: frozen dataclasses deriving from :class:`Record`, each with ``TYPE`` (a
:class:`RecordType`), ``encode()`` (the whole record: header, body, padding),
``body()`` and ``decode_body(body, ctx)``; :func:`decode_record` picks the class by type:

=====================================  =======================================================
:class:`End`                           end of the stream
:class:`PageData`                      ``pfns``, ``types`` (``XEN_DOMCTL_PFINFO_*``), ``data``
                                       (one 4 KiB page per entry whose type carries data)
:class:`X86PvInfo`                     ``guest_width`` (4/8), ``pt_levels`` (3/4)
:class:`X86PvP2mFrames`                ``start_pfn``, ``end_pfn``, ``p2m_pfns``
:class:`X86PvVcpuBasic` and            ``vcpu_id``, ``context`` (the domctl blob)
``...Extended``, ``...Xsave``,
``...Msrs``
:class:`SharedInfo`                    ``data`` (one page)
:class:`X86TscInfo`                    ``mode``, ``khz``, ``nsec``, ``incarnation``
:class:`HvmContext`                    ``data``
:class:`HvmParams`                     ``params`` (tuple of :class:`HvmParam`)
:class:`Toolstack`                     ``data`` (obsolete; decoded, never written by 4.17)
:class:`Verify`, :class:`Checkpoint`,  no fields
:class:`StaticDataEnd`
:class:`CheckpointDirtyPfnList`        ``pfns``
:class:`X86CpuidPolicy`                ``leaves`` (tuple of :class:`CpuidLeaf`)
:class:`X86MsrPolicy`                  ``entries`` (tuple of :class:`MsrEntry`)
:class:`OptionalRecord`                ``type``, ``data``: an optional record (bit 31) this
                                       module does not know; a reader may skip it
=====================================  =======================================================

Helpers: :func:`decode_record` ``(type, body, ctx=DecodeContext())``, :func:`record_bytes`
``(type, parts)``, :func:`padding` ``(length)``, :func:`check_page_batch`, and
:func:`record_type_name`.

Streams: :class:`StreamReader` ``(fp, name=..., limits=Limits())`` reads the headers
(:meth:`~StreamReader.read_headers`) and yields validated records (iterating stops after
END, or after CHECKPOINT so that a checkpointed stream's upper layer can take its turn;
iterate again to go on).  It reads exactly what it needs from ``fp`` (so a libxl stream can
continue after the libxc END), in chunks, so a length that the stream does not back with
data costs no memory, and a short stream raises :class:`StreamTruncated` instead of
waiting (``fp`` must be blocking; a peer that stops sending is the transport's timeout
to handle).  Its counters ``pages_populated`` (distinct pfns), ``page_entries`` and
``data_pages`` let restore check it got the whole guest.  :class:`Limits` holds the bounds
(record length, batch size, highest pfn, distinct pages, ...).  :class:`StreamWriter`
``(fp)`` writes headers (:meth:`~StreamWriter.write_headers`) and records
(:meth:`~StreamWriter.write`), and :meth:`~StreamWriter.write_page_data` writes a batch
of pages straight from a buffer (a foreign mapping) without copying it.

Page types and page tables: the ``XEN_DOMCTL_PFINFO_*`` constants (the values of Xen's
``public/domctl.h``, as ``xc_get_pfn_type_batch`` returns them; the stream carries them in
bits 60-63 of each pfn word), :func:`page_type_known`, :func:`page_type_has_data`,
:func:`page_type_populates`, :func:`page_table_level`; :func:`normalise_page_table` (save:
machine frames to pseudo-physical, Xen's own slots cleared) and
:func:`localise_page_table` (restore: back), :func:`pte_frame`, :func:`pte_with_frame`,
:func:`cr3_to_frame` and :func:`frame_to_cr3`; for the vCPU records,
:func:`normalise_vcpu_context` and :func:`localise_vcpu_context` (start info, GDT frames,
cr3, cr1, online flag; offsets in :data:`VCPU_CONTEXT_LAYOUT`); for SHARED_INFO,
:func:`shared_info_arch` (max_pfn, p2m frame list, linear p2m) and
:func:`restored_shared_info` (the page libxc writes into the restored guest).
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import BinaryIO, ClassVar, NamedTuple, Self

from xentool.errors import XentoolError

# --- errors -----------------------------------------------------------------------------


class StreamError(XentoolError, ValueError):
    """A migration stream (or save file) that is malformed, hostile or cut short."""


class StreamTruncated(StreamError):
    """The stream ended in the middle of a header or record."""


class StreamLimitError(StreamError):
    """A record, page batch or page count over the reader's :class:`Limits`."""


class PageTableError(StreamError):
    """A page-table entry that cannot be rewritten.

    ``level`` is the table's level (1-4), ``slot`` the entry's index, ``pte`` its value.
    During the live rounds of a save this is expected (the guest changes its tables under
    us): the saver resends the page after pausing, as libxc does on EAGAIN.
    """

    def __init__(self, message: str, level: int = 0, slot: int = 0, pte: int = 0) -> None:
        super().__init__(message)
        self.level = level
        self.slot = slot
        self.pte = pte


# --- constants --------------------------------------------------------------------------

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

IHDR_MARKER = 0xFFFF_FFFF_FFFF_FFFF
IHDR_ID = 0x58454E46  # "XENF"
IHDR_OPT_BIG_ENDIAN = 1 << 0
STREAM_VERSION = 3  # what Xen 4.17 writes
READABLE_VERSIONS = (2, 3)

REC_ALIGN = 8
REC_LENGTH_MAX = 128 << 20  # libxc refuses longer records, either way
REC_TYPE_OPTIONAL = 0x8000_0000
MAX_BATCH_SIZE = 1024  # pages per PAGE_DATA record that libxc writes

PAGE_DATA_PFN_MASK = 0x000F_FFFF_FFFF_FFFF
PAGE_DATA_TYPE_MASK = 0xF000_0000_0000_0000

_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF


class DomainType(IntEnum):
    """The domain header's guest type."""

    X86_PV = 1
    X86_HVM = 2


class RecordType(IntEnum):
    """libxc record types (bit 31 set: optional, a reader may skip it)."""

    END = 0x00
    PAGE_DATA = 0x01
    X86_PV_INFO = 0x02
    X86_PV_P2M_FRAMES = 0x03
    X86_PV_VCPU_BASIC = 0x04
    X86_PV_VCPU_EXTENDED = 0x05
    X86_PV_VCPU_XSAVE = 0x06
    SHARED_INFO = 0x07
    X86_TSC_INFO = 0x08
    HVM_CONTEXT = 0x09
    HVM_PARAMS = 0x0A
    TOOLSTACK = 0x0B
    X86_PV_VCPU_MSRS = 0x0C
    VERIFY = 0x0D
    CHECKPOINT = 0x0E
    CHECKPOINT_DIRTY_PFN_LIST = 0x0F
    STATIC_DATA_END = 0x10
    X86_CPUID_POLICY = 0x11
    X86_MSR_POLICY = 0x12


def record_type_name(rtype: int) -> str:
    """``PAGE_DATA`` for a known type, ``0x80001234`` otherwise."""
    try:
        return RecordType(rtype).name
    except ValueError:
        return f"{rtype:#010x}"


# --- page types (public/domctl.h) -------------------------------------------------------

XEN_DOMCTL_PFINFO_LTAB_SHIFT = 28
XEN_DOMCTL_PFINFO_NOTAB = 0x0 << 28
XEN_DOMCTL_PFINFO_L1TAB = 0x1 << 28
XEN_DOMCTL_PFINFO_L2TAB = 0x2 << 28
XEN_DOMCTL_PFINFO_L3TAB = 0x3 << 28
XEN_DOMCTL_PFINFO_L4TAB = 0x4 << 28
XEN_DOMCTL_PFINFO_LTABTYPE_MASK = 0x7 << 28
XEN_DOMCTL_PFINFO_LPINTAB = 0x1 << 31
XEN_DOMCTL_PFINFO_XTAB = 0xF << 28  # invalid page
XEN_DOMCTL_PFINFO_XALLOC = 0xE << 28  # allocate-only page
XEN_DOMCTL_PFINFO_BROKEN = 0xD << 28  # broken page
XEN_DOMCTL_PFINFO_LTAB_MASK = 0xF << 28

_TABLES = tuple(XEN_DOMCTL_PFINFO_L1TAB * n for n in range(1, 5))
_WITH_DATA = frozenset(
    (XEN_DOMCTL_PFINFO_NOTAB, *_TABLES, *(t | XEN_DOMCTL_PFINFO_LPINTAB for t in _TABLES)))
_POPULATED = _WITH_DATA | {XEN_DOMCTL_PFINFO_XALLOC}
_KNOWN = _POPULATED | {XEN_DOMCTL_PFINFO_XTAB, XEN_DOMCTL_PFINFO_BROKEN}


def page_type_known(ptype: int) -> bool:
    """Whether ``ptype`` is a page type a stream may carry (others make restore fail)."""
    return ptype in _KNOWN


def page_type_has_data(ptype: int) -> bool:
    """Whether a page of this type has its 4 KiB of contents in the PAGE_DATA record
    (normal pages and page tables; not XTAB, XALLOC or BROKEN)."""
    return ptype in _WITH_DATA


def page_type_populates(ptype: int) -> bool:
    """Whether restore allocates a frame for a pfn of this type (data pages and XALLOC)."""
    return ptype in _POPULATED


def page_table_level(ptype: int) -> int:
    """1-4 for a (pinned or not) L1-L4 page table, 0 for any other type."""
    if ptype not in _WITH_DATA:
        return 0
    return (ptype & XEN_DOMCTL_PFINFO_LTABTYPE_MASK) >> XEN_DOMCTL_PFINFO_LTAB_SHIFT


# --- headers ----------------------------------------------------------------------------

_IHDR = struct.Struct(">QIIHHI")
_DHDR = struct.Struct("<IHHII")
_RHDR = struct.Struct("<II")


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """The image header: always big-endian, whatever ``options`` says."""

    version: int = STREAM_VERSION
    options: int = 0

    SIZE: ClassVar[int] = _IHDR.size

    def __post_init__(self) -> None:
        if not 0 <= self.version <= _U32 or not 0 <= self.options <= 0xFFFF:
            raise StreamError(f"image header: version {self.version} or options "
                              f"{self.options} out of range")

    @property
    def big_endian(self) -> bool:
        return bool(self.options & IHDR_OPT_BIG_ENDIAN)

    def encode(self) -> bytes:
        return _IHDR.pack(IHDR_MARKER, IHDR_ID, self.version, self.options, 0, 0)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """The header in ``data`` (exactly :attr:`SIZE` bytes), checked as libxc checks it:
        marker, id, a version this module reads, little-endian."""
        if len(data) != cls.SIZE:
            raise StreamTruncated(f"image header: {len(data)} bytes, expected {cls.SIZE}")
        marker, ident, version, options, _, _ = _IHDR.unpack(data)
        if marker != IHDR_MARKER:
            raise StreamError(f"image header: marker {marker:#018x}, expected "
                              f"{IHDR_MARKER:#018x} (a legacy or non-Xen image?)")
        if ident != IHDR_ID:
            raise StreamError(f"image header: id {ident:#010x}, expected {IHDR_ID:#010x}")
        if version not in READABLE_VERSIONS:
            raise StreamError(f"image header: version {version} unsupported "
                              f"(reads {READABLE_VERSIONS[0]}-{READABLE_VERSIONS[-1]})")
        if options & IHDR_OPT_BIG_ENDIAN:
            raise StreamError("image header: big-endian streams are not supported")
        return cls(version, options)


@dataclass(frozen=True, slots=True)
class DomainHeader:
    """The domain header: guest type, page size as a shift, Xen version of the saver
    (``xen_major`` 0: converted from the legacy format)."""

    type: int
    xen_major: int
    xen_minor: int
    page_shift: int = PAGE_SHIFT

    SIZE: ClassVar[int] = _DHDR.size

    def __post_init__(self) -> None:
        if self.type not in tuple(DomainType):
            raise StreamError(f"domain header: guest type {self.type:#x} unsupported "
                              "(x86 PV 1, x86 HVM 2)")
        if self.page_shift != PAGE_SHIFT:
            raise StreamError(f"domain header: page shift {self.page_shift} unsupported "
                              f"(x86 pages are {PAGE_SIZE} bytes)")
        if not (0 <= self.xen_major <= _U32 and 0 <= self.xen_minor <= _U32):
            raise StreamError("domain header: Xen version out of range")

    @property
    def domain_type(self) -> DomainType:
        return DomainType(self.type)

    def encode(self) -> bytes:
        return _DHDR.pack(self.type, self.page_shift, 0, self.xen_major, self.xen_minor)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        if len(data) != cls.SIZE:
            raise StreamTruncated(f"domain header: {len(data)} bytes, expected {cls.SIZE}")
        dtype, shift, _, major, minor = _DHDR.unpack(data)
        return cls(dtype, major, minor, shift)


# --- records ----------------------------------------------------------------------------


def padding(length: int) -> int:
    """Zero bytes after a body of ``length`` bytes, to the next 8-byte boundary."""
    return -length % REC_ALIGN


_ZEROS = bytes(REC_ALIGN)


def record_bytes(rtype: int, parts: Sequence[bytes | memoryview]) -> bytes:
    """A whole record (header, body made of ``parts``, padding) as bytes."""
    length = sum(len(p) for p in parts)
    if length > REC_LENGTH_MAX:
        raise StreamLimitError(f"{record_type_name(rtype)} record: {length} bytes, over "
                               f"the format's {REC_LENGTH_MAX}")
    return b"".join((_RHDR.pack(rtype, length), *parts, _ZEROS[:padding(length)]))


@dataclass(frozen=True, slots=True)
class DecodeContext:
    """What decoding a record may depend on: the guest's width once X86_PV_INFO gave it
    (for X86_PV_P2M_FRAMES and X86_PV_VCPU_BASIC sizes), and the batch bound."""

    guest_width: int | None = None
    max_batch: int = MAX_BATCH_SIZE


_NO_CONTEXT = DecodeContext()


class Record:
    """A libxc record: ``TYPE``, :meth:`body`, :meth:`encode`, :meth:`decode_body`."""

    __slots__ = ()
    TYPE: ClassVar[int]

    @property
    def type_name(self) -> str:
        return record_type_name(self.record_type)

    @property
    def record_type(self) -> int:
        return self.TYPE

    def body_parts(self) -> Sequence[bytes | memoryview]:
        """The body as a sequence of buffers (large payloads are not copied)."""
        return ()

    def body(self) -> bytes:
        return b"".join(self.body_parts())

    def encode(self) -> bytes:
        return record_bytes(self.record_type, self.body_parts())

    @classmethod
    def decode_body(cls, body: bytes, ctx: DecodeContext = _NO_CONTEXT) -> Self:
        raise NotImplementedError

    def _fail(self, message: str) -> StreamError:
        return StreamError(f"{self.type_name} record: {message}")


def _bad(rtype: int, message: str) -> StreamError:
    return StreamError(f"{record_type_name(rtype)} record: {message}")


class _Empty(Record):
    """A record without fields (its body must be empty)."""

    __slots__ = ()

    @classmethod
    def decode_body(cls, body: bytes, ctx: DecodeContext = _NO_CONTEXT) -> Self:
        if body:
            raise _bad(cls.TYPE, f"{len(body)} bytes of body, expected none")
        return cls()


@dataclass(frozen=True, slots=True)
class End(_Empty):
    """END: the last record of the stream."""

    TYPE: ClassVar[int] = RecordType.END


@dataclass(frozen=True, slots=True)
class Verify(_Empty):
    """VERIFY: the memory records that follow are for checking, not loading."""

    TYPE: ClassVar[int] = RecordType.VERIFY


@dataclass(frozen=True, slots=True)
class Checkpoint(_Empty):
    """CHECKPOINT: the records so far are a consistent state (checkpointed streams)."""

    TYPE: ClassVar[int] = RecordType.CHECKPOINT


@dataclass(frozen=True, slots=True)
class StaticDataEnd(_Empty):
    """STATIC_DATA_END: the guest-invariant records are over (version 3)."""

    TYPE: ClassVar[int] = RecordType.STATIC_DATA_END


_PD_HDR = struct.Struct("<II")


def check_page_batch(pfns: Sequence[int], types: Sequence[int], data_len: int) -> int:
    """Check a PAGE_DATA batch; return the number of pages with data.

    Raises :class:`StreamError` for an empty batch, pfns and types of different lengths,
    a pfn over 52 bits, an unknown type, or ``data_len`` not one page per data type.
    """
    count = len(pfns)
    if count == 0:
        raise _bad(RecordType.PAGE_DATA, "no pfns (count must be > 0)")
    if count != len(types):
        raise _bad(RecordType.PAGE_DATA, f"{count} pfns but {len(types)} types")
    if count > _U32:
        raise _bad(RecordType.PAGE_DATA, f"{count} pfns, over the count field")
    with_data = 0
    for i, (pfn, ptype) in enumerate(zip(pfns, types, strict=True)):
        if not 0 <= pfn <= PAGE_DATA_PFN_MASK:
            raise _bad(RecordType.PAGE_DATA, f"pfn {pfn:#x} (index {i}) over 52 bits")
        if ptype not in _KNOWN:
            raise _bad(RecordType.PAGE_DATA,
                       f"unknown page type {ptype:#x} for pfn {pfn:#x} (index {i})")
        with_data += ptype in _WITH_DATA
    if data_len != with_data * PAGE_SIZE:
        raise _bad(RecordType.PAGE_DATA, f"{data_len} bytes of page data for {with_data} "
                   f"pages with data (expected {with_data * PAGE_SIZE})")
    return with_data


def _pfn_words(pfns: Sequence[int], types: Sequence[int]) -> bytes:
    return struct.pack(f"<{len(pfns)}Q", *((t << 32) | p for p, t in zip(pfns, types,
                                                                          strict=True)))


@dataclass(frozen=True, slots=True)
class PageData(Record):
    """PAGE_DATA: a batch of pfns with their ``XEN_DOMCTL_PFINFO_*`` types, and the
    contents of those whose type has data (:func:`page_type_has_data`), in order."""

    pfns: tuple[int, ...]
    types: tuple[int, ...]
    data: bytes = field(repr=False)

    TYPE: ClassVar[int] = RecordType.PAGE_DATA

    def __post_init__(self) -> None:
        check_page_batch(self.pfns, self.types, len(self.data))

    @property
    def count(self) -> int:
        return len(self.pfns)

    def pages(self) -> Iterator[tuple[int, int, memoryview | None]]:
        """``(pfn, type, contents or None)`` for each entry, without copying."""
        view = memoryview(self.data)
        at = 0
        for pfn, ptype in zip(self.pfns, self.types, strict=True):
            if ptype in _WITH_DATA:
                yield pfn, ptype, view[at:at + PAGE_SIZE]
                at += PAGE_SIZE
            else:
                yield pfn, ptype, None

    def body_parts(self) -> Sequence[bytes | memoryview]:
        return (_PD_HDR.pack(self.count, 0), _pfn_words(self.pfns, self.types), self.data)

    @classmethod
    def decode_body(cls, body: bytes, ctx: DecodeContext = _NO_CONTEXT) -> Self:
        if len(body) < _PD_HDR.size:
            raise _bad(cls.TYPE, f"{len(body)} bytes, shorter than its header")
        count, _ = _PD_HDR.unpack_from(body)
        if count == 0:
            raise _bad(cls.TYPE, "no pfns (count must be > 0)")
        if count > ctx.max_batch:
            raise StreamLimitError(f"PAGE_DATA record: {count} pfns, over the batch limit "
                                   f"{ctx.max_batch}")
        end = _PD_HDR.size + 8 * count
        if len(body) < end:
            raise _bad(cls.TYPE, f"{len(body)} bytes, too short for {count} pfns")
        words = struct.unpack_from(f"<{count}Q", body, _PD_HDR.size)
        pfns = tuple(w & PAGE_DATA_PFN_MASK for w in words)
        types = tuple((w & PAGE_DATA_TYPE_MASK) >> 32 for w in words)
        return cls(pfns, types, bytes(body[end:]))


_PV_INFO = struct.Struct("<BB6x")
_VALID_PV = {4: 3, 8: 4}  # guest width -> page-table levels


@dataclass(frozen=True, slots=True)
class X86PvInfo(Record):
    """X86_PV_INFO: guest width in bytes (4: 32-bit PAE, 8: 64-bit) and its paging
    levels (3, 4); only those two pairs exist."""

    guest_width: int
    pt_levels: int

    TYPE: ClassVar[int] = RecordType.X86_PV_INFO

    def __post_init__(self) -> None:
        if _VALID_PV.get(self.guest_width) != self.pt_levels:
            raise self._fail(f"width {self.guest_width} with {self.pt_levels} page-table "
                             "levels (valid: 4 with 3, 8 with 4)")

    @property
    def frames_per_page(self) -> int:
        """p2m entries in one page of the guest's p2m."""
        return PAGE_SIZE // self.guest_width

    def body_parts(self) -> Sequence[bytes | memoryview]:
        return (_PV_INFO.pack(self.guest_width, self.pt_levels),)

    @classmethod
    def decode_body(cls, body: bytes, ctx: DecodeContext = _NO_CONTEXT) -> Self:
        if len(body) != _PV_INFO.size:
            raise _bad(cls.TYPE, f"{len(body)} bytes, expected {_PV_INFO.size}")
        return cls(*_PV_INFO.unpack(body))


_P2M_HDR = struct.Struct("<II")


@dataclass(frozen=True, slots=True)
class X86PvP2mFrames(Record):
    """X86_PV_P2M_FRAMES: the pfns of the pages holding the guest's p2m for pfns
    ``start_pfn`` .. ``end_pfn`` (inclusive); one frame per ``PAGE_SIZE // width`` pfns."""

    start_pfn: int
    end_pfn: int
    p2m_pfns: tuple[int, ...]

    TYPE: ClassVar[int] = RecordType.X86_PV_P2M_FRAMES

    def __post_init__(self) -> None:
        if not 0 <= self.start_pfn <= self.end_pfn <= _U32:
            raise self._fail(f"pfn range {self.start_pfn:#x}-{self.end_pfn:#x} invalid")
        if not self.p2m_pfns:
            raise self._fail("no frames")
        if any(not 0 <= p <= _U64 for p in self.p2m_pfns):
            raise self._fail("frame out of range")

    def expected_frames(self, guest_width: int) -> int:
        fpp = PAGE_SIZE // guest_width
        return self.end_pfn // fpp - self.start_pfn // fpp + 1

    def check_width(self, guest_width: int) -> None:
        """Raise unless there is one frame per p2m page of the range, for this width."""
        want = self.expected_frames(guest_width)
        if len(self.p2m_pfns) != want:
            raise self._fail(f"{len(self.p2m_pfns)} frames for pfns {self.start_pfn:#x}-"
                             f"{self.end_pfn:#x}, expected {want} (guest width "
                             f"{guest_width})")

    def body_parts(self) -> Sequence[bytes | memoryview]:
        return (_P2M_HDR.pack(self.start_pfn, self.end_pfn),
                struct.pack(f"<{len(self.p2m_pfns)}Q", *self.p2m_pfns))

    @classmethod
    def decode_body(cls, body: bytes, ctx: DecodeContext = _NO_CONTEXT) -> Self:
        if len(body) < _P2M_HDR.size or len(body) % 8:
            raise _bad(cls.TYPE, f"{len(body)} bytes, not a header and whole frames")
        start, end = _P2M_HDR.unpack_from(body)
        n = (len(body) - _P2M_HDR.size) // 8
        rec = cls(start, end, struct.unpack_from(f"<{n}Q", body, _P2M_HDR.size))
        if ctx.guest_width is not None:
            rec.check_width(ctx.guest_width)
        return rec


_VCPU_HDR = struct.Struct("<I4x")
# sizeof(vcpu_guest_context_x86_{32,64}_t) in Xen's public headers
VCPU_CONTEXT_SIZE = {4: 2800, 8: 5168}
_VCPU_MSR_SIZE = 16  # xen_domctl_vcpu_msr_t
_VCPU_EXTENDED_MAX = 128
_VCPU_XSAVE_MIN = 16


@dataclass(frozen=True, slots=True)
class _VcpuRecord(Record):
    vcpu_id: int
    context: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.vcpu_id <= _U32:
            raise self._fail(f"vcpu id {self.vcpu_id} out of range")
        if self.context:  # empty blobs: older senders wrote them; restore skips them
            self._check(len(self.context))

    def _check(self, size: int) -> None:
        pass

    def body_parts(self) -> Sequence[bytes | memoryview]:
        return (_VCPU_HDR.pack(self.vcpu_id), self.context)

    @classmethod
    def decode_body(cls, body: bytes, ctx: DecodeContext = _NO_CONTEXT) -> Self:
        if len(body) < _VCPU_HDR.size:
            raise _bad(cls.TYPE, f"{len(body)} bytes, shorter than its header")
        (vcpu,) = _VCPU_HDR.unpack_from(body)
        rec = cls(vcpu, bytes(body[_VCPU_HDR.size:]))
        if (ctx.guest_width is not None and cls.TYPE == RecordType.X86_PV_VCPU_BASIC
                and rec.context):
            want = VCPU_CONTEXT_SIZE.get(ctx.guest_width)
            if want is not None and len(rec.context) != want:
                raise _bad(cls.TYPE, f"vcpu {vcpu}: {len(rec.context)} bytes of context, "
                           f"expected {want} for guest width {ctx.guest_width}")
        return rec


@dataclass(frozen=True, slots=True)
class X86PvVcpuBasic(_VcpuRecord):
    """X86_PV_VCPU_BASIC: ``vcpu_guest_context`` (XEN_DOMCTL_{get,set}vcpucontext);
    2800 bytes for a 32-bit guest, 5168 for a 64-bit one."""

    TYPE: ClassVar[int] = RecordType.X86_PV_VCPU_BASIC

    def _check(self, size: int) -> None:
        if size not in VCPU_CONTEXT_SIZE.values():
            raise self._fail(f"vcpu {self.vcpu_id}: {size} bytes of context, expected one "
                             f"of {sorted(VCPU_CONTEXT_SIZE.values())}")


@dataclass(frozen=True, slots=True)
class X86PvVcpuExtended(_VcpuRecord):
    """X86_PV_VCPU_EXTENDED: XEN_DOMCTL_{get,set}_ext_vcpucontext (at most 128 bytes)."""

    TYPE: ClassVar[int] = RecordType.X86_PV_VCPU_EXTENDED

    def _check(self, size: int) -> None:
        if size > _VCPU_EXTENDED_MAX:
            raise self._fail(f"vcpu {self.vcpu_id}: {size} bytes, max {_VCPU_EXTENDED_MAX}")


@dataclass(frozen=True, slots=True)
class X86PvVcpuXsave(_VcpuRecord):
    """X86_PV_VCPU_XSAVE: XEN_DOMCTL_{get,set}vcpuextstate (xcr0, xcr0_accum, area)."""

    TYPE: ClassVar[int] = RecordType.X86_PV_VCPU_XSAVE

    def _check(self, size: int) -> None:
        if size < _VCPU_XSAVE_MIN:
            raise self._fail(f"vcpu {self.vcpu_id}: {size} bytes, min {_VCPU_XSAVE_MIN}")


@dataclass(frozen=True, slots=True)
class X86PvVcpuMsrs(_VcpuRecord):
    """X86_PV_VCPU_MSRS: XEN_DOMCTL_{get,set}_vcpu_msrs, 16-byte entries."""

    TYPE: ClassVar[int] = RecordType.X86_PV_VCPU_MSRS

    def _check(self, size: int) -> None:
        if size % _VCPU_MSR_SIZE:
            raise self._fail(f"vcpu {self.vcpu_id}: {size} bytes, not whole "
                             f"{_VCPU_MSR_SIZE}-byte entries")


@dataclass(frozen=True, slots=True)
class _Blob(Record):
    data: bytes = field(repr=False)

    def body_parts(self) -> Sequence[bytes | memoryview]:
        return (self.data,)

    @classmethod
    def decode_body(cls, body: bytes, ctx: DecodeContext = _NO_CONTEXT) -> Self:
        return cls(bytes(body))


@dataclass(frozen=True, slots=True)
class SharedInfo(_Blob):
    """SHARED_INFO: the guest's shared info page, exactly one page."""

    TYPE: ClassVar[int] = RecordType.SHARED_INFO

    def __post_init__(self) -> None:
        if len(self.data) != PAGE_SIZE:
            raise self._fail(f"{len(self.data)} bytes, expected {PAGE_SIZE}")


@dataclass(frozen=True, slots=True)
class HvmContext(_Blob):
    """HVM_CONTEXT: the blob of XEN_DOMCTL_{get,set}hvmcontext."""

    TYPE: ClassVar[int] = RecordType.HVM_CONTEXT


@dataclass(frozen=True, slots=True)
class Toolstack(_Blob):
    """TOOLSTACK: an opaque blob of the layer above (obsolete; Xen 4.17 neither writes nor
    accepts it)."""

    TYPE: ClassVar[int] = RecordType.TOOLSTACK


_TSC = struct.Struct("<IIQI4x")


@dataclass(frozen=True, slots=True)
class X86TscInfo(Record):
    """X86_TSC_INFO: XEN_DOMCTL_{get,set}tscinfo."""

    mode: int
    khz: int
    nsec: int
    incarnation: int

    TYPE: ClassVar[int] = RecordType.X86_TSC_INFO

    def __post_init__(self) -> None:
        if not (0 <= self.mode <= _U32 and 0 <= self.khz <= _U32
                and 0 <= self.nsec <= _U64 and 0 <= self.incarnation <= _U32):
            raise self._fail("field out of range")

    def body_parts(self) -> Sequence[bytes | memoryview]:
        return (_TSC.pack(self.mode, self.khz, self.nsec, self.incarnation),)

    @classmethod
    def decode_body(cls, body: bytes, ctx: DecodeContext = _NO_CONTEXT) -> Self:
        if len(body) != _TSC.size:
            raise _bad(cls.TYPE, f"{len(body)} bytes, expected {_TSC.size}")
        return cls(*_TSC.unpack(body))


class HvmParam(NamedTuple):
    """One HVM parameter: ``idx`` (HVM_PARAM_*) and its value."""

    idx: int
    value: int


_HVMP_HDR = struct.Struct("<I4x")


@dataclass(frozen=True, slots=True)
class HvmParams(Record):
    """HVM_PARAMS: (index, value) pairs of HVMOP_{get,set}_param."""

    params: tuple[HvmParam, ...]

    TYPE: ClassVar[int] = RecordType.HVM_PARAMS

    def __post_init__(self) -> None:
        if any(not (0 <= i <= _U64 and 0 <= v <= _U64) for i, v in self.params):
            raise self._fail("parameter out of range")

    def body_parts(self) -> Sequence[bytes | memoryview]:
        flat = [x for p in self.params for x in p]
        return (_HVMP_HDR.pack(len(self.params)), struct.pack(f"<{len(flat)}Q", *flat))

    @classmethod
    def decode_body(cls, body: bytes, ctx: DecodeContext = _NO_CONTEXT) -> Self:
        if not body:  # written empty by Xen 4.6-4.8; to be tolerated
            return cls(())
        if len(body) < _HVMP_HDR.size:
            raise _bad(cls.TYPE, f"{len(body)} bytes, shorter than its header")
        (count,) = _HVMP_HDR.unpack_from(body)
        if len(body) != _HVMP_HDR.size + 16 * count:
            raise _bad(cls.TYPE, f"{len(body)} bytes for {count} parameters")
        flat = struct.unpack_from(f"<{2 * count}Q", body, _HVMP_HDR.size)
        return cls(tuple(HvmParam(flat[i], flat[i + 1]) for i in range(0, 2 * count, 2)))


@dataclass(frozen=True, slots=True)
class CheckpointDirtyPfnList(Record):
    """CHECKPOINT_DIRTY_PFN_LIST: the pfns a COLO secondary dirtied."""

    pfns: tuple[int, ...]

    TYPE: ClassVar[int] = RecordType.CHECKPOINT_DIRTY_PFN_LIST

    def __post_init__(self) -> None:
        if any(not 0 <= p <= _U64 for p in self.pfns):
            raise self._fail("pfn out of range")

    def body_parts(self) -> Sequence[bytes | memoryview]:
        return (struct.pack(f"<{len(self.pfns)}Q", *self.pfns),)

    @classmethod
    def decode_body(cls, body: bytes, ctx: DecodeContext = _NO_CONTEXT) -> Self:
        if len(body) % 8:
            raise _bad(cls.TYPE, f"{len(body)} bytes, not whole pfns")
        return cls(struct.unpack(f"<{len(body) // 8}Q", body))


class CpuidLeaf(NamedTuple):
    """``xen_cpuid_leaf_t``; ``subleaf`` 0xffffffff: the leaf has none."""

    leaf: int
    subleaf: int
    a: int
    b: int
    c: int
    d: int


class MsrEntry(NamedTuple):
    """``xen_msr_entry_t``; ``flags`` is reserved (zero)."""

    idx: int
    flags: int
    val: int


_LEAF = struct.Struct("<6I")
_MSR = struct.Struct("<IIQ")


@dataclass(frozen=True, slots=True)
class X86CpuidPolicy(Record):
    """X86_CPUID_POLICY: the domain's CPUID policy, as XEN_DOMCTL_get_cpu_policy gives."""

    leaves: tuple[CpuidLeaf, ...]

    TYPE: ClassVar[int] = RecordType.X86_CPUID_POLICY

    def __post_init__(self) -> None:
        if not self.leaves:
            raise self._fail("no leaves")
        if any(not 0 <= x <= _U32 for leaf in self.leaves for x in leaf):
            raise self._fail("field out of range")

    def body_parts(self) -> Sequence[bytes | memoryview]:
        return (b"".join(_LEAF.pack(*leaf) for leaf in self.leaves),)

    @classmethod
    def decode_body(cls, body: bytes, ctx: DecodeContext = _NO_CONTEXT) -> Self:
        if not body or len(body) % _LEAF.size:
            raise _bad(cls.TYPE, f"{len(body)} bytes, not whole {_LEAF.size}-byte leaves")
        return cls(tuple(CpuidLeaf(*t) for t in _LEAF.iter_unpack(body)))


@dataclass(frozen=True, slots=True)
class X86MsrPolicy(Record):
    """X86_MSR_POLICY: the domain's MSR policy, as XEN_DOMCTL_get_cpu_policy gives."""

    entries: tuple[MsrEntry, ...]

    TYPE: ClassVar[int] = RecordType.X86_MSR_POLICY

    def __post_init__(self) -> None:
        if not self.entries:
            raise self._fail("no entries")
        if any(not (0 <= e.idx <= _U32 and 0 <= e.flags <= _U32 and 0 <= e.val <= _U64)
               for e in self.entries):
            raise self._fail("field out of range")

    def body_parts(self) -> Sequence[bytes | memoryview]:
        return (b"".join(_MSR.pack(*e) for e in self.entries),)

    @classmethod
    def decode_body(cls, body: bytes, ctx: DecodeContext = _NO_CONTEXT) -> Self:
        if not body or len(body) % _MSR.size:
            raise _bad(cls.TYPE, f"{len(body)} bytes, not whole {_MSR.size}-byte entries")
        return cls(tuple(MsrEntry(*t) for t in _MSR.iter_unpack(body)))


@dataclass(frozen=True, slots=True)
class OptionalRecord(Record):
    """An optional record (type bit 31 set) of a kind this module does not know."""

    type: int
    data: bytes = field(repr=False)

    TYPE: ClassVar[int] = REC_TYPE_OPTIONAL

    def __post_init__(self) -> None:
        if not REC_TYPE_OPTIONAL <= self.type <= _U32:
            raise StreamError(f"record type {self.type:#x} is not an optional type")

    @property
    def record_type(self) -> int:
        return self.type

    def body_parts(self) -> Sequence[bytes | memoryview]:
        return (self.data,)


RECORD_CLASSES: dict[int, type[Record]] = {
    cls.TYPE: cls for cls in (
        End, PageData, X86PvInfo, X86PvP2mFrames, X86PvVcpuBasic, X86PvVcpuExtended,
        X86PvVcpuXsave, SharedInfo, X86TscInfo, HvmContext, HvmParams, Toolstack,
        X86PvVcpuMsrs, Verify, Checkpoint, CheckpointDirtyPfnList, StaticDataEnd,
        X86CpuidPolicy, X86MsrPolicy)
}


def decode_record(rtype: int, body: bytes, ctx: DecodeContext = _NO_CONTEXT) -> Record:
    """The record of type ``rtype`` with this body (padding already removed).

    An unknown mandatory type is an error (restoring it must fail, says the format); an
    unknown optional one becomes an :class:`OptionalRecord`.
    """
    cls = RECORD_CLASSES.get(rtype)
    if cls is not None:
        return cls.decode_body(body, ctx)
    if rtype & REC_TYPE_OPTIONAL:
        return OptionalRecord(rtype, bytes(body))
    raise StreamError(f"unknown mandatory record type {rtype:#010x}")


# --- reading ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds a :class:`StreamReader` enforces, so that a hostile stream costs bounded
    memory and time.

    ``max_record_length``: any record body (Xen's own bound by default);
    ``max_small_record``: records other than PAGE_DATA, HVM_CONTEXT, TOOLSTACK,
    X86_PV_P2M_FRAMES, dirty-pfn lists and optional records (vCPU blobs, policies, ...);
    ``max_pfn_list``: entries of X86_PV_P2M_FRAMES and CHECKPOINT_DIRTY_PFN_LIST (they
    decode to Python ints, several times their size in the stream);
    ``max_batch``: pfns in one PAGE_DATA record;
    ``max_pfn``: the highest pfn accepted (e.g. from the guest's declared memory);
    ``max_pages``: distinct pfns the stream may populate (the guest's declared size);
    ``max_page_records``: total page entries over the stream, repeats in live rounds
    included (None: unbounded; memory does not grow with it).
    """

    max_record_length: int = REC_LENGTH_MAX
    max_small_record: int = 256 << 10
    max_pfn_list: int = 1 << 20  # p2m frames of a 2 TiB guest
    max_batch: int = MAX_BATCH_SIZE
    max_pfn: int | None = None
    max_pages: int | None = None
    max_page_records: int | None = None


_LARGE = frozenset({RecordType.PAGE_DATA, RecordType.HVM_CONTEXT, RecordType.TOOLSTACK,
                    RecordType.X86_PV_P2M_FRAMES, RecordType.CHECKPOINT_DIRTY_PFN_LIST})
_PV_ONLY = frozenset({RecordType.X86_PV_INFO, RecordType.X86_PV_P2M_FRAMES,
                      RecordType.X86_PV_VCPU_BASIC, RecordType.X86_PV_VCPU_EXTENDED,
                      RecordType.X86_PV_VCPU_XSAVE, RecordType.X86_PV_VCPU_MSRS,
                      RecordType.SHARED_INFO})
_HVM_ONLY = frozenset({RecordType.HVM_CONTEXT, RecordType.HVM_PARAMS})
_NEEDS_PV_INFO = _PV_ONLY - {RecordType.X86_PV_INFO}
_CHUNK = 1 << 20  # read size: memory follows the bytes actually present, not a length
_BITMAP_CHUNK_PFNS = 1 << 15


class ExactReader:
    """Reads exact byte counts from a blocking binary file object (a file, a pipe, a
    socket's ``makefile("rb")``), in bounded chunks, counting the offset; the end of the
    data inside a read raises :class:`StreamTruncated`.  Short reads are assembled."""

    def __init__(self, fp: BinaryIO, name: str, offset: int = 0) -> None:
        self.fp = fp
        self.name = name
        self.offset = offset

    def read(self, n: int, what: str) -> bytes:
        if n == 0:
            return b""
        first = self._chunk(min(n, _CHUNK))
        if len(first) == n:
            self.offset += n
            return first
        buf = bytearray(first)
        while len(buf) < n:
            if not first:
                raise StreamTruncated(f"{self.name}: truncated at offset "
                                      f"{self.offset + len(buf)}: {what} needs {n} bytes, "
                                      f"got {len(buf)}")
            first = self._chunk(min(n - len(buf), _CHUNK))
            buf += first
        self.offset += n
        return bytes(buf)

    def _chunk(self, n: int) -> bytes:
        data: bytes | None = self.fp.read(n)
        if data is None:  # a non-blocking source: the stream needs a blocking one
            raise StreamError(f"{self.name}: offset {self.offset}: no data available "
                              "from a non-blocking source")
        return data

    def error(self, message: str, at: int | None = None) -> StreamError:
        return StreamError(f"{self.name}: offset {self.offset if at is None else at}: "
                           f"{message}")


class _PfnSet:
    """Distinct pfns seen, as a sparse bitmap: memory follows the pfns present."""

    def __init__(self) -> None:
        self._chunks: dict[int, bytearray] = {}
        self.count = 0

    def add(self, pfn: int) -> bool:
        hi, lo = divmod(pfn, _BITMAP_CHUNK_PFNS)
        chunk = self._chunks.get(hi)
        if chunk is None:
            chunk = self._chunks[hi] = bytearray(_BITMAP_CHUNK_PFNS // 8)
        byte, bit = divmod(lo, 8)
        if chunk[byte] >> bit & 1:
            return False
        chunk[byte] |= 1 << bit
        self.count += 1
        return True


class StreamReader:
    """Reads and validates a libxc stream from ``fp``, one record at a time.

    ``name`` prefixes error messages (the file's path, or "migration stream").  Besides
    each record's own checks, the reader enforces ``limits`` and the order the restore
    side depends on: X86_PV_INFO once and before any other PV record; STATIC_DATA_END (or,
    in a version-2 stream, the first X86_PV_P2M_FRAMES/PAGE_DATA standing for it) before
    memory; X86_PV_P2M_FRAMES before PV page data, whose pfns must then lie in its range;
    no PV records in an HVM stream and no HVM records in a PV one; nothing after END.

    After a record, ``pages_populated`` counts distinct pfns of a populating type,
    ``page_entries`` all PAGE_DATA entries, ``data_pages`` the pages of contents read.
    """

    def __init__(self, fp: BinaryIO, *, name: str = "migration stream",
                 limits: Limits | None = None, source: ExactReader | None = None) -> None:
        self.src = source if source is not None else ExactReader(fp, name)
        self.limits = limits if limits is not None else Limits()
        self.image_header: ImageHeader | None = None
        self.domain_header: DomainHeader | None = None
        self.pv_info: X86PvInfo | None = None
        self.p2m: X86PvP2mFrames | None = None
        self.static_data_end = False
        self.finished = False
        self.pages_populated = 0
        self.page_entries = 0
        self.data_pages = 0
        self._pfns = _PfnSet()

    @property
    def name(self) -> str:
        return self.src.name

    @property
    def offset(self) -> int:
        return self.src.offset

    def read_headers(self) -> tuple[ImageHeader, DomainHeader]:
        """Read the image and domain headers (once)."""
        if self.image_header is None or self.domain_header is None:
            at = self.src.offset
            try:
                ihdr = ImageHeader.decode(self.src.read(ImageHeader.SIZE, "image header"))
                at = self.src.offset
                dhdr = DomainHeader.decode(self.src.read(DomainHeader.SIZE,
                                                         "domain header"))
            except StreamTruncated:
                raise
            except StreamError as e:
                raise self.src.error(str(e), at) from None
            self.image_header, self.domain_header = ihdr, dhdr
        return self.image_header, self.domain_header

    def __iter__(self) -> Iterator[Record]:
        """Records up to and including END or CHECKPOINT (iterate again after a
        CHECKPOINT for the next ones)."""
        self.read_headers()
        while not self.finished:
            rec = self.read_record()
            yield rec
            if isinstance(rec, Checkpoint):
                return

    def read_record(self) -> Record:
        """The next record, decoded and checked."""
        _, dhdr = self.read_headers()
        if self.finished:
            raise self.src.error("read past the END record")
        at = self.src.offset
        rtype, length = _RHDR.unpack(self.src.read(_RHDR.size, "record header"))
        name = record_type_name(rtype)
        self._check_length(rtype, name, length, at)
        body = self.src.read(length + padding(length), f"{name} record body")
        if padding(length):
            body = body[:length]  # padding must be ignored, whatever it holds
        try:
            self._check_order(rtype, dhdr, name)
            ctx = DecodeContext(self.pv_info.guest_width if self.pv_info else None,
                                self.limits.max_batch)
            rec = decode_record(rtype, body, ctx)
            self._account(rec)
        except StreamError as e:
            kind = type(e) if isinstance(e, StreamLimitError) else StreamError
            raise kind(f"{self.name}: offset {at}: {e}") from None
        return rec

    def _check_length(self, rtype: int, name: str, length: int, at: int) -> None:
        lim = self.limits
        if rtype == RecordType.PAGE_DATA:
            cap = _PD_HDR.size + lim.max_batch * (8 + PAGE_SIZE)
        elif rtype in (RecordType.X86_PV_P2M_FRAMES, RecordType.CHECKPOINT_DIRTY_PFN_LIST):
            cap = _P2M_HDR.size + 8 * lim.max_pfn_list
        elif rtype in _LARGE or rtype & REC_TYPE_OPTIONAL:
            cap = lim.max_record_length
        else:
            cap = lim.max_small_record
        cap = min(cap, lim.max_record_length)
        if length > cap:
            raise StreamLimitError(f"{self.name}: offset {at}: {name} record of {length} "
                                   f"bytes, over the limit {cap}")

    def _check_order(self, rtype: int, dhdr: DomainHeader, name: str) -> None:
        pv = dhdr.type == DomainType.X86_PV
        if rtype in (_HVM_ONLY if pv else _PV_ONLY):
            raise StreamError(f"{name} record in an {DomainType(dhdr.type).name} stream")
        if rtype == RecordType.X86_PV_INFO and self.pv_info is not None:
            raise StreamError("a second X86_PV_INFO record")
        if rtype in _NEEDS_PV_INFO and self.pv_info is None:
            raise StreamError(f"{name} record before X86_PV_INFO")
        memory = RecordType.X86_PV_P2M_FRAMES if pv else RecordType.PAGE_DATA
        if rtype == RecordType.STATIC_DATA_END:
            if self.static_data_end:
                raise StreamError("a second STATIC_DATA_END record")
            self.static_data_end = True
        elif rtype in (memory, RecordType.PAGE_DATA) and not self.static_data_end:
            assert self.image_header is not None
            if self.image_header.version >= 3:
                raise StreamError(f"{name} record before STATIC_DATA_END")
            self.static_data_end = True  # a version 2 stream: inferred here
        if pv and rtype == RecordType.PAGE_DATA and self.p2m is None:
            raise StreamError("PAGE_DATA record before X86_PV_P2M_FRAMES")

    def _account(self, rec: Record) -> None:
        lim = self.limits
        if isinstance(rec, X86PvInfo):
            self.pv_info = rec
        elif isinstance(rec, X86PvP2mFrames):
            if lim.max_pfn is not None and rec.end_pfn > lim.max_pfn:
                raise StreamLimitError(f"X86_PV_P2M_FRAMES record: end pfn "
                                       f"{rec.end_pfn:#x} over the limit {lim.max_pfn:#x}")
            self.p2m = rec
        elif isinstance(rec, PageData):
            top = lim.max_pfn
            if self.p2m is not None:
                top = self.p2m.end_pfn if top is None else min(top, self.p2m.end_pfn)
            for pfn, ptype in zip(rec.pfns, rec.types, strict=True):
                if top is not None and pfn > top:
                    raise StreamLimitError(f"PAGE_DATA record: pfn {pfn:#x} over the "
                                           f"guest's maximum {top:#x}")
                if ptype in _POPULATED and self._pfns.add(pfn) and (
                        lim.max_pages is not None and self._pfns.count > lim.max_pages):
                    raise StreamLimitError(f"PAGE_DATA record: more than {lim.max_pages} "
                                           "distinct pages, the guest's declared size")
            self.page_entries += rec.count
            self.data_pages += len(rec.data) // PAGE_SIZE
            self.pages_populated = self._pfns.count
            if lim.max_page_records is not None and self.page_entries > lim.max_page_records:
                raise StreamLimitError(f"PAGE_DATA record: over {lim.max_page_records} page "
                                       "entries in the stream")
        elif isinstance(rec, End):
            self.finished = True


# --- writing ----------------------------------------------------------------------------


class StreamWriter:
    """Writes a libxc stream to ``fp``: :meth:`write_headers` once, then :meth:`write`
    for each record, ending with :class:`End`.  ``offset`` counts the bytes written."""

    def __init__(self, fp: BinaryIO) -> None:
        self.fp = fp
        self.offset = 0

    def _out(self, parts: Sequence[bytes | memoryview]) -> None:
        for p in parts:
            self.fp.write(p)
            self.offset += len(p)

    def write_headers(self, domain: DomainHeader, image: ImageHeader | None = None) -> None:
        self._out(((image or ImageHeader()).encode(), domain.encode()))

    def write(self, record: Record) -> None:
        parts = record.body_parts()
        length = sum(len(p) for p in parts)
        if length > REC_LENGTH_MAX:
            raise StreamLimitError(f"{record.type_name} record: {length} bytes, over the "
                                   f"format's {REC_LENGTH_MAX}")
        self._out((_RHDR.pack(record.record_type, length), *parts,
                   _ZEROS[:padding(length)]))

    def write_page_data(self, pfns: Sequence[int], types: Sequence[int],
                        data: bytes | bytearray | memoryview) -> None:
        """A PAGE_DATA record straight from a mapping: ``data`` holds one page per entry
        whose type has data, in order, and is written without a copy."""
        check_page_batch(pfns, types, len(data))
        length = _PD_HDR.size + 8 * len(pfns) + len(data)
        if length > REC_LENGTH_MAX:
            raise StreamLimitError(f"PAGE_DATA record: {length} bytes, over the format's "
                                   f"{REC_LENGTH_MAX}")
        self._out((_RHDR.pack(RecordType.PAGE_DATA, length),
                   _PD_HDR.pack(len(pfns), 0), _pfn_words(pfns, types), memoryview(data)))


# --- page tables ------------------------------------------------------------------------

PTE_FRAME_MASK = 0x000F_FFFF_FFFF_F000  # bits 12-51 of an entry hold the frame
PTE_PRESENT = 0x001
PTE_PSE = 0x080
_ENTRIES = PAGE_SIZE // 8

# Slots of Xen's own mappings, which the saver clears and the restoring Xen rebuilds:
# 64-bit L4 slots 256-271 (0xFFFF800000000000-0xFFFF87FFFFFFFFFF); a 32-bit PAE guest's
# L3 beyond its 4 entries, and (when it maps the compat m2p) its L2 from 0xF5800000 up.
_XEN_L4_SLOTS_64 = (256, 271)
_XEN_L3_SLOTS_32 = (4, 511)
_XEN_L2_SLOTS_32 = ((0xF580_0000 >> 21) & 511, 511)


def pte_frame(pte: int) -> int:
    """The frame a page-table entry points at (bits 12-51)."""
    return (pte & PTE_FRAME_MASK) >> PAGE_SHIFT


def pte_with_frame(pte: int, frame: int) -> int:
    """``pte`` pointing at ``frame``, its flag bits left alone."""
    return (pte & ~PTE_FRAME_MASK & _U64) | ((frame << PAGE_SHIFT) & PTE_FRAME_MASK)


def cr3_to_frame(cr3: int, guest_width: int) -> int | None:
    """The frame in a PV vCPU's cr3 (32-bit guests keep it in the compat folded form);
    None if a 32-bit guest's cr3 cannot hold one."""
    if guest_width == 8:
        return cr3 >> PAGE_SHIFT
    if cr3 & ~_U32:
        return None
    return ((cr3 >> 12) | (cr3 << 20)) & _U32


def frame_to_cr3(frame: int, guest_width: int) -> int | None:
    """The cr3 value for a frame (inverse of :func:`cr3_to_frame`)."""
    if guest_width == 8:
        return (frame << PAGE_SHIFT) & _U64
    if frame & ~_U32:
        return None
    return ((frame << 12) | (frame >> 20)) & _U32


def _entries(page: bytes | bytearray | memoryview) -> array[int]:
    if len(page) != PAGE_SIZE:
        raise StreamError(f"page table of {len(page)} bytes, expected {PAGE_SIZE}")
    table = array("Q")
    table.frombytes(page)
    if sys.byteorder != "little":
        table.byteswap()
    return table


def _bytes(table: array[int]) -> bytes:
    if sys.byteorder != "little":
        table.byteswap()
    return table.tobytes()


def _rewrite(table: array[int], level: int, translate: Callable[[int], int | None],
             what: str, check_pse: bool) -> None:
    for i, pte in enumerate(table):
        if not pte & PTE_PRESENT:
            continue
        if check_pse and level > 1 and pte & PTE_PSE:
            raise PageTableError(f"L{level}[{i}] = {pte:#018x}: superpage, cannot be "
                                 "migrated", level, i, pte)
        frame = translate(pte_frame(pte))
        if frame is None:
            raise PageTableError(f"L{level}[{i}] = {pte:#018x}: {what} "
                                 f"{pte_frame(pte):#x} not in the guest's physmap",
                                 level, i, pte)
        table[i] = pte_with_frame(pte, frame)


def normalise_page_table(page: bytes | bytearray | memoryview, ptype: int,
                         mfn_to_pfn: Callable[[int], int | None], *, guest_width: int = 8,
                         compat_m2p_mfn0: int | None = None) -> bytes:
    """A page table as the stream carries it (save side): Xen's own slots cleared, each
    present entry's machine frame replaced by ``mfn_to_pfn(mfn)``.

    ``ptype`` is the page's ``XEN_DOMCTL_PFINFO_*`` type; a page that is no page table
    comes back unchanged.  ``mfn_to_pfn`` returns None for a frame outside the guest's
    pseudo-physical map (:class:`PageTableError`, as is a superpage).  For a 32-bit guest,
    ``compat_m2p_mfn0`` (the first frame of Xen's compat m2p) tells its Xen L2 slots.
    """
    level = page_table_level(ptype)
    if level == 0:
        return bytes(page)
    table = _entries(page)
    xen: tuple[int, int] | None = None
    if guest_width == 8:
        if level == 4:
            xen = _XEN_L4_SLOTS_64
    elif level == 4:
        raise PageTableError("an L4 page table in a 32-bit guest", level)
    elif level == 3:
        xen = _XEN_L3_SLOTS_32
    elif level == 2 and compat_m2p_mfn0 is not None:
        first = _XEN_L2_SLOTS_32[0]
        if pte_frame(table[first]) == compat_m2p_mfn0:
            xen = _XEN_L2_SLOTS_32
    if xen is not None:
        for i in range(xen[0], xen[1] + 1):
            table[i] = 0
    _rewrite(table, level, mfn_to_pfn, "mfn", check_pse=True)
    return _bytes(table)


def localise_page_table(page: bytes | bytearray | memoryview, ptype: int,
                        pfn_to_mfn: Callable[[int], int | None]) -> bytes:
    """A page table from the stream made ready for the guest (restore side): each present
    entry's pfn replaced by ``pfn_to_mfn(pfn)`` (None: :class:`PageTableError`).  A page
    that is no page table comes back unchanged."""
    level = page_table_level(ptype)
    if level == 0:
        return bytes(page)
    table = _entries(page)
    _rewrite(table, level, pfn_to_mfn, "pfn", check_pse=False)
    return _bytes(table)


# --- vCPU context ---------------------------------------------------------------------

VGCF_ONLINE = 1 << 5
FIRST_RESERVED_GDT_ENTRY = 14 * PAGE_SIZE // 8  # GDT entries a PV guest may own


@dataclass(frozen=True, slots=True)
class VcpuContextLayout:
    """Offsets in ``vcpu_guest_context`` (the X86_PV_VCPU_BASIC blob) of the fields that
    hold frames, for one guest width; ``word`` is the struct format of a field."""

    size: int
    word: str
    flags: int
    edx: int  # vCPU 0: the start info frame, at suspend
    gdt_frames: int  # 16 words
    gdt_ents: int
    cr1: int | None  # 64-bit only: the user page tables (bit 0: valid)
    cr3: int


VCPU_CONTEXT_LAYOUT = {
    8: VcpuContextLayout(5168, "<Q", 512, 520 + 12 * 8, 4832, 4960, 4984 + 8, 4984 + 24),
    4: VcpuContextLayout(2800, "<I", 512, 516 + 2 * 4, 2640, 2704, None, 2716 + 12),
}


def _vcpu_layout(context: bytes | bytearray | memoryview, guest_width: int
                 ) -> VcpuContextLayout:
    lay = VCPU_CONTEXT_LAYOUT.get(guest_width)
    if lay is None:
        raise StreamError(f"guest width {guest_width}, expected 4 or 8")
    if len(context) != lay.size:
        raise StreamError(f"vcpu context of {len(context)} bytes, expected {lay.size} for "
                          f"guest width {guest_width}")
    return lay


def _gdt_frames(buf: bytearray, lay: VcpuContextLayout, vcpu_id: int) -> range:
    size = struct.calcsize(lay.word)
    (ents,) = struct.unpack_from(lay.word, buf, lay.gdt_ents)
    if ents > FIRST_RESERVED_GDT_ENTRY:
        raise StreamError(f"vcpu {vcpu_id}: {ents} GDT entries, max "
                          f"{FIRST_RESERVED_GDT_ENTRY}")
    return range(lay.gdt_frames, lay.gdt_frames + size * ((ents + 511) // 512), size)


def _translate(frame: int, translate: Callable[[int], int | None], what: str,
               vcpu_id: int) -> int:
    got = translate(frame)
    if got is None:
        raise StreamError(f"vcpu {vcpu_id}: {what} frame {frame:#x} not in the guest's "
                          "physmap")
    return got


def normalise_vcpu_context(context: bytes | bytearray | memoryview, vcpu_id: int,
                           guest_width: int, mfn_to_pfn: Callable[[int], int | None]
                           ) -> bytes:
    """A vCPU's ``vcpu_guest_context`` as the stream carries it (save side): machine
    frames turned into pfns in vCPU 0's start info pointer (``edx`` at suspend), the GDT
    frames in use, cr3 and, for a 64-bit guest, a valid cr1 (set to ``pfn << 12 | 1``).
    ``mfn_to_pfn`` returns None for a frame outside the guest (a :class:`StreamError`)."""
    lay = _vcpu_layout(context, guest_width)
    buf = bytearray(context)

    def rewrite(at: int, what: str) -> None:
        (mfn,) = struct.unpack_from(lay.word, buf, at)
        struct.pack_into(lay.word, buf, at, _translate(mfn, mfn_to_pfn, what, vcpu_id))

    if vcpu_id == 0:
        rewrite(lay.edx, "start info")
    for at in _gdt_frames(buf, lay, vcpu_id):
        rewrite(at, "GDT")
    (cr3,) = struct.unpack_from(lay.word, buf, lay.cr3)
    mfn = cr3_to_frame(cr3, guest_width)
    if mfn is None:
        raise StreamError(f"vcpu {vcpu_id}: cr3 {cr3:#x} holds no frame")
    pfn = _translate(mfn, mfn_to_pfn, "cr3", vcpu_id)
    struct.pack_into(lay.word, buf, lay.cr3, frame_to_cr3(pfn, guest_width) or 0)
    if lay.cr1 is not None:
        (cr1,) = struct.unpack_from(lay.word, buf, lay.cr1)
        if cr1:
            pfn = _translate(cr1 >> PAGE_SHIFT, mfn_to_pfn, "cr1", vcpu_id)
            struct.pack_into(lay.word, buf, lay.cr1, 1 | (pfn << PAGE_SHIFT) & _U64)
    return bytes(buf)


def localise_vcpu_context(context: bytes | bytearray | memoryview, vcpu_id: int,
                          guest_width: int, pfn_to_mfn: Callable[[int], int | None],
                          page_type: Callable[[int], int | None] | None = None) -> bytes:
    """A vCPU's context from the stream made ready for XEN_DOMCTL_setvcpucontext (restore
    side): marked online, pfns turned into machine frames in vCPU 0's start info
    pointer, the GDT frames in use, cr3 and a valid cr1 (bit 0).  With ``page_type``
    (pfn to its ``XEN_DOMCTL_PFINFO_*`` type from the stream), the GDT frames must be
    normal pages and cr3/cr1 top-level page tables, as libxc requires."""
    lay = _vcpu_layout(context, guest_width)
    buf = bytearray(context)
    top = XEN_DOMCTL_PFINFO_L1TAB * (4 if guest_width == 8 else 3)

    def check(pfn: int, what: str, want: int, mask: int) -> None:
        if page_type is None:
            return
        ptype = page_type(pfn)
        if ptype is None or ptype & mask != want:
            shown = "none" if ptype is None else f"{ptype:#x}"
            raise StreamError(f"vcpu {vcpu_id}: {what} pfn {pfn:#x} has page type {shown}, "
                              f"expected {want:#x}")

    (flags,) = struct.unpack_from(lay.word, buf, lay.flags)
    struct.pack_into(lay.word, buf, lay.flags, flags | VGCF_ONLINE)
    if vcpu_id == 0:
        (pfn,) = struct.unpack_from(lay.word, buf, lay.edx)
        struct.pack_into(lay.word, buf, lay.edx,
                         _translate(pfn, pfn_to_mfn, "start info", vcpu_id))
    for at in _gdt_frames(buf, lay, vcpu_id):
        (pfn,) = struct.unpack_from(lay.word, buf, at)
        check(pfn, "GDT", XEN_DOMCTL_PFINFO_NOTAB, XEN_DOMCTL_PFINFO_LTAB_MASK)
        struct.pack_into(lay.word, buf, at, _translate(pfn, pfn_to_mfn, "GDT", vcpu_id))
    (cr3,) = struct.unpack_from(lay.word, buf, lay.cr3)
    pfn3 = cr3_to_frame(cr3, guest_width)
    if pfn3 is None:
        raise StreamError(f"vcpu {vcpu_id}: cr3 {cr3:#x} holds no frame")
    check(pfn3, "cr3", top, XEN_DOMCTL_PFINFO_LTABTYPE_MASK)
    mfn = _translate(pfn3, pfn_to_mfn, "cr3", vcpu_id)
    cr3_new = frame_to_cr3(mfn, guest_width)
    if cr3_new is None:
        raise StreamError(f"vcpu {vcpu_id}: cr3 frame {mfn:#x} does not fit a 32-bit cr3")
    struct.pack_into(lay.word, buf, lay.cr3, cr3_new)
    if lay.cr1 is not None:
        (cr1,) = struct.unpack_from(lay.word, buf, lay.cr1)
        if cr1 & 1:
            check(cr1 >> PAGE_SHIFT, "cr1", top, XEN_DOMCTL_PFINFO_LTABTYPE_MASK)
            mfn = _translate(cr1 >> PAGE_SHIFT, pfn_to_mfn, "cr1", vcpu_id)
            struct.pack_into(lay.word, buf, lay.cr1, (mfn << PAGE_SHIFT) & _U64)
    return bytes(buf)


# --- shared info ------------------------------------------------------------------------


class SharedInfoArch(NamedTuple):
    """``arch_shared_info``: where the guest keeps its p2m (save reads it)."""

    max_pfn: int
    pfn_to_mfn_frame_list_list: int
    nmi_reason: int
    p2m_cr3: int
    p2m_vaddr: int
    p2m_generation: int


_LEGACY_VCPUS = 32
_VCPU_INFO_SIZE = 64
# per width: (pending_sel offset in vcpu_info, evtchn_pending/mask words, arch offset)
_SHINFO = {8: (8, 64, 3088), 4: (4, 32, 2316)}


def _shinfo(guest_width: int) -> tuple[str, int, int, int, int, int]:
    if guest_width not in _SHINFO:
        raise StreamError(f"guest width {guest_width}, expected 4 or 8")
    sel, words, arch = _SHINFO[guest_width]
    word = "<Q" if guest_width == 8 else "<I"
    pending = _LEGACY_VCPUS * _VCPU_INFO_SIZE
    mask = pending + words * guest_width
    return word, sel, pending, mask, words * guest_width, arch


def shared_info_arch(data: bytes | bytearray | memoryview, guest_width: int
                     ) -> SharedInfoArch:
    """The ``arch`` part of a shared info page."""
    word, _, _, _, _, arch = _shinfo(guest_width)
    if len(data) != PAGE_SIZE:
        raise StreamError(f"shared info of {len(data)} bytes, expected {PAGE_SIZE}")
    return SharedInfoArch(*struct.unpack_from("<6" + word[1], data, arch))


def restored_shared_info(saved: bytes | bytearray | memoryview,
                         current: bytes | bytearray | memoryview, guest_width: int) -> bytes:
    """The shared info page to write into a restored guest, as libxc builds it: the new
    domain's page (``current``) with the saved ``vcpu_info`` array and ``arch`` part,
    the p2m frame-list-list cleared (the guest sets it again), no event pending (nor
    pending selector) and every event channel masked.  Wallclock stays the new one."""
    word, sel, pending, mask, size, arch = _shinfo(guest_width)
    if len(saved) != PAGE_SIZE or len(current) != PAGE_SIZE:
        raise StreamError(f"shared info pages of {len(saved)} and {len(current)} bytes, "
                          f"expected {PAGE_SIZE}")
    buf = bytearray(current)
    buf[:pending] = saved[:pending]
    arch_end = arch + 6 * guest_width + (4 if guest_width == 4 else 0)  # + i386 wc_sec_hi
    buf[arch:arch_end] = saved[arch:arch_end]
    struct.pack_into(word, buf, arch + guest_width, 0)  # pfn_to_mfn_frame_list_list
    buf[pending:pending + size] = bytes(size)
    for v in range(_LEGACY_VCPUS):
        struct.pack_into(word, buf, v * _VCPU_INFO_SIZE + sel, 0)
    buf[mask:mask + size] = b"\xff" * size
    return bytes(buf)
