"""Read-only verbs: info, list, domid, domname, uptime, vcpu-list (output as xl 4.17)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from xentool import output
from xentool.domains import Session, parse_domid
from xentool.errors import DomainNotFound, UsageError


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print a JSON document (schema: see xentool.output)")


def _emit(text: str) -> int:
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


# -- info ----------------------------------------------------------------------------------


def configure_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--numa", action="store_true",
                   help="also print NUMA and topology information (not supported yet)")
    p.add_argument("name", nargs="?", help="print only the values of keys starting with NAME")
    _json_flag(p)


def cmd_info(args: argparse.Namespace) -> int:
    if args.numa:
        raise UsageError("info --numa is not supported yet")
    u = os.uname()
    with Session() as s:
        xc = s.xc
        items = output.info_items(
            output.Uname(u.nodename, u.release, u.version, u.machine),
            xc.physinfo(), xc.version(), xc.sched_id(), len(xc.free_cpus()))
    if args.json:
        return _emit(output.to_json(output.info_json(items)))
    return _emit(output.format_info(items, args.name))


# -- list ----------------------------------------------------------------------------------


def configure_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("-l", "--long", action="store_true",
                   help="print the domains' state as JSON (same document as --json)")
    p.add_argument("-v", "--verbose", dest="list_verbose", action="store_true",
                   help="also print UUID, shutdown reason code and security label")
    p.add_argument("domains", nargs="*", metavar="DOMAIN", help="name or id (default: all)")
    _json_flag(p)


def cmd_list(args: argparse.Namespace) -> int:
    with Session() as s:
        if args.domains:
            infos = []
            for q in args.domains:
                domid = s.resolve(q)
                info = s.xc.domain_info(domid)
                if info is None:  # vanished between resolve and here
                    raise DomainNotFound(q)
                infos.append(info)
        else:
            infos = s.xc.domains()
        names = s.names(d.domid for d in infos)
    entries = [(names[d.domid], d) for d in infos]
    if args.json or args.long:
        return _emit(output.to_json(output.list_json(entries)))
    return _emit(output.format_list(entries, verbose=args.list_verbose))


# -- domid / domname -----------------------------------------------------------------------


def configure_domid(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME")
    _json_flag(p)


def cmd_domid(args: argparse.Namespace) -> int:
    from xentool.domains import name_to_domid

    with Session() as s:
        domid = name_to_domid(s.xc, s.reader, args.name)
    if domid is None:
        raise DomainNotFound(args.name)
    if args.json:
        return _emit(output.to_json({"domid": domid, "name": args.name}))
    return _emit(f"{domid}\n")


def configure_domname(p: argparse.ArgumentParser) -> None:
    p.add_argument("domid", metavar="ID")
    _json_flag(p)


def cmd_domname(args: argparse.Namespace) -> int:
    domid = parse_domid(args.domid)
    # Like xl: XenStore alone answers this (no hypercall).
    with Session() as s:
        name = s.name(domid)
    if name is None:
        raise DomainNotFound(args.domid)
    if args.json:
        return _emit(output.to_json({"domid": domid, "name": name}))
    return _emit(f"{name}\n")


# -- uptime --------------------------------------------------------------------------------


def configure_uptime(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", "--short", action="store_true", help="short, uptime(1)-like output")
    p.add_argument("domains", nargs="*", metavar="DOMAIN")
    _json_flag(p)


def _dom0_uptime() -> int:
    with open("/proc/uptime") as f:
        return int(f.read().split()[0].split(".")[0])


def _start_time(s: Session, domid: int) -> int | None:
    """Seconds since the epoch when the domain started (``/vm/<uuid>/start_time``)."""
    vm = s.reader.get(f"/local/domain/{domid}/vm")
    if vm is None:
        return None
    raw = s.reader.get(f"{vm}/start_time")
    if raw is None:
        return None
    digits = ""
    for c in raw.strip():  # strtoul: leading digits only ("1700000000.42")
        if not c.isdigit():
            break
        digits += c
    return int(digits or 0) & 0xFFFFFFFF


def cmd_uptime(args: argparse.Namespace) -> int:
    now = time.time()
    rows: list[tuple[int, str | None, int]] = []
    with Session() as s:
        if args.domains:
            domids = [s.resolve(q) for q in args.domains]
        else:
            # xl lists dom0 first, then every domain that is not a stub domain.
            domids = [0] + [d.domid for d in s.xc.domains()
                            if d.domid != 0 and s.reader.get(f"/local/domain/{d.domid}/target")
                            is None]
        for domid in domids:
            if domid == 0:
                up = _dom0_uptime()
            else:
                start = _start_time(s, domid)
                if start is None:
                    print(f"xentool: cannot get the start time of domain {domid}",
                          file=sys.stderr)
                    continue
                up = (int(now) - start) & 0xFFFFFFFF
            rows.append((domid, s.name(domid), up))
    if args.json:
        return _emit(output.to_json(output.uptime_json(rows)))
    return _emit(output.format_uptime(rows, args.short, now))


# -- vcpu-list -----------------------------------------------------------------------------


def configure_vcpu_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("domains", nargs="*", metavar="DOMAIN")
    _json_flag(p)


def vcpu_rows(s: Session, domid: int) -> list[output.VcpuRow]:
    info = s.xc.domain_info(domid)
    if info is None or info.max_vcpu_id == 0xFFFFFFFF:
        return []
    name = s.name(domid)
    rows = []
    for vcpu in range(info.max_vcpu_id + 1):
        hard, soft = s.xc.vcpu_affinity(domid, vcpu)
        rows.append(output.VcpuRow(domid, name, s.xc.vcpu_info(domid, vcpu), hard, soft))
    return rows


def cmd_vcpu_list(args: argparse.Namespace) -> int:
    with Session() as s:
        nr_cpus = s.xc.physinfo().max_cpu_id + 1
        if args.domains:
            domids = [s.resolve(q) for q in args.domains]
        else:
            domids = [d.domid for d in s.xc.domains()]
        rows = [r for domid in domids for r in vcpu_rows(s, domid)]
    if args.json:
        return _emit(output.to_json(output.vcpu_list_json(rows)))
    return _emit(output.format_vcpu_list(rows, nr_cpus))
