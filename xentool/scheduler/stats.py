"""CPU shares: what each domain used in an interval and what fair share it should get."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from xentool.errors import UsageError
from xentool.logs import get_logger
from xentool.scheduler import SCHEDULER_NAMES
from xentool.scheduler.policy import SCHEDULERS
from xentool.session import Session

if TYPE_CHECKING:
    from domain_builder.xenctrl import CpupoolInfo, DomainInfo

K = TypeVar("K", bound=Hashable)

log = get_logger("xentool.scheduler")


@dataclass(frozen=True)
class Demand:
    weight: int
    cap: int = 0  # percent of one pCPU, 0 = none
    vcpus: int = 1


def expected_shares(demands: Mapping[K, Demand], capacity: float) -> dict[K, float]:
    """Weight-proportional fair shares of ``capacity`` (percent of one pCPU times pCPUs)
    for domains that all want as much CPU as they can get.

    A domain never gets more than its cap or one pCPU per vcpu; what it cannot use is
    shared again among the others by weight (water-filling), as credit and credit2 do.
    """
    limits = {k: min(d.cap if d.cap > 0 else math.inf, 100.0 * d.vcpus)
              for k, d in demands.items()}
    shares: dict[K, float] = {}
    free = dict(demands)
    left = float(capacity)
    while free:
        total = sum(d.weight for d in free.values())
        fair = {k: left * d.weight / total for k, d in free.items()}
        capped = [k for k in free if fair[k] >= limits[k]]
        if not capped:
            shares.update(fair)
            break
        for k in capped:
            shares[k] = limits[k]
            left -= limits[k]
            del free[k]
        left = max(left, 0.0)
    return shares


@dataclass(frozen=True)
class Usage:
    domid: int
    cpu_ns: int  # cpu time used during the interval
    cpu_pct: float  # percent of one pCPU (xentop's CPU%)
    share_pct: float  # percent of the pool's capacity
    expected_pct: float | None  # fair share of the pool's capacity (None: not comparable)


def usage(before: Mapping[int, int], after: Mapping[int, int], seconds: float,
          pool_of: Mapping[int, int], pool_cpus: Mapping[int, int],
          demands: Mapping[int, Demand], active_pct: float = 1.0) -> dict[int, Usage]:
    """Per-domain CPU use between two ``{domid: cpu_time_ns}`` samples ``seconds`` apart.

    Expected shares are computed per cpupool among the domains that used at least
    ``active_pct`` percent of a pCPU, as if they were all CPU-bound; domains of a scheduler
    without weights (no entry in ``demands``) get None.
    """
    if seconds <= 0:
        raise ValueError("the interval must be positive")
    out: dict[int, Usage] = {}
    delta = {d: max(0, after[d] - before[d]) for d in after if d in before}
    by_pool: dict[int, dict[int, Demand]] = {}
    for d, ns in delta.items():
        pct = ns / (seconds * 1e9) * 100
        if d in demands and pct >= active_pct:
            by_pool.setdefault(pool_of[d], {})[d] = demands[d]
    expected: dict[int, float] = {}
    for pool, dem in by_pool.items():
        cap = 100.0 * pool_cpus.get(pool, 0)
        for d, pct in expected_shares(dem, cap).items():
            expected[d] = pct / cap * 100 if cap else 0.0
    for d, ns in delta.items():
        cpu_pct = ns / (seconds * 1e9) * 100
        ncpu = pool_cpus.get(pool_of[d], 0)
        share = cpu_pct / ncpu if ncpu else 0.0
        exp = expected.get(d, 0.0 if d in demands else None)
        out[d] = Usage(d, ns, cpu_pct, share, exp)
    return out


@dataclass(frozen=True)
class StatRow:
    """One line of ``sched-stats``."""

    domid: int
    name: str | None
    pool: str | None
    scheduler: str
    weight: int | None
    cap: int | None
    vcpus: int
    use: Usage

    def as_json(self) -> dict[str, object]:
        u = self.use
        return {"domid": self.domid, "name": self.name, "cpupool": self.pool,
                "scheduler": self.scheduler, "weight": self.weight, "cap": self.cap,
                "vcpus": self.vcpus, "cpu_ns": u.cpu_ns, "cpu_pct": round(u.cpu_pct, 3),
                "share_pct": round(u.share_pct, 3),
                "expected_pct": None if u.expected_pct is None else round(u.expected_pct, 3)}


STATS_HEADER = (f"{'Name':<24} {'ID':>5} {'Pool':<12} {'Sched':<8} {'Weight':>6} {'Cap':>4} "
                f"{'VCPUs':>5} {'CPU%':>7} {'Share%':>7} {'Expect%':>7}")


def format_stats(rows: Iterable[StatRow]) -> str:
    """The ``sched-stats`` table: CPU% of one pCPU, shares in percent of the pool."""
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    def opt(v: int | None) -> str:
        return "-" if v is None else str(v)

    lines = [STATS_HEADER]
    for r in rows:
        lines.append(f"{(r.name or '(null)')[:24]:<24} {r.domid:>5} {(r.pool or '-')[:12]:<12} "
                     f"{r.scheduler[:8]:<8} {opt(r.weight):>6} {opt(r.cap):>4} {r.vcpus:>5} "
                     f"{num(r.use.cpu_pct):>7} {num(r.use.share_pct):>7} "
                     f"{num(r.use.expected_pct):>7}")
    return "\n".join(lines) + "\n"


def sample(s: Session, clock: Callable[[], float]
           ) -> tuple[float, dict[int, int], list[DomainInfo]]:
    """(time, cpu time of each domain in ns, the domains' records) now."""
    doms = s.xc.domains()
    return clock(), {d.domid: d.cpu_time_ns for d in doms}, doms


def stat_rows(s: Session, doms: Sequence[DomainInfo], before: dict[int, int],
              after: dict[int, int],
              seconds: float, pool_filter: str | None, only: set[int] | None
              ) -> list[StatRow]:
    """One ``sched-stats`` sample: each domain's use over the interval next to its weight,
    cap and the share it should get."""
    pools = {p.poolid: p for p in s.xc.cpupools()}
    pool_names = {pid: s.xs.get(f"/local/pool/{pid}/name") for pid in pools}
    if pool_filter is not None and pool_filter not in pool_names.values() and not (
            pool_filter.isdigit() and int(pool_filter) in pools):
        raise UsageError(f"unknown cpupool '{pool_filter}'")  # an argument: exit 2, as before
    demands: dict[int, Demand] = {}
    params: dict[int, tuple[int, int]] = {}
    for d in doms:
        label = SCHEDULERS.get(pools[d.cpupool].sched_id) if d.cpupool in pools else None
        if label is None:
            continue
        try:
            p = (s.xc.sched_credit if label == "credit" else s.xc.sched_credit2)(d.domid)
        except OSError:
            continue  # gone since the sample
        params[d.domid] = (p.weight, p.cap)
        demands[d.domid] = Demand(p.weight, p.cap, max(1, d.nr_online_vcpus))
    use = usage(before, after, seconds, {d.domid: d.cpupool for d in doms},
                      pool_cpus(pools.values()), demands)
    names = s.names(d.domid for d in doms)
    rows = []
    for d in doms:
        if d.domid not in use or (only is not None and d.domid not in only):
            continue
        pname = pool_names.get(d.cpupool)
        if pool_filter is not None and pool_filter not in (pname, str(d.cpupool)):
            continue
        pool = pools.get(d.cpupool)
        label = SCHEDULER_NAMES.get(pool.sched_id, str(pool.sched_id)) if pool else "-"
        w, c = params.get(d.domid, (None, None))
        rows.append(StatRow(d.domid, names.get(d.domid), pname, label, w, c,
                                  d.nr_online_vcpus, use[d.domid]))
    return rows


def pool_cpus(pools: Iterable[CpupoolInfo]) -> dict[int, int]:
    return {p.poolid: len(p.cpus) for p in pools}
