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
    from domain_builder.image import DEFAULT_MAX_SIZE, load_kernel

    img = load_kernel(args.kernel, max_size=args.max_size or DEFAULT_MAX_SIZE)
    info = img.summary()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{'kernel':<16}{args.kernel}")
    for key in ("container", "compression", "class", "arch", "elf_size", "virt_base",
                "paddr_offset", "virt_kstart", "virt_kend", "virt_entry", "virt_hypercall"):
        print(f"{key:<16}{info[key]}")
    for seg in info["segments"]:  # type: ignore[union-attr]
        print(f"{'segment':<16}paddr {seg['paddr']} vaddr {seg['vaddr']} "
              f"filesz {seg['filesz']} memsz {seg['memsz']}")
    for key, value in info["notes"].items():  # type: ignore[union-attr]
        if value in (None, "", [], False):
            continue
        if isinstance(value, list):
            value = "|".join(value)
        print(f"{'note ' + key:<24}{value}")
    return 0
