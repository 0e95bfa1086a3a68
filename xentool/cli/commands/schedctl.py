"""Verbs of the scheduler controller: sched-controller (daemon) and sched-stats (measure).

The policy format and the decision rules are documented in ``xentool.sched``.

``sched-stats --json`` prints, per sample, an array of
``{"domid", "name", "cpupool": str|null, "scheduler", "weight": int|null, "cap": int|null,
"vcpus", "cpu_ns": int (used in the interval), "cpu_pct" (of one pCPU), "share_pct"
(of the pool's capacity), "expected_pct": float|null (fair share of the pool's capacity
among the domains that were busy)}``; with ``-c`` other than 1, one array per line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from xentool import Host, service
from xentool.errors import UsageError
from xentool.scheduler import controller
from xentool.scheduler.policy import load_policy
from xentool.scheduler.stats import format_stats

DEFAULT_POLICY = "/etc/xen/sched-policy.toml"


# -- sched-controller ------------------------------------------------------------------------


def configure_sched_controller(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--policy", default=DEFAULT_POLICY, metavar="FILE",
                   help=f"policy file (TOML, see contrib/examples; default {DEFAULT_POLICY})")
    p.add_argument("-n", "--dry-run", action="store_true",
                   help="print what would be set, change nothing")
    p.add_argument("--once", action="store_true",
                   help="apply the policy to the running domains and exit")
    p.add_argument("--resync", type=float, default=30.0, metavar="SECONDS",
                   help="full pass this often even without events (default 30)")
    p.add_argument("--check", action="store_true",
                   help="only validate the policy file and exit")


def cmd_sched_controller(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)  # a bad file at start-up is fatal, later not
    if args.check:
        print(f"{args.policy}: {len(policy.rules)} rule(s), default "
              f"weight={policy.default.weight} cap={policy.default.cap}")
        return 0
    if args.resync <= 0:
        raise UsageError("--resync must be positive")
    service.journal_priorities()
    slog = logging.getLogger("xentool.scheduler")
    if slog.getEffectiveLevel() > logging.INFO:
        slog.setLevel(logging.INFO)  # every change is logged, whatever -v says
    controller.serve(args.policy, policy, dry_run=args.dry_run, once=args.once,
                     resync=args.resync,
                     report=(lambda msg: print(msg, flush=True)) if args.dry_run else None)
    return 0


# -- sched-stats -----------------------------------------------------------------------------


def configure_sched_stats(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--interval", type=float, default=1.0, metavar="SECONDS",
                   help="measuring interval (default 1)")
    p.add_argument("-c", "--count", type=int, default=1, metavar="N",
                   help="number of intervals to print, 0 = until interrupted (default 1)")
    p.add_argument("-p", "--cpupool", metavar="CPUPOOL", help="only domains of this cpupool")
    p.add_argument("--json", action="store_true", help="print JSON (see xentool help)")
    p.add_argument("domains", nargs="*", metavar="DOMAIN", help="only these domains")


_clock, _sleep = time.monotonic, time.sleep  # replaced by a fake clock in tests


def cmd_sched_stats(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UsageError("--interval must be positive")
    if args.count < 0:
        raise UsageError("--count must be 0 or more")
    with Host() as host:
        only = [host.domain(q) for q in args.domains] if args.domains else None
        samples = host.sched_stats(only, cpupool=args.cpupool, interval=args.interval,
                                   count=args.count, clock=_clock, sleep=_sleep)
        for n, rows in enumerate(samples):
            if args.json:
                doc = [r.as_json() for r in rows]
                sys.stdout.write(json.dumps(doc, indent=None if args.count != 1 else 2) + "\n")
            else:
                if n:
                    sys.stdout.write("\n")
                sys.stdout.write(format_stats(rows))
            sys.stdout.flush()
    return 0
