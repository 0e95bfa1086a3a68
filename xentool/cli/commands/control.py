"""Domain control verbs: pause, unpause, destroy, vcpu-pin."""

from __future__ import annotations

import argparse
import sys

from xentool import Host
from xentool.errors import DomainNotFound, UsageError


def _domain_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", metavar="DOMAIN", help="domain name or id")


def configure_pause(p: argparse.ArgumentParser) -> None:
    _domain_arg(p)


def cmd_pause(args: argparse.Namespace) -> int:
    with Host() as host:
        host.domain(args.domain).pause()
    return 0


def configure_unpause(p: argparse.ArgumentParser) -> None:
    _domain_arg(p)


def cmd_unpause(args: argparse.Namespace) -> int:
    with Host() as host:
        host.domain(args.domain).unpause()
    return 0


def configure_destroy(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", dest="force", action="store_true",
                   help="allow destroying domain 0 (refused without it, like xl)")
    _domain_arg(p)


def cmd_destroy(args: argparse.Namespace) -> int:
    with Host() as host:
        try:
            dom = host.domain(args.domain)
        except DomainNotFound:
            # Gone from the hypervisor, maybe by a destroy that was killed half-way: its
            # record lets this run finish the job.
            if host.finish_destroy(args.domain):
                return 0
            raise
        dom.destroy(force=args.force)
    return 0


def configure_vcpu_pin(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true",
                   help="also override a temporary pinning the guest made")
    p.add_argument("-i", "--ignore-global-affinity-masks", action="store_true",
                   help="ignore the global affinity masks of xl.conf (vm.cpumask, "
                        "vm.pv.cpumask)")
    _domain_arg(p)
    p.add_argument("vcpu", metavar="VCPU", help="vcpu number or 'all'")
    p.add_argument("hard", metavar="CPUS", help="hard affinity: 'all', '0-3,^2', or '-'")
    p.add_argument("soft", metavar="CPUS_SOFT", nargs="?", default="-",
                   help="soft affinity (default '-': leave it alone)")


def _parse_vcpu(text: str) -> int | None:
    if text == "all":
        return None
    if not text.isdigit():
        raise UsageError(f"invalid vcpu '{text}': a number or 'all'")
    return int(text)


def _masked_hard(host: Host, hard: str) -> str:
    """``hard`` restricted by xl.conf's global masks (vm.cpumask, vm.pv.cpumask), as xl's
    vcpu-pin does without -i."""
    from xentool.config.xlconf import global_mask
    from xentool.control import parse_cpu_list

    gconf = Host.global_config()
    for w in gconf.warnings:
        print(f"xentool: {w}", file=sys.stderr)
    max_cpus = host.max_cpus()
    mask = global_mask(gconf, max_cpus)
    if mask is None:
        return hard
    try:
        cpus = parse_cpu_list(hard, max_cpus) & mask
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not cpus:
        raise UsageError("vcpu hard affinity map is empty")  # xl's words
    return ",".join(str(c) for c in sorted(cpus))


def _dry_run_pin(host: Host, hard: str | None, soft: str | None) -> int:
    """xl -N vcpu-pin: the maps it would set (before the global masks), nothing set."""
    from xentool.cli.format import print_bitmap
    from xentool.control import parse_cpu_list

    max_cpus = host.max_cpus()
    try:
        line = "cpumap: " + ("-" if hard is None else
                             print_bitmap(parse_cpu_list(hard, max_cpus), max_cpus))
        if soft is not None:
            line += " " + print_bitmap(parse_cpu_list(soft, max_cpus), max_cpus)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(line)
    return 0


def cmd_vcpu_pin(args: argparse.Namespace) -> int:
    vcpu = _parse_vcpu(args.vcpu)
    hard = None if args.hard == "-" else args.hard
    soft = None if args.soft == "-" else args.soft
    with Host() as host:
        dom = host.domain(args.domain)
        if getattr(args, "dryrun_only", False):
            return _dry_run_pin(host, hard, soft)
        if hard is not None and not args.ignore_global_affinity_masks:
            hard = _masked_hard(host, hard)
        restricted = dom.pin_vcpu(vcpu, hard, soft, force=args.force)
    for v, eff_hard in restricted:
        # Like libxl: the request succeeded, but Xen restricts it to the pool's cpus.
        print(f"xentool: vcpu {v}: effective hard affinity is "
              f"{sorted(eff_hard)} (restricted by the cpupool)", file=sys.stderr)
    return 0
