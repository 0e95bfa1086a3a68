#!/usr/bin/env python3
"""Time ``list`` and ``destroy`` of xentool (one-shot and through xentoold) against xl's,
with 1, 28 and 100 tiny guests up.

Runs inside a Xen dom0 (``contrib/testbed/run -- python3 bench/list.py``).  For each guest
count it creates the missing tiny guests with ``xl create`` (paused by default, so guest
execution under emulation does not steal the CPU from the toolstacks being measured;
``--running`` unpauses them), then runs ``list`` of each way alternately ``--reps`` times,
then ``--destroy-reps`` times creates one more guest (``xl create -p``, untimed) and
destroys it with each way in turn.  The ways: ``xl``, ``xentool`` in-process
(``XENTOOL_NO_DAEMON=1``), ``xentool`` through a xentoold started for the run.  Prints the
median wall time of each and the ratios to xl (goals: list <= 1.0 with 28 guests, <= 0.5
with 100; destroy <= 1.0).  The whole start-up cost of each CLI counts: each command is a
fresh process, xentool run the way its installed entry runs (``python3 -IS bin/xentool``,
or ``--xentool CMD``).  Every guest it created is destroyed at the end, also on failure.
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


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} failed: {r.stderr.strip()}")
    return dt, r.stdout


def create_guests(kernel: Path, prefix: str, start: int, count: int, running: bool,
                  workdir: Path, created: list[str]) -> None:
    for i in range(start, start + count):
        name = f"{prefix}{i}"
        cfg = workdir / f"{name}.cfg"
        cfg.write_text(f'name = "{name}"\ntype = "pv"\nkernel = "{kernel}"\nmemory = 16\n'
                       'vcpus = 1\n')
        sh("xl", "create", *([] if running else ["-p"]), "-q", str(cfg))
        created.append(name)


def main() -> int:
    from create_scaling import XENTOOL
    from split import Daemon

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="1,28,100", help="guest counts (default 1,28,100)")
    ap.add_argument("--reps", type=int, default=11, help="runs of list per count and way")
    ap.add_argument("--destroy-reps", type=int, default=5, help="destroys per count and way")
    ap.add_argument("--running", action="store_true", help="leave the guests running")
    ap.add_argument("--xentool", default=shlex.join(XENTOOL),
                    help="command that runs xentool (default: bin/xentool, as installed: "
                         "python3 -IS)")
    ap.add_argument("--kernel", type=Path,
                    default=Path(os.environ.get("XENTOOL_GUEST_DIR", "/nonexistent"))
                    / "tiny-wait.elf", help="PV kernel of the tiny guests")
    ap.add_argument("--json", type=Path, default=Path("bench/results/list.json"),
                    help="where the results go (default bench/results/list.json)")
    args = ap.parse_args()

    if not args.kernel.exists():
        print(f"bench: no tiny guest kernel at {args.kernel} (set XENTOOL_GUEST_DIR)",
              file=sys.stderr)
        return 1
    counts = sorted({int(c) for c in args.counts.split(",")})
    prefix = f"bl{os.getpid() % 10000}-"
    created: list[str] = []
    results = []
    daemon = Daemon()
    xentool = shlex.split(args.xentool)
    ways = {"xl": (["xl"], dict(os.environ)),
            "xentool": (xentool, {**os.environ, "XENTOOL_NO_DAEMON": "1"}),
            "daemon": (xentool, daemon.env())}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in counts:
                create_guests(args.kernel, prefix, len(created), n - len(created),
                              args.running, Path(tmp), created)
                # Same listing from each before timing anything (sanity, and warm caches).
                outs = {w: timed([*argv, "list"], env)[1] for w, (argv, env) in ways.items()}
                if len({len(o.splitlines()) for o in outs.values()}) != 1:
                    raise SystemExit(f"bench: outputs differ in length:\n{outs}")
                lists: dict[str, list[float]] = {w: [] for w in ways}
                for i in range(args.reps):  # alternate so drifts hit each way equally
                    for w in ways if i % 2 == 0 else list(ways)[::-1]:
                        argv, env = ways[w]
                        lists[w].append(timed([*argv, "list"], env)[0])
                destroys: dict[str, list[float]] = {w: [] for w in ways}
                for i in range(args.destroy_reps):
                    for w in ways if i % 2 == 0 else list(ways)[::-1]:
                        extra: list[str] = []
                        create_guests(args.kernel, f"{prefix}x", i, 1, False, Path(tmp),
                                      extra)
                        argv, env = ways[w]
                        destroys[w].append(timed([*argv, "destroy", extra[0]], env)[0])
                med_l = {w: statistics.median(v) for w, v in lists.items()}
                med_d = {w: statistics.median(v) for w, v in destroys.items()}
                results.append({"guests": n, "reps": args.reps, "list_s": lists,
                                "destroy_s": destroys,
                                "list_ratio": {w: med_l[w] / med_l["xl"] for w in ways},
                                "destroy_ratio": {w: med_d[w] / med_d["xl"] for w in ways}})
                print(f"guests={n:3d}  list (ms): " + ", ".join(
                    f"{w} {med_l[w] * 1e3:.0f} ({med_l[w] / med_l['xl']:.2f})" for w in ways)
                    + "   destroy (ms): " + ", ".join(
                    f"{w} {med_d[w] * 1e3:.0f} ({med_d[w] / med_d['xl']:.2f})" for w in ways),
                    flush=True)
    finally:
        daemon.stop()
        for name in created:
            subprocess.run(["xl", "destroy", name], capture_output=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
