"""Device verbs, xl-compatible: block-attach/-detach/-list, network-attach/-detach/-list.

The node sets, xenbus handshakes and hotplug scripts live in ``xenstore.devices``; this
module turns xl's command-line syntax into ``Vbd``/``Vif`` and prints xl's tables.

The disk and vif spec parsers below follow libxlu (xl-disk-configuration(5),
xl-network-configuration(5)) for what the verbs accept; when ``xentool.config`` exposes its
DiskSpec/VifSpec parsers these should be replaced by a mapping from those.
"""

from __future__ import annotations

import argparse
import errno
import re
import sys
from dataclasses import replace
from typing import Sequence

from xentool.errors import UsageError, XentoolError


# -- disk specs (libxlu_disk_l.l) --------------------------------------------------------------

_DEPRECATED_PREFIX = re.compile(r"(raw|qcow2?|vhd|tapdisk|tap2?|aio|ioemu|file|phy):(?=/)")
_SCRIPT_PREFIX = re.compile(r"(iscsi|e?nbd|drbd):(?=/)")
_FLAGS = {"cdrom", "direct-io-safe", "discard", "no-discard", "trusted", "untrusted",
          "colo", "no-colo"}


def parse_disk_spec(spec: str):  # -> xenstore.devices.vbd.Vbd
    """One xl DISKSPEC (``target,format,vdev,access`` and ``key=value``s) to a ``Vbd``."""
    from xenstore.devices.vbd import Vbd

    target: str | None = None
    fmt: str | None = None
    vdev: str | None = None
    access: str | None = None
    cdrom = False
    depr = False
    opts: dict[str, object] = {}
    rest = spec
    while rest:
        rest = rest.lstrip(" \t\n")
        if rest.startswith("target="):
            target = rest[len("target="):]
            break
        token, sep, rest = rest.partition(",")
        if token in _FLAGS:
            if token == "cdrom":
                cdrom = True
            elif token == "direct-io-safe":
                opts["direct_io_safe"] = True
            elif token in ("discard", "no-discard"):
                opts["discard"] = token == "discard"
            elif token in ("trusted", "untrusted"):
                opts["trusted"] = token == "trusted"
            continue
        key, eq, value = token.partition("=")
        if eq and re.fullmatch(r"[a-z][-a-z0-9]*", key):
            if key == "format":
                fmt = value
            elif key == "devtype":
                if value not in ("cdrom", "disk"):
                    raise XentoolError(f"disk spec '{spec}': unknown value for type: {value}")
                cdrom = value == "cdrom"
            elif key == "access":
                access = value
            elif key == "vdev":
                vdev = value
            elif key == "script":
                opts["script"] = value
            elif key == "backend":
                if value not in ("", "0", "Domain-0"):
                    raise XentoolError(f"disk spec '{spec}': driver domains are not supported")
            elif key in ("backendtype", "specification"):
                if value not in ("", "phy", "xen"):
                    raise XentoolError(f"disk spec '{spec}': {key}={value} is not supported")
            else:
                raise XentoolError(f"disk spec '{spec}': unknown parameter '{key}'")
            continue
        m = _DEPRECATED_PREFIX.match(token) or _SCRIPT_PREFIX.match(token)
        if target is None and m:
            depr = True
            if m.re is _SCRIPT_PREFIX:
                opts["script"] = f"block-{m.group(1)}"
            elif m.group(1) in ("raw", "qcow", "qcow2", "vhd"):
                fmt = m.group(1)
            target = token[m.end():]
            continue
        if target is None:
            target = token
        elif fmt is None and not depr:
            if target == "" and ":" in token:
                vdev, cdrom = _vdev_devtype(spec, token)
            else:
                fmt = token
        elif vdev is None:
            if ":" in token:
                vdev, cdrom = _vdev_devtype(spec, token)
            else:
                vdev = token
        elif access is None:
            access = token
        else:
            raise XentoolError(f"disk spec '{spec}': too many positional parameters")
        if not sep:
            break
    if fmt not in (None, "", "raw"):
        raise XentoolError(f"disk spec '{spec}': format {fmt} needs qemu (only raw is supported)")
    if access not in (None, "", "r", "ro", "w", "rw"):
        raise XentoolError(f"disk spec '{spec}': unknown value for access: {access}")
    if not vdev:
        raise XentoolError(f"disk spec '{spec}': no vdev specified")
    if not target and not cdrom:
        raise XentoolError(f"disk spec '{spec}': no target specified (and device not removable)")
    readwrite = access not in ("r", "ro") and not cdrom
    disk = Vbd(vdev=vdev, target=target or "", readwrite=readwrite, cdrom=cdrom,
               removable=True if cdrom else None)
    disk = replace(disk, **opts)  # type: ignore[arg-type]
    try:
        disk.devid
    except ValueError as e:
        raise XentoolError(f"disk spec '{spec}': {e}") from None
    return disk


def _vdev_devtype(spec: str, token: str) -> tuple[str, bool]:
    vdev, _, kind = token.rpartition(":")
    if kind not in ("cdrom", "disk"):
        raise XentoolError(f"disk spec '{spec}': unknown deprecated type: {kind}")
    return vdev, kind == "cdrom"


# -- vif specs (xl_parse.c parse_nic_config, libxlu_vif.c) --------------------------------------

_RATE = re.compile(r"([0-9]+)([GMK]?)([Bb])/s")
_INTERVAL = re.compile(r"([0-9]+)([mu]?)s?")


def parse_rate(text: str) -> tuple[int, int]:
    """xl's ``RATE[@INTERVAL]`` (e.g. ``10Mb/s@20ms``) -> (bytes per interval, microseconds)."""
    rate, at, interval = text.partition("@")
    m = _RATE.fullmatch(rate)
    if not m:
        raise XentoolError(f"invalid rate '{text}'")
    n = int(m.group(1))
    if n == 0 or n > 0xFFFFFFFF:
        raise XentoolError(f"rate overflow '{text}'")
    n *= {"G": 10**9, "M": 10**6, "K": 10**3, "": 1}[m.group(2)]
    if m.group(3) == "b":
        n //= 8
    usecs = 50000
    if at:
        mi = _INTERVAL.fullmatch(interval)
        if not mi:
            raise XentoolError(f"invalid replenishment interval '{interval}'")
        usecs = int(mi.group(1))
        if usecs == 0 or usecs > 0xFFFFFFFF:
            raise XentoolError(f"replenishment interval overflow '{interval}'")
        usecs *= {"": 10**6, "m": 1000, "u": 1}[mi.group(2)]
        if usecs > 0xFFFFFFFF:
            raise XentoolError(f"replenishment interval overflow '{interval}'")
    return n * usecs // 10**6, usecs


def parse_vif_args(tokens: Sequence[str], devid: int, mac: str | None = None):
    """network-attach's ``key=value`` arguments to a ``Vif`` (``devid`` chosen by caller)."""
    from xenstore.devices.vif import Vif, parse_mac, random_mac

    fields: dict[str, object] = {}
    for tok in tokens:
        key, eq, value = tok.partition("=")
        if not eq:
            raise UsageError(f"network-attach: expected key=value, got '{tok}'")
        if key == "type":
            if value != "vif":
                raise XentoolError(f"Invalid parameter `type' ({value}): PV guests use vif")
        elif key == "mac":
            try:
                mac = parse_mac(value)
            except ValueError:
                raise XentoolError(f"Invalid parameter `mac' ({value})") from None
        elif key in ("bridge", "ip", "script", "vifname", "gatewaydev"):
            fields[key] = value
        elif key == "netdev":
            fields["gatewaydev"] = value
        elif key == "rate":
            fields["rate"] = parse_rate(value)
        elif key == "mtu":
            if not value.isdigit() or not 68 <= int(value) <= 65535:
                raise XentoolError(f"Invalid parameter `mtu' ({value})")
            fields["mtu"] = int(value)
        elif key == "backend":
            if value not in ("0", "Domain-0"):
                raise XentoolError("driver domains are not supported")
        elif key in ("model", "accel"):
            pass  # emulated NIC settings: meaningless for a PV guest, accepted like xl
        else:
            raise XentoolError(f"network-attach: unknown parameter '{key}'")
    return Vif(devid=devid, mac=mac or random_mac(), **fields)  # type: ignore[arg-type]


# -- xl's tables ------------------------------------------------------------------------------


def block_list_header() -> str:
    return "%-5s %-3s %-6s %-5s %-6s %-8s %-30s" % (
        "Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path")


def block_list_row(info) -> str:
    return "%-5d %-3d %-6d %-5d %-6d %-8d %-30s" % (
        info.devid, info.backend_domid, info.domid, info.state, info.evtch,
        info.ring_refs[0], info.backend)


def network_list_header() -> str:
    return "%-3s %-2s %-17s %-6s %-5s %-6s %5s/%-5s %-30s" % (
        "Idx", "BE", "Mac Addr.", "handle", "state", "evt-ch", "tx-", "rx-ring-ref", "BE-path")


def network_list_row(info) -> str:
    tx, rx = info.ring_refs
    return "%-3d %-2d %s%6d %5d %6d %5d/%-11d %-30s" % (
        info.devid, info.backend_domid, info.mac or "00:00:00:00:00:00", info.devid,
        info.state, info.evtch, tx, rx, info.backend)


# -- verbs ------------------------------------------------------------------------------------


def _timeouts_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="how long to wait for the backend (default as libxl: 10s)")


def _timeouts(args: argparse.Namespace):
    from xenstore.devices.attach import Timeouts

    t = Timeouts()
    if args.timeout is not None:
        if args.timeout <= 0:
            raise UsageError("--timeout must be positive")
        t = replace(t, init=args.timeout, destroy=args.timeout)
    return t


def configure_block_attach(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("spec", nargs="+", metavar="DISK-SPEC-COMPONENT",
                   help="xl disk spec, e.g. 'phy:/dev/vg/x,xvdb,w' or 'target=/img,vdev=xvdb'")
    _timeouts_arg(p)


def cmd_block_attach(args: argparse.Namespace) -> int:
    from xenstore.devices.attach import attach
    from xenstore.devices.vbd import vbd_nodes

    disk = parse_disk_spec(",".join(args.spec))
    from xentool.domains import Session

    with Session() as s:
        domid = s.resolve(args.domain)
        attach(s.xs, vbd_nodes(domid, disk), _timeouts(args))
    return 0


def configure_block_detach(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true",
                   help="do not wait for the domain to release the device")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("devid", metavar="DEVID", help="device number or vdev (51712, xvda)")
    _timeouts_arg(p)


def cmd_block_detach(args: argparse.Namespace) -> int:
    from xenstore import paths
    from xenstore.devices.attach import Force, detach, find_device
    from xentool.domains import Session

    try:
        devid = paths.vdev_to_devid(args.devid)
    except ValueError:
        raise XentoolError(f"Error: Device {args.devid} not connected.") from None
    with Session() as s:
        domid = s.resolve(args.domain)
        ref = find_device(s.xs, domid, paths.VBD, devid)
        if ref is None:
            raise XentoolError(f"Error: Device {args.devid} not connected.")
        detach(s.xs, ref, Force.ON if args.force else Force.OFF, _timeouts(args))
    return 0


def configure_block_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("domains", nargs="+", metavar="DOMAIN")


def cmd_block_list(args: argparse.Namespace) -> int:
    from xenstore import paths
    from xenstore.devices.attach import list_devices
    from xentool.domains import Session

    lines = [block_list_header()]
    rc = 0
    with Session() as s:
        for q in args.domains:
            try:
                domid = s.resolve(q)
            except XentoolError:
                print(f"{q} is an invalid domain identifier", file=sys.stderr)
                rc = 1
                continue
            lines += [block_list_row(i) for i in list_devices(s.xs, domid, paths.VBD)]
    print("\n".join(lines))
    return rc


def configure_network_attach(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("options", nargs="*", metavar="KEY=VALUE",
                   help="type=, mac=, bridge=, ip=, script=, backend=, vifname=, rate=, "
                        "model=, accel=, mtu=, gatewaydev=")
    _timeouts_arg(p)


def next_devid(existing: Sequence[int]) -> int:
    return max(existing) + 1 if existing else 0


def cmd_network_attach(args: argparse.Namespace) -> int:
    from xenstore import paths
    from xenstore.devices.attach import attach, list_devids
    from xenstore.devices.vif import vif_nodes
    from xentool.domains import Session

    parse_vif_args(args.options, devid=0)  # reject bad input before touching anything
    with Session() as s:
        domid = s.resolve(args.domain)
        for _ in range(8):
            nic = parse_vif_args(args.options, next_devid(list_devids(s.xs, domid, paths.VIF)))
            try:
                attach(s.xs, vif_nodes(domid, nic), _timeouts(args))
                return 0
            except OSError as e:
                # Someone took that devid between listing and writing: take the next one.
                if e.errno != errno.EEXIST:
                    raise
        raise XentoolError("network-attach: no free device id (concurrent attaches?)")


def configure_network_detach(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("device", metavar="DEVID|MAC")
    _timeouts_arg(p)


def cmd_network_detach(args: argparse.Namespace) -> int:
    from xenstore import paths
    from xenstore.devices.attach import Force, detach, find_device, list_devices
    from xenstore.devices.vif import parse_mac
    from xentool.domains import Session

    with Session() as s:
        domid = s.resolve(args.domain)
        devid: int | None = None
        if ":" in args.device:
            try:
                mac = parse_mac(args.device)
            except ValueError:
                raise XentoolError(f"Unknown device {args.device}.") from None
            for info in list_devices(s.xs, domid, paths.VIF):
                if info.mac and info.mac.lower() == mac:
                    devid = info.devid
                    break
        elif args.device.isdigit():
            devid = int(args.device)
        ref = find_device(s.xs, domid, paths.VIF, devid) if devid is not None else None
        if ref is None:
            raise XentoolError(f"Unknown device {args.device}.")
        detach(s.xs, ref, Force.AUTO, _timeouts(args))
    return 0


def configure_network_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("domains", nargs="+", metavar="DOMAIN")


def cmd_network_list(args: argparse.Namespace) -> int:
    from xenstore import paths
    from xenstore.devices.attach import list_devices
    from xentool.domains import Session

    lines = [network_list_header()]
    with Session() as s:
        for q in args.domains:
            domid = s.resolve(q)
            lines += [network_list_row(i) for i in list_devices(s.xs, domid, paths.VIF)]
    print("\n".join(lines))
    return 0
