"""Mutation fuzz of the kernel image parser: hostile bytes give ImageError, nothing else.

The campaign runs in a child process so its peak memory (ru_maxrss) is its own. Seeds are
valid kernels in every container the parser accepts; hypothesis mutates them (bit flips,
interesting 32/64-bit values written over header fields, truncation, insertion, deletion)
and the parser must either accept the result or raise ImageError, within 2 s each.

``XENTOOL_FUZZ_EXAMPLES=10000 pytest tests/unit/test_image_fuzz.py`` runs the full campaign
(default here: 300, to keep the unit suite fast). Standalone:
``python3 tests/unit/test_image_fuzz.py --examples 10000``.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIMIT_S = 2.0
LIMIT_RSS_MIB = 512

INTERESTING = (0, 1, 2, 0x7F, 0xFF, 0x100, 0x1000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
               0xFFFFFFFF, 1 << 32, 1 << 40, (1 << 63) - 1, 1 << 63, (1 << 64) - 1)


def seeds() -> list[bytes]:
    sys.path.insert(0, str(HERE))
    from test_image_kit import (
        KINDS,
        VIRT_BASE,
        compress,
        linux_notes,
        make_bzimage,
        make_elf,
    )

    elf = make_elf()
    out = [elf, make_elf(notes_in_section=True),
           make_elf(cls=32, machine=3, e_entry=0xC0100010,
                    segments=[(0xC0100000, b"x" * 64, 0x1000)],
                    notes=linux_notes(n3=struct.pack("<I", 0xC0000000),
                                      n4=struct.pack("<I", 0xC0000000),
                                      n1=struct.pack("<I", 0xC0100010), n2=None, n15=None)),
           make_elf(xen_guest="GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE=0xffffffff80000000,"
                              "ELF_PADDR_OFFSET=0xffffffff80000000,HYPERCALL_PAGE=0x1001,"
                              "LOADER=generic,FEATURES=writable_page_tables",
                    segments=[(VIRT_BASE + 0x1000000, b"z" * 32, 0x3000)])]
    out += [compress(k, elf) for k in KINDS]
    out += [make_bzimage(compress(k, elf)) for k in ("gzip", "xz", "zstd", "lz4-legacy")]
    return out


def campaign(examples: int, seed: int = 0) -> dict[str, object]:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from domain_builder.errors import ImageError
    from domain_builder.image import parse_kernel

    corpus = seeds()
    stats = {"examples": 0, "accepted": 0, "image_errors": 0, "max_seconds": 0.0,
             "unexpected": []}

    @st.composite
    def mutated(draw) -> bytes:
        data = bytearray(draw(st.sampled_from(corpus)))
        for _ in range(draw(st.integers(1, 6))):
            n = len(data)
            if n == 0:
                break
            # Bias toward headers: that is where the offsets and sizes are.
            pos = draw(st.one_of(st.integers(0, min(n - 1, 0x300)), st.integers(0, n - 1)))
            op = draw(st.sampled_from(("flip", "byte", "u16", "u32", "u64", "cut", "insert",
                                       "delete")))
            if op == "flip":
                data[pos] ^= 1 << draw(st.integers(0, 7))
            elif op == "byte":
                data[pos] = draw(st.integers(0, 255))
            elif op in ("u16", "u32", "u64"):
                size = {"u16": 2, "u32": 4, "u64": 8}[op]
                value = draw(st.sampled_from((*INTERESTING, n, n + 1, n - pos)))
                value &= (1 << (8 * size)) - 1
                data[pos:pos + size] = value.to_bytes(size, "little")
            elif op == "cut":
                del data[pos:]
            elif op == "insert":
                data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
            else:
                del data[pos:pos + draw(st.integers(1, 256))]
        return bytes(data)

    @settings(max_examples=examples, deadline=None, database=None, derandomize=seed == 0,
              suppress_health_check=list(HealthCheck))
    @given(mutated())
    def run(data: bytes) -> None:
        stats["examples"] += 1  # type: ignore[operator]
        t0 = time.perf_counter()
        try:
            parse_kernel(data)
            stats["accepted"] += 1  # type: ignore[operator]
        except ImageError:
            stats["image_errors"] += 1  # type: ignore[operator]
        except Exception as exc:
            stats["unexpected"].append(f"{type(exc).__name__}: {exc}")  # type: ignore
            raise
        finally:
            dt = time.perf_counter() - t0
            stats["max_seconds"] = max(stats["max_seconds"], dt)  # type: ignore[type-var]

    try:
        run()
    except Exception as exc:
        stats["failure"] = f"{type(exc).__name__}: {exc}"[:2000]
    stats["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return stats


def test_mutated_images_only_raise_image_error() -> None:
    n = int(os.environ.get("XENTOOL_FUZZ_EXAMPLES", "300"))
    r = subprocess.run([sys.executable, __file__, "--examples", str(n)], capture_output=True,
                       text=True, timeout=max(600, n * 0.5), cwd=HERE.parents[1])
    assert r.returncode == 0, r.stderr[-3000:]
    stats = json.loads(r.stdout.strip().splitlines()[-1])
    assert "failure" not in stats, stats
    assert stats["unexpected"] == []
    assert stats["examples"] >= n * 0.9
    # Both outcomes happen, or the mutations are not reaching the parser's checks.
    assert stats["image_errors"] > 0 and stats["accepted"] > 0
    assert stats["max_seconds"] < LIMIT_S, stats
    assert stats["max_rss_mib"] < LIMIT_RSS_MIB, stats


if __name__ == "__main__":
    import argparse

    sys.path.insert(0, str(HERE.parents[1]))
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0, help="0: derandomized (reproducible)")
    ns = ap.parse_args()
    print(json.dumps(campaign(ns.examples, ns.seed)))
