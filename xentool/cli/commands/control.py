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
                   help="accepted for xl compatibility (xentool has no global masks)")
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


def cmd_vcpu_pin(args: argparse.Namespace) -> int:
    vcpu = _parse_vcpu(args.vcpu)
    with Host() as host:
        dom = host.domain(args.domain)
        restricted = dom.pin_vcpu(vcpu, None if args.hard == "-" else args.hard,
                                  None if args.soft == "-" else args.soft,
                                  force=args.force)
    for v, eff_hard in restricted:
        # Like libxl: the request succeeded, but Xen restricts it to the pool's cpus.
        print(f"xentool: vcpu {v}: effective hard affinity is "
              f"{sorted(eff_hard)} (restricted by the cpupool)", file=sys.stderr)
    return 0
