"""``xentool image-info KERNEL``: what the PV builder sees in a kernel image."""

from __future__ import annotations

import argparse
import json


def configure_image_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("kernel", help="kernel image: ELF, bzImage or a compressed kernel")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--max-size", type=int, default=None, metavar="BYTES",
                   help="refuse to decompress more than BYTES (default 256 MiB)")


def cmd_image_info(args: argparse.Namespace) -> int:
    from xentool import Host

    info = Host.image_info(args.kernel, args.max_size)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{'kernel':<16}{args.kernel}")
    for key in ("container", "compression", "class", "arch", "elf_size", "virt_base",
                "paddr_offset", "virt_kstart", "virt_kend", "virt_entry", "virt_hypercall"):
        print(f"{key:<16}{info[key]}")
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
        print(f"{'note ' + key:<24}{value}")
    return 0
