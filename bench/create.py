#!/usr/bin/env python3
"""Create latency of one guest: xentool vs xl, ``--reps`` times each, in one run.

Run as root in a dom0: ``contrib/testbed/run -- python3 bench/create.py``.  The guest is the
guest kit's busybox guest (Debian kernel + initrd, ``--guest busybox``, the default) or its
tiny GRUB kernel (``--guest tiny``), built as ``--type pv`` (the default), ``pvh`` or both
(``--type pv,pvh``: PV and PVH side by side in the same run; the tiny kernel is PV only).
A PVH guest carries ``cpuid = "host,rdtscp=0"``, which the testbed's emulated SVM needs.
Each rep runs ``create`` (guest started, not paused), times the command, then destroys the
guest with xl; tools and types alternate rep by rep so all see the same host.  With
``--boot`` the time until the guest's console marker is measured too.  Prints medians and
the xentool/xl ratio of create per type (goal <= 0.8); ``--check`` makes a missed goal
exit 1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOOLS = {"xl": ["xl"], "xentool": [sys.executable, "-m", "xentool"]}
MARKERS = {"busybox": "XENTOOL-GUEST-UP", "tiny": "XENTOOL-TINY-UP"}


def cfg_text(guest: str, name: str, kit: Path, memory: int, vcpus: int,
             dtype: str = "pv") -> str:
    if guest == "tiny":
        return (f'name = "{name}"\ntype = "pv"\nkernel = "{kit / "tiny-wait.elf"}"\n'
                f"memory = {memory}\nvcpus = {vcpus}\n")
    return (f'name = "{name}"\ntype = "{dtype}"\nkernel = "{kit / "vmlinuz"}"\n'
            f'ramdisk = "{kit / "initrd.img"}"\nextra = "console=hvc0 xentool.mode=wait"\n'
            f"memory = {memory}\nvcpus = {vcpus}\n"
            + ('cpuid = "host,rdtscp=0"\n' if dtype == "pvh" else ""))


def wait_marker(name: str, marker: str, t0: float, timeout: float) -> float | None:
    log = Path(f"/var/log/xen/console/guest-{name}.log")
    while time.perf_counter() - t0 < timeout:
        try:
            if marker in log.read_text(errors="replace"):
                return time.perf_counter() - t0
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    return None


def one(tool: str, cfg: Path, name: str, marker: str | None,
        timeout: float) -> tuple[float, float | None]:
    t0 = time.perf_counter()
    r = subprocess.run([*TOOLS[tool], "create", "-q", str(cfg)], capture_output=True,
                       text=True, timeout=300)
    dt = time.perf_counter() - t0
    try:
        if r.returncode != 0:
            raise SystemExit(f"{tool} create failed ({r.returncode}): {r.stderr.strip()}")
        boot = wait_marker(name, marker, t0, timeout) if marker else None
    finally:
        subprocess.run(["xl", "destroy", name], capture_output=True, timeout=120)
        # A fresh log per rep so the marker search sees only this boot.
        Path(f"/var/log/xen/console/guest-{name}.log").unlink(missing_ok=True)
    return dt, boot


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20, help="creates per tool (20)")
    ap.add_argument("--guest", choices=sorted(MARKERS), default="busybox")
    ap.add_argument("--memory", type=int, default=128, help="MiB (128)")
    ap.add_argument("--vcpus", type=int, default=1)
    ap.add_argument("--type", default="pv",
                    help="guest types, comma-separated: pv, pvh or pv,pvh (pv)")
    ap.add_argument("--boot", action="store_true", help="also time until the console marker")
    ap.add_argument("--timeout", type=float, default=180.0, help="per boot, seconds")
    ap.add_argument("--check", action="store_true", help="exit 1 if a ratio is above 0.8")
    ns = ap.parse_args()
    types = [t for t in ns.type.split(",") if t]
    if not types or set(types) - {"pv", "pvh"} or (ns.guest == "tiny" and "pvh" in types):
        ap.error("--type takes pv and/or pvh (the tiny kernel is PV only)")
    kit = Path(os.environ.get("XENTOOL_GUEST_DIR", ""))
    if not (kit / "vmlinuz").exists():
        print("XENTOOL_GUEST_DIR does not point at the guest kit", file=sys.stderr)
        return 2
    marker = MARKERS[ns.guest] if ns.boot else None
    runs = [(t, ty) for ty in types for t in TOOLS]
    times: dict[tuple[str, str], list[float]] = {r: [] for r in runs}
    boots: dict[tuple[str, str], list[float]] = {r: [] for r in runs}
    with tempfile.TemporaryDirectory() as d:
        def prepare(tool: str, dtype: str) -> tuple[Path, str]:
            name = f"bench-create-{dtype}-{tool}"
            cfg = Path(d) / f"{name}.cfg"
            cfg.write_text(cfg_text(ns.guest, name, kit, ns.memory, ns.vcpus, dtype))
            return cfg, name

        # Untimed first creates: page cache, and xentool's cache of decompressed kernels.
        for tool, dtype in runs:
            one(tool, *prepare(tool, dtype), None, ns.timeout)
        for rep in range(ns.reps):
            for tool, dtype in (runs if rep % 2 else runs[::-1]):
                cfg, name = prepare(tool, dtype)
                dt, boot = one(tool, cfg, name, marker, ns.timeout)
                times[tool, dtype].append(dt)
                if boot is not None:
                    boots[tool, dtype].append(boot)
                print(f"rep {rep + 1:2d} {dtype:3s} {tool:8s} create {dt * 1000:8.1f} ms"
                      + (f"  boot {boot:6.2f} s" if boot is not None else ""), flush=True)
    med = {r: statistics.median(v) for r, v in times.items()}
    print(f"\n{ns.guest} guest, {ns.memory} MiB, {ns.vcpus} vCPU(s), {ns.reps} reps per tool "
          "and type")
    missed = False
    for dtype in types:
        for t in TOOLS:
            line = f"{dtype:3s} {t:8s} median create {med[t, dtype] * 1000:8.1f} ms"
            if boots[t, dtype]:
                line += f"   median create->marker {statistics.median(boots[t, dtype]):6.2f} s"
            print(line)
    for dtype in types:
        ratio = med["xentool", dtype] / med["xl", dtype]
        missed |= ratio > 0.8
        print(f"{dtype:3s} ratio xentool/xl (create, median): {ratio:.2f}  (goal <= 0.80: "
              f"{'met' if ratio <= 0.8 else 'missed'})")
    return 1 if ns.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
