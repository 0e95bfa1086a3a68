"""Builders of synthetic Xen PV kernels (ELF, bzImage, compressed) for the image/layout tests.

Kept beside the tests that use them; the few tests at the bottom check the builders themselves
against independent tools (the stdlib compressors' own decompressors), so a bug here cannot
silently make the parser tests agree with it.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import struct
from pathlib import Path

import lz4.block
import lz4.frame
import pytest
import zstandard

VIRT_BASE = 0xFFFFFFFF80000000
KSTART_PADDR = 0x1000000
ENTRY = VIRT_BASE + KSTART_PADDR + 0x200
HYPERCALL = VIRT_BASE + KSTART_PADDR + 0x1000

# Xen note types
ENTRY_N, HYPERCALL_N, VIRT_BASE_N, PADDR_OFFSET_N, XEN_VERSION_N, GUEST_OS_N = 1, 2, 3, 4, 5, 6
LOADER_N, PAE_MODE_N, FEATURES_N, BSD_SYMTAB_N, SUSPEND_CANCEL_N = 8, 9, 10, 11, 14
INIT_P2M_N, MOD_START_PFN_N = 15, 16


def q(v: int) -> bytes:
    return struct.pack("<Q", v)


def s(text: str) -> bytes:
    return text.encode() + b"\0"


def linux_notes(**over: bytes | None) -> list[tuple[int, bytes]]:
    """The notes a Linux x86_64 PV kernel carries; override or drop (None) by type number."""
    base = {
        XEN_VERSION_N: s("xen-3.0"),
        GUEST_OS_N: s("linux"),
        LOADER_N: s("generic"),
        VIRT_BASE_N: q(VIRT_BASE),
        PADDR_OFFSET_N: q(0),
        ENTRY_N: q(ENTRY),
        HYPERCALL_N: q(HYPERCALL),
        FEATURES_N: s("!writable_page_tables|pae_pgdir_above_4gb"),
        PAE_MODE_N: s("yes"),
        INIT_P2M_N: q(0x8000000000),
        MOD_START_PFN_N: struct.pack("<I", 1),
        SUSPEND_CANCEL_N: struct.pack("<I", 1),
    }
    for k, v in over.items():
        n = int(k.lstrip("n"))
        if v is None:
            base.pop(n, None)
        else:
            base[n] = v
    return list(base.items())


def note_blob(notes: list[tuple[int, bytes]], name: bytes = b"Xen") -> bytes:
    out = b""
    nm = name + b"\0"
    for ntype, desc in notes:
        out += struct.pack("<III", len(nm), len(desc), ntype)
        out += nm + b"\0" * (-len(nm) % 4)
        out += desc + b"\0" * (-len(desc) % 4)
    return out


def make_elf(
    *,
    cls: int = 64,
    machine: int = 62,
    segments: list[tuple[int, bytes, int]] | None = None,
    notes: list[tuple[int, bytes]] | None = None,
    notes_in_section: bool = False,
    xen_guest: str | None = None,
    e_entry: int = ENTRY,
) -> bytes:
    """An ELF with the given PT_LOAD segments (paddr, bytes, memsz) and Xen notes.

    With ``notes_in_section`` the notes are only reachable through an SHT_NOTE section; with
    ``xen_guest`` there are no notes but a legacy ``__xen_guest`` section.
    """
    if segments is None:
        text = bytes(range(256)) * 32  # 8 KiB of recognisable bytes
        segments = [(KSTART_PADDR, text, 0x3000)]
    if notes is None and xen_guest is None:
        notes = linux_notes()
    ehsize, phsize, shsize = (64, 56, 64) if cls == 64 else (52, 32, 40)
    nblob = note_blob(notes) if notes else b""
    gblob = (xen_guest.encode() + b"\0") if xen_guest is not None else b""
    use_pt_note = bool(nblob) and not notes_in_section
    phnum = len(segments) + (1 if use_pt_note else 0)
    body = bytearray()
    off0 = ehsize + phnum * phsize
    seg_offs = []
    for _, data, _ in segments:
        seg_offs.append(off0 + len(body))
        body += data + b"\0" * (-len(data) % 8)
    note_off = off0 + len(body)
    body += nblob
    guest_off = off0 + len(body)
    body += gblob
    shstr = b"\0.note.Xen\0__xen_guest\0.shstrtab\0"
    shstr_off = off0 + len(body)
    body += shstr + b"\0" * (-len(shstr) % 8)
    sections = [(0, 0, 0, 0)]
    if nblob and notes_in_section:
        sections.append((1, 7, note_off, len(nblob)))
    if gblob:
        sections.append((11, 1, guest_off, len(gblob)))
    sections.append((23, 3, shstr_off, len(shstr)))
    shoff = off0 + len(body)
    shnum = len(sections)
    pack = "<HHIQQQIHHHHHH" if cls == 64 else "<HHIIIIIHHHHHH"
    ident = b"\x7fELF" + bytes([2 if cls == 64 else 1, 1, 1]) + b"\0" * 9
    ehdr = ident + struct.pack(pack, 2, machine, 1, e_entry & ((1 << cls) - 1), ehsize, shoff,
                               0, ehsize, phsize, phnum, shsize, shnum, shnum - 1)
    ph = b""
    for (paddr, data, memsz), off in zip(segments, seg_offs, strict=False):
        vaddr = (paddr + VIRT_BASE) & ((1 << cls) - 1)
        if cls == 64:
            ph += struct.pack("<IIQQQQQQ", 1, 7, off, vaddr, paddr, len(data), memsz, 0x1000)
        else:
            ph += struct.pack("<IIIIIIII", 1, off, vaddr, paddr, len(data), memsz, 7, 0x1000)
    if use_pt_note:
        if cls == 64:
            ph += struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(nblob), len(nblob), 4)
        else:
            ph += struct.pack("<IIIIIIII", 4, note_off, 0, 0, len(nblob), len(nblob), 4, 4)
    sh = b""
    for name, stype, off, size in sections:
        if cls == 64:
            sh += struct.pack("<IIQQQQIIQQ", name, stype, 0, 0, off, size, 0, 0, 1, 0)
        else:
            sh += struct.pack("<IIIIIIIIII", name, stype, 0, 0, off, size, 0, 0, 1, 0)
    return bytes(ehdr + ph + body + sh)


def _lz4_legacy(data: bytes) -> bytes:
    out = bytearray(struct.pack("<I", 0x184C2102))
    for i in range(0, len(data), 8 << 20):
        block = lz4.block.compress(data[i:i + (8 << 20)], store_size=False)
        out += struct.pack("<I", len(block)) + block
    return bytes(out)


def compress(kind: str, data: bytes) -> bytes:
    """Compress like the kernel build does, including its trailing 4-byte size."""
    size = struct.pack("<I", len(data) & 0xFFFFFFFF)
    if kind == "gzip":
        return gzip.compress(data) + size
    if kind == "bzip2":
        return bz2.compress(data) + size
    if kind == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32) + size
    if kind == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_ALONE) + size
    if kind == "lz4-legacy":
        return _lz4_legacy(data) + size
    if kind == "lz4":
        return lz4.frame.compress(data) + size
    if kind == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data) + size
    raise ValueError(kind)


KINDS = ("gzip", "bzip2", "xz", "lzma", "lz4-legacy", "lz4", "zstd")


def make_bzimage(payload: bytes, *, version: int = 0x20F, setup_sects: int = 4,
                 payload_offset: int | None = None) -> bytes:
    """A bzImage: boot sector + setup of ``setup_sects`` sectors, then the protected-mode part,
    whose start is where the payload lies (at ``payload_offset`` into it)."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    pm_head = b"\x90" * 0x40  # stands for the decompressor stub
    off = len(pm_head) if payload_offset is None else payload_offset
    struct.pack_into("<II", setup, 0x248, off, len(payload))
    return bytes(setup) + pm_head + payload


def real_kernel_path() -> Path | None:
    """A real Debian PV-capable vmlinuz, if this machine has one (never committed)."""
    env = os.environ.get("XENTOOL_TEST_VMLINUZ")
    candidates = [Path(env)] if env else []
    guest_dir = os.environ.get("XENTOOL_GUEST_DIR")
    if guest_dir:
        candidates.append(Path(guest_dir) / "vmlinuz")
    cache = Path(os.environ.get("XENTOOL_TESTBED_CACHE")
                 or Path.home() / ".cache" / "xentool-testbed")
    # Only finished entries (dom0-<hash>/, kits/<hash>/); dot-dirs are builds in progress.
    for pattern in ("dom0-*/vmlinuz", "kits/*/vmlinuz"):
        try:
            candidates += sorted(cache.glob(pattern))
        except OSError:
            pass
    boot = Path("/boot")
    if boot.is_dir():
        candidates += sorted(boot.glob("vmlinuz-*"))
    for c in candidates:
        try:
            if c.is_file() and os.access(c, os.R_OK):
                return c
        except OSError:
            continue
    return None


# --- the builders checked against independent decoders ---------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_compress_roundtrips_with_reference_decoder(kind: str) -> None:
    data = os.urandom(1000) + b"A" * 100_000
    blob = compress(kind, data)
    assert struct.unpack("<I", blob[-4:])[0] == len(data)
    body = blob[:-4]
    ref = {
        "gzip": gzip.decompress, "bzip2": bz2.decompress, "xz": lzma.decompress,
        "lzma": lzma.decompress, "lz4": lz4.frame.decompress,
        "zstd": lambda b: zstandard.ZstdDecompressor().decompress(b, max_output_size=1 << 20),
        "lz4-legacy": lambda b: lz4.block.decompress(b[8:], uncompressed_size=1 << 20),
    }[kind]
    assert ref(body) == data


def test_make_elf_header_fields() -> None:
    elf = make_elf()
    assert elf[:4] == b"\x7fELF" and elf[4] == 2
    machine, = struct.unpack_from("<H", elf, 18)
    phnum, = struct.unpack_from("<H", elf, 56)
    assert machine == 62 and phnum == 2
