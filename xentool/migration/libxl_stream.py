"""The libxl migration stream and the ``xl save`` file header, as Xen 4.17 writes them.

An ``xl save`` file, and what ``xl migrate`` sends, is:

1. xl's header (``tools/xl/xl.h``, ``struct save_file_header``): the 32-byte magic
   ``"Xen saved domain, xl format\\n \\0 \\r"``, then four native-order (little-endian)
   u32: byte-order mark 0x01020304, mandatory flags (bit 0: the config is JSON, bit 1:
   the stream is v2; any other bit makes xl refuse the file), optional flags, and the
   length of the optional data that follows: a u32 config length and the config, which
   Xen 4.17 writes as the domain's ``libxl_domain_config`` JSON with its trailing NUL;
2. the libxl stream (``docs/specs/libxl-migration-stream.pandoc``): a 16-byte big-endian
   header (ident ``"LibxlFmt"``, version 2, options: bit 0 big-endian, bit 1 converted
   from the legacy format), then records framed as libxc's (type, length, body, padding
   to 8): LIBXC_CONTEXT (empty; the libxc stream of :mod:`xentool.migration.stream`
   follows it, up to its END), EMULATOR_XENSTORE_DATA, EMULATOR_CONTEXT, CHECKPOINT_END,
   CHECKPOINT_STATE, and END.

API
---
* :class:`XlSaveHeader` ``(config=b"...\\0", mandatory_flags=..., optional_flags=0,
  extra=b"")``: ``encode()``, ``read(src, max_config=...)``,
  ``for_config(doc)`` (the stored-config JSON printed as libxl prints it, via
  :mod:`xentool.config.libxl_json`), ``config_text()``, ``config_json()``,
  ``guest_pages()`` (the declared maximum memory in pages, for :class:`Limits`);
* :class:`LibxlHeader` ``(version=2, options=0)``: ``SIZE``, ``encode()``,
  ``decode(data)``;
* records, frozen dataclasses under :class:`LibxlRecord` (``TYPE``, ``encode()``,
  ``body()``, ``decode_body(body)``): :class:`LibxlEnd`, :class:`LibxcContext`,
  :class:`EmulatorXenstoreData` (``emulator_id``, ``index``, ``entries``: (key, value)
  pairs), :class:`EmulatorContext` (``emulator_id``, ``index``, ``data``),
  :class:`CheckpointEnd`, :class:`CheckpointState` (``control_id``),
  :class:`LibxlOptionalRecord`; :func:`decode_libxl_record`;
* :class:`LibxlStreamReader` ``(fp, name=..., limits=...)``: ``read_header()``,
  ``read_record()``, ``libxc()`` (a :class:`~xentool.migration.stream.StreamReader` on the
  same bytes, for after LIBXC_CONTEXT); :class:`LibxlStreamWriter` ``(fp)``:
  ``write_header()``, ``write(record)``, ``libxc()`` (a
  :class:`~xentool.migration.stream.StreamWriter` on the same file);
* :class:`SaveFileReader` ``(fp, name=..., limits=..., xl_header=True)``: the whole file
  as one flat, validated sequence of items (:class:`XlSaveHeader`, :class:`LibxlHeader`,
  libxl records, and, after :class:`LibxcContext`, the libxc
  :class:`~xentool.migration.stream.ImageHeader`,
  :class:`~xentool.migration.stream.DomainHeader` and records up to their END), ending
  with :class:`LibxlEnd`; ``libxc_reader`` is the libxc reader (with its page counts).

The ``MIGRATE_*`` constants are the fixed messages of ``xl migrate``'s handshake around
the stream (see their comment).  Errors are :class:`~xentool.migration.stream.StreamError`
and its subclasses.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import BinaryIO, ClassVar, Self

from xentool.migration.stream import (
    PAGE_SIZE,
    REC_TYPE_OPTIONAL,
    DomainHeader,
    ExactReader,
    ImageHeader,
    Limits,
    Record,
    StreamError,
    StreamLimitError,
    StreamReader,
    StreamTruncated,
    StreamWriter,
    padding,
    record_bytes,
)

# --- xl's save-file header --------------------------------------------------------------

XL_MAGIC = b"Xen saved domain, xl format\n \0 \r"
XL_BYTEORDER = 0x01020304
XL_MANDATORY_FLAG_JSON = 1 << 0
XL_MANDATORY_FLAG_STREAMV2 = 1 << 1
XL_MANDATORY_FLAGS_KNOWN = XL_MANDATORY_FLAG_JSON | XL_MANDATORY_FLAG_STREAMV2
XL_MAX_CONFIG = 1 << 20  # a stored config is a few KiB; xl itself sets no bound
LIBXL_MAXMEM_CONSTANT_KB = 1024

_XL_FIXED = struct.Struct("<32sIIII")
_U32 = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class XlSaveHeader:
    """xl's header: flags and the stored domain configuration.

    ``config`` is the config data as stored (JSON with its trailing NUL when
    ``mandatory_flags`` has :data:`XL_MANDATORY_FLAG_JSON`; xl's config-file syntax
    otherwise; empty for none); ``extra`` is optional data after it, which xl skips.
    """

    config: bytes = field(repr=False)
    mandatory_flags: int = XL_MANDATORY_FLAG_STREAMV2 | XL_MANDATORY_FLAG_JSON
    optional_flags: int = 0
    extra: bytes = field(default=b"", repr=False)

    FIXED_SIZE: ClassVar[int] = _XL_FIXED.size

    def __post_init__(self) -> None:
        unknown = self.mandatory_flags & ~XL_MANDATORY_FLAGS_KNOWN
        if unknown:
            raise StreamError(f"xl header: unsupported mandatory flags {unknown:#x}")
        if not self.mandatory_flags & XL_MANDATORY_FLAG_STREAMV2:
            raise StreamError("xl header: a legacy (pre-v2) stream, not supported")
        if not 0 <= self.optional_flags <= 0xFFFF_FFFF:
            raise StreamError("xl header: optional flags out of range")

    @classmethod
    def for_config(cls, doc: Mapping[str, object]) -> Self:
        """The header carrying ``doc`` (a ``libxl_domain_config`` JSON object) as xl
        stores it: libxl's pretty-printed JSON and a NUL."""
        from xentool.config.libxl_json import stored_dumps

        return cls(stored_dumps(dict(doc)).encode())

    @property
    def optional_data(self) -> bytes:
        if not self.config and not self.extra:
            return b""
        return _U32.pack(len(self.config)) + self.config + self.extra

    def encode(self) -> bytes:
        opt = self.optional_data
        flags = self.mandatory_flags
        if not self.config:  # xl sets the JSON flag only when it stores a config
            flags &= ~XL_MANDATORY_FLAG_JSON
        return _XL_FIXED.pack(XL_MAGIC, XL_BYTEORDER, flags, self.optional_flags,
                              len(opt)) + opt

    @classmethod
    def read(cls, src: ExactReader, max_config: int = XL_MAX_CONFIG) -> Self:
        """Read the header, checked as ``xl restore`` checks it."""
        at = src.offset
        magic, order, mflags, oflags, optlen = _XL_FIXED.unpack(
            src.read(_XL_FIXED.size, "xl header"))
        if magic != XL_MAGIC:
            raise src.error("not an xl save file (wrong magic)", at)
        if order != XL_BYTEORDER:
            raise src.error(f"xl header: byte order mark {order:#010x}, expected "
                            f"{XL_BYTEORDER:#010x}", at)
        if optlen > max_config + 4:
            raise StreamLimitError(f"{src.name}: offset {at}: xl header: {optlen} bytes of "
                                   f"optional data, over the limit {max_config + 4}")
        opt = src.read(optlen, "xl optional data")
        config, extra = b"", b""
        if opt:
            if len(opt) < 4:
                raise StreamTruncated(f"{src.name}: offset {at}: xl optional data of "
                                      f"{len(opt)} bytes has no config length")
            (clen,) = _U32.unpack_from(opt)
            if clen > len(opt) - 4:
                raise StreamTruncated(f"{src.name}: offset {at}: xl config of {clen} bytes "
                                      f"in {len(opt) - 4} bytes of optional data")
            config, extra = opt[4:4 + clen], opt[4 + clen:]
        try:
            return cls(config, mflags, oflags, extra)
        except StreamError as e:
            raise src.error(str(e), at) from None

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """The header at the start of ``data``."""
        import io

        return cls.read(ExactReader(io.BytesIO(data), "xl header"))

    @property
    def json(self) -> bool:
        return bool(self.mandatory_flags & XL_MANDATORY_FLAG_JSON)

    def config_text(self) -> str:
        """The stored config as text, without the trailing NUL."""
        raw = self.config[:-1] if self.config.endswith(b"\0") else self.config
        try:
            return raw.decode()
        except UnicodeDecodeError as e:
            raise StreamError(f"xl header: stored config is not UTF-8 ({e.reason} at "
                              f"byte {e.start})") from None

    def config_json(self) -> dict[str, object]:
        """The stored ``libxl_domain_config`` as a JSON object."""
        if not self.json:
            raise StreamError("xl header: the stored config is not JSON")
        try:
            doc = json.loads(self.config_text())
        except (ValueError, RecursionError) as e:  # hostile nesting or huge numbers too
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise StreamError(f"xl header: stored config is not valid JSON: {first}"
                              ) from None
        if not isinstance(doc, dict):
            raise StreamError("xl header: stored config is not a JSON object")
        return doc

    def guest_pages(self) -> int | None:
        """The most pages the guest can hold: its declared maximum memory
        (``b_info.max_memkb``) plus the 1 MiB libxl adds to every domain's Xen limit
        (``LIBXL_MAXMEM_CONSTANT``), in 4 KiB pages; None if the stored config does not
        say."""
        if not self.json or not self.config:
            return None
        b_info = self.config_json().get("b_info")
        kb = b_info.get("max_memkb") if isinstance(b_info, dict) else None
        if isinstance(kb, int) and not isinstance(kb, bool) and kb > 0:
            return (kb + LIBXL_MAXMEM_CONSTANT_KB) * 1024 // PAGE_SIZE
        return None


# --- xl migrate's handshake (tools/xl/xl.h, xl_migrate.c) --------------------------------
#
# The receiver (``xl migrate-receive`` at the end of the ssh command) writes the banner;
# the sender then sends the xl header and the libxl stream.  When the guest is restored,
# the receiver sends READY; the sender renames its domain away and sends PERMISSION_TO_GO;
# the receiver unpauses and sends REPORT and one status byte (0: running).  On a non-zero
# status the receiver sends PERMISSION_TO_GO back and the sender resumes its guest.  The
# banner goes without its NUL, the other messages with it.

MIGRATE_RECEIVER_BANNER = b"xl migration receiver ready, send binary domain data.\n"
MIGRATE_RECEIVER_READY = b"domain received, ready to unpause\0"
MIGRATE_PERMISSION_TO_GO = b"domain is yours, you are cleared to unpause\0"
MIGRATE_REPORT = b"my copy unpause results are as follows\0"

# --- libxl stream -----------------------------------------------------------------------

LIBXL_IDENT = 0x4C6962786C466D74  # "LibxlFmt"
LIBXL_VERSION = 2
LIBXL_OPT_BIG_ENDIAN = 1 << 0
LIBXL_OPT_LEGACY = 1 << 1

_LHDR = struct.Struct(">QII")
_RHDR = struct.Struct("<II")


@dataclass(frozen=True, slots=True)
class LibxlHeader:
    """The libxl stream header (big-endian)."""

    version: int = LIBXL_VERSION
    options: int = 0

    SIZE: ClassVar[int] = _LHDR.size

    @property
    def legacy(self) -> bool:
        return bool(self.options & LIBXL_OPT_LEGACY)

    def encode(self) -> bytes:
        return _LHDR.pack(LIBXL_IDENT, self.version, self.options)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        if len(data) != cls.SIZE:
            raise StreamTruncated(f"libxl header: {len(data)} bytes, expected {cls.SIZE}")
        ident, version, options = _LHDR.unpack(data)
        if ident != LIBXL_IDENT:
            raise StreamError(f"libxl header: ident {ident:#018x}, expected "
                              f"{LIBXL_IDENT:#018x} (\"LibxlFmt\")")
        if version != LIBXL_VERSION:
            raise StreamError(f"libxl header: version {version}, expected {LIBXL_VERSION}")
        if options & LIBXL_OPT_BIG_ENDIAN:
            raise StreamError("libxl header: big-endian streams are not supported")
        return cls(version, options)


class LibxlRecordType(IntEnum):
    END = 0
    LIBXC_CONTEXT = 1
    EMULATOR_XENSTORE_DATA = 2
    EMULATOR_CONTEXT = 3
    CHECKPOINT_END = 4
    CHECKPOINT_STATE = 5


class Emulator(IntEnum):
    UNKNOWN = 0
    QEMU_TRADITIONAL = 1
    QEMU_UPSTREAM = 2


class CheckpointControl(IntEnum):
    """CHECKPOINT_STATE ids (COLO)."""

    NEW = 0
    SVM_SUSPENDED = 1
    SVM_READY = 2
    SVM_RESUMED = 3


def libxl_record_type_name(rtype: int) -> str:
    try:
        return LibxlRecordType(rtype).name
    except ValueError:
        return f"{rtype:#010x}"


def _bad(rtype: int, message: str) -> StreamError:
    return StreamError(f"libxl {libxl_record_type_name(rtype)} record: {message}")


class LibxlRecord:
    """A libxl record: ``TYPE``, :meth:`body_parts`, :meth:`encode`, :meth:`decode_body`."""

    __slots__ = ()
    TYPE: ClassVar[int]

    @property
    def record_type(self) -> int:
        return self.TYPE

    @property
    def type_name(self) -> str:
        return libxl_record_type_name(self.record_type)

    def body_parts(self) -> Sequence[bytes | memoryview]:
        return ()

    def body(self) -> bytes:
        return b"".join(self.body_parts())

    def encode(self) -> bytes:
        return record_bytes(self.record_type, self.body_parts())

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        if body:
            raise _bad(cls.TYPE, f"{len(body)} bytes of body, expected none")
        return cls()


@dataclass(frozen=True, slots=True)
class LibxlEnd(LibxlRecord):
    """END of the libxl stream (and of the file)."""

    TYPE: ClassVar[int] = LibxlRecordType.END


@dataclass(frozen=True, slots=True)
class LibxcContext(LibxlRecord):
    """LIBXC_CONTEXT: a libxc stream follows, up to its END."""

    TYPE: ClassVar[int] = LibxlRecordType.LIBXC_CONTEXT


@dataclass(frozen=True, slots=True)
class CheckpointEnd(LibxlRecord):
    """CHECKPOINT_END: the end of one checkpoint (Remus/COLO)."""

    TYPE: ClassVar[int] = LibxlRecordType.CHECKPOINT_END


_EMU = struct.Struct("<II")


@dataclass(frozen=True, slots=True)
class EmulatorXenstoreData(LibxlRecord):
    """EMULATOR_XENSTORE_DATA: (key, value) pairs for the device model's xenstore tree,
    keys relative (no leading '/', not empty)."""

    emulator_id: int
    index: int
    entries: tuple[tuple[str, str], ...]

    TYPE: ClassVar[int] = LibxlRecordType.EMULATOR_XENSTORE_DATA

    def __post_init__(self) -> None:
        for key, value in self.entries:
            if not key or key.startswith("/") or "\0" in key or "\0" in value:
                raise _bad(self.TYPE, f"bad key {key!r} (empty, absolute or with NUL)")

    def body_parts(self) -> Sequence[bytes | memoryview]:
        data = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in self.entries)
        return (_EMU.pack(self.emulator_id, self.index), data)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        if len(body) < _EMU.size:
            raise _bad(cls.TYPE, f"{len(body)} bytes, shorter than its header")
        emu, index = _EMU.unpack_from(body)
        data = body[_EMU.size:]
        if data and not data.endswith(b"\0"):
            raise _bad(cls.TYPE, "last string not NUL-terminated")
        strings = data[:-1].split(b"\0") if data else []
        if len(strings) % 2:
            raise _bad(cls.TYPE, f"key {strings[-1][:40]!r} without a value")
        try:
            text = [s.decode() for s in strings]
        except UnicodeDecodeError as e:
            raise _bad(cls.TYPE, f"not UTF-8 ({e.reason})") from None
        return cls(emu, index, tuple(zip(text[::2], text[1::2], strict=True)))


@dataclass(frozen=True, slots=True)
class EmulatorContext(LibxlRecord):
    """EMULATOR_CONTEXT: the device model's saved state, opaque here."""

    emulator_id: int
    index: int
    data: bytes = field(repr=False)

    TYPE: ClassVar[int] = LibxlRecordType.EMULATOR_CONTEXT

    def body_parts(self) -> Sequence[bytes | memoryview]:
        return (_EMU.pack(self.emulator_id, self.index), self.data)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        if len(body) < _EMU.size:
            raise _bad(cls.TYPE, f"{len(body)} bytes, shorter than its header")
        emu, index = _EMU.unpack_from(body)
        return cls(emu, index, bytes(body[_EMU.size:]))


@dataclass(frozen=True, slots=True)
class CheckpointState(LibxlRecord):
    """CHECKPOINT_STATE: a COLO control id (libxl writes the 4-byte id alone)."""

    control_id: int

    TYPE: ClassVar[int] = LibxlRecordType.CHECKPOINT_STATE

    def __post_init__(self) -> None:
        if not 0 <= self.control_id <= 0xFFFF_FFFF:
            raise _bad(self.TYPE, "control id out of range")

    def body_parts(self) -> Sequence[bytes | memoryview]:
        return (_U32.pack(self.control_id),)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        if len(body) not in (4, 8):
            raise _bad(cls.TYPE, f"{len(body)} bytes, expected 4")
        return cls(_U32.unpack_from(body)[0])


@dataclass(frozen=True, slots=True)
class LibxlOptionalRecord(LibxlRecord):
    """An optional libxl record (type bit 31) this module does not know."""

    type: int
    data: bytes = field(repr=False)

    TYPE: ClassVar[int] = REC_TYPE_OPTIONAL

    @property
    def record_type(self) -> int:
        return self.type

    def body_parts(self) -> Sequence[bytes | memoryview]:
        return (self.data,)


LIBXL_RECORD_CLASSES: dict[int, type[LibxlRecord]] = {
    cls.TYPE: cls for cls in (LibxlEnd, LibxcContext, EmulatorXenstoreData, EmulatorContext,
                              CheckpointEnd, CheckpointState)
}
_SMALL_LIBXL = frozenset({LibxlRecordType.END, LibxlRecordType.LIBXC_CONTEXT,
                          LibxlRecordType.CHECKPOINT_END, LibxlRecordType.CHECKPOINT_STATE,
                          LibxlRecordType.EMULATOR_XENSTORE_DATA})


def decode_libxl_record(rtype: int, body: bytes) -> LibxlRecord:
    """The libxl record of this type and body; unknown mandatory types are errors."""
    cls = LIBXL_RECORD_CLASSES.get(rtype)
    if cls is not None:
        return cls.decode_body(body)
    if rtype & REC_TYPE_OPTIONAL:
        return LibxlOptionalRecord(rtype, bytes(body))
    raise StreamError(f"unknown mandatory libxl record type {rtype:#010x}")


class LibxlStreamReader:
    """Reads a libxl stream from ``fp`` (or from ``source``, to continue after an xl
    header).  After a :class:`LibxcContext` record, read the libxc stream with
    :meth:`libxc` before the next libxl record."""

    def __init__(self, fp: BinaryIO, *, name: str = "migration stream",
                 limits: Limits | None = None, source: ExactReader | None = None) -> None:
        self.src = source if source is not None else ExactReader(fp, name)
        self.limits = limits if limits is not None else Limits()
        self.header: LibxlHeader | None = None
        self.finished = False

    def read_header(self) -> LibxlHeader:
        if self.header is None:
            at = self.src.offset
            try:
                self.header = LibxlHeader.decode(self.src.read(LibxlHeader.SIZE,
                                                               "libxl header"))
            except StreamTruncated:
                raise
            except StreamError as e:
                raise self.src.error(str(e), at) from None
        return self.header

    def read_record(self) -> LibxlRecord:
        self.read_header()
        if self.finished:
            raise self.src.error("read past the libxl END record")
        at = self.src.offset
        rtype, length = _RHDR.unpack(self.src.read(_RHDR.size, "libxl record header"))
        name = libxl_record_type_name(rtype)
        cap = self.limits.max_record_length
        if rtype in _SMALL_LIBXL:
            cap = min(cap, self.limits.max_small_record)
        if length > cap:
            raise StreamLimitError(f"{self.src.name}: offset {at}: libxl {name} record of "
                                   f"{length} bytes, over the limit {cap}")
        body = self.src.read(length + padding(length), f"libxl {name} record body")
        try:
            rec = decode_libxl_record(rtype, body[:length])
        except StreamError as e:
            raise self.src.error(str(e), at) from None
        if isinstance(rec, LibxlEnd):
            self.finished = True
        return rec

    def libxc(self) -> StreamReader:
        """A reader of the libxc stream that follows LIBXC_CONTEXT, on the same bytes."""
        return StreamReader(self.src.fp, limits=self.limits, source=self.src)


class LibxlStreamWriter:
    """Writes a libxl stream: :meth:`write_header`, records, and for the libxc part a
    :meth:`libxc` writer after writing :class:`LibxcContext`."""

    def __init__(self, fp: BinaryIO) -> None:
        self.fp = fp

    def write_header(self, header: LibxlHeader | None = None) -> None:
        self.fp.write((header or LibxlHeader()).encode())

    def write(self, record: LibxlRecord) -> None:
        self.fp.write(record.encode())

    def libxc(self) -> StreamWriter:
        return StreamWriter(self.fp)


SaveItem = XlSaveHeader | LibxlHeader | LibxlRecord | ImageHeader | DomainHeader | Record


class SaveFileReader:
    """An ``xl save`` file (or ``xl migrate`` stream), read and checked end to end.

    Iterating yields, in stream order: the :class:`XlSaveHeader` (unless ``xl_header`` is
    False), the :class:`LibxlHeader`, libxl records; after each :class:`LibxcContext`, the
    libxc image and domain headers and records up to END (or CHECKPOINT); and finally
    :class:`LibxlEnd`.  If ``limits`` does not bound the pages, the stored config's
    ``max_memkb`` does.  ``libxc_reader`` is the reader of the last libxc part.
    """

    def __init__(self, fp: BinaryIO, *, name: str = "migration stream",
                 limits: Limits | None = None, xl_header: bool = True) -> None:
        self.src = ExactReader(fp, name)
        self.limits = limits if limits is not None else Limits()
        self.expect_xl_header = xl_header
        self.xl_header: XlSaveHeader | None = None
        self.libxl = LibxlStreamReader(fp, limits=self.limits, source=self.src)
        self.libxc_reader: StreamReader | None = None

    def __iter__(self) -> Iterator[SaveItem]:
        if self.expect_xl_header and self.xl_header is None:
            self.xl_header = XlSaveHeader.read(self.src)
            try:
                pages = self.xl_header.guest_pages()
            except StreamError:
                pages = None  # a bad stored config fails where it is used, not here
            if self.limits.max_pages is None and pages is not None:
                self.limits = dataclasses.replace(self.limits, max_pages=pages)
                self.libxl.limits = self.limits
            yield self.xl_header
        yield self.libxl.read_header()
        while not self.libxl.finished:
            rec = self.libxl.read_record()
            yield rec
            if isinstance(rec, LibxcContext):
                if self.libxc_reader is not None and not self.libxc_reader.finished:
                    raise self.src.error("LIBXC_CONTEXT inside an unfinished libxc stream")
                self.libxc_reader = self.libxl.libxc()
                yield from self.libxc_reader.read_headers()
                yield from self.libxc_reader
            elif (isinstance(rec, CheckpointEnd) and self.libxc_reader is not None
                  and not self.libxc_reader.finished):
                yield from self.libxc_reader  # the libxc stream goes on after a checkpoint
