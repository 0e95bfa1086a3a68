#!/usr/bin/env python3
"""Create latency of one PV guest: xentool vs xl, ``--reps`` times each, in one run.

Run as root in a dom0: ``contrib/testbed/run -- python3 bench/create.py``.  The guest is the
guest kit's busybox guest (Debian kernel + initrd, ``--guest busybox``, the default) or its
tiny GRUB kernel (``--guest tiny``).  Each rep runs ``create`` (guest started, not paused),
times the command, then destroys the guest with xl; the tools alternate rep by rep so both
see the same host.  With ``--boot`` the time until the guest's console marker is measured
too.  Prints medians and the xentool/xl ratio of create (goal <= 0.8); ``--check`` makes a
missed goal exit 1.
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


def cfg_text(guest: str, name: str, kit: Path, memory: int, vcpus: int) -> str:
    if guest == "tiny":
        return (f'name = "{name}"\ntype = "pv"\nkernel = "{kit / "tiny-wait.elf"}"\n'
                f"memory = {memory}\nvcpus = {vcpus}\n")
    return (f'name = "{name}"\ntype = "pv"\nkernel = "{kit / "vmlinuz"}"\n'
            f'ramdisk = "{kit / "initrd.img"}"\nextra = "console=hvc0 xentool.mode=wait"\n'
            f"memory = {memory}\nvcpus = {vcpus}\n")


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
    ap.add_argument("--boot", action="store_true", help="also time until the console marker")
    ap.add_argument("--timeout", type=float, default=180.0, help="per boot, seconds")
    ap.add_argument("--check", action="store_true", help="exit 1 if the ratio is above 0.8")
    ns = ap.parse_args()
    kit = Path(os.environ.get("XENTOOL_GUEST_DIR", ""))
    if not (kit / "vmlinuz").exists():
        print("XENTOOL_GUEST_DIR does not point at the guest kit", file=sys.stderr)
        return 2
    marker = MARKERS[ns.guest] if ns.boot else None
    times: dict[str, list[float]] = {t: [] for t in TOOLS}
    boots: dict[str, list[float]] = {t: [] for t in TOOLS}
    with tempfile.TemporaryDirectory() as d:
        # Untimed first creates: page cache, and xentool's cache of decompressed kernels.
        for tool in TOOLS:
            name = f"bench-create-{tool}"
            cfg = Path(d) / f"{name}.cfg"
            cfg.write_text(cfg_text(ns.guest, name, kit, ns.memory, ns.vcpus))
            one(tool, cfg, name, None, ns.timeout)
        for rep in range(ns.reps):
            for tool in (("xl", "xentool") if rep % 2 else ("xentool", "xl")):
                name = f"bench-create-{tool}"
                cfg = Path(d) / f"{name}.cfg"
                cfg.write_text(cfg_text(ns.guest, name, kit, ns.memory, ns.vcpus))
                dt, boot = one(tool, cfg, name, marker, ns.timeout)
                times[tool].append(dt)
                if boot is not None:
                    boots[tool].append(boot)
                print(f"rep {rep + 1:2d} {tool:8s} create {dt * 1000:8.1f} ms"
                      + (f"  boot {boot:6.2f} s" if boot is not None else ""), flush=True)
    med = {t: statistics.median(v) for t, v in times.items()}
    ratio = med["xentool"] / med["xl"]
    print(f"\n{ns.guest} guest, {ns.memory} MiB, {ns.vcpus} vCPU(s), {ns.reps} reps per tool")
    for t in TOOLS:
        line = f"{t:8s} median create {med[t] * 1000:8.1f} ms"
        if boots[t]:
            line += f"   median create->marker {statistics.median(boots[t]):6.2f} s"
        print(line)
    print(f"ratio xentool/xl (create, median): {ratio:.2f}  (goal <= 0.80: "
          f"{'met' if ratio <= 0.8 else 'missed'})")
    return 1 if ns.check and ratio > 0.8 else 0


if __name__ == "__main__":
    sys.exit(main())
