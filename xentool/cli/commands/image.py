"""``xentool image-info KERNEL``: what the PV builder sees in a kernel image."""

from __future__ import annotations

import argparse
import json


def configure_image_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("kernel", help="kernel image: ELF, bzImage or a compressed kernel")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--max-size", type=int, default=None, metavar="BYTES",
                   help="refuse to decompress more than BYTES (default 256 MiB)")


def printable(value: object) -> str:
    """``str(value)`` with every non-printable character escaped (``\\x1b``, ``\\u2028``):
    a kernel's note strings are the kernel author's, and must not reach the terminal as
    escape sequences (retitle the window, clear the screen, hide or fake lines)."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def cmd_image_info(args: argparse.Namespace) -> int:
    from xentool import Host

    info = Host.image_info(args.kernel, args.max_size)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    # Text for a terminal: strings are escaped (JSON escapes them on its own).
    print(f"{'kernel':<16}{printable(args.kernel)}")
    for key in ("container", "compression", "class", "arch", "elf_size", "virt_base",
                "paddr_offset", "virt_kstart", "virt_kend", "virt_entry", "virt_hypercall"):
        print(f"{key:<16}{printable(info[key])}")
    segments = info["segments"]
    assert isinstance(segments, list)  # summary(): one dict per segment
    for seg in segments:
        print(f"{'segment':<16}paddr {seg['paddr']} vaddr {seg['vaddr']} "
              f"filesz {seg['filesz']} memsz {seg['memsz']}")
    notes = info["notes"]
    assert isinstance(notes, dict)  # summary(): note name -> value
    for key, value in notes.items():
        if value in (None, "", [], False):
            continue
        if isinstance(value, list):
            value = "|".join(value)
        print(f"{'note ' + key:<24}{printable(value)}")
    return 0
