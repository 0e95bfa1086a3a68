#!/usr/bin/env python3
"""Save time of one guest: ``xentool save`` vs ``xl save``, ``--reps`` times each, one run.

Run as root in a dom0: ``contrib/testbed/run -- python3 bench/save.py``.  The guest is the
guest kit's busybox guest in ``xentool.mode=stateful`` (a counter on its console, a file in
its tmpfs), ``--memory`` MiB (128) and ``--vcpus`` (2), created once with xl.  Each rep
saves it with one tool (timed: the whole command, suspend, stream and destroy), then
``xl restore``s the file (untimed) so the next rep saves the same guest; the tools alternate
rep by rep.  The guest's counter must go on after every restore, or the run fails: a fast
save that loses the guest proves nothing.  Prints the medians, the file sizes and the
xentool/xl ratio (the issue's goal: <= 1.5); ``--check`` makes a missed goal exit 1.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOOLS = {"xl": ["xl"], "xentool": [sys.executable, "-m", "xentool"]}
COUNTER = re.compile(rb"XENTOOL-COUNTER (\d+)")


def log_path(name: str) -> Path:
    return Path(f"/var/log/xen/console/guest-{name}.log")


def last_counter(name: str) -> int:
    found = COUNTER.findall(log_path(name).read_bytes())
    return int(found[-1]) if found else -1


def wait_counter_above(name: str, n: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if last_counter(name) > n:
            return True
        time.sleep(0.5)
    return False


def run(argv: list[str], timeout: float = 600) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--memory", type=int, default=128)
    p.add_argument("--vcpus", type=int, default=2)
    p.add_argument("--check", action="store_true", help="exit 1 if the ratio is over 1.5")
    ns = p.parse_args()
    kit = Path(os.environ.get("XENTOOL_GUEST_DIR", ""))
    if not (kit / "vmlinuz").exists():
        raise SystemExit("XENTOOL_GUEST_DIR does not point at the guest kit")
    name = f"bench-save-{os.getpid()}"
    times: dict[str, list[float]] = {t: [] for t in TOOLS}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        cfg = Path(tmp) / "g.cfg"
        cfg.write_text(f'name = "{name}"\ntype = "pv"\nkernel = "{kit / "vmlinuz"}"\n'
                       f'ramdisk = "{kit / "initrd.img"}"\n'
                       'extra = "console=hvc0 xentool.mode=stateful"\n'
                       f"memory = {ns.memory}\nvcpus = {ns.vcpus}\n")
        run(["xl", "create", "-q", str(cfg)])
        try:
            if not wait_counter_above(name, 5, 300):
                raise SystemExit("the guest never started counting")
            for rep in range(ns.reps):
                for tool in (("xl", "xentool") if rep % 2 == 0 else ("xentool", "xl")):
                    f = Path(tmp) / f"{tool}.save"
                    t0 = time.perf_counter()
                    run([*TOOLS[tool], "save", name, str(f)])
                    times[tool].append(time.perf_counter() - t0)
                    sizes[tool] = f.stat().st_size
                    n = last_counter(name)
                    run(["xl", "restore", str(f)])
                    if not wait_counter_above(name, n, 180):
                        raise SystemExit(f"after {tool} save + xl restore the counter "
                                         f"stopped at {n}")
                    f.unlink()
                    print(f"rep {rep} {tool:8s} save {times[tool][-1]:6.2f} s "
                          f"({sizes[tool] / 2**20:.1f} MiB)", flush=True)
        finally:
            subprocess.run(["xl", "destroy", name], capture_output=True)
    med = {t: statistics.median(v) for t, v in times.items()}
    ratio = med["xentool"] / med["xl"]
    print(f"save of a {ns.memory} MiB, {ns.vcpus}-vCPU PV guest, {ns.reps} reps each:")
    for t in TOOLS:
        print(f"  {t:8s} median {med[t]:6.2f} s  (min {min(times[t]):.2f}, max "
              f"{max(times[t]):.2f}), file {sizes[t] / 2**20:.1f} MiB")
    print(f"  xentool/xl ratio {ratio:.2f} (goal <= 1.5)")
    return 1 if ns.check and ratio > 1.5 else 0


if __name__ == "__main__":
    sys.exit(main())
