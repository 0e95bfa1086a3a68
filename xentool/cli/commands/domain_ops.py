"""Guest-cooperative control verbs: shutdown, reboot, rename, mem-set, mem-max, vcpu-set.

The semantics are xl 4.17's and live in :mod:`xentool.control`; here are xl's options,
argument syntax and messages.  ``-w`` waits until every target has shut down or gone,
printing xl's lines; ``-a`` targets every domain but dom0.  Progress goes to stderr like
xl's.
"""

from __future__ import annotations

import argparse
import sys

from xentool import Host
from xentool.errors import UsageError, XentoolError


def err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_mem_size_kb(text: str) -> int | None:
    """xl's ``parse_mem_size_kb``: a number with an optional b/k/m/g/t suffix, MiB if none.

    None for anything else (xl also accepts an empty or negative string; we do not).
    """
    t = text.strip()
    digits = t.rstrip("bBkKmMgGtT")
    suffix = t[len(digits):].lower()
    if not digits or not digits.isascii() or not digits.isdigit() or len(suffix) > 1:
        return None
    n = int(digits)
    shift = {"": 10, "m": 10, "k": 0, "g": 20, "t": 30}.get(suffix)
    if suffix == "b":
        return n >> 10
    assert shift is not None
    return n << shift


def parse_vcpu_count(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise UsageError(f"invalid number of vcpus '{text}'")
    return int(text)


# -- shutdown / reboot ------------------------------------------------------------------------


def _configure_shutdown_like(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument("-a", "--all", dest="all", action="store_true",
                   help=f"{verb} all guest domains (not dom0)")
    p.add_argument("-w", "--wait", dest="wait", action="store_true",
                   help=f"wait for the guest(s) to complete the {verb}")
    p.add_argument("-F", dest="fallback", action="store_true",
                   help="use the shutdown hypercall if the guest has no PV control support "
                        "or does not acknowledge the request")
    p.add_argument("domain", metavar="DOMAIN", nargs="?", help="domain name or id")


def configure_shutdown(p: argparse.ArgumentParser) -> None:
    _configure_shutdown_like(p, "shutdown")


def configure_reboot(p: argparse.ArgumentParser) -> None:
    _configure_shutdown_like(p, "reboot")


def _shutdown_or_reboot(args: argparse.Namespace, action: str) -> int:
    if args.domain is None and not args.all:
        raise UsageError("you must specify -a or a domain id")
    if args.domain is not None and args.all:
        raise UsageError("give either -a or a domain, not both")
    with Host() as host:
        if args.all:
            targets = [host.domain(d.domid) for _, d in host.domain_infos()
                       if d.domid != 0 and not d.dying and not d.shutdown]
        else:
            targets = [host.domain(args.domain)]
        for dom in targets:
            request = dom.shutdown if action == "poweroff" else dom.reboot
            request(fallback=args.fallback, progress=err)
        if args.wait:
            host.wait_for_deaths(targets, progress=err)
    return 0


def cmd_shutdown(args: argparse.Namespace) -> int:
    return _shutdown_or_reboot(args, "poweroff")


def cmd_reboot(args: argparse.Namespace) -> int:
    return _shutdown_or_reboot(args, "reboot")


# -- rename ---------------------------------------------------------------------------------


def configure_rename(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", metavar="DOMAIN", help="domain name or id")
    p.add_argument("new_name", metavar="NEWNAME", help="the new name")


def cmd_rename(args: argparse.Namespace) -> int:
    with Host() as host:
        dom = host.domain(args.domain)
        try:
            dom.rename(args.new_name)
        except UsageError:
            raise
        except XentoolError as e:
            raise XentoolError(f"can't rename domain '{args.domain}': {e}") from None
    return 0


# -- memory ---------------------------------------------------------------------------------


def configure_mem_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", metavar="DOMAIN", help="domain name or id")
    p.add_argument("mem", metavar="MEM", help="new target, e.g. 512m, 1g, 262144k (MiB if "
                                              "no suffix)")


def configure_mem_max(p: argparse.ArgumentParser) -> None:
    configure_mem_set(p)


def _mem_kb(text: str) -> int:
    kb = parse_mem_size_kb(text)
    if kb is None:
        raise UsageError(f"invalid memory size: {text}")
    return kb


def _set_memory(args: argparse.Namespace, what: str) -> int:
    kb = _mem_kb(args.mem)
    with Host() as host:
        dom = host.domain(args.domain)
        try:
            if what == "dynamic":
                dom.set_memory(kb)
            else:
                dom.set_max_memory(kb)
        except XentoolError as e:
            raise XentoolError(f"cannot set domid {dom.domid} {what} max memory to "
                               f"{args.mem}: {e}") from None
    return 0


def cmd_mem_set(args: argparse.Namespace) -> int:
    return _set_memory(args, "dynamic")


def cmd_mem_max(args: argparse.Namespace) -> int:
    return _set_memory(args, "static")


# -- vcpu-set -------------------------------------------------------------------------------


def configure_vcpu_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--ignore-host", dest="ignore_host", action="store_true",
                   help="allow more vcpus than the host has physical cpus")
    p.add_argument("domain", metavar="DOMAIN", help="domain name or id")
    p.add_argument("vcpus", metavar="N", help="number of vcpus to have online")


def cmd_vcpu_set(args: argparse.Namespace) -> int:
    n = parse_vcpu_count(args.vcpus)
    with Host() as host:
        host.domain(args.domain).set_vcpus(n, check_host=not args.ignore_host)
    return 0
