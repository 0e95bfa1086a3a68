"""Kernel image parsing: crafted ELF/bzImage/compressed kernels, hostile headers, a real vmlinuz."""

from __future__ import annotations

import gzip
import json
import mmap
import struct
import subprocess
import sys

import pytest
from test_image_kit import (
    ENTRY,
    HYPERCALL,
    KINDS,
    KSTART_PADDR,
    VIRT_BASE,
    compress,
    linux_notes,
    make_bzimage,
    make_elf,
    q,
    real_kernel_path,
    s,
)

from domain_builder.errors import ImageError
from domain_builder.image import (
    Compression,
    decompress,
    load_kernel,
    parse_kernel,
)


def test_linux_like_elf64_resolves_addresses() -> None:
    img = parse_kernel(make_elf())
    assert img.elf_class == 64 and img.arch == "x86_64"
    assert img.container == "elf" and img.compression is Compression.NONE
    assert img.virt_base == VIRT_BASE and img.paddr_offset == 0
    assert img.virt_kstart == VIRT_BASE + KSTART_PADDR
    assert img.virt_kend == VIRT_BASE + KSTART_PADDR + 0x3000
    assert img.virt_entry == ENTRY
    assert img.virt_hypercall == HYPERCALL
    n = img.notes
    assert n.source == "notes"
    assert n.xen_version == "xen-3.0" and n.guest_os == "linux" and n.loader == "generic"
    assert n.features == ("!writable_page_tables", "pae_pgdir_above_4gb")
    assert n.features_required == {"writable_page_tables"}
    assert n.features_supported == {"writable_page_tables", "pae_pgdir_above_4gb"}
    assert n.pae_mode == "yes" and n.init_p2m == 0x8000000000
    assert n.mod_start_pfn is True and n.suspend_cancel == 1


def test_segment_data_is_the_file_bytes() -> None:
    text = b"KERNEL" * 100
    img = parse_kernel(make_elf(segments=[(KSTART_PADDR, text, 0x2000)]))
    (seg,) = img.segments
    assert bytes(img.segment_data(seg)) == text
    assert seg.memsz == 0x2000 and seg.filesz == len(text)


def test_elf32_is_parsed() -> None:
    notes = linux_notes(n3=struct.pack("<I", 0xC0000000), n4=struct.pack("<I", 0xC0000000),
                        n1=struct.pack("<I", 0xC0100010), n2=None, n15=None)
    img = parse_kernel(make_elf(cls=32, machine=3, notes=notes,
                                segments=[(0xC0100000, b"x" * 64, 0x1000)],
                                e_entry=0xC0100010))
    assert img.elf_class == 32 and img.arch == "x86_32"
    assert img.virt_kstart == 0xC0100000 and img.virt_entry == 0xC0100010


def test_entry_defaults_to_e_entry_without_note() -> None:
    img = parse_kernel(make_elf(notes=linux_notes(n1=None), e_entry=ENTRY + 0x10))
    assert img.virt_entry == ENTRY + 0x10


def test_notes_in_sht_note_section_only() -> None:
    img = parse_kernel(make_elf(notes_in_section=True))
    assert img.notes.source == "notes" and img.virt_entry == ENTRY


def test_legacy_xen_guest_section() -> None:
    guest = ("GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE=0xffffffff80000000,"
             "ELF_PADDR_OFFSET=0xffffffff80000000,HYPERCALL_PAGE=0x1001,LOADER=generic,"
             "FEATURES=writable_page_tables|!pae_pgdir_above_4gb,PAE=yes[extended-cr3]")
    # Legacy images carry virtual addresses in p_paddr.
    img = parse_kernel(make_elf(xen_guest=guest,
                                segments=[(VIRT_BASE + KSTART_PADDR, b"z" * 32, 0x3000)]))
    assert img.notes.source == "__xen_guest"
    assert img.paddr_offset == VIRT_BASE
    assert img.virt_kstart == VIRT_BASE + KSTART_PADDR
    # HYPERCALL_PAGE is a page number relative to VIRT_BASE in the legacy format.
    assert img.virt_hypercall == VIRT_BASE + 0x1001 * 4096
    assert img.notes.features_required == {"pae_pgdir_above_4gb"}
    assert img.notes.pae_mode == "yes[extended-cr3]"


@pytest.mark.parametrize("kind", KINDS)
def test_compressed_elf(kind: str) -> None:
    elf = make_elf()
    img = parse_kernel(compress(kind, elf))
    assert img.compression.value == kind
    assert img.elf == elf and img.virt_entry == ENTRY


@pytest.mark.parametrize("kind", KINDS)
def test_bzimage_payloads(kind: str) -> None:
    elf = make_elf()
    img = parse_kernel(make_bzimage(compress(kind, elf)))
    assert img.container == "bzImage" and img.compression.value == kind
    assert img.elf == elf


def test_gzipped_bzimage_one_level_more() -> None:
    elf = make_elf()
    img = parse_kernel(gzip.compress(make_bzimage(compress("xz", elf))))
    assert img.container == "bzImage" and img.elf == elf


def test_decompress_cap_is_enforced() -> None:
    bomb = compress("gzip", b"\0" * (4 << 20))
    with pytest.raises(ImageError, match=r"decompresses to more than 1048576 bytes"):
        decompress(bomb, Compression.GZIP, max_size=1 << 20)
    for kind in KINDS:
        blob = compress(kind, b"\0" * (3 << 20))
        with pytest.raises(ImageError, match="more than"):
            decompress(blob, Compression(kind), max_size=1 << 20)
        assert len(decompress(blob, Compression(kind), max_size=3 << 20)) == 3 << 20


def _peak(fn) -> int:
    """Peak bytes Python allocated while ``fn`` ran (buffers and chunks are Python objects)."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
    except ImageError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


# A bomb may cost the limit (the output buffer, plus its growth slack) and a fixed amount
# on top: one step of output, a decoder's dictionary or block (8 MiB for xz -6 and lz4).
CAP = 64 << 20
SLACK = CAP // 8 + (20 << 20)


@pytest.mark.parametrize("kind", KINDS)
def test_a_bomb_never_costs_much_more_than_the_limit(kind: str) -> None:
    bomb = compress(kind, b"\0" * (2 * CAP))
    peak = _peak(lambda: decompress(bomb, Compression(kind), max_size=CAP))
    assert peak <= CAP + SLACK, f"{kind}: peak {peak >> 20} MiB for a {CAP >> 20} MiB limit"
    # and a genuine image of just the limit is not copied once more at the end
    full = compress(kind, b"\0" * CAP)
    peak = _peak(lambda: decompress(full, Compression(kind), max_size=CAP))
    assert peak <= CAP + SLACK, f"{kind}: peak {peak >> 20} MiB for {CAP >> 20} MiB out"


def test_a_nested_bomb_keeps_both_levels_within_one_limit() -> None:
    inner = compress("xz", make_elf() + b"\0" * (2 * CAP))
    outer = gzip.compress(make_bzimage(inner) + b"\0" * (CAP // 2))
    with pytest.raises(ImageError, match="more than"):
        parse_kernel(outer, max_size=CAP)
    peak = _peak(lambda: parse_kernel(outer, max_size=CAP))
    assert peak <= CAP + SLACK + len(outer), f"peak {peak >> 20} MiB"


@pytest.mark.parametrize("kind", KINDS)
def test_truncated_stream(kind: str) -> None:
    blob = compress(kind, bytes(range(256)) * 4096)
    with pytest.raises(ImageError, match=kind.split("-")[0]):
        decompress(blob[: len(blob) // 2], Compression(kind))


# --- hostile headers: each gives an ImageError naming the field -------------------------------

def _patch(data: bytes, off: int, fmt: str, *vals: int) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, off, *vals)
    return bytes(b)


PH0 = 64  # first program header of make_elf's ELF64


@pytest.mark.parametrize("mutate, message", [
    (lambda e: e[:40], "truncated"),
    (lambda e: e[:4] + b"\x03" + e[5:], "EI_CLASS"),
    (lambda e: e[:5] + b"\x02" + e[6:], "little-endian"),
    (lambda e: _patch(e, 18, "<H", 40), "e_machine = 40"),
    (lambda e: _patch(e, 32, "<Q", 1 << 40), "e_phoff"),
    (lambda e: _patch(e, 54, "<H", 20), "e_phentsize = 20"),
    (lambda e: _patch(e, 56, "<H", 0), "no program headers"),
    (lambda e: _patch(e, PH0 + 8, "<Q", 1 << 50), "PT_LOAD segment 0 at offset"),
    (lambda e: _patch(e, PH0 + 40, "<Q", 16), "p_filesz=8192 exceeds p_memsz=16"),
    (lambda e: _patch(e, PH0 + 40, "<Q", 1 << 40), "p_memsz=1099511627776 is absurd"),
    (lambda e: _patch(e, PH0 + 24, "<Q", (1 << 64) - 0x1000), "wraps around"),
    (lambda e: _patch(e, PH0 + 56 + 32, "<Q", 1 << 30), "PT_NOTE segment"),
])
def test_hostile_headers(mutate, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        parse_kernel(mutate(make_elf()))


def test_overlapping_segments() -> None:
    elf = make_elf(segments=[(KSTART_PADDR, b"a" * 16, 0x2000),
                             (KSTART_PADDR + 0x1000, b"b" * 16, 0x1000)])
    with pytest.raises(ImageError, match=r"PT_LOAD segments overlap: \[0x1000000, 0x1002000\)"):
        parse_kernel(elf)


def test_note_running_past_segment() -> None:
    notes = linux_notes()
    elf = bytearray(make_elf(notes=notes))
    # The first note header sits at the PT_NOTE offset; inflate its descsz.
    note_off = struct.unpack_from("<Q", elf, PH0 + 56 + 8)[0]
    struct.pack_into("<I", elf, note_off + 4, 0x10000)
    with pytest.raises(ImageError, match=r"note at offset 0x[0-9a-f]+ .*descsz=65536"):
        parse_kernel(bytes(elf))


@pytest.mark.parametrize("over, message", [
    ({"n5": s("xen-4.0")}, "Xen version 'xen-4.0'"),
    ({"n8": s("other"), "n6": s("bsd")}, "only the 'generic' loader"),
    ({"n10": s("!time_travel")}, "requires feature 'time_travel'"),
    ({"n1": q(0x1234)}, r"entry point 0x1234 is outside the kernel"),
    ({"n2": q(VIRT_BASE)}, "HYPERCALL_PAGE"),
    ({"n3": None}, "PADDR_OFFSET is set but VIRT_BASE is not"),
    ({"n1": b"\1\2\3"}, "3-byte value"),
    ({"n5": b"\xff\xfe\0"}, "not an ASCII string"),
])
def test_bad_notes(over: dict, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        parse_kernel(make_elf(notes=linux_notes(**over)))


def test_not_xen_kernel() -> None:
    with pytest.raises(ImageError, match="no Xen ELF notes and no __xen_guest"):
        parse_kernel(make_elf(notes=[]))


def test_unknown_optional_feature_is_kept() -> None:
    img = parse_kernel(make_elf(notes=linux_notes(n10=s("shiny|writable_page_tables"))))
    assert img.notes.features == ("shiny", "writable_page_tables")
    assert img.notes.features_supported == {"writable_page_tables"}


def test_bzimage_errors() -> None:
    payload = compress("gzip", make_elf())
    with pytest.raises(ImageError, match=r"older than 2\.08"):
        parse_kernel(make_bzimage(payload, version=0x207))
    with pytest.raises(ImageError, match="outside the"):
        parse_kernel(make_bzimage(payload, payload_offset=1 << 20))
    with pytest.raises(ImageError, match="not a known compression"):
        parse_kernel(make_bzimage(b"\x01\x02\x03\x04" * 40))
    with pytest.raises(ImageError, match="not an ELF file"):
        parse_kernel(make_bzimage(compress("gzip", b"MZ" + b"\0" * 100)))


def test_garbage_and_empty() -> None:
    with pytest.raises(ImageError, match="empty"):
        parse_kernel(b"")
    with pytest.raises(ImageError, match="neither ELF, bzImage nor a known compression"):
        parse_kernel(b"hello world, no kernel here")


def test_input_size_cap(tmp_path) -> None:
    p = tmp_path / "big"
    p.write_bytes(b"\0" * 5000)
    with pytest.raises(ImageError, match="larger than the 4096-byte limit"):
        load_kernel(p, max_size=4096)
    with pytest.raises(ImageError, match="No such file"):
        load_kernel(tmp_path / "missing")


# --- the CLI verb ------------------------------------------------------------------------------

def _xentool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xentool", *argv], capture_output=True,
                          text=True, timeout=60)


def test_image_info_json_and_text(tmp_path) -> None:
    p = tmp_path / "vmlinuz"
    p.write_bytes(make_bzimage(compress("zstd", make_elf())))
    r = _xentool("image-info", str(p), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["container"] == "bzImage" and info["compression"] == "zstd"
    assert info["virt_entry"] == hex(ENTRY)
    assert info["notes"]["INIT_P2M"] == "0x8000000000"
    r = _xentool("image-info", str(p))
    assert r.returncode == 0, r.stderr
    assert "zstd" in r.stdout and hex(ENTRY) in r.stdout


def test_image_info_bad_file_one_line(tmp_path) -> None:
    p = tmp_path / "bad"
    p.write_bytes(make_elf()[:100])
    r = _xentool("image-info", str(p))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"xentool: kernel {p}: ")
    assert "Traceback" not in r.stderr


def test_image_info_escapes_control_characters_in_notes(tmp_path, capsys) -> None:
    from xentool.cli import main

    hostile = {  # note type -> an ASCII string a hostile kernel can carry
        6: "linux\x1b]0;owned\x07\x1b[2J",  # GUEST_OS: set the title, clear the screen
        8: "generic\r\x1b[31mOK",  # LOADER
        10: "!writable_page_tables|x\x1b[8m|pae_pgdir_above_4gb",  # FEATURES (unknown: kept)
    }
    p = tmp_path / "vmlinuz"
    p.write_bytes(make_bzimage(compress("gzip", make_elf(
        notes=linux_notes(**{f"n{n}": s(v) for n, v in hostile.items()})))))
    assert main(["image-info", str(p)]) == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07\r")
    assert "linux\\x1b]0;owned\\x07\\x1b[2J" in out
    assert "generic\\x0d\\x1b[31mOK" in out
    assert "x\\x1b[8m" in out
    assert "compression     gzip\n" in out  # the rest is printed as before
    # JSON escapes them itself, and keeps the exact strings.
    assert main(["image-info", str(p), "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert notes["GUEST_OS"] == hostile[6] and notes["LOADER"] == hostile[8]
    assert "x\x1b[8m" in notes["FEATURES"]


def test_printable_escapes_what_a_terminal_would_interpret() -> None:
    from xentool.cli.commands.image import printable

    assert printable("linux") == "linux" and printable(0x1000) == "4096"
    assert printable("a\x1b[2Jb\x7f\x9b") == "a\\x1b[2Jb\\x7f\\x9b"
    # Non-ASCII that prints is kept; line separators and lone surrogates (undecodable
    # bytes of a path) are escaped.
    assert printable("café\u2028\udcff") == "café\\u2028\\udcff"


# --- a real Debian kernel, when this machine has one -------------------------------------------

def test_real_debian_kernel() -> None:
    path = real_kernel_path()
    if path is None:
        pytest.skip("no real vmlinuz: set XENTOOL_TEST_VMLINUZ, or provide /boot/vmlinuz-* or "
                    "the testbed cache ~/.cache/xentool-testbed/")
    img = load_kernel(path)
    assert img.container == "bzImage" and img.arch == "x86_64"
    n = img.notes
    assert n.guest_os == "linux" and n.xen_version == "xen-3.0"
    assert img.virt_kstart <= img.virt_entry < img.virt_kend
    # Recent stable kernels fill their hypercall page themselves and dropped the note.
    if n.hypercall_page is not None:
        assert img.virt_kstart <= n.hypercall_page < img.virt_kend
    assert n.init_p2m is not None and n.mod_start_pfn
    assert "writable_page_tables" in n.features_supported


def test_kernel_cache_roundtrip_and_invalidation(tmp_path) -> None:
    elf = make_elf()
    k = tmp_path / "vmlinuz"
    k.write_bytes(make_bzimage(compress("xz", elf)))
    cache = tmp_path / "cache"
    first = load_kernel(k, cache_dir=cache)
    (entry,) = cache.iterdir()
    second = load_kernel(k, cache_dir=cache)
    assert isinstance(second.elf, mmap.mmap)  # served from the cache, mapped
    assert second.elf[:] == first.elf == elf
    assert bytes(second.segment_data(second.segments[0])) == \
        bytes(first.segment_data(first.segments[0]))
    assert (second.container, second.compression) == ("bzImage", Compression.XZ)
    # A damaged entry is not trusted: it is re-parsed, found bad, and rebuilt...
    entry.write_bytes(entry.read_bytes()[:4096 + 200])
    assert load_kernel(k, cache_dir=cache).elf[:] == elf
    assert entry.read_bytes().endswith(elf)
    # ...and so is one with a bad header.
    entry.write_bytes(entry.read_bytes()[:200])
    assert load_kernel(k, cache_dir=cache).elf[:] == elf
    assert entry.read_bytes().endswith(elf)
    # A changed kernel file is a different entry.
    import os
    k.write_bytes(compress("gzip", elf))
    os.utime(k, ns=(1, 1))
    assert load_kernel(k, cache_dir=cache).compression is Compression.GZIP
    assert len(list(cache.iterdir())) == 2
