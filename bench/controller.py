#!/usr/bin/env python3
"""Reaction time of ``xentool sched-controller``: from @introduceDomain to the weight in force.

Run as root in a dom0 (``contrib/testbed/run -- python3 bench/controller.py``).  Starts the
controller on a one-rule policy, then creates ``--reps`` tiny guests paused with xl, one at
a time.  This process watches @introduceDomain itself; the clock starts when the event
reaches it (the controller gets the same event at the same moment) and stops when
getdomaininfo + the scheduler's get call show the policy's weight.  Prints every sample,
median and 90th percentile against the bar of 100 ms; writes JSON for ``bench/plot.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from domain_builder.xenctrl import XenCtrl
from xenstore.client import Store

WEIGHT = 777


def introduction(xc: XenCtrl, xs: Store, known: set[int], timeout: float = 120
                 ) -> tuple[int, float]:
    """(domid, perf_counter) when the next new domain is introduced to xenstored.

    Found by polling getdomaininfolist and XS_IS_DOMAIN_INTRODUCED, which works on any
    xenstore connection (a watch needs xenstored's socket); costs up to one polling step.
    """
    deadline = time.perf_counter() + timeout
    new: list[int] = []
    while not new:
        if time.perf_counter() > deadline:
            raise RuntimeError("no new domain")
        new = [d.domid for d in xc.domains() if d.domid not in known]
        time.sleep(0.001)
    while not xs.is_domain_introduced(new[0]):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"domain {new[0]} never introduced")
        time.sleep(0.0005)
    return new[0], time.perf_counter()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    kit = os.environ.get("XENTOOL_GUEST_DIR", "")
    ap.add_argument("--kernel", default=os.path.join(kit, "tiny-wait.elf") if kit else None)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default="bench/results/controller.json")
    a = ap.parse_args()
    if not a.kernel or not os.path.exists(a.kernel):
        print("bench: no tiny kernel: set XENTOOL_GUEST_DIR or --kernel", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="xentool-bench-ctl-"))
    pol = tmp / "policy.toml"
    pol.write_text(f'[[rule]]\nmatch = "bench-ctl-*"\nweight = {WEIGHT}\n')
    log = (tmp / "controller.log").open("wb")
    ctl = subprocess.Popen([sys.executable, "-m", "xentool", "sched-controller", "-f",
                            str(pol)], stdout=log, stderr=subprocess.STDOUT)
    samples: list[float] = []
    names: list[str] = []
    try:
        time.sleep(3)
        if ctl.poll() is not None:
            print((tmp / "controller.log").read_text(), file=sys.stderr)
            return 1
        with XenCtrl() as xc, Store.connect() as xs:
            for i in range(a.reps):
                name = f"bench-ctl-{os.getpid()}-{i}"
                cfg = tmp / f"{name}.cfg"
                cfg.write_text(f'name = "{name}"\ntype = "pv"\nkernel = "{a.kernel}"\n'
                               f"memory = 16\n")
                names.append(name)
                known = {d.domid for d in xc.domains()}
                create = subprocess.Popen(["xl", "create", "-p", str(cfg)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                domid, t0 = introduction(xc, xs, known)
                sched = xc.cpupool_info(xc.domain_info(domid).cpupool).sched_id
                get = xc.sched_credit if sched == 5 else xc.sched_credit2
                while get(domid).weight != WEIGHT:
                    if time.perf_counter() - t0 > 10:
                        raise RuntimeError("weight not applied within 10 s")
                    time.sleep(0.0005)
                samples.append((time.perf_counter() - t0) * 1000)
                create.wait(120)
                print(f"  {name}: {samples[-1]:.1f} ms", flush=True)
    finally:
        ctl.terminate()
        ctl.wait(10)
        log.close()
        for n in names:
            subprocess.run(["xl", "destroy", n], capture_output=True)
    s = sorted(samples)
    med, p90 = statistics.median(s), s[min(len(s) - 1, int(len(s) * 0.9))]
    print(f"controller reaction after @introduceDomain: median {med:.1f} ms, p90 {p90:.1f} ms, "
          f"max {s[-1]:.1f} ms over {len(s)} domains (bar: 100 ms)")
    print((tmp / "controller.log").read_text())
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"reaction_ms": samples, "median_ms": med,
                                       "p90_ms": p90, "when": time.strftime(
                                           "%Y-%m-%d %H:%M UTC", time.gmtime())}, indent=1))
    print(f"results: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
