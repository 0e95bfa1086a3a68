#!/usr/bin/env python3
"""Time ``xentool list`` against ``xl list`` with 1, 10 and 50 tiny guests.

Runs inside a Xen dom0 (``contrib/testbed/run -- python3 bench/list.py``).  For each guest
count it creates the missing tiny guests with ``xl create`` (paused by default, so guest
execution under emulation does not steal the CPU from the toolstacks being measured;
``--running`` unpauses them), then runs both commands alternately ``--reps`` times and
prints the median wall time of each and their ratio (xentool / xl; goal <= 1.0).
The whole start-up cost of each CLI counts: both are run as fresh processes, xentool the
way an operator runs it (``python3 -m xentool``, or ``--xentool CMD``).
Every guest it created is destroyed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sh(*argv: str) -> str:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def timed(argv: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} failed: {r.stderr.strip()}")
    return dt, r.stdout


def create_guests(kernel: Path, prefix: str, start: int, count: int, running: bool,
                  workdir: Path, created: list[str]) -> None:
    for i in range(start, start + count):
        name = f"{prefix}{i}"
        cfg = workdir / f"{name}.cfg"
        cfg.write_text(f'name = "{name}"\ntype = "pv"\nkernel = "{kernel}"\nmemory = 32\n'
                       'vcpus = 1\n')
        sh("xl", "create", *([] if running else ["-p"]), "-q", str(cfg))
        created.append(name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="1,10,50", help="guest counts (default 1,10,50)")
    ap.add_argument("--reps", type=int, default=21, help="runs of each command per count")
    ap.add_argument("--running", action="store_true", help="leave the guests running")
    ap.add_argument("--xentool", default=f"{shlex.quote(sys.executable)} -m xentool",
                    help="command that runs xentool (default: python3 -m xentool)")
    ap.add_argument("--kernel", type=Path,
                    default=Path(os.environ.get("XENTOOL_GUEST_DIR", "/nonexistent"))
                    / "tiny-wait.elf", help="PV kernel of the tiny guests")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    args = ap.parse_args()

    if not args.kernel.exists():
        print(f"bench: no tiny guest kernel at {args.kernel} (set XENTOOL_GUEST_DIR)",
              file=sys.stderr)
        return 1
    counts = sorted({int(c) for c in args.counts.split(",")})
    xentool = [*shlex.split(args.xentool), "list"]
    prefix = f"bl{os.getpid() % 10000}-"
    created: list[str] = []
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in counts:
                create_guests(args.kernel, prefix, len(created), n - len(created),
                              args.running, Path(tmp), created)
                # Same listing from both before timing anything (sanity, and warm caches).
                _, a = timed(["xl", "list"])
                _, b = timed(xentool)
                if len(a.splitlines()) != len(b.splitlines()):
                    raise SystemExit(f"bench: outputs differ in length:\n{a}\n{b}")
                xl_t, xt_t = [], []
                for _ in range(args.reps):  # alternate so drifts hit both equally
                    xl_t.append(timed(["xl", "list"])[0])
                    xt_t.append(timed(xentool)[0])
                xl_m, xt_m = statistics.median(xl_t), statistics.median(xt_t)
                results.append({"guests": n, "reps": args.reps, "xl_median_s": xl_m,
                                "xentool_median_s": xt_m, "ratio": xt_m / xl_m})
                print(f"guests={n:3d}  xl list {xl_m * 1e3:8.1f} ms   xentool list "
                      f"{xt_m * 1e3:8.1f} ms   ratio {xt_m / xl_m:5.2f}  "
                      f"(median of {args.reps})", flush=True)
    finally:
        for name in created:
            subprocess.run(["xl", "destroy", name], capture_output=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
