"""Virtual network interfaces for netback, as libxl 4.17 writes them (libxl__set_xenstore_nic).

The backend interface ``vif<domid>.<devid>`` is put on a bridge by
``/etc/xen/scripts/vif-bridge``; the empty ``hotplug-status`` node makes netback wait
for that script before it connects.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from xenstore import paths
from xenstore.devices.common import DeviceNodes, device_nodes
from xenstore.devices.vbd import abs_script
from xenstore.devices.xenbus import XenbusState

MTU_DEFAULT = 1500
XEN_OUI = (0x00, 0x16, 0x3E)
_MAC_RE = re.compile(r"[0-9a-fA-F]{1,2}(:[0-9a-fA-F]{1,2}){5}")


def random_mac() -> str:
    """A locally random MAC under Xen's OUI 00:16:3e, as libxl generates one."""
    r = os.urandom(3)
    return format_mac((*XEN_OUI, r[0] & 0x7F, r[1], r[2]))


def format_mac(octets: tuple[int, ...] | bytes) -> str:
    return ":".join(f"{b:02x}" for b in octets)


def parse_mac(text: str) -> str:
    """Normalise ``text`` to ``xx:xx:xx:xx:xx:xx`` (lower case) or raise ValueError."""
    if not _MAC_RE.fullmatch(text):
        raise ValueError(f"invalid MAC address {text[:40]!r}")
    return format_mac(tuple(int(p, 16) for p in text.split(":")))


def devname(domid: int, devid: int) -> str:
    """The backend interface name netback creates (NETBACK_NIC_NAME)."""
    return f"vif{domid}.{devid}"


@dataclass(frozen=True)
class Vif:
    """A NIC as the node set needs it (the config layer maps xl vif specs onto this)."""

    devid: int
    mac: str
    bridge: str = "xenbr0"
    script: str | None = None           # default: vif-bridge
    ip: str | None = None
    vifname: str | None = None
    gatewaydev: str | None = None
    rate: tuple[int, int] | None = None  # (bytes per interval, interval in microseconds)
    mtu: int = MTU_DEFAULT
    backend_domid: int = 0
    trusted: bool = True


def vif_nodes(domid: int, nic: Vif) -> DeviceNodes:
    mac = parse_mac(nic.mac)
    back = [
        ("frontend-id", str(domid)),
        ("online", "1"),
        ("state", str(int(XenbusState.INITIALISING))),
        ("script", abs_script(nic.script, "vif-bridge")),
    ]
    if nic.vifname:
        back.append(("vifname", nic.vifname))
    back.append(("mac", mac))
    if nic.ip:
        back.append(("ip", nic.ip))
    if nic.gatewaydev:
        back.append(("gatewaydev", nic.gatewaydev))
    if nic.rate and nic.rate[1] > 0:
        back.append(("rate", f"{nic.rate[0]},{nic.rate[1]}"))
    if nic.mtu != MTU_DEFAULT:
        back.append(("mtu", str(nic.mtu)))
    back += [
        ("bridge", nic.bridge),
        ("handle", str(nic.devid)),
        ("type", "vif"),
        ("hotplug-status", ""),
    ]
    front = [
        ("backend-id", str(nic.backend_domid)),
        ("state", str(int(XenbusState.INITIALISING))),
        ("handle", str(nic.devid)),
        ("mac", mac),
        ("trusted", "1" if nic.trusted else "0"),
    ]
    ro_front = [("mtu", str(nic.mtu))]
    return device_nodes(paths.VIF, domid, nic.devid, nic.backend_domid, back, front, ro_front)
