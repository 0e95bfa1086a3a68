"""Kernel image loading for PV guests: ELF32/ELF64, x86 bzImage, compressed kernels, Xen notes.

Every input is treated as hostile: all offsets and sizes are bounds-checked before use,
decompression output is capped, and every failure is an :class:`ImageError` whose message
names the offending field and value. Loading is lazy: a segment's bytes are sliced from the
(decompressed) ELF only when the builder copies them into the guest, so a huge ``p_memsz``
costs nothing here; the layout decides whether it fits.

Decompressed kernels can be cached (``load_kernel(..., cache_dir=...)``).  The cache is
trusted only when private: the directory and every entry must be owned by the caller and
writable by no one else, or they are not used; the directory is created 0700 and entries
0600, through a temporary file created exclusively (``O_EXCL|O_NOFOLLOW``) and renamed.
It is kept under ``XENTOOL_KERNEL_CACHE_MAX_BYTES`` bytes (environment; default 1 GiB):
after an entry is written the least recently used others go first (a hit touches its
entry's mtime), never the entry just written.
"""

from __future__ import annotations

import bz2
import enum
import itertools
import lzma
import mmap
import os
import stat
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from domain_builder.errors import ImageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Literal, Protocol, TypedDict

    class _Decompressor(Protocol):
        """What bz2.BZ2Decompressor and lzma.LZMADecompressor have in common."""

        def decompress(self, data: Buffer, max_length: int = -1) -> bytes: ...
        @property
        def eof(self) -> bool: ...
        @property
        def needs_input(self) -> bool: ...

    # XenNotes fields that a Xen note of the same name (lower case) sets.
    _StrField = Literal["xen_version", "guest_os", "guest_version", "loader", "pae_mode"]
    _NumField = Literal["entry", "hypercall_page", "virt_base", "paddr_offset",
                        "hv_start_low", "suspend_cancel", "init_p2m", "phys32_entry"]

    class _NotesFields(TypedDict, total=False):
        """Keyword arguments of XenNotes, gathered before it is made."""

        entry: int | None
        hypercall_page: int | None
        virt_base: int | None
        paddr_offset: int | None
        xen_version: str
        guest_os: str
        guest_version: str
        loader: str
        pae_mode: str
        features: tuple[str, ...]
        features_supported: frozenset[str]
        features_required: frozenset[str]
        supported_features_mask: int
        bsd_symtab: bool
        hv_start_low: int | None
        l1_mfn_valid: bool
        suspend_cancel: int | None
        init_p2m: int | None
        mod_start_pfn: bool
        phys32_entry: int | None

PAGE_SIZE = 4096
DEFAULT_MAX_SIZE = 256 << 20
# A PV kernel larger than this is a corrupt header, not a kernel (Linux is ~60 MiB with BTF).
MAX_KERNEL_SPAN = 1 << 30
MAX_PHDRS = 4096
MAX_SHDRS = 65535
MAX_NOTES = 1024

EM_386 = 3
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
SHT_NOTE = 7
SHT_PROGBITS = 1


class NoteType(enum.IntEnum):
    """Xen ELF note types (xen/include/public/elfnote.h)."""

    INFO = 0
    ENTRY = 1
    HYPERCALL_PAGE = 2
    VIRT_BASE = 3
    PADDR_OFFSET = 4
    XEN_VERSION = 5
    GUEST_OS = 6
    GUEST_VERSION = 7
    LOADER = 8
    PAE_MODE = 9
    FEATURES = 10
    BSD_SYMTAB = 11
    HV_START_LOW = 12
    L1_MFN_VALID = 13
    SUSPEND_CANCEL = 14
    INIT_P2M = 15
    MOD_START_PFN = 16
    SUPPORTED_FEATURES = 17
    PHYS32_ENTRY = 18


# Notes stored as they are, in the XenNotes field of the note's name in lower case.
_STRING_FIELDS: dict[NoteType, _StrField] = {
    NoteType.XEN_VERSION: "xen_version", NoteType.GUEST_OS: "guest_os",
    NoteType.GUEST_VERSION: "guest_version", NoteType.LOADER: "loader",
    NoteType.PAE_MODE: "pae_mode",
}
_NUMERIC_FIELDS: dict[NoteType, _NumField] = {
    NoteType.ENTRY: "entry", NoteType.HYPERCALL_PAGE: "hypercall_page",
    NoteType.VIRT_BASE: "virt_base", NoteType.PADDR_OFFSET: "paddr_offset",
    NoteType.HV_START_LOW: "hv_start_low", NoteType.SUSPEND_CANCEL: "suspend_cancel",
    NoteType.INIT_P2M: "init_p2m", NoteType.PHYS32_ENTRY: "phys32_entry",
}
_STRING_NOTES = frozenset({*_STRING_FIELDS, NoteType.FEATURES, NoteType.BSD_SYMTAB})

# Index = XENFEAT_* bit number (xen/include/public/features.h), the names Xen's parser knows.
FEATURE_BITS: dict[str, int] = {
    "writable_page_tables": 0,
    "writable_descriptor_tables": 1,
    "auto_translated_physmap": 2,
    "supervisor_mode_kernel": 3,
    "pae_pgdir_above_4gb": 4,
    "hvm_callback_vector": 8,
    "dom0": 11,
}


class Compression(enum.Enum):
    NONE = "none"
    GZIP = "gzip"
    BZIP2 = "bzip2"
    XZ = "xz"
    LZMA = "lzma"
    LZ4_LEGACY = "lz4-legacy"
    LZ4_FRAME = "lz4"
    ZSTD = "zstd"


@dataclass(frozen=True)
class Segment:
    """One PT_LOAD segment: file bytes [offset, offset+filesz) land at paddr, then zeros up
    to memsz."""

    paddr: int
    vaddr: int
    offset: int
    filesz: int
    memsz: int


@dataclass(frozen=True)
class XenNotes:
    """What the kernel tells the builder. Numbers are None when the note is absent."""

    source: str  # "notes" (PT_NOTE/SHT_NOTE) or "__xen_guest" (legacy section)
    entry: int | None = None
    hypercall_page: int | None = None
    virt_base: int | None = None
    paddr_offset: int | None = None
    xen_version: str = ""
    guest_os: str = ""
    guest_version: str = ""
    loader: str = ""
    pae_mode: str = ""
    features: tuple[str, ...] = ()
    features_supported: frozenset[str] = frozenset()
    features_required: frozenset[str] = frozenset()
    supported_features_mask: int = 0
    bsd_symtab: bool = False
    hv_start_low: int | None = None
    l1_mfn_valid: bool = False
    suspend_cancel: int | None = None
    init_p2m: int | None = None
    mod_start_pfn: bool = False
    phys32_entry: int | None = None


@dataclass(frozen=True)
class KernelImage:
    """A parsed PV kernel: the ELF bytes, its load segments and the resolved Xen parameters."""

    elf: ElfData = field(repr=False)  # mmap: from the decompressed-kernel cache
    elf_class: int  # 32 or 64
    machine: int
    container: str  # "elf" or "bzImage"
    compression: Compression
    segments: tuple[Segment, ...]
    notes: XenNotes
    pstart: int
    pend: int
    virt_base: int
    paddr_offset: int
    virt_kstart: int
    virt_kend: int
    virt_entry: int
    virt_hypercall: int | None

    @property
    def arch(self) -> str:
        return "x86_64" if self.machine == EM_X86_64 else "x86_32"

    def segment_data(self, seg: Segment) -> memoryview:
        """The file bytes of ``seg`` (bounds were checked at parse time)."""
        return memoryview(self.elf)[seg.offset:seg.offset + seg.filesz]

    def vaddr_of(self, paddr: int) -> int:
        return paddr - self.paddr_offset + self.virt_base

    def summary(self) -> dict[str, object]:
        """A JSON-friendly description (``xentool image-info --json``)."""
        n = self.notes

        def hx(v: int | None) -> str | None:
            return None if v is None else f"{v:#x}"

        return {
            "container": self.container,
            "compression": self.compression.value,
            "class": f"ELF{self.elf_class}",
            "arch": self.arch,
            "elf_size": len(self.elf),
            "segments": [
                {"paddr": hx(s.paddr), "vaddr": hx(s.vaddr), "offset": hx(s.offset),
                 "filesz": s.filesz, "memsz": s.memsz}
                for s in self.segments
            ],
            "virt_base": hx(self.virt_base),
            "paddr_offset": hx(self.paddr_offset),
            "virt_kstart": hx(self.virt_kstart),
            "virt_kend": hx(self.virt_kend),
            "virt_entry": hx(self.virt_entry),
            "virt_hypercall": hx(self.virt_hypercall),
            "notes": {
                "source": n.source,
                "ENTRY": hx(n.entry),
                "HYPERCALL_PAGE": hx(n.hypercall_page),
                "VIRT_BASE": hx(n.virt_base),
                "PADDR_OFFSET": hx(n.paddr_offset),
                "XEN_VERSION": n.xen_version,
                "GUEST_OS": n.guest_os,
                "GUEST_VERSION": n.guest_version,
                "LOADER": n.loader,
                "PAE_MODE": n.pae_mode,
                "FEATURES": list(n.features),
                "FEATURES_REQUIRED": sorted(n.features_required),
                "SUPPORTED_FEATURES": hx(n.supported_features_mask),
                "HV_START_LOW": hx(n.hv_start_low),
                "INIT_P2M": hx(n.init_p2m),
                "MOD_START_PFN": n.mod_start_pfn,
                "SUSPEND_CANCEL": n.suspend_cancel,
                "BSD_SYMTAB": n.bsd_symtab,
                "PHYS32_ENTRY": hx(n.phys32_entry),
            },
        }


# ---------------------------------------------------------------------------------------------
# Decompression with an output cap

_MAGICS: tuple[tuple[bytes, Compression], ...] = (
    (b"\x1f\x8b", Compression.GZIP),
    (b"BZh", Compression.BZIP2),
    (b"\xfd7zXZ\x00", Compression.XZ),
    (b"\x02\x21\x4c\x18", Compression.LZ4_LEGACY),
    (b"\x04\x22\x4d\x18", Compression.LZ4_FRAME),
    (b"\x28\xb5\x2f\xfd", Compression.ZSTD),
    # .lzma ("alone") has no magic; its first bytes are the usual properties byte and a
    # power-of-two dictionary size, which is what Xen and Linux test for too.
    (b"\x5d\x00\x00", Compression.LZMA),
)

_CHUNK = 1 << 20
# Decoder memory an xz/lzma stream may ask for (its dictionary): lzma -9 needs 65 MiB.
_LZMA_MEMLIMIT = 128 << 20
_LZ4_LEGACY_BLOCK = 8 << 20


def detect_compression(data: Buffer) -> Compression:
    head = bytes(data[:8])
    for magic, kind in _MAGICS:
        if head.startswith(magic):
            return kind
    return Compression.NONE


# What the decompressors read: a file's bytes, or a view into an outer decompressed image.
Buffer = bytes | bytearray | memoryview


class _Capped:
    """Collects decompressed output and refuses to grow past ``limit`` bytes."""

    def __init__(self, kind: Compression, limit: int) -> None:
        self.kind = kind
        self.limit = limit
        self.buf = bytearray()

    def room(self) -> int:
        return self.limit - len(self.buf)

    def add(self, chunk: bytes) -> None:
        # Checked before growing: a bomb never makes the buffer larger than the limit.
        if len(chunk) > self.room():
            raise ImageError(
                f"{self.kind.value} data decompresses to more than {self.limit} bytes "
                f"(the limit; raise it with max_size if the image is genuine)")
        self.buf += chunk


def _stream(kind: Compression, data: Buffer, out: _Capped, dec: _Decompressor) -> None:
    """Drive a bz2/lzma decompressor (``decompress(data, max_length)``, ``eof``,
    ``needs_input``)."""
    out.add(dec.decompress(data, min(_CHUNK, out.room() + 1)))
    while not dec.eof:
        if dec.needs_input:
            raise ImageError(f"{kind.value} stream is truncated after {len(out.buf)} "
                             f"output bytes")
        out.add(dec.decompress(b"", min(_CHUNK, out.room() + 1)))


def _gzip(data: Buffer, out: _Capped) -> None:
    # zlib hands back unread input in unconsumed_tail instead of buffering it.
    dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
    pending = data
    while not dec.eof:
        chunk = dec.decompress(pending, min(_CHUNK, out.room() + 1))
        out.add(chunk)
        pending = dec.unconsumed_tail
        if not pending and not chunk and not dec.eof:
            chunk = dec.flush()
            out.add(chunk)
            if not dec.eof:
                raise ImageError(f"gzip stream is truncated after {len(out.buf)} output bytes")


def _lz4_legacy(data: Buffer, out: _Capped) -> None:
    import lz4.block

    pos = 4
    n = len(data)
    while pos < n:
        # The kernel's build appends the output size as 4 bytes; fewer than 8 left is that.
        if n - pos < 8:
            break
        (size,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if size == 0x184C2102:  # a concatenated stream starts; keep going
            continue
        if size > n - pos:
            raise ImageError(f"lz4-legacy block at offset {pos - 4} claims {size} bytes but "
                             f"only {n - pos} remain")
        if size > _LZ4_LEGACY_BLOCK + _LZ4_LEGACY_BLOCK // 255 + 16:
            raise ImageError(f"lz4-legacy block at offset {pos - 4} is {size} bytes, "
                             f"larger than any 8 MiB block can compress to")
        try:
            block = lz4.block.decompress(data[pos:pos + size],
                                         uncompressed_size=_LZ4_LEGACY_BLOCK)
        except lz4.block.LZ4BlockError as exc:
            raise ImageError(f"lz4-legacy block at offset {pos - 4}: {exc}") from None
        out.add(block)
        pos += size


def _lz4_frame(data: Buffer, out: _Capped) -> None:
    import lz4.frame

    dec = lz4.frame.LZ4FrameDecompressor()
    try:
        chunk = dec.decompress(data, max_length=min(_CHUNK, out.room() + 1))
        out.add(chunk)
        while not dec.eof:
            if dec.needs_input:
                raise ImageError(f"lz4 frame is truncated after {len(out.buf)} output bytes")
            out.add(dec.decompress(b"", max_length=min(_CHUNK, out.room() + 1)))
    except RuntimeError as exc:
        raise ImageError(f"lz4 frame is corrupt: {exc}") from None


def _zstd(data: Buffer, out: _Capped) -> None:
    import zstandard

    # The window bounds the decoder's memory; the kernel uses at most 2^27 (zstd -22 --ultra).
    # Input goes in small steps because decompressobj has no output limit: an RLE block
    # expands at most 32768x, so one step's output (held beside the buffer) is at most
    # 4 MiB.  Smaller steps cost time: 128 bytes is ~0.25 s for a distribution kernel.
    dobj = zstandard.ZstdDecompressor(max_window_size=1 << 27).decompressobj()
    step = 128
    pos = 0
    try:
        while pos < len(data) and not getattr(dobj, "eof", False):
            out.add(dobj.decompress(data[pos:pos + step]))
            pos += step
    except zstandard.ZstdError as exc:
        raise ImageError(f"zstd data is corrupt: {exc}") from None
    if hasattr(dobj, "eof") and not dobj.eof:
        raise ImageError(f"zstd stream is truncated after {len(out.buf)} output bytes")


def decompress(data: Buffer, kind: Compression, *,
               max_size: int = DEFAULT_MAX_SIZE) -> bytes | bytearray:
    """Decompress ``data`` of the given kind, refusing to produce more than ``max_size`` bytes.

    Trailing bytes after the end of the stream are ignored: the kernel build appends the
    decompressed size as 4 bytes, and bzImage payloads may be padded.  The output is the
    buffer it was decompressed into (no copy: a copy would double the peak memory).
    """
    out = _Capped(kind, max_size)
    try:
        if kind is Compression.GZIP:
            _gzip(data, out)
        elif kind is Compression.BZIP2:
            _stream(kind, data, out, bz2.BZ2Decompressor())
        elif kind is Compression.XZ:
            # The stream names its dictionary size, which the decoder allocates: bound it
            # (the kernel's own xz uses at most 32 MiB).
            _stream(kind, data, out, lzma.LZMADecompressor(lzma.FORMAT_XZ,
                                                           memlimit=_LZMA_MEMLIMIT))
        elif kind is Compression.LZMA:
            _stream(kind, data, out, lzma.LZMADecompressor(lzma.FORMAT_ALONE,
                                                           memlimit=_LZMA_MEMLIMIT))
        elif kind is Compression.LZ4_LEGACY:
            _lz4_legacy(data, out)
        elif kind is Compression.LZ4_FRAME:
            _lz4_frame(data, out)
        elif kind is Compression.ZSTD:
            _zstd(data, out)
        else:
            return bytes(data)
    except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError, MemoryError) as exc:
        raise ImageError(f"{kind.value} data is corrupt: {exc}") from None
    return out.buf


# ---------------------------------------------------------------------------------------------
# bzImage (Documentation/arch/x86/boot.rst)

_BZ_SETUP_SECTS = 0x1F1
_BZ_BOOT_FLAG = 0x1FE
_BZ_HEADER = 0x202
_BZ_VERSION = 0x206
_BZ_PAYLOAD_OFFSET = 0x248
_BZ_PAYLOAD_LENGTH = 0x24C


def is_bzimage(data: Buffer) -> bool:
    return len(data) >= 0x250 and data[_BZ_HEADER:_BZ_HEADER + 4] == b"HdrS"


def bzimage_payload(data: Buffer) -> memoryview:
    """The compressed kernel inside a bzImage (boot protocol ≥ 2.08 records where it is),
    as a view into ``data``."""
    if data[_BZ_BOOT_FLAG:_BZ_BOOT_FLAG + 2] != b"\x55\xaa":
        raise ImageError("bzImage: boot_flag at 0x1fe is not 0xaa55")
    (version,) = struct.unpack_from("<H", data, _BZ_VERSION)
    if version < 0x208:
        raise ImageError(f"bzImage: boot protocol {version >> 8}.{version & 0xff:02d} is older "
                         f"than 2.08 and does not locate its payload")
    setup_sects = data[_BZ_SETUP_SECTS] or 4
    off, length = struct.unpack_from("<II", data, _BZ_PAYLOAD_OFFSET)
    start = (setup_sects + 1) * 512 + off
    if length == 0 or start + length > len(data):
        raise ImageError(f"bzImage: payload at {start:#x} of {length} bytes lies outside the "
                         f"{len(data)}-byte file")
    return memoryview(data)[start:start + length]


# ---------------------------------------------------------------------------------------------
# ELF


# An ELF file in memory: bytes, or (from the decompressed-kernel cache) a read-only mmap.
ElfData = bytes | bytearray | mmap.mmap


@dataclass(frozen=True)
class _Elf:
    cls: int
    machine: int
    entry: int
    phoff: int
    shoff: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int
    shstrndx: int


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ImageError(msg)


def _parse_ehdr(data: ElfData) -> _Elf:
    _need(len(data) >= 52, f"ELF file is truncated: {len(data)} bytes, shorter than a header")
    cls = {1: 32, 2: 64}.get(data[4])
    _need(cls is not None, f"ELF e_ident[EI_CLASS] = {data[4]} is neither ELF32 (1) nor ELF64 (2)")
    assert cls is not None
    _need(data[5] == 1, f"ELF e_ident[EI_DATA] = {data[5]}: only little-endian x86 is supported")
    if cls == 64:
        _need(len(data) >= 64, f"ELF64 header is truncated: file has {len(data)} bytes")
        (_, machine, _, entry, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum,
         shstrndx) = struct.unpack_from("<HHIQQQIHHHHHH", data, 16)
        want_ph, want_sh = 56, 64
    else:
        (_, machine, _, entry, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum,
         shstrndx) = struct.unpack_from("<HHIIIIIHHHHHH", data, 16)
        want_ph, want_sh = 32, 40
    _need(machine in (EM_X86_64, EM_386),
          f"ELF e_machine = {machine}: not an x86 kernel (want {EM_X86_64} or {EM_386})")
    _need(phnum > 0, "ELF has no program headers (e_phnum = 0)")
    _need(phentsize == want_ph, f"ELF e_phentsize = {phentsize}, expected {want_ph}")
    _need(phnum <= MAX_PHDRS, f"ELF e_phnum = {phnum} is absurd (limit {MAX_PHDRS})")
    _need(phoff + phnum * phentsize <= len(data),
          f"ELF program headers at e_phoff={phoff:#x} ({phnum}×{phentsize} bytes) run past the "
          f"end of the {len(data)}-byte file")
    if shnum:
        _need(shentsize == want_sh, f"ELF e_shentsize = {shentsize}, expected {want_sh}")
        _need(shoff + shnum * shentsize <= len(data),
              f"ELF section headers at e_shoff={shoff:#x} ({shnum}×{shentsize} bytes) run past "
              f"the end of the {len(data)}-byte file")
        _need(shstrndx < shnum, f"ELF e_shstrndx = {shstrndx} is not below e_shnum = {shnum}")
    return _Elf(cls, machine, entry, phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx)


def _phdrs(data: ElfData, e: _Elf) -> list[tuple[int, int, int, int, int, int]]:
    """(type, offset, vaddr, paddr, filesz, memsz) of each program header."""
    out = []
    for i in range(e.phnum):
        base = e.phoff + i * e.phentsize
        if e.cls == 64:
            ptype, _, off, vaddr, paddr, filesz, memsz, _ = struct.unpack_from(
                "<IIQQQQQQ", data, base)
        else:
            ptype, off, vaddr, paddr, filesz, memsz, _, _ = struct.unpack_from(
                "<IIIIIIII", data, base)
        out.append((ptype, off, vaddr, paddr, filesz, memsz))
    return out


def _shdrs(data: ElfData, e: _Elf) -> list[tuple[int, int, int, int]]:
    """(name, type, offset, size) of each section header."""
    out = []
    for i in range(e.shnum):
        base = e.shoff + i * e.shentsize
        if e.cls == 64:
            name, stype, _, _, off, size = struct.unpack_from("<IIQQQQ", data, base)
        else:
            name, stype, _, _, off, size = struct.unpack_from("<IIIIII", data, base)
        out.append((name, stype, off, size))
    return out


def _in_file(data: ElfData, off: int, size: int, what: str) -> None:
    _need(off <= len(data) and size <= len(data) - off,
          f"{what} at offset {off:#x} with size {size} runs past the end of the "
          f"{len(data)}-byte file")


def _iter_notes(data: ElfData, off: int, size: int, what: str
                ) -> Iterator[tuple[bytes, int, bytes, int]]:
    """Yield (name, type, desc, offset) of each note in [off, off+size), checking every
    bound."""
    end = off + size
    pos = off
    count = 0
    while end - pos >= 12:
        count += 1
        _need(count <= MAX_NOTES, f"{what}: more than {MAX_NOTES} notes")
        namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
        name_off = pos + 12
        desc_off = name_off + ((namesz + 3) & ~3)
        nxt = desc_off + ((descsz + 3) & ~3)
        _need(desc_off + descsz <= end,
              f"{what}: note at offset {pos:#x} (namesz={namesz}, descsz={descsz}) runs past "
              f"the end of its segment at {end:#x}")
        name = bytes(data[name_off:name_off + namesz]).rstrip(b"\0")
        yield name, ntype, bytes(data[desc_off:desc_off + descsz]), pos
        pos = nxt


def _note_str(desc: bytes, ntype: NoteType, pos: int) -> str:
    raw = desc.split(b"\0", 1)[0]
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise ImageError(f"Xen note {ntype.name} at offset {pos:#x} is not an ASCII "
                         f"string: {raw[:40]!r}") from None


def _note_num(desc: bytes, ntype: NoteType, pos: int) -> int:
    _need(len(desc) in (1, 2, 4, 8),
          f"Xen note {ntype.name} at offset {pos:#x} has a {len(desc)}-byte value; "
          f"numeric notes are 1, 2, 4 or 8 bytes")
    return int.from_bytes(desc, "little")


def parse_features(text: str, where: str) -> tuple[tuple[str, ...], frozenset[str],
                                                     frozenset[str]]:
    """Split a FEATURES string; ``!name`` marks a feature the kernel requires.

    Unknown optional features are kept and ignored (the kernel merely offers them); an
    unknown *required* feature makes the image unbootable, as in Xen's own parser.
    """
    items = tuple(f for f in text.split("|") if f)
    supported: set[str] = set()
    required: set[str] = set()
    for f in items:
        name = f.removeprefix("!")
        if f.startswith("!"):
            _need(name in FEATURE_BITS,
                  f"{where}: the kernel requires feature '{name}', which is unknown")
            required.add(name)
        if name in FEATURE_BITS:
            supported.add(name)
    return items, frozenset(supported), frozenset(required)


def _notes_from_elfnotes(found: list[tuple[int, bytes, int]]) -> XenNotes:
    kw: _NotesFields = {}
    for ntype_raw, desc, pos in found:
        try:
            ntype = NoteType(ntype_raw)
        except ValueError:
            continue  # unknown notes are ignored, as Xen does
        if ntype in _STRING_NOTES:
            s = _note_str(desc, ntype, pos)
            if ntype is NoteType.FEATURES:
                items, sup, req = parse_features(s, f"Xen note FEATURES at offset {pos:#x}")
                kw["features"] = items
                kw["features_supported"] = sup
                kw["features_required"] = req
            elif ntype is NoteType.BSD_SYMTAB:
                kw["bsd_symtab"] = s == "yes"
            else:
                kw[_STRING_FIELDS[ntype]] = s
        elif ntype is NoteType.SUPPORTED_FEATURES:
            _need(len(desc) >= 4, f"Xen note SUPPORTED_FEATURES at offset {pos:#x} is "
                                  f"{len(desc)} bytes, shorter than a 32-bit mask")
            kw["supported_features_mask"] = int.from_bytes(desc[:4], "little")
        elif ntype is NoteType.L1_MFN_VALID:
            kw["l1_mfn_valid"] = True
        elif ntype is NoteType.MOD_START_PFN:
            kw["mod_start_pfn"] = _note_num(desc, ntype, pos) != 0
        elif ntype in _NUMERIC_FIELDS:
            kw[_NUMERIC_FIELDS[ntype]] = _note_num(desc, ntype, pos)
    return XenNotes(source="notes", **kw)


def _notes_from_guest_info(text: str) -> XenNotes:
    """The pre-ELF-note ``__xen_guest`` section: ``KEY=VALUE,KEY=VALUE,...``."""
    kw: _NotesFields = {}
    hypercall_pfn: int | None = None
    for item in text.split(","):
        if not item:
            continue
        key, _, value = item.partition("=")

        def num(v: str = value, k: str = key) -> int:
            try:
                return int(v, 0)
            except ValueError:
                raise ImageError(f"__xen_guest: {k}={v!r} is not a number") from None

        if key == "LOADER":
            kw["loader"] = value
        elif key == "GUEST_OS":
            kw["guest_os"] = value
        elif key == "GUEST_VER":
            kw["guest_version"] = value
        elif key == "XEN_VER":
            kw["xen_version"] = value
        elif key == "PAE":
            kw["pae_mode"] = value
        elif key == "BSD_SYMTAB":
            kw["bsd_symtab"] = True
        elif key == "VIRT_BASE":
            kw["virt_base"] = num()
        elif key == "VIRT_ENTRY":
            kw["entry"] = num()
        elif key == "ELF_PADDR_OFFSET":
            kw["paddr_offset"] = num()
        elif key == "HYPERCALL_PAGE":
            hypercall_pfn = num()  # legacy: a page number relative to VIRT_BASE
        elif key == "FEATURES":
            items, sup, req = parse_features(value, "__xen_guest FEATURES")
            kw["features"], kw["features_supported"], kw["features_required"] = items, sup, req
    virt_base = kw.get("virt_base")
    if hypercall_pfn is not None and virt_base is not None:
        kw["hypercall_page"] = (hypercall_pfn << 12) + virt_base
    return XenNotes(source="__xen_guest", **kw)


def _find_notes(data: ElfData, e: _Elf,
                phdrs: list[tuple[int, int, int, int, int, int]]) -> XenNotes | None:
    found: list[tuple[int, bytes, int]] = []
    for ptype, off, _, _, filesz, _ in phdrs:
        if ptype == PT_NOTE:
            _in_file(data, off, filesz, "PT_NOTE segment")
            found += [(t, d, p) for n, t, d, p in _iter_notes(data, off, filesz, "PT_NOTE")
                      if n == b"Xen"]
    if found:
        return _notes_from_elfnotes(found)
    if not e.shnum:
        return None
    shdrs = _shdrs(data, e)
    _, _, stroff, strsize = shdrs[e.shstrndx]
    _in_file(data, stroff, strsize, "ELF section name table")
    strtab = data[stroff:stroff + strsize]
    for _name_off, stype, off, size in shdrs:
        if stype == SHT_NOTE:
            _in_file(data, off, size, "SHT_NOTE section")
            found += [(t, d, p) for n, t, d, p in _iter_notes(data, off, size, "SHT_NOTE")
                      if n == b"Xen"]
    if found:
        return _notes_from_elfnotes(found)
    for name_off, _stype, off, size in shdrs:
        if name_off < len(strtab) and strtab[name_off:].split(b"\0", 1)[0] == b"__xen_guest":
            _in_file(data, off, size, "__xen_guest section")
            raw = data[off:off + size].split(b"\0", 1)[0]
            try:
                return _notes_from_guest_info(raw.decode("ascii"))
            except UnicodeDecodeError:
                raise ImageError(f"__xen_guest section at offset {off:#x} is not "
                                 f"ASCII text") from None
    return None


def parse_elf(data: ElfData, *, container: str = "elf",
              compression: Compression = Compression.NONE) -> KernelImage:
    """Parse a Xen PV kernel ELF and resolve its load addresses the way Xen's libelf does."""
    _need(data[:4] == b"\x7fELF", f"not an ELF file (magic {bytes(data[:4])!r})")
    e = _parse_ehdr(data)
    phdrs = _phdrs(data, e)
    addr_max = (1 << e.cls) - 1
    segs: list[Segment] = []
    for i, (ptype, off, vaddr, paddr, filesz, memsz) in enumerate(phdrs):
        if ptype != PT_LOAD or memsz == 0:
            continue
        _in_file(data, off, filesz, f"PT_LOAD segment {i}")
        _need(filesz <= memsz, f"PT_LOAD segment {i}: p_filesz={filesz} exceeds "
                               f"p_memsz={memsz}")
        _need(memsz <= MAX_KERNEL_SPAN, f"PT_LOAD segment {i}: p_memsz={memsz} is absurd "
                                        f"(limit {MAX_KERNEL_SPAN})")
        _need(paddr + memsz - 1 <= addr_max,
              f"PT_LOAD segment {i}: p_paddr={paddr:#x} + p_memsz={memsz:#x} wraps around "
              f"the {e.cls}-bit address space")
        segs.append(Segment(paddr, vaddr, off, filesz, memsz))
    _need(bool(segs), "ELF has no PT_LOAD segment with memory")
    segs.sort(key=lambda s: s.paddr)
    for a, b in itertools.pairwise(segs):
        _need(a.paddr + a.memsz <= b.paddr,
              f"PT_LOAD segments overlap: [{a.paddr:#x}, {a.paddr + a.memsz:#x}) and "
              f"[{b.paddr:#x}, {b.paddr + b.memsz:#x})")
    pstart = segs[0].paddr
    pend = segs[-1].paddr + segs[-1].memsz
    _need(pend - pstart <= MAX_KERNEL_SPAN,
          f"PT_LOAD segments span {pend - pstart:#x} bytes, more than the {MAX_KERNEL_SPAN:#x} "
          f"limit")

    notes = _find_notes(data, e, phdrs)
    _need(notes is not None,
          "not a Xen PV kernel: no Xen ELF notes and no __xen_guest section")
    assert notes is not None
    _need(notes.loader.startswith("generic") or notes.guest_os.startswith("linux"),
          f"kernel is built for loader {notes.loader!r} and guest OS {notes.guest_os!r}; "
          f"only the 'generic' loader or 'linux' is supported")
    _need(notes.xen_version.startswith("xen-3.0"),
          f"kernel is built for Xen version {notes.xen_version!r}, not 'xen-3.0'")
    _need(not (notes.paddr_offset is not None and notes.virt_base is None),
          "PADDR_OFFSET is set but VIRT_BASE is not")

    virt_base = notes.virt_base if notes.virt_base is not None else 0
    if notes.paddr_offset is not None:
        paddr_offset = notes.paddr_offset
    else:
        # Legacy images put virtual addresses in p_paddr; note-based ones default to 0.
        paddr_offset = virt_base if notes.source == "__xen_guest" else 0
    mask = (1 << 64) - 1
    virt_offset = (virt_base - paddr_offset) & mask
    kstart = (pstart + virt_offset) & mask
    kend = (pend + virt_offset) & mask
    entry = notes.entry if notes.entry is not None else e.entry
    _need(kstart < kend, f"kernel virtual range [{kstart:#x}, {kend:#x}) wraps around")
    _need(virt_base <= kstart,
          f"VIRT_BASE={virt_base:#x} is above the kernel start {kstart:#x}")
    _need(kstart <= entry < kend,
          f"entry point {entry:#x} is outside the kernel [{kstart:#x}, {kend:#x})")
    hyp = notes.hypercall_page
    if hyp is not None:
        _need(kstart <= hyp and hyp + PAGE_SIZE <= kend,
              f"HYPERCALL_PAGE {hyp:#x} is outside the kernel [{kstart:#x}, {kend:#x})")
    return KernelImage(
        elf=data, elf_class=e.cls, machine=e.machine, container=container,
        compression=compression, segments=tuple(segs), notes=notes, pstart=pstart, pend=pend,
        virt_base=virt_base, paddr_offset=paddr_offset, virt_kstart=kstart, virt_kend=kend,
        virt_entry=entry, virt_hypercall=hyp,
    )


def parse_kernel(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> KernelImage:
    """Parse a kernel in any supported container: ELF, bzImage, or a compressed ELF/bzImage."""
    _need(len(data) > 0, "kernel image is empty")
    _need(len(data) <= max_size, f"kernel image is {len(data)} bytes, more than the "
                                 f"{max_size}-byte limit")
    container = "elf"
    kind = Compression.NONE
    elf: bytes | bytearray = data
    if is_bzimage(data):
        container = "bzImage"
        payload = bzimage_payload(data)
        kind = detect_compression(payload)
        _need(kind is not Compression.NONE or payload[:4].tobytes() == b"\x7fELF",
              f"bzImage payload starts with {payload[:4].hex()}: not a known "
              f"compression format nor ELF")
        elf = decompress(payload, kind, max_size=max_size)
    elif data[:4] != b"\x7fELF":
        kind = detect_compression(data)
        _need(kind is not Compression.NONE,
              f"not a kernel image: starts with {data[:8].hex()}, which is neither ELF, "
              f"bzImage nor a known compression format")
        elf = decompress(data, kind, max_size=max_size)
        if is_bzimage(elf):  # e.g. a gzipped bzImage; one more level, never more
            container = "bzImage"
            payload = bzimage_payload(elf)
            kind2 = detect_compression(payload)
            # Both levels are in memory at once: together they keep to the one limit.
            room = max_size - len(elf)
            _need(room > 0, f"decompressed bzImage fills the {max_size}-byte limit")
            elf = decompress(payload, kind2, max_size=room)
            del payload  # the last view of the outer image: it can go now
    _need(elf[:4] == b"\x7fELF",
          f"decompressed {container} payload is not an ELF file "
          f"(starts with {elf[:4].hex()})")
    return parse_elf(elf, container=container, compression=kind)


def read_file(path: str | Path, *, max_size: int = DEFAULT_MAX_SIZE, what: str = "file") -> bytes:
    """Read a whole file, refusing more than ``max_size`` bytes (without reading them)."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            # Ask the size first: read(max_size + 1) would allocate the whole limit up front.
            size = os.fstat(f.fileno()).st_size
            _need(size <= max_size, f"{what} {p} is larger than the {max_size}-byte limit")
            chunks = []
            total = 0
            while chunk := f.read(min(1 << 24, max_size + 1 - total) or 1):
                chunks.append(chunk)
                total += len(chunk)
                _need(total <= max_size, f"{what} {p} is larger than the {max_size}-byte limit")
    except OSError as exc:
        raise ImageError(f"{what} {p}: {exc.strerror or exc}") from None
    return b"".join(chunks)


def load_kernel(path: str | Path, *, max_size: int = DEFAULT_MAX_SIZE,
                cache_dir: str | Path | None = None) -> KernelImage:
    """Load and parse a kernel file.

    With ``cache_dir``, the decompressed ELF of a compressed kernel is kept there, keyed by
    the file's identity (device, inode, size, mtime): decompressing a distribution kernel
    (xz, ~60 MiB out) is most of the cost of building a small guest, and the same kernel
    is booted again and again. The cache is only an accelerator: any problem with it falls
    back to decompressing, and a cached ELF is parsed (checked) like a fresh one.

    What is booted from the cache is what was written there, so the directory and each
    entry must be private (owned by the caller, writable by no one else); a directory that
    is not is not used (one warning).  It is created 0700.  It is kept under
    ``$XENTOOL_KERNEL_CACHE_MAX_BYTES`` (default 1 GiB): after writing an entry, the least
    recently used others (a hit touches its entry's mtime) are evicted.
    """
    name = _cache_entry_name(path) if cache_dir is not None else None
    directory = Path(cache_dir) if cache_dir is not None else None
    dfd = _cache_open_dir(directory, create=False) if directory and name else None
    try:
        if dfd is not None and name is not None:
            cached = _cache_read(dfd, name, max_size)
            if cached is not None:
                container, kind, elf = cached
                try:
                    return parse_elf(elf, container=container, compression=kind)
                except ImageError:
                    pass  # a damaged entry: rebuild it below
        data = read_file(path, max_size=max_size, what="kernel")
        try:
            img = parse_kernel(data, max_size=max_size)
        except ImageError as exc:
            raise ImageError(f"kernel {path}: {exc}") from None
        if directory and name and img.compression is not Compression.NONE:
            if dfd is None:
                dfd = _cache_open_dir(directory, create=True)
            if dfd is not None and _cache_write(dfd, name, img):
                _cache_prune(dfd, name, kernel_cache_max_bytes())
        return img
    finally:
        if dfd is not None:
            os.close(dfd)


#: The decompressed-kernel cache's size limit, and the variable that changes it.
KERNEL_CACHE_MAX_BYTES = 1 << 30
KERNEL_CACHE_MAX_BYTES_ENV = "XENTOOL_KERNEL_CACHE_MAX_BYTES"


def kernel_cache_max_bytes() -> int:
    """``$XENTOOL_KERNEL_CACHE_MAX_BYTES`` (bytes, 0 keeps only the newest entry), or the
    1 GiB default when unset, empty or not a non-negative integer (with a warning)."""
    raw = os.environ.get(KERNEL_CACHE_MAX_BYTES_ENV, "").strip()
    if not raw:
        return KERNEL_CACHE_MAX_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        _warn("ignoring %s=%r: not a number of bytes; the kernel cache is kept under %d",
              KERNEL_CACHE_MAX_BYTES_ENV, raw, KERNEL_CACHE_MAX_BYTES)
        return KERNEL_CACHE_MAX_BYTES
    return value


def _warn(msg: str, *args: object) -> None:
    import logging  # only when there is something to say: not on the start-up path

    logging.getLogger(__name__).warning(msg, *args)


def _cache_entry_name(path: str | Path) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # read_file reports it
    return f"{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"


def _is_entry_name(name: str) -> bool:
    parts = name.split("-")
    return len(parts) == 4 and all(p and not p.strip("0123456789abcdef") for p in parts)


def _is_temp_name(name: str) -> bool:
    return name.startswith(".") and _is_entry_name(name[1:].split(".", 1)[0])


_CACHE_MAGIC = b"XTKC2\n"
# The ELF starts on a page boundary of the cache file, so it can be mapped rather than read:
# a build then touches only the pages of the PT_LOAD segments, once, instead of copying the
# whole (~60 MiB) file twice through Python.
_CACHE_HEADER = 4096
# A temporary file this old was left by a writer that died: pruning removes it.
_CACHE_STALE_TMP_NS = 3600 * 10**9
# Cache directories already warned about (once per process each).
_cache_warned: set[str] = set()


def _private(st: os.stat_result) -> bool:
    """Owned by us and writable by no one else: only we can have put its contents there."""
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _cache_mkdir(directory: Path, mode: int = 0o700) -> None:
    """``mkdir -p``: the cache directory itself 0700, missing parents 0755 (whatever the
    umask: a parent writable by others would let them swap the directory)."""
    try:
        os.mkdir(directory, mode)
    except FileExistsError:
        return
    except FileNotFoundError:
        if directory.parent == directory:
            raise
        _cache_mkdir(directory.parent, 0o755)
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            return
    os.chmod(directory, mode)  # mkdir's mode went through the umask


def _cache_open_dir(directory: Path, *, create: bool) -> int | None:
    """The cache directory, opened (entries are then reached relative to this descriptor,
    so the checked directory is the one used); None when it is missing or not private."""
    try:
        if create:
            _cache_mkdir(directory)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None  # missing, not a directory, read-only file system: no cache
    try:
        st = os.fstat(fd)
        if _private(st):
            return fd
    except OSError:
        st = None
    os.close(fd)
    key = os.fspath(directory)
    if st is not None and key not in _cache_warned:
        _cache_warned.add(key)
        _warn("not using the kernel cache %s: it must be owned by uid %d and writable by no "
              "one else (it is owned by uid %d, mode %04o)", key, os.geteuid(), st.st_uid,
              st.st_mode & 0o7777)
    return None


def _cache_read(dfd: int, name: str, max_size: int) -> tuple[str, Compression, mmap.mmap] | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dfd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not _private(st):
            return None
        size = st.st_size - _CACHE_HEADER
        if not 0 < size <= max_size:
            return None
        head = os.pread(fd, _CACHE_HEADER, 0)
        if len(head) != _CACHE_HEADER or not head.startswith(_CACHE_MAGIC):
            return None
        meta = head[len(_CACHE_MAGIC):].split(b"\n", 1)[0]
        container, kind = meta.decode("ascii").split(" ")
        compression = Compression(kind)
        # Entries are replaced, never rewritten in place (private directory), so the
        # mapping cannot change under the parser.
        elf = mmap.mmap(fd, size, access=mmap.ACCESS_READ, offset=_CACHE_HEADER)
        try:
            os.utime(fd)  # the entry's last use, for eviction
        except OSError:
            pass
        return container, compression, elf
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def _cache_write(dfd: int, name: str, img: KernelImage) -> bool:
    """Write an entry under a fresh temporary name (never through an existing file or
    symlink) and rename it into place; False if anything failed."""
    tmp = f".{name}.{os.getpid()}.{os.urandom(8).hex()}"
    head = _CACHE_MAGIC + f"{img.container} {img.compression.value}\n".encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dfd)
    except OSError:
        return False
    try:
        with open(fd, "wb") as f:
            f.write(head.ljust(_CACHE_HEADER, b"\0"))
            f.write(img.elf)
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except OSError:
        try:
            os.unlink(tmp, dir_fd=dfd)
        except OSError:
            pass
        return False
    return True


def _cache_prune(dfd: int, keep: str, max_bytes: int) -> None:
    """Evict the least recently used entries (oldest mtime first) until the entries total
    at most ``max_bytes``, never ``keep`` (the one just written); drop stale temporary
    files.  Other files in the directory are not the cache's: left alone, not counted."""
    now = time.time_ns()
    total = 0
    candidates: list[tuple[int, str, int]] = []
    try:
        with os.scandir(dfd) as it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                if _is_temp_name(e.name):
                    if now - st.st_mtime_ns > _CACHE_STALE_TMP_NS:
                        try:
                            os.unlink(e.name, dir_fd=dfd)
                        except OSError:
                            pass
                elif _is_entry_name(e.name):
                    total += st.st_size
                    if e.name != keep:
                        candidates.append((st.st_mtime_ns, e.name, st.st_size))
    except OSError:
        return
    candidates.sort()
    for _, victim, size in candidates:
        if total <= max_bytes:
            break
        try:
            os.unlink(victim, dir_fd=dfd)
        except FileNotFoundError:
            pass  # evicted by a concurrent create
        except OSError:
            continue
        total -= size


def load_ramdisk(path: str | Path, *, max_size: int = 1 << 30) -> bytes:
    """A ramdisk goes to the guest as is: Linux decompresses its own initramfs."""
    data = read_file(path, max_size=max_size, what="ramdisk")
    _need(len(data) > 0, f"ramdisk {path} is empty")
    return data

