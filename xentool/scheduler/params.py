"""Scheduler parameters of domains and cpupools (``sched-credit``, ``sched-credit2``).

Ranges and messages are libxl 4.17's (``libxl_sched.c``): weight 1-65535, cap 0-100 per
vCPU, credit time slice 1-1000 ms, rate limit 100-500000 us (0 disables it), vCPU
migration delay 0-100000 us.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from xentool.errors import NotFoundError, UsageError, XentoolError
from xentool.scheduler import CREDIT, CREDIT2, SCHEDULER_NAMES
from xentool.session import Session, is_domid

if TYPE_CHECKING:
    from domain_builder.xenctrl import Credit2Params, CreditParams, DomainInfo, SchedCredit


@dataclass(frozen=True)
class SchedKind:
    """How one scheduler's parameters are read and written through XenCtrl."""

    sched_id: int
    label: str
    get: str  # XenCtrl method names
    set: str
    pool_get: str
    pool_set: str


KINDS = {
    "credit": SchedKind(CREDIT, "credit", "sched_credit", "set_sched_credit", "credit_params",
                        "set_credit_params"),
    "credit2": SchedKind(CREDIT2, "credit2", "sched_credit2", "set_sched_credit2",
                         "credit2_params", "set_credit2_params"),
}


def kind(label: str) -> SchedKind:
    try:
        return KINDS[label]
    except KeyError:
        raise UsageError(f"unknown scheduler '{label}' (known: {', '.join(KINDS)})") from None


def check_weight_cap(weight: int | None, cap: int | None, max_vcpu_id: int) -> None:
    """libxl's ranges: weight 1-65535, cap 0-100 per vcpu."""
    if weight is not None and not 1 <= weight <= 65535:
        raise XentoolError(f"cpu weight {weight} out of range, valid values are within "
                         "range from 1 to 65535")
    limit = (max_vcpu_id + 1) * 100
    if cap is not None and not 0 <= cap <= limit:
        raise XentoolError(f"cpu cap {cap} out of range, valid range is from 0 to {limit} "
                         "for the domain's number of vcpus")


def pool_name(s: Session, poolid: int) -> str | None:
    """A cpupool's name as libxl keeps it in XenStore."""
    return s.reader.get(f"/local/pool/{poolid}/name")


def resolve_pool(s: Session, qualifier: str) -> int:
    """A cpupool name or id to its id (``NotFoundError`` if there is none)."""
    pools = s.xc.cpupools()
    if is_domid(qualifier):
        poolid = int(qualifier)
        if any(p.poolid == poolid for p in pools) and pool_name(s, poolid) is not None:
            return poolid
    else:
        for p in pools:
            if pool_name(s, p.poolid) == qualifier:
                return p.poolid
    raise NotFoundError(f"unknown cpupool '{qualifier}'")


def pool_params(s: Session, k: SchedKind, poolid: int) -> CreditParams | Credit2Params | None:
    """The pool's scheduler parameters, None if Xen will not tell (xl then prints
    "[sched params unavailable]")."""
    try:
        params: CreditParams | Credit2Params = getattr(s.xc, k.pool_get)(poolid)
    except OSError:
        return None
    return params


def _check_ratelimit(rl: int) -> None:
    # XEN_SYSCTL_SCHED_RATELIMIT_{MIN,MAX}; 0 disables rate limiting.
    if rl != 0 and not 100 <= rl <= 500000:
        raise XentoolError(f"ratelimit {rl} out of range, valid range is from 100 to 500000")


def set_pool_params(s: Session, k: SchedKind, poolid: int, *, tslice_ms: int | None = None,
                    ratelimit_us: int | None = None,
                    vcpu_migr_delay_us: int | None = None) -> None:
    """Change a pool's scheduler parameters; what is None stays as it is."""
    from domain_builder.xenctrl import Credit2Params, CreditParams

    if k.sched_id == CREDIT2:
        if tslice_ms is not None or vcpu_migr_delay_us is not None:
            raise UsageError("credit2 has only a rate limit")
        if ratelimit_us is None:
            return
        _check_ratelimit(ratelimit_us)
        s.xc.set_credit2_params(poolid, Credit2Params(ratelimit_us))
        return
    cur = s.xc.credit_params(poolid)
    setting = {key: v for key, v in (("tslice_ms", tslice_ms), ("ratelimit_us", ratelimit_us),
                                     ("vcpu_migr_delay_us", vcpu_migr_delay_us))
               if v is not None}
    new = replace(cur, **setting)
    if not 1 <= new.tslice_ms <= 1000:
        raise XentoolError(f"time slice {new.tslice_ms} out of range, valid range is "
                         "from 1 to 1000")
    _check_ratelimit(new.ratelimit_us)
    if new.ratelimit_us > new.tslice_ms * 1000:
        raise XentoolError("ratelimit cannot be greater than timeslice")
    if not 0 <= new.vcpu_migr_delay_us <= 100000:
        raise XentoolError("vcpu migration delay should be >= 0 and <= 100000us")
    s.xc.set_credit_params(poolid, CreditParams(new.tslice_ms, new.ratelimit_us,
                                                new.vcpu_migr_delay_us))


def domain_info_for(s: Session, k: SchedKind, domid: int, label: str) -> DomainInfo:
    """The domain's info, once it is known to run under scheduler ``k``."""
    from xentool.errors import DomainNotFound

    info = s.xc.domain_info(domid)
    if info is None:
        raise DomainNotFound(label)
    pool = s.xc.cpupool_info(info.cpupool)
    if pool.sched_id != k.sched_id:
        actual = SCHEDULER_NAMES.get(pool.sched_id, str(pool.sched_id))
        raise XentoolError(f"domain '{label}' runs in cpupool {info.cpupool} under the "
                           f"{actual} scheduler, not {k.label}")
    return info


def domain_params(s: Session, k: SchedKind, domid: int) -> SchedCredit:
    """The domain's weight and cap (a ``SchedCredit``)."""
    params: SchedCredit = getattr(s.xc, k.get)(domid)
    return params


def set_domain_params(s: Session, k: SchedKind, domid: int, *, weight: int | None = None,
                      cap: int | None = None, label: str | None = None) -> None:
    """Change the domain's weight and/or cap (checked against libxl's ranges)."""
    from xentool.locks import domain_lock

    info = domain_info_for(s, k, domid, label or str(domid))
    check_weight_cap(weight, cap, info.max_vcpu_id)
    with domain_lock(domid):
        cur = domain_params(s, k, domid)
        new = replace(cur, **{key: v for key, v in (("weight", weight), ("cap", cap))
                              if v is not None})
        getattr(s.xc, k.set)(domid, new)
