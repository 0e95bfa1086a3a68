"""Scheduler verbs: sched-credit and sched-credit2 (options, checks and output as xl 4.17)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xentool import Host
from xentool.cli import format as fmt
from xentool.errors import XentoolError
from xentool.scheduler import CREDIT, CREDIT2


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
