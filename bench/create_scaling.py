#!/usr/bin/env python3
"""xentool vs xl: create latency, creation time of the Nth guest, and `list` with N guests.

Run as root in a dom0 (e.g. ``contrib/testbed/run -- python3 bench/create_scaling.py``).
Guests are the guest kit's tiny PV kernel (``$XENTOOL_GUEST_DIR/tiny-wait.elf``, or
``--kernel``).  The tools (``--tools``: ``xl``, ``xentool`` in-process, ``xentoold``:
xentool through a daemon started for the run) run in the same session, alternating, so
they see the same host.

1. create latency: ``create`` (running, not paused) + ``destroy``, ``--reps`` times per tool;
   median wall time of the create command; ratio to xl (goal <= 0.8).
2. scaling: create ``--count`` guests paused, one after the other, timing each; then
   ``list`` ``--list-reps`` times with all of them up; destroy all; once per tool.
   Ratios: to xl at every N, and last/1st per tool (goal <= 1.1 at N = 200; also printed
   on the median of the first and last 5 to show noise).
Results go to ``--out`` (JSON) for ``bench/plot.py``.  If ``xentool create`` does not work
yet, xl is measured alone and the report says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: xentool as its installed entry starts it: isolated, without site (bin/xentool).
XENTOOL = [sys.executable, "-IS", str(Path(__file__).resolve().parents[1] / "bin" / "xentool")]
#: The ways to run a command: xl, xentool in-process, xentool through a xentoold that
#: main() starts for the run when it is asked for.
TOOLS = {"xl": ["xl"], "xentool": XENTOOL, "xentoold": XENTOOL}
ENVS: dict[str, dict[str, str]] = {"xentool": {**os.environ, "XENTOOL_NO_DAEMON": "1"}}


def run(argv: list[str], check: bool = True, tool: str | None = None
        ) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                       env=ENVS.get(tool or ""))
    dt = time.perf_counter() - t0
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.strip()}")
    return dt, r


def destroy(name: str) -> None:
    subprocess.run(["xl", "destroy", name], capture_output=True, timeout=120)


def machine() -> dict[str, object]:
    info: dict[str, str] = {}
    r = subprocess.run(["xl", "info"], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        k, _, v = line.partition(":")
        info[k.strip()] = v.strip()
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f
                        if ln.startswith("model name")), "")
    except OSError:
        pass
    virt = ""
    try:  # e.g. "Standard PC (i440FX + PIIX, 1996)" under QEMU
        virt = Path("/sys/class/dmi/id/product_name").read_text().strip()
    except OSError:
        pass
    return {"host": platform.node(), "kernel": platform.release(), "cpu": cpu,
            "virt": virt or "unknown", "xen": f"{info.get('xen_major')}.{info.get('xen_minor')}"
            f"{info.get('xen_extra', '')}", "nr_cpus": info.get("nr_cpus"),
            "total_memory_mb": info.get("total_memory"), "free_memory_mb":
            info.get("free_memory"), "scheduler": info.get("xen_scheduler")}


def write_cfg(d: Path, name: str, kernel: str, memory: int) -> Path:
    p = d / f"{name}.cfg"
    p.write_text(f'name = "{name}"\ntype = "pv"\nkernel = "{kernel}"\nmemory = {memory}\n')
    return p


def works(tool: str, d: Path, kernel: str, memory: int) -> str | None:
    name = f"bench-probe-{tool}"
    cfg = write_cfg(d, name, kernel, memory)
    try:
        _, r = run([*TOOLS[tool], "create", "-p", str(cfg)], check=False, tool=tool)
        if r.returncode != 0:
            return (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        return None
    finally:
        destroy(name)


def create_latency(tools: list[str], d: Path, kernel: str, memory: int, reps: int
                   ) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {t: [] for t in tools}
    for i in range(reps):
        for t in tools if i % 2 == 0 else tools[::-1]:
            name = f"bench-lat-{t}-{i}"
            cfg = write_cfg(d, name, kernel, memory)
            try:
                dt, _ = run([*TOOLS[t], "create", str(cfg)], tool=t)
                out[t].append(dt)
            finally:
                destroy(name)
    return out


def scaling(tool: str, d: Path, kernel: str, memory: int, count: int, list_reps: int
            ) -> tuple[list[float], list[float]]:
    names: list[str] = []
    times: list[float] = []
    lists: list[float] = []
    try:
        for i in range(count):
            name = f"bench-n-{tool}-{i + 1:03d}"
            cfg = write_cfg(d, name, kernel, memory)
            names.append(name)
            dt, _ = run([*TOOLS[tool], "create", "-p", str(cfg)], tool=tool)
            times.append(dt)
            if (i + 1) % 10 == 0:
                print(f"  {tool}: {i + 1} guests, last create {dt * 1000:.0f} ms", flush=True)
        for _ in range(list_reps):
            dt, _ = run([*TOOLS[tool], "list"], tool=tool)
            lists.append(dt)
    finally:
        for n in names:
            destroy(n)
    return times, lists


def tiny_guest_parser(doc: str | None, out: str) -> argparse.ArgumentParser:
    """The options every tiny-guest bench shares: --kernel, --memory, --out, --workdir."""
    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    kit = os.environ.get("XENTOOL_GUEST_DIR", "")
    ap.add_argument("--kernel", default=os.path.join(kit, "tiny-wait.elf") if kit else None)
    ap.add_argument("--memory", type=int, default=16, help="MiB per guest (default 16)")
    ap.add_argument("--out", default=out)
    ap.add_argument("--workdir", default="/tmp/xentool-bench")
    return ap


def workdir(a: argparse.Namespace) -> Path | None:
    """The configs' directory, made; None (after saying why) without a tiny kernel."""
    if not a.kernel or not os.path.exists(a.kernel):
        print("bench: no tiny kernel: set XENTOOL_GUEST_DIR or --kernel", file=sys.stderr)
        return None
    d = Path(a.workdir)
    d.mkdir(parents=True, exist_ok=True)
    return d


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def main() -> int:
    ap = tiny_guest_parser(__doc__, "bench/results/create_scaling.json")
    ap.add_argument("--reps", type=int, default=20, help="create-latency repetitions")
    ap.add_argument("--count", type=int, default=100, help="guests in the scaling run")
    ap.add_argument("--list-reps", type=int, default=10)
    ap.add_argument("--tools", default="xl,xentool",
                    help="of xl, xentool (in-process), xentoold (through a daemon started "
                         "for the run)")
    a = ap.parse_args()
    d = workdir(a)
    if d is None:
        return 2
    tools = [t for t in a.tools.split(",") if t]
    if set(tools) - set(TOOLS):
        ap.error(f"--tools: unknown {sorted(set(tools) - set(TOOLS))}")
    if "xentoold" not in tools:
        return measure(a, d, tools)
    from split import Daemon

    daemon = Daemon()
    ENVS["xentoold"] = daemon.env()
    try:
        return measure(a, d, tools)
    finally:
        daemon.stop()


def measure(a: argparse.Namespace, d: Path, tools: list[str]) -> int:
    m = machine()
    free = int(m.get("free_memory_mb") or 0)
    if free and a.count * a.memory > free * 0.9:
        a.count = max(1, int(free * 0.9) // a.memory)
        print(f"bench: only {free} MiB free: scaling run with {a.count} guests", flush=True)
    skipped: dict[str, str] = {}
    for t in list(tools):
        why = works(t, d, a.kernel, a.memory)
        if why is not None:
            skipped[t] = why
            tools.remove(t)
            print(f"bench: {t} create does not work here ({why}); measuring without it")
    res: dict[str, object] = {"machine": m, "kernel": a.kernel, "memory_mb": a.memory,
                              "skipped": skipped, "when": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                        time.gmtime())}
    print(f"machine: {m}")
    lat = create_latency(tools, d, a.kernel, a.memory, a.reps)
    res["create_latency_s"] = lat
    med = {t: statistics.median(v) for t, v in lat.items()}
    for t in tools:
        print(f"create latency {t:<8} median of {a.reps}: {med[t] * 1000:8.1f} ms")
    for t in tools:
        if t != "xl" and "xl" in tools:
            print(f"create latency ratio {t}/xl: {ratio(med[t], med['xl'])} (goal <= 0.8)")
    nth: dict[str, list[float]] = {}
    lists: dict[str, list[float]] = {}
    for t in tools:
        nth[t], lists[t] = scaling(t, d, a.kernel, a.memory, a.count, a.list_reps)
    res["nth_create_s"] = nth
    res["list_s"] = lists
    for t in tools:
        v = nth[t]
        head, tail = statistics.median(v[:5]), statistics.median(v[-5:])
        print(f"{t:<8} create #1 {v[0] * 1000:7.1f} ms, #{len(v)} {v[-1] * 1000:7.1f} ms: "
              f"ratio {ratio(v[-1], v[0])} (median first/last 5: {head * 1000:.1f} / "
              f"{tail * 1000:.1f} ms, ratio {ratio(tail, head)}) (goal <= 1.1)")
        print(f"{t:<8} list with {len(v)} guests: median {statistics.median(lists[t]) * 1000:.1f}"
              f" ms")
    for t in tools:
        if t == "xl" or "xl" not in tools:
            continue
        per_n = [x / y for x, y in zip(nth[t], nth["xl"], strict=True)]
        res[f"nth_ratio_{t}_xl"] = per_n
        print(f"Nth-create ratio {t}/xl: N=1 {per_n[0]:.2f}, N={len(per_n)} "
              f"{per_n[-1]:.2f}, median {statistics.median(per_n):.2f}")
        list_ratio = ratio(statistics.median(lists[t]), statistics.median(lists["xl"]))
        print(f"list ratio {t}/xl: {list_ratio}")
    write_results(a.out, res)
    return 0


def write_results(path: str | Path, results: object) -> None:
    """``results`` as JSON in ``path`` (its folder made), named on stdout."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=1) + "\n")
    print(f"results: {path}")


if __name__ == "__main__":
    sys.exit(main())
