"""Scheduler verbs: sched-credit and sched-credit2 (options, checks and output as xl 4.17)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xentool import Host
from xentool.cli import format as fmt
from xentool.cpupool import scheduler_label
from xentool.errors import DomainNotFound, NotFoundError, XentoolError
from xentool.scheduler import CREDIT, CREDIT2
from xentool.scheduler.rtds import RTDS, RtdsError
from xentool.scheduler.rtds import params as rtds_params


@dataclass(frozen=True)
class _Kind:
    sched_id: int
    label: str
    #: The pool's line; its parameters are the kind's own (``CreditParams`` for credit,
    #: ``Credit2Params`` for credit2), which a plain Callable type cannot tie to the kind.
    pool_fmt: Callable[[str | None, Any], str]


_KINDS = {
    "credit": _Kind(CREDIT, "credit", fmt.format_credit_pool),
    "credit2": _Kind(CREDIT2, "credit2", fmt.format_credit2_pool),
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


def _run(kind: _Kind, args: argparse.Namespace) -> int:
    validate(kind.label, args)
    with Host() as host:
        if args.schedparam:
            poolid = host.resolve_pool(args.cpupool) if args.cpupool else 0
            setting = {k: v for k, v in (("tslice_ms", getattr(args, "tslice_ms", None)),
                                         ("ratelimit_us", args.ratelimit_us),
                                         ("vcpu_migr_delay_us",
                                          getattr(args, "migration_delay_us", None)))
                       if v is not None}
            if not setting:
                params = host.pool_sched_params(kind.label, poolid)
                if args.json:
                    return _emit(fmt.to_json(fmt.params_json(params)))
                names = {p.poolid: n for n, p in host.cpupools()}
                return _emit(kind.pool_fmt(names.get(poolid), params))
            host.set_pool_sched_params(kind.label, poolid, **setting)
            return 0
        if args.domain is None:
            return _list_all(host, kind, args)
        dom = host.domain(args.domain)
        if args.weight is None and args.cap is None:
            cur = dom.sched(kind.label)
            name = dom.name
            if args.json:
                return _emit(fmt.to_json(fmt.sched_row_json(name, dom.domid, cur.weight,
                                                            cur.cap)))
            return _emit(fmt.SCHED_HEADER
                         + fmt.format_sched_row(name, dom.domid, cur.weight, cur.cap))
        dom.set_sched(weight=args.weight, cap=args.cap, scheduler=kind.label)
    return 0


def _list_all(host: Host, kind: _Kind, args: argparse.Namespace) -> int:
    only = host.resolve_pool(args.cpupool) if args.cpupool else None
    infos = host.domain_infos()
    text: list[str] = []
    doc: list[dict[str, object]] = []
    for pname, pool in host.cpupools():
        if pool.sched_id != kind.sched_id or (only is not None and pool.poolid != only):
            continue
        params = host.pool_sched_params(kind.label, pool.poolid)
        text.append(kind.pool_fmt(pname, params))
        text.append(fmt.SCHED_HEADER)
        rows = []
        for name, d in infos:
            if d.cpupool != pool.poolid:
                continue
            p = host.domain(d.domid).sched(kind.label)
            text.append(fmt.format_sched_row(name, d.domid, p.weight, p.cap))
            rows.append(fmt.sched_row_json(name, d.domid, p.weight, p.cap))
        doc.append({"cpupool": pool.poolid, "name": pname, "scheduler": kind.label,
                    "params": fmt.params_json(params), "domains": rows})
    if args.json:
        return _emit(fmt.to_json(doc))
    return _emit("".join(text))


def _emit(text: str) -> int:
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


# -- sched-rtds ------------------------------------------------------------------------------

_RTDS_DOM_HEADER = f"{'Name':<33} {'ID':>4} {'Period':>9} {'Budget':>9} {'Extratime':>10}\n"
_RTDS_VCPU_HEADER = (f"{'Name':<33} {'ID':>4} {'VCPU':>4} {'Period':>9} {'Budget':>9} "
                     f"{'Extratime':>10}\n")


def _strtol(text: str) -> int:
    """strtol(text, NULL, 10): leading blanks, sign and digits; 0 when there are none."""
    s = text.lstrip(" \t\n\v\f\r")
    i = 1 if s[:1] in "+-" else 0
    while i < len(s) and "0" <= s[i] <= "9":
        i += 1
    try:
        return int(s[:i])
    except ValueError:
        return 0


def configure_sched_rtds(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--domain", metavar="DOMAIN")
    p.add_argument("-v", "--vcpuid", action="append", default=[], metavar="VCPUID|all",
                   help="a vCPU to show or set (repeatable), or all of them")
    p.add_argument("-p", "--period", action="append", default=[], metavar="PERIOD",
                   help="period in microseconds, one per -v")
    p.add_argument("-b", "--budget", action="append", default=[], metavar="BUDGET",
                   help="budget in microseconds, one per -v")
    p.add_argument("-e", "--extratime", action="append", default=[], metavar="0|1",
                   help="whether the vCPU may run beyond its budget, one per -v")
    # In xl 4.17 the short -c takes no argument (its getopt string says "c"), so it
    # restricts nothing and the pool name after it ends the options; only --cpupool=POOL
    # restricts the output.  Both are kept exactly so, and the words xl ignores are named.
    p.add_argument("-c", dest="c_flag", action="store_true",
                   help="as in xl 4.17, takes no pool: use --cpupool POOL")
    p.add_argument("--cpupool", metavar="POOL", help="only the domains of this cpupool")
    p.add_argument("ignored", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def _fail(*lines: str) -> int:
    for line in lines:
        print(line, file=sys.stderr)
    return 1


def cmd_sched_rtds(args: argparse.Namespace) -> int:
    if args.ignored:
        print(f"xentool: sched-rtds: ignoring {' '.join(args.ignored)!r} as xl does "
              "(options end at the first word that is not one)", file=sys.stderr)
    if any(e not in ("0", "1") for e in args.extratime):
        return _fail("Invalid extratime.")
    opt_all = "all" in args.vcpuid
    vcpus = [_strtol(v) for v in args.vcpuid if v != "all"]
    periods = [_strtol(v) for v in args.period]
    budgets = [_strtol(v) for v in args.budget]
    extras = [e == "1" for e in args.extratime]
    opt_v, opt_p, opt_b, opt_e = bool(vcpus), bool(periods), bool(budgets), bool(extras)
    dom = args.domain
    if args.cpupool and (dom or opt_p or opt_b or opt_e or opt_v or opt_all):
        return _fail("Specifying a cpupool is not allowed with other options.")
    if not dom and (opt_p or opt_b or opt_e or opt_v):
        return _fail("Missing parameters.")
    if dom and not opt_v and not opt_all and (opt_p or opt_b or opt_e):
        return _fail("Must specify VCPU.")
    if opt_v and opt_all:
        return _fail("Incorrect VCPU IDs.")
    nv, np_, nb, ne = len(vcpus), len(periods), len(budgets), len(extras)
    if ((nv > nb and opt_b) or (nv > np_ and opt_p) or (nv > ne and opt_e) or np_ != nb
            or np_ != ne):
        return _fail("Incorrect number of period, budget and extratime")
    with Host() as host:
        if dom is None:
            return _rtds_list(host, args.cpupool, per_vcpu=opt_all)
        try:
            d = host.domain(dom)
        except DomainNotFound:
            return _fail(f"{dom} is an invalid domain identifier (rc=-6)")
        if not opt_v and not opt_all:
            _emit(_RTDS_DOM_HEADER)
            return _rtds_domain(host, d.domid)
        if not (opt_p or opt_b or opt_e):
            _emit(_RTDS_VCPU_HEADER)
            what = "libxl_vcpu_sched_params_get_all" if opt_all else \
                "libxl_vcpu_sched_params_get"
            try:
                rows = d.rtds_vcpus(None if opt_all else vcpus)
            except RtdsError as e:
                return _fail(f"xentool: {e}", f"{what} failed.")
            return _emit(_rtds_vcpu_rows(d.name, d.domid, rows))
        try:
            if opt_all:
                d.set_rtds_vcpus(rtds_params(periods[0], budgets[0], extras[0]))
            else:
                d.set_rtds_vcpus({v: rtds_params(periods[i], budgets[i], extras[i])
                                  for i, v in enumerate(vcpus)})
        except RtdsError as e:
            what = "libxl_vcpu_sched_params_set_all" if opt_all else \
                "libxl_vcpu_sched_params_set"
            return _fail(f"xentool: {e}", f"{what} failed.")
    return 0


def _name(name: str | None) -> str:
    return "(null)" if name is None else name


def _rtds_vcpu_rows(name: str | None, domid: int, rows: list[tuple[int, Any]]) -> str:
    return "".join(f"{_name(name):<33} {domid:4d} {v:4d} {p.period:9d} {p.budget:9d} "
                   f"{'yes' if p.extratime else 'no':>10}\n" for v, p in rows)


def _rtds_domain(host: Host, domid: int) -> int:
    """One domain's line; xl's message if it is not run by RTDS."""
    d = host.domain(domid)
    sched_id = d.scheduler_id()
    if sched_id != RTDS:
        return _fail("libxl_domain_sched_params_get returned "
                     f"{scheduler_label(sched_id)} not rtds.")
    p = d.rtds()
    # libxl leaves extratime at its "default" (-1) when it reads a domain: xl says yes.
    return _emit(f"{_name(d.name):<33} {domid:4d} {p.period:9d} {p.budget:9d} {'yes':>10}\n")


def _rtds_list(host: Host, cpupool: str | None, *, per_vcpu: bool) -> int:
    """Every RTDS pool (or the one named) with its domains, as xl's sched_*_output."""
    only = None
    if cpupool is not None:
        try:
            only = host.cpupool_id(cpupool)
        except NotFoundError:
            return _fail(f"unknown cpupool '{cpupool}'")
    infos = host.domain_infos()
    for pname, pool in host.cpupools():
        if pool.sched_id != RTDS or (only is not None and pool.poolid != only):
            continue
        _emit(f"Cpupool {_name(pname)}: sched=RTDS\n")
        _emit(_RTDS_VCPU_HEADER if per_vcpu else _RTDS_DOM_HEADER)
        for name, info in infos:
            if info.cpupool != pool.poolid:
                continue
            if per_vcpu:
                try:
                    rows = host.domain(info.domid).rtds_vcpus(None)
                except RtdsError as e:
                    return _fail(f"xentool: {e}", "libxl_vcpu_sched_params_get_all failed.")
                _emit(_rtds_vcpu_rows(name, info.domid, rows))
            elif _rtds_domain(host, info.domid):
                return 0  # xl stops at the first domain it cannot read, and still succeeds
    return 0
