"""Derive the small committed fixture from a file written by ``xl save``.

Keeps every record of the original (xl header with the stored config, libxl and libxc
headers, static records, p2m frames, TSC, shared info, vCPU records, both ENDs) except
that the pages are cut down to a few normal pages and the first page table of each level
found, in two PAGE_DATA records: a stream still consistent for the reader.

    python3 tests/unit/data/make_migration_fixture.py SAMPLE.save OUT.save
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from xentool.migration import libxl_stream as lx
from xentool.migration import stream as s

NORMAL_PAGES = 4


def derive(src: Path, dst: Path) -> None:
    with src.open("rb") as fp:
        items = list(lx.SaveFileReader(fp, name=str(src)))
    normal: list[tuple[int, int, bytes]] = []
    tables: dict[int, tuple[int, int, bytes]] = {}
    for item in items:
        if isinstance(item, s.PageData):
            for pfn, ptype, data in item.pages():
                level = s.page_table_level(ptype)
                if data is None:
                    continue
                if level == 0 and len(normal) < NORMAL_PAGES:
                    normal.append((pfn, ptype, bytes(data)))
                elif level and level not in tables:
                    tables[level] = (pfn, ptype, bytes(data))
    batches = [normal, [tables[k] for k in sorted(tables)]]
    out: list[bytes] = []
    pages_written = False
    for item in items:
        if isinstance(item, s.PageData):
            if not pages_written:
                for batch in batches:
                    if batch:
                        out.append(s.PageData(tuple(p for p, _, _ in batch),
                                              tuple(t for _, t, _ in batch),
                                              b"".join(d for _, _, d in batch)).encode())
                pages_written = True
            continue
        out.append(item.encode())
    dst.write_bytes(b"".join(out))


if __name__ == "__main__":
    derive(Path(sys.argv[1]), Path(sys.argv[2]))
