"""Device verbs, xl-compatible: block-attach/-detach/-list, network-attach/-detach/-list.

What they do lives in the library (:class:`xentool.Domain`'s device methods and the device
table of :mod:`xentool.devices`); here are xl's arguments and its tables.
"""

from __future__ import annotations

import argparse
import sys

from xentool import Host
from xentool.errors import NotFoundError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from xenstore.devices.attach import DeviceInfo

# -- xl's tables ------------------------------------------------------------------------------


def block_list_header() -> str:
    return "%-5s %-3s %-6s %-5s %-6s %-8s %-30s" % (  # noqa: UP031 - xl's printf format
        "Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path")


def block_list_row(info: DeviceInfo) -> str:
    return "%-5d %-3d %-6d %-5d %-6d %-8d %-30s" % (  # noqa: UP031 - xl's printf format
        info.devid, info.backend_domid, info.domid, info.state, info.evtch,
        info.ring_refs[0], info.backend)


def network_list_header() -> str:
    return "%-3s %-2s %-17s %-6s %-5s %-6s %5s/%-5s %-30s" % (  # noqa: UP031 - xl's printf format
        "Idx", "BE", "Mac Addr.", "handle", "state", "evt-ch", "tx-", "rx-ring-ref", "BE-path")


def network_list_row(info: DeviceInfo) -> str:
    tx, rx = info.ring_refs
    return "%-3d %-2d %s%6d %5d %6d %5d/%-11d %-30s" % (  # noqa: UP031 - xl's printf format
        info.devid, info.backend_domid, info.mac or "00:00:00:00:00:00", info.devid,
        info.state, info.evtch, tx, rx, info.backend)


# -- verbs ------------------------------------------------------------------------------------


def _timeouts_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="how long to wait for the backend, and at least as long for the "
                        "hotplug script (defaults as libxl: 10s and 40s)")


def configure_block_attach(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("spec", nargs="+", metavar="DISK-SPEC-COMPONENT",
                   help="xl disk spec, e.g. 'phy:/dev/vg/x,xvdb,w' or 'target=/img,vdev=xvdb'")
    _timeouts_arg(p)


def _no_dry_run(args: argparse.Namespace, verb: str) -> None:
    """xl -N prints the device as libxl JSON; not done here yet, so refused by name."""
    if getattr(args, "dryrun_only", False):
        raise UsageError(f"{verb}: -N (dry run) is not supported yet")


def cmd_block_attach(args: argparse.Namespace) -> int:
    from xentool.devices.vbd import parse_disk_args

    _no_dry_run(args, "block-attach")
    parse_disk_args(args.spec)  # a bad spec is reported before the domain is looked up
    with Host() as host:
        host.domain(args.domain).attach_disk(args.spec, timeout=args.timeout)
    return 0


def configure_block_detach(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true",
                   help="do not wait for the domain to release the device")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("devid", metavar="DEVID", help="device number or vdev (51712, xvda)")
    _timeouts_arg(p)


def cmd_block_detach(args: argparse.Namespace) -> int:
    with Host() as host:
        dom = host.domain(args.domain)
        dom.detach_disk(args.devid, force=args.force, timeout=args.timeout)
    return 0


def _list(args: argparse.Namespace, kind: str, header: str,
          row: Callable[[DeviceInfo], str], skip_bad: bool) -> int:
    lines = [header]
    rc = 0
    with Host() as host:
        for q in args.domains:
            try:
                dom = host.domain(q)
            except NotFoundError:
                if not skip_bad:
                    raise
                print(f"{q} is an invalid domain identifier", file=sys.stderr)
                rc = 1
                continue
            lines += [row(i) for i in dom.devices(kind)]
    print("\n".join(lines))
    return rc


def configure_block_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("domains", nargs="+", metavar="DOMAIN")


def cmd_block_list(args: argparse.Namespace) -> int:
    return _list(args, "disk", block_list_header(), block_list_row, skip_bad=True)


def configure_network_attach(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("options", nargs="*", metavar="KEY=VALUE",
                   help="type=, mac=, bridge=, ip=, script=, backend=, vifname=, rate=, "
                        "model=, accel=, mtu=, gatewaydev=")
    _timeouts_arg(p)


def cmd_network_attach(args: argparse.Namespace) -> int:
    from xentool.devices.vif import parse_vif_args

    _no_dry_run(args, "network-attach")
    gconf = Host.global_config()
    gconf.check_applicable()
    for w in gconf.warnings:
        print(f"xentool: {w}", file=sys.stderr)
    parse_vif_args(args.options, 0, gconf)  # reject bad input before touching anything
    with Host() as host:
        host.domain(args.domain).attach_nic(*args.options, timeout=args.timeout,
                                            xl_conf=gconf)
    return 0


def configure_network_detach(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("device", metavar="DEVID|MAC")
    _timeouts_arg(p)


def cmd_network_detach(args: argparse.Namespace) -> int:
    with Host() as host:
        host.domain(args.domain).detach_nic(args.device, timeout=args.timeout)
    return 0


def configure_network_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("domains", nargs="+", metavar="DOMAIN")


def cmd_network_list(args: argparse.Namespace) -> int:
    return _list(args, "nic", network_list_header(), network_list_row, skip_bad=False)
