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
import threading
import time
from typing import Any

from xentool import output, sched
from xentool.domains import Session
from xentool.errors import UsageError

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
    policy = sched.load_policy(args.policy)  # a bad file at start-up is fatal, later not
    if args.check:
        print(f"{args.policy}: {len(policy.rules)} rule(s), default "
              f"weight={policy.default.weight} cap={policy.default.cap}")
        return 0
    if args.resync <= 0:
        raise UsageError("--resync must be positive")
    slog = logging.getLogger("xentool.sched")
    if slog.getEffectiveLevel() > logging.INFO:
        slog.setLevel(logging.INFO)  # every change is logged, whatever -v says

    def report(msg: str) -> None:
        if args.dry_run:
            print(msg, flush=True)
        else:
            slog.info("%s", msg)

    from domain_builder.xenctrl import XenCtrl
    from xenstore.client import Store

    def thread_died(a: threading.ExceptHookArgs) -> None:
        # pyxs's reader thread ends with an exception when xenstored goes away; the daemon
        # notices and reconnects, so one line is enough.
        slog.warning("xenstore connection thread ended: %s", a.exc_value or a.exc_type)

    threading.excepthook = thread_died
    with XenCtrl() as xc:
        current: dict[str, Any] = {}

        def store() -> Any:
            if "xs" not in current:
                current["xs"] = Store.connect()
            return current["xs"]

        def connect() -> Any:
            old = current.pop("xs", None)
            if old is not None:
                try:
                    old.close()
                except Exception:  # noqa: BLE001 - replacing a dead connection
                    pass
            return store()

        ctl = sched.Controller(sched.XenBackend(xc, store), policy, dry_run=args.dry_run,
                               report=report)
        if args.once:
            try:
                ctl.reconcile()
            finally:
                if "xs" in current:
                    current["xs"].close()
            return 0
        daemon = sched.Daemon(ctl, args.policy, connect, resync=args.resync, poll=0.25)
        daemon.install_signals()
        slog.info("controlling weights with %s (%d rule(s))%s", args.policy,
                  len(policy.rules), ", dry run" if args.dry_run else "")
        daemon.run()
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


def _sample(s: Session) -> tuple[float, dict[int, int], list[Any]]:
    doms = s.xc.domains()
    return _clock(), {d.domid: d.cpu_time_ns for d in doms}, doms


def cmd_sched_stats(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UsageError("--interval must be positive")
    if args.count < 0:
        raise UsageError("--count must be 0 or more")
    with Session() as s:
        only = {s.resolve(q) for q in args.domains} if args.domains else None
        n = 0
        t0, before, _ = _sample(s)
        while args.count == 0 or n < args.count:
            _sleep(max(0.0, t0 + args.interval - _clock()))
            t1, after, doms = _sample(s)
            rows = _rows(s, doms, before, after, t1 - t0, args.cpupool, only)
            if args.json:
                doc = [r.as_json() for r in rows]
                sys.stdout.write(json.dumps(doc, indent=None if args.count != 1 else 2) + "\n")
            else:
                if n:
                    sys.stdout.write("\n")
                sys.stdout.write(sched.format_stats(rows))
            sys.stdout.flush()
            t0, before = t1, after
            n += 1
    return 0


def _rows(s: Session, doms: list[Any], before: dict[int, int], after: dict[int, int],
          seconds: float, pool_filter: str | None, only: set[int] | None
          ) -> list[sched.StatRow]:
    pools = {p.poolid: p for p in s.xc.cpupools()}
    pool_names = {pid: s.xs.get(f"/local/pool/{pid}/name") for pid in pools}
    if pool_filter is not None and pool_filter not in pool_names.values() and not (
            pool_filter.isdigit() and int(pool_filter) in pools):
        raise UsageError(f"unknown cpupool '{pool_filter}'")
    demands: dict[int, sched.Demand] = {}
    params: dict[int, tuple[int, int]] = {}
    for d in doms:
        label = sched.SCHEDULERS.get(pools[d.cpupool].sched_id) if d.cpupool in pools else None
        if label is None:
            continue
        try:
            p = (s.xc.sched_credit if label == "credit" else s.xc.sched_credit2)(d.domid)
        except OSError:
            continue  # gone since the sample
        params[d.domid] = (p.weight, p.cap)
        demands[d.domid] = sched.Demand(p.weight, p.cap, max(1, d.nr_online_vcpus))
    use = sched.usage(before, after, seconds, {d.domid: d.cpupool for d in doms},
                      sched.pool_cpus(pools.values()), demands)
    names = s.names(d.domid for d in doms)
    rows = []
    for d in doms:
        if d.domid not in use or (only is not None and d.domid not in only):
            continue
        pname = pool_names.get(d.cpupool)
        if pool_filter is not None and pool_filter not in (pname, str(d.cpupool)):
            continue
        pool = pools.get(d.cpupool)
        label = output.SCHEDULER_NAMES.get(pool.sched_id, str(pool.sched_id)) if pool else "-"
        w, c = params.get(d.domid, (None, None))
        rows.append(sched.StatRow(d.domid, names.get(d.domid), pname, label, w, c,
                                  d.nr_online_vcpus, use[d.domid]))
    return rows
