"""Read-only verbs: info, list, domid, domname, uptime, vcpu-list (output as xl 4.17)."""

from __future__ import annotations

import argparse
import sys
import time

from xentool import Domain, Host
from xentool.cli import format as output
from xentool.session import parse_domid


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
                   help="also print the CPU, device and NUMA topology (NAME is then ignored)")
    p.add_argument("name", nargs="?", help="print only the values of keys starting with NAME")
    _json_flag(p)


def cmd_info(args: argparse.Namespace) -> int:
    with Host() as host:
        h = host.info()
        topology = (host.cpu_topology(), host.pci_topology(), host.numa_info()) \
            if args.numa else None
    items = output.info_items(h.uname, h.physinfo, h.version, h.sched_id, h.free_cpus)
    if topology is not None:
        from xentool.cli.commands.hostops import numa_items

        # xl prints them between the host's and Xen's lines, and ignores NAME then.
        at = next(i for i, (key, _, _) in enumerate(items) if key == "xen_major")
        items[at:at] = numa_items(*topology)
        args.name = None
    if args.json:
        return _emit(output.to_json(output.info_json(items)))
    return _emit(output.format_info(items, args.name))


# -- list ----------------------------------------------------------------------------------


def configure_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("-l", "--long", action="store_true",
                   help="print each domain's configuration as xl does (libxl's JSON, or "
                        "sxp when xl.conf says output_format=\"sxp\")")
    p.add_argument("-v", "--verbose", dest="list_verbose", action="store_true",
                   help="also print UUID, shutdown reason code and security label")
    p.add_argument("-Z", "--context", action="store_true",
                   help="also print the security label")
    p.add_argument("-c", "--cpupool", action="store_true",
                   help="also print each domain's cpupool")
    p.add_argument("-n", "--numa", action="store_true",
                   help="also print the NUMA nodes of each domain's memory")
    p.add_argument("domains", nargs="*", metavar="DOMAIN", help="name or id (default: all)")
    _json_flag(p)


def cmd_list(args: argparse.Namespace) -> int:
    if args.long and not args.json:
        return _list_long(args.domains)
    with Host() as host:
        entries = host.domain_infos(args.domains)
        listed = {d.domid for _, d in entries}
        for domid, pid in sorted(host.half_built().items()):
            if domid in listed:  # stdout stays xl's; the flag goes to stderr
                print(f"xentool: domain {domid} was left half-built by a create that was "
                      f"killed (pid {pid}): 'xentool destroy {domid}' removes it",
                      file=sys.stderr)
        nodes = None
        if args.numa and not (args.json or args.long):
            nr_nodes = host.physinfo().nr_nodes
            nodes = [output.print_bitmap(Domain(host, d.domid).node_affinity(), nr_nodes)
                     for _, d in entries]
        pools = None
        if args.cpupool and not (args.json or args.long):
            names = {p.poolid: n for n, p in host.cpupools()}
            pools = [names.get(d.cpupool) for _, d in entries]
    if args.json:
        return _emit(output.to_json(output.list_json(entries)))
    return _emit(output.format_list(entries, verbose=args.list_verbose,
                                    context=args.context, nodes=nodes, pools=pools))


def _list_long(domains: list[str]) -> int:
    """``list -l``: what libxl retrieves of each domain's configuration, printed as xl's
    list_domains_details prints it (the domains libxl cannot retrieve are left out)."""
    from xentool.config.libxl_json import yajl_dumps
    from xentool.config.xlconf import load_global_config

    sxp = load_global_config().output_format == "sxp"
    with Host() as host:
        found, problems = host.domain_configs(domains)
        uuids = {r.domid: host.domain(r.domid).info().uuid for r in found} if sxp else {}
    for line in problems:
        print(f"libxl: {line}", file=sys.stderr)
    if sxp:
        from xentool.cli.sxp import format_sxp

        return _emit("".join(format_sxp(r.domid, r.config, uuids[r.domid]) for r in found))
    # xl adds a newline to the generator's output (puts).
    return _emit(yajl_dumps([{"domid": r.domid, "config": r.config} for r in found]) + "\n")


# -- domid / domname -----------------------------------------------------------------------


def configure_domid(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME")
    _json_flag(p)


def cmd_domid(args: argparse.Namespace) -> int:
    with Host() as host:
        domid = host.domid(args.name)
    if args.json:
        return _emit(output.to_json({"domid": domid, "name": args.name}))
    return _emit(f"{domid}\n")


def configure_domname(p: argparse.ArgumentParser) -> None:
    p.add_argument("domid", metavar="ID")
    _json_flag(p)


def cmd_domname(args: argparse.Namespace) -> int:
    domid = parse_domid(args.domid)
    # Like xl: XenStore alone answers this (no hypercall).
    with Host() as host:
        name = host.domname(domid)
    if args.json:
        return _emit(output.to_json({"domid": domid, "name": name}))
    return _emit(f"{name}\n")


# -- uptime --------------------------------------------------------------------------------


def configure_uptime(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", "--short", action="store_true", help="short, uptime(1)-like output")
    p.add_argument("domains", nargs="*", metavar="DOMAIN")
    _json_flag(p)


def cmd_uptime(args: argparse.Namespace) -> int:
    now = time.time()
    with Host() as host:
        rows = host.uptimes([host.domain(q) for q in args.domains] if args.domains else None)
    for r in rows:
        if r.seconds is None:
            print(f"xentool: cannot get the start time of domain {r.domid}", file=sys.stderr)
    known = [(r.domid, r.name, r.seconds) for r in rows if r.seconds is not None]
    if args.json:
        return _emit(output.to_json(output.uptime_json(known)))
    return _emit(output.format_uptime(known, args.short, now))


# -- vcpu-list -----------------------------------------------------------------------------


def configure_vcpu_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("domains", nargs="*", metavar="DOMAIN")
    _json_flag(p)


def cmd_vcpu_list(args: argparse.Namespace) -> int:
    with Host() as host:
        nr_cpus = host.physinfo().max_cpu_id + 1
        doms = [host.domain(q) for q in args.domains] if args.domains else None
        rows = host.vcpus(doms)
    if args.json:
        return _emit(output.to_json(output.vcpu_list_json(rows)))
    return _emit(output.format_vcpu_list(rows, nr_cpus))
