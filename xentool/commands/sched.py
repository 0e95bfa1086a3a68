"""Scheduler verbs: sched-credit and sched-credit2 (options, checks and output as xl 4.17)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from typing import Any

from xentool import output
from xentool.domains import Session, is_domid
from xentool.errors import XentoolError

CREDIT, CREDIT2 = 5, 6  # XEN_SCHEDULER_* (kept literal: no libxenctrl import to parse args)


@dataclass(frozen=True)
class _Kind:
    sched_id: int
    label: str
    get: str  # XenCtrl method names
    set: str
    pool_get: str
    pool_fmt: Any


_KINDS = {
    "credit": _Kind(CREDIT, "credit", "sched_credit", "set_sched_credit", "credit_params",
                    output.format_credit_pool),
    "credit2": _Kind(CREDIT2, "credit2", "sched_credit2", "set_sched_credit2",
                     "credit2_params", output.format_credit2_pool),
}


def _int_arg(text: str) -> int:
    """xl reads numbers with strtol(): leading sign and digits, the rest ignored."""
    s = text.strip()
    i = 1 if s[:1] in "+-" else 0
    while i < len(s) and s[i].isdigit():
        i += 1
    digits = s[:i]
    try:
        return int(digits)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: '{text}'") from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--domain", metavar="DOMAIN")
    p.add_argument("-w", "--weight", type=_int_arg, metavar="WEIGHT",
                   help="relative weight 1-65535 (default 256)")
    p.add_argument("-c", "--cap", type=_int_arg, metavar="CAP",
                   help="cap in percent of one pcpu, 0 = no cap")
    p.add_argument("-s", "--schedparam", action="store_true",
                   help="show or set the cpupool's scheduler parameters")
    p.add_argument("-p", "--cpupool", metavar="CPUPOOL")
    p.add_argument("-r", "--ratelimit_us", type=_int_arg, metavar="RLIMIT")
    p.add_argument("--json", action="store_true", help="print a JSON document")


def configure_sched_credit(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("-t", "--tslice_ms", type=_int_arg, metavar="TSLICE")
    p.add_argument("-m", "--migration_delay_us", type=_int_arg, metavar="DLY")


def configure_sched_credit2(p: argparse.ArgumentParser) -> None:
    _common(p)


def cmd_sched_credit(args: argparse.Namespace) -> int:
    return _run(_KINDS["credit"], args)


def cmd_sched_credit2(args: argparse.Namespace) -> int:
    return _run(_KINDS["credit2"], args)


def validate(kind: str, args: argparse.Namespace) -> None:
    """xl's option consistency rules, with its messages."""
    dom_opts = args.domain is not None or args.weight is not None or args.cap is not None
    if kind == "credit":
        if (args.cpupool or args.schedparam) and dom_opts:
            raise XentoolError("specifying a cpupool or schedparam is not allowed with "
                               "domain options")
        pool_opts = (args.tslice_ms, args.ratelimit_us, args.migration_delay_us)
        if not args.schedparam and any(v is not None for v in pool_opts):
            raise XentoolError("must specify schedparam (-s) to set schedule parameter values")
    elif args.cpupool and dom_opts:
        raise XentoolError("specifying a cpupool is not allowed with other options")
    if args.domain is None and (args.weight is not None or args.cap is not None):
        raise XentoolError("must specify a domain (-d) to set weight or cap")


def check_weight_cap(weight: int | None, cap: int | None, max_vcpu_id: int) -> None:
    """libxl's ranges: weight 1-65535, cap 0-100 per vcpu."""
    if weight is not None and not 1 <= weight <= 65535:
        raise XentoolError(f"cpu weight {weight} out of range, valid values are within "
                           "range from 1 to 65535")
    limit = (max_vcpu_id + 1) * 100
    if cap is not None and not 0 <= cap <= limit:
        raise XentoolError(f"cpu cap {cap} out of range, valid range is from 0 to {limit} "
                           "for the domain's number of vcpus")


def _pool_name(s: Session, poolid: int) -> str | None:
    return s.reader.get(f"/local/pool/{poolid}/name")


def _resolve_pool(s: Session, qualifier: str) -> int:
    pools = s.xc.cpupools()
    if is_domid(qualifier):
        poolid = int(qualifier)
        if any(p.poolid == poolid for p in pools) and _pool_name(s, poolid) is not None:
            return poolid
    else:
        for p in pools:
            if _pool_name(s, p.poolid) == qualifier:
                return p.poolid
    raise XentoolError(f"unknown cpupool '{qualifier}'")


def _pool_params(s: Session, kind: _Kind, poolid: int) -> Any | None:
    try:
        return getattr(s.xc, kind.pool_get)(poolid)
    except OSError:
        return None  # xl prints "[sched params unavailable]"


def _domain_sched(s: Session, kind: _Kind, domid: int, label: str) -> Any:
    info = s.xc.domain_info(domid)
    if info is None:
        from xentool.errors import DomainNotFound

        raise DomainNotFound(label)
    pool = s.xc.cpupool_info(info.cpupool)
    if pool.sched_id != kind.sched_id:
        actual = output.SCHEDULER_NAMES.get(pool.sched_id, str(pool.sched_id))
        raise XentoolError(f"domain '{label}' runs in cpupool {info.cpupool} under the "
                           f"{actual} scheduler, not {kind.label}")
    return info


def _run(kind: _Kind, args: argparse.Namespace) -> int:
    validate(kind.label, args)
    out: list[str] = []
    with Session() as s:
        if args.schedparam:
            poolid = _resolve_pool(s, args.cpupool) if args.cpupool else 0
            setting = {k: v for k, v in (("tslice_ms", getattr(args, "tslice_ms", None)),
                                         ("ratelimit_us", args.ratelimit_us),
                                         ("vcpu_migr_delay_us",
                                          getattr(args, "migration_delay_us", None)))
                       if v is not None}
            if not setting:
                params = _pool_params(s, kind, poolid)
                if args.json:
                    return _emit(output.to_json(output.params_json(params)))
                return _emit(kind.pool_fmt(_pool_name(s, poolid), params))
            return _set_pool(s, kind, poolid, setting)
        if args.domain is None:
            return _list_all(s, kind, args)
        domid = s.resolve(args.domain)
        info = _domain_sched(s, kind, domid, args.domain)
        cur = getattr(s.xc, kind.get)(domid)
        if args.weight is None and args.cap is None:
            name = s.name(domid)
            if args.json:
                return _emit(output.to_json(output.sched_row_json(name, domid, cur.weight,
                                                                  cur.cap)))
            out.append(output.SCHED_HEADER)
            out.append(output.format_sched_row(name, domid, cur.weight, cur.cap))
            return _emit("".join(out))
        check_weight_cap(args.weight, args.cap, info.max_vcpu_id)
        new = replace(cur, **{k: v for k, v in (("weight", args.weight), ("cap", args.cap))
                              if v is not None})
        getattr(s.xc, kind.set)(domid, new)
    return 0


def _set_pool(s: Session, kind: _Kind, poolid: int, setting: dict[str, int]) -> int:
    from domain_builder.xenctrl import Credit2Params, CreditParams

    if kind.sched_id == CREDIT2:
        rl = setting["ratelimit_us"]
        _check_ratelimit(rl)
        s.xc.set_credit2_params(poolid, Credit2Params(rl))
        return 0
    cur = s.xc.credit_params(poolid)
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
    return 0


def _check_ratelimit(rl: int) -> None:
    # XEN_SYSCTL_SCHED_RATELIMIT_{MIN,MAX}; 0 disables rate limiting.
    if rl != 0 and not 100 <= rl <= 500000:
        raise XentoolError(f"ratelimit {rl} out of range, valid range is from 100 to 500000")


def _list_all(s: Session, kind: _Kind, args: argparse.Namespace) -> int:
    only = _resolve_pool(s, args.cpupool) if args.cpupool else None
    domains = s.xc.domains()
    text: list[str] = []
    doc: list[dict[str, Any]] = []
    for pool in s.xc.cpupools():
        if pool.sched_id != kind.sched_id or (only is not None and pool.poolid != only):
            continue
        pname = _pool_name(s, pool.poolid)
        params = _pool_params(s, kind, pool.poolid)
        text.append(kind.pool_fmt(pname, params))
        text.append(output.SCHED_HEADER)
        rows = []
        for d in domains:
            if d.cpupool != pool.poolid:
                continue
            p = getattr(s.xc, kind.get)(d.domid)
            name = s.name(d.domid)
            text.append(output.format_sched_row(name, d.domid, p.weight, p.cap))
            rows.append(output.sched_row_json(name, d.domid, p.weight, p.cap))
        doc.append({"cpupool": pool.poolid, "name": pname, "scheduler": kind.label,
                    "params": output.params_json(params), "domains": rows})
    if args.json:
        return _emit(output.to_json(doc))
    return _emit("".join(text))


def _emit(text: str) -> int:
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0
