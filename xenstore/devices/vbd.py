"""Virtual block devices for blkback, node for node as libxl 4.17 writes them (device_disk_add).

``phy:`` block devices and raw ``file:`` images look the same in XenStore: libxl picks its
"phy" backend for both and leaves the difference to ``/etc/xen/scripts/block``, which
sets up a loop device for a regular file (and records it in the backend's ``node``).
"""

from __future__ import annotations

from dataclasses import dataclass

from xenstore import paths
from xenstore.devices.common import DeviceNodes, device_nodes
from xenstore.devices.xenbus import XenbusState

SCRIPT_DIR = "/etc/xen/scripts"


@dataclass(frozen=True)
class Vbd:
    """A disk as the node set needs it (the config layer maps xl disk specs onto this)."""

    vdev: str                       # guest name: xvda, xvdb1, hdc, d0p1, ...
    target: str                     # block device or image file (backend "params")
    readwrite: bool = True
    cdrom: bool = False
    removable: bool | None = None   # default: cdrom
    backend_domid: int = 0
    script: str | None = None       # default: block
    discard: bool | None = None     # default: readwrite
    trusted: bool = True
    direct_io_safe: bool = False

    @property
    def devid(self) -> int:
        return paths.vdev_to_devid(self.vdev)


def abs_script(script: str | None, default: str) -> str:
    """libxl__abs_path: relative script names live in the Xen script directory."""
    s = script or default
    return s if s.startswith("/") else f"{SCRIPT_DIR}/{s}"


def vbd_nodes(domid: int, disk: Vbd, protocol: str | None = "x86_64-abi") -> DeviceNodes:
    """The vbd node set. ``protocol`` is the guest's native ring ABI (x86_64-abi for a
    64-bit PV guest, x86_32-abi for 32-bit); libxl writes it for PV guests only."""
    devid = disk.devid
    removable = disk.cdrom if disk.removable is None else disk.removable
    discard = disk.readwrite if disk.discard is None else disk.discard
    back = [
        ("params", disk.target),
        ("script", abs_script(disk.script, "block")),
        ("frontend-id", str(domid)),
        ("online", "1"),
        ("removable", "1" if removable else "0"),
        ("bootable", "1"),
        ("state", str(int(XenbusState.INITIALISING))),
        ("dev", disk.vdev),
        ("type", "phy"),
        ("mode", "w" if disk.readwrite else "r"),
        ("device-type", "cdrom" if disk.cdrom else "disk"),
    ]
    if disk.direct_io_safe:
        back.append(("direct-io-safe", "1"))
    back += [
        ("discard-enable", "1" if discard else "0"),
        ("specification", "xen"),
    ]
    front = [
        ("backend-id", str(disk.backend_domid)),
        ("state", str(int(XenbusState.INITIALISING))),
        ("virtual-device", str(devid)),
        ("device-type", "cdrom" if disk.cdrom else "disk"),
        ("trusted", "1" if disk.trusted else "0"),
    ]
    if protocol:
        front.append(("protocol", protocol))
    return device_nodes(paths.VBD, domid, devid, disk.backend_domid, back, front)
