"""Device verbs, xl-compatible: block-attach/-detach/-list, network-attach/-detach/-list.

The node sets, xenbus handshakes and hotplug scripts live in ``xenstore.devices``; this
module turns xl's command-line syntax into ``Vbd``/``Vif`` and prints xl's tables.

Specs are parsed by ``xentool.config`` (DiskSpec/VifSpec, exactly as xl parses them) and
mapped here onto the node-set inputs; ``vbd_from_spec``/``vif_from_spec`` are also what
``create`` uses for the devices of a DomainConfig.
"""

from __future__ import annotations

import argparse
import errno
import sys
from dataclasses import replace
from typing import Sequence

from xentool.errors import UsageError, XentoolError


# -- xl specs -> node-set inputs -------------------------------------------------------------


def vbd_from_spec(d):  # DiskSpec -> xenstore.devices.vbd.Vbd
    """Map a parsed xl disk spec onto what blkback needs; refuse what needs qemu or a
    driver domain (libxl would pick qdisk / another backend domain for those)."""
    from xentool.config.model import DiskBackend, DiskFormat, DiskSpecification
    from xenstore.devices.vbd import Vbd

    where = f"disk {d.vdev}"
    if d.format not in (DiskFormat.RAW, DiskFormat.EMPTY):
        raise XentoolError(f"{where}: format {d.format.value} needs qemu (only raw is supported)")
    if d.backend not in (DiskBackend.UNKNOWN, DiskBackend.PHY):
        raise XentoolError(f"{where}: backendtype={d.backend.value} is not supported")
    if d.specification is DiskSpecification.VIRTIO:
        raise XentoolError(f"{where}: specification=virtio is not supported")
    if d.backend_domname not in (None, "", "0", "Domain-0"):
        raise XentoolError(f"{where}: driver domain '{d.backend_domname}' is not supported")
    disk = Vbd(vdev=d.vdev, target=d.target or "", readwrite=d.readwrite, cdrom=d.is_cdrom,
               removable=d.removable, script=d.script, discard=d.discard_enable,
               trusted=True if d.trusted is None else d.trusted,
               direct_io_safe=d.direct_io_safe)
    try:
        disk.devid
    except ValueError as e:
        raise XentoolError(f"{where}: {e}") from None
    return disk


def parse_disk_args(components: Sequence[str]):
    """block-attach's disk spec components (xl joins them into one spec) to a ``Vbd``."""
    from xentool.config.disk import parse_disk_spec

    spec = ",".join(components)
    try:
        parsed = parse_disk_spec(spec)
    except ValueError as e:
        raise XentoolError(str(e)) from None
    try:
        return vbd_from_spec(parsed)
    except XentoolError as e:
        raise XentoolError(f"{e} in disk spec '{spec}'") from None


def vif_from_spec(v):  # VifSpec -> xenstore.devices.vif.Vif
    from xentool.config.model import NicType
    from xenstore.devices.vif import MTU_DEFAULT, Vif

    if v.nictype is NicType.VIF_IOEMU:
        raise XentoolError(f"vif {v.devid}: type=ioemu needs qemu; PV guests use type=vif")
    if v.backend_domname not in (None, "", "0", "Domain-0"):
        raise XentoolError(f"vif {v.devid}: driver domain '{v.backend_domname}' "
                           "is not supported")
    rate = None
    if v.rate_bytes_per_interval is not None and v.rate_interval_usecs:
        rate = (v.rate_bytes_per_interval, v.rate_interval_usecs)
    return Vif(devid=v.devid, mac=v.mac, bridge=v.bridge or "xenbr0", script=v.script,
               ip=v.ip, vifname=v.vifname, gatewaydev=v.gatewaydev, rate=rate,
               mtu=v.mtu or MTU_DEFAULT, trusted=True if v.trusted is None else v.trusted)


def parse_vif_args(tokens: Sequence[str], devid: int):
    """network-attach's ``key=value`` arguments to a ``Vif``; without ``mac=`` a random
    Xen MAC is drawn, as libxl does on attach."""
    from xentool.config.vif import parse_vif_spec
    from xenstore.devices.vif import random_mac

    for tok in tokens:
        if "," in tok:
            raise UsageError(f"network-attach: one setting per argument, got '{tok}'")
    try:
        spec = parse_vif_spec(",".join(tokens), devid, mac_seed="")
    except ValueError as e:
        raise XentoolError(f"network-attach: {e}") from None
    if spec.mac_generated:
        spec = replace(spec, mac=random_mac())
    return vif_from_spec(spec)


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
                   help="how long to wait for the backend, and at least as long for the "
                        "hotplug script (defaults as libxl: 10s and 40s)")


def _timeouts(args: argparse.Namespace):
    from xenstore.devices.attach import Timeouts

    t = Timeouts()
    if args.timeout is not None:
        if args.timeout <= 0:
            raise UsageError("--timeout must be positive")
        # Hotplug scripts queue on one lock (block, vif-bridge): a caller who waits longer
        # for the backend must not see the script of the last device in line cut off.
        t = replace(t, init=args.timeout, destroy=args.timeout,
                    hotplug=max(t.hotplug, args.timeout))
    return t


def configure_block_attach(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("spec", nargs="+", metavar="DISK-SPEC-COMPONENT",
                   help="xl disk spec, e.g. 'phy:/dev/vg/x,xvdb,w' or 'target=/img,vdev=xvdb'")
    _timeouts_arg(p)


def cmd_block_attach(args: argparse.Namespace) -> int:
    from xenstore.devices.attach import attach
    from xenstore.devices.vbd import vbd_nodes

    disk = parse_disk_args(args.spec)
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


# -- for create / destroy ---------------------------------------------------------------------


def config_devices(domid: int, config) -> list:
    """The node sets of every disk and vif of a DomainConfig, in xl's attach order.

    Pure: validates every spec before anything is touched, so a bad one fails the create
    before the domain exists.  ``lifecycle.create`` attaches them one journal step each.
    """
    from xenstore.devices.vbd import vbd_nodes
    from xenstore.devices.vif import vif_nodes

    devs = [vbd_nodes(domid, vbd_from_spec(d)) for d in config.disks]
    devs += [vif_nodes(domid, vif_from_spec(v)) for v in config.vifs]
    return devs


def check_disk_targets(config) -> None:
    """Fail early, naming the file, when a disk's target is missing (xl only finds out when
    the hotplug script fails, after the domain was built).  Custom scripts interpret the
    target themselves (iscsi:, drbd:, ...) and are left alone."""
    import os

    for d in config.disks:
        if d.target and not d.is_cdrom and d.script in (None, "", "block") \
                and not os.path.exists(d.target):
            raise XentoolError(f"disk {d.vdev}: target '{d.target}' does not exist")


def remove_all_devices(xs, domid: int, timeouts=None) -> list[str]:
    """Unplug every device of a dying domain: runs the hotplug scripts' remove (frees loop
    devices, takes vifs off the bridge) and removes every node; returns problems found."""
    from xenstore.devices.attach import Timeouts, destroy_all

    return destroy_all(xs, domid, timeouts or Timeouts())
