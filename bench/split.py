#!/usr/bin/env python3
"""Create latency of a tiny guest: xl, xentool one-shot, through xentoold, and with the
split toolstack (xentoold's pool of domain shells); and what an in-process caller of the
library pays per guest.

Run as root in a dom0 (``contrib/testbed/run -- python3 bench/split.py``).  Two phases,
each against ``xl create`` measured in the same phase, alternating, ``--reps`` times:

1. xentoold without shells on a private socket: ``xl create``, ``xentool create``
   in-process (``XENTOOL_NO_DAEMON=1``), ``xentool create`` through the daemon;
2. xentoold with ``--prebuild N`` shells of the guest's size: ``xl create``, ``xentool
   create`` through it.  Before each timed create the pool is full again (untimed); the
   time the daemon takes to make a new shell is printed beside.

Then the library: a fresh Python process imports xentool and creates ``--api-reps`` guests
with ``Host.create``; its per-guest cost is (start-up + imports + every create) / count,
without and then with the shell pool.  Every create is of a running guest (the tiny kernel
that waits), destroyed untimed with ``xl destroy``.  Ratios are xentool/xl, medians (goals
of the issue: daemon <= 0.8, shell pool <= 0.3, API per guest <= 0.5).  Results go to
``--out`` (JSON) for ``bench/plot.py``.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # xentool itself
from create_scaling import (
    XENTOOL,
    machine,
    run,
    tiny_guest_parser,
    workdir,
    write_cfg,
    write_results,
)

#: The in-process caller: argv[1] configs directory, argv[2] count; prints JSON.
API_CHILD = r"""
import json, subprocess, sys, time
t0 = time.perf_counter()
import xentool
from xentool.state import shell_domids
with xentool.Host() as host:
    setup = time.perf_counter() - t0
    creates = []
    for i in range(int(sys.argv[2])):
        if len(sys.argv) > 3:  # with the pool: wait until it is full again (untimed)
            while len(shell_domids()) < int(sys.argv[3]):
                time.sleep(0.05)
        t = time.perf_counter()
        dom = host.create(f"{sys.argv[1]}/bench-api-{i}.cfg", record=False)
        creates.append(time.perf_counter() - t)
        subprocess.run(["xl", "destroy", str(dom.domid)], capture_output=True)
print(json.dumps({"setup": setup, "creates": creates}))
"""


class Daemon:
    def __init__(self, *args: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="xentoold-bench-"))
        self.sock = str(self.dir / "xentoold.sock")
        self.log = open(self.dir / "log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*XENTOOL, "daemon", "--foreground", "--socket", self.sock, "--no-monitor",
             "--no-sched", *args], stdout=self.log, stderr=self.log,
            env={k: v for k, v in os.environ.items() if k != "XENTOOL_DAEMON_SOCKET"})
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None:
                raise SystemExit(f"bench: xentoold did not start: "
                                 f"{(self.dir / 'log').read_text()}")
            time.sleep(0.1)

    def env(self) -> dict[str, str]:
        return {**os.environ, "XENTOOL_DAEMON_SOCKET": self.sock}

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)
        self.log.close()


def pool_full(n: int, timeout: float = 120) -> float:
    """Wait until ``n`` shells are ready; how long that took."""
    from xentool.state import shell_domids

    t0 = time.perf_counter()
    while len(shell_domids()) < n:
        if time.perf_counter() - t0 > timeout:
            raise SystemExit(f"bench: the shell pool is not full after {timeout}s")
        time.sleep(0.02)
    return time.perf_counter() - t0


def timed_creates(ways: dict[str, tuple[list[str], dict[str, str]]], d: Path, kernel: str,
                  memory: int, reps: int, pool: int = 0) -> dict[str, list[float]]:
    """Each way ``reps`` times, alternating; a running tiny guest each, destroyed untimed.
    With ``pool``, the shell pool is full before each create and its refills are timed."""
    out: dict[str, list[float]] = {w: [] for w in ways}
    if pool:
        out["refill"] = []
    names = list(ways)
    for i in range(reps):
        for w in names if i % 2 == 0 else names[::-1]:
            if pool:
                pool_full(pool)
            name = f"bench-split-{i}"
            cfg = write_cfg(d, name, kernel, memory)
            argv, env = ways[w]
            try:
                t0 = time.perf_counter()
                r = subprocess.run([*argv, "create", "-q", str(cfg)], capture_output=True,
                                   text=True, timeout=300, env=env)
                dt = time.perf_counter() - t0
                if r.returncode != 0:
                    raise SystemExit(f"bench: {w}: create failed: {r.stderr.strip()}")
                out[w].append(dt)
            finally:
                subprocess.run(["xl", "destroy", name], capture_output=True, timeout=120)
            if pool and w != "xl":
                out["refill"].append(pool_full(pool))
        print(f"  round {i + 1}/{reps}: " + ", ".join(
            f"{w} {out[w][-1] * 1000:.0f} ms" for w in names), flush=True)
    return out


def api(d: Path, kernel: str, memory: int, count: int, pool: int = 0) -> dict[str, object]:
    for i in range(count):
        write_cfg(d, f"bench-api-{i}", kernel, memory)
    argv = [sys.executable, "-c", API_CHILD, str(d), str(count)] + ([str(pool)] if pool else [])
    t0 = time.perf_counter()
    _, r = run(argv)
    total = time.perf_counter() - t0
    doc = json.loads(r.stdout)
    per_guest = (doc["setup"] + sum(doc["creates"])) / count
    return {**doc, "wall": total, "per_guest": per_guest}


def main() -> int:
    ap = tiny_guest_parser(__doc__, "bench/results/split.json")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--api-reps", type=int, default=20)
    ap.add_argument("--prebuild", type=int, default=2, help="shells in the pool (phase 2)")
    a = ap.parse_args()
    d = workdir(a)
    if d is None:
        return 2
    res: dict[str, object] = {"machine": machine(), "kernel": a.kernel, "memory_mb": a.memory,
                              "reps": a.reps, "prebuild": a.prebuild,
                              "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"machine: {res['machine']}", flush=True)
    here = {**os.environ, "XENTOOL_NO_DAEMON": "1"}

    print("phase 1: xentoold without shells", flush=True)
    daemon = Daemon()
    try:
        p1 = timed_creates({"xl": (["xl"], here), "one-shot": (XENTOOL, here),
                            "daemon": (XENTOOL, daemon.env())}, d, a.kernel, a.memory, a.reps)
    finally:
        daemon.stop()
    api_plain = api(d, a.kernel, a.memory, a.api_reps)

    print(f"phase 2: xentoold with {a.prebuild} shells of {a.memory} MiB", flush=True)
    (d / "xentoold.toml").write_text(f"[prebuild]\nmemory = {a.memory}\n")
    daemon = Daemon("--prebuild", str(a.prebuild), "--config", str(d / "xentoold.toml"))
    try:
        pool_full(a.prebuild)
        p2 = timed_creates({"xl": (["xl"], here), "shells": (XENTOOL, daemon.env())}, d,
                           a.kernel, a.memory, a.reps, pool=a.prebuild)
        api_pool = api(d, a.kernel, a.memory, a.api_reps, pool=a.prebuild)
    finally:
        daemon.stop()

    med1 = {w: statistics.median(v) for w, v in p1.items()}
    med2 = {w: statistics.median(v) for w, v in p2.items()}
    res.update(phase1=p1, phase2=p2, api=api_plain, api_shells=api_pool)
    ratios = {
        "one-shot": med1["one-shot"] / med1["xl"], "daemon": med1["daemon"] / med1["xl"],
        "shells": med2["shells"] / med2["xl"],
        "api": float(api_plain["per_guest"]) / med1["xl"],  # type: ignore[arg-type]
        "api_shells": float(api_pool["per_guest"]) / med2["xl"],  # type: ignore[arg-type]
    }
    res["ratios"] = ratios
    print(f"create, median of {a.reps} (ms): phase 1: xl {med1['xl'] * 1000:.0f}, one-shot "
          f"{med1['one-shot'] * 1000:.0f}, daemon {med1['daemon'] * 1000:.0f}; phase 2: xl "
          f"{med2['xl'] * 1000:.0f}, shells {med2['shells'] * 1000:.0f} (a shell made again "
          f"in {med2['refill'] * 1000:.0f})")
    print(f"API per guest over {a.api_reps} creates: {api_plain['per_guest'] * 1000:.0f} ms, "
          f"with shells {api_pool['per_guest'] * 1000:.0f} ms")
    goals = {"one-shot": None, "daemon": 0.8, "shells": 0.3, "api": 0.5, "api_shells": 0.5}
    for k, v in ratios.items():
        goal = goals[k]
        print(f"ratio xentool/xl {k:<11} {v:5.2f}" + (
            f"  (goal <= {goal}: {'met' if v <= goal else 'NOT met'})" if goal else ""))
    write_results(a.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
