#!/usr/bin/env python3
"""How fast xentool reads xl.cfg files: 1000 configs, parse only and parse + validate.

The configs are the corpus of tests/data/xlcfg, each made distinct (own name, memory and
vif MAC seed), read in turn until --count is reached.  Prints configs/s for the syntax
parse alone and for the whole load (parse, DomainConfig, disk/vif specs), wall and CPU
time, and whether the whole load of --count configs met the --budget (default 1 s).
Runs on any host (no Xen).  Exit status 1 with --check if the budget is missed.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xentool.config import loads  # noqa: E402
from xentool.config.grammar import parse  # noqa: E402


def corpus(count: int) -> list[str]:
    files = sorted((ROOT / "tests" / "data" / "xlcfg").glob("*.cfg"))
    texts = [f.read_text() for f in files]
    return [f"{texts[i % len(texts)]}\nname = \"bench-{i}\"\nmemory = {64 + i % 256}\n"
            for i in range(count)]


def timed(fn, texts: list[str]) -> tuple[float, float]:
    gc.collect()
    w0, c0 = time.perf_counter(), time.process_time()
    for i, t in enumerate(texts):
        fn(t, f"bench-{i}.cfg")
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1000, help="configs to read (1000)")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds for --count (1.0)")
    ap.add_argument("--check", action="store_true", help="exit 1 if over budget")
    ns = ap.parse_args()
    texts = corpus(ns.count)
    loads(texts[0], "warm-up.cfg")  # build the grammar once, as a long-lived process would
    rows = [("parse", *timed(parse, texts)), ("load", *timed(loads, texts))]
    print(f"{ns.count} configs ({sum(map(len, texts)) // ns.count} bytes on average)")
    for what, wall, cpu in rows:
        print(f"  {what:<6} {ns.count / wall:8.0f} configs/s  wall {wall:.3f} s  "
              f"cpu {cpu:.3f} s")
    wall = rows[1][1]
    ok = wall < ns.budget
    print(f"load of {ns.count} configs: {wall:.3f} s, budget {ns.budget:.1f} s: "
          f"{'ok' if ok else 'OVER'}")
    return 0 if ok or not ns.check else 1


if __name__ == "__main__":
    sys.exit(main())
