"""Devices of a domain, as a table like libxl's ``device_type_tbl``.

Each device type is one module of this package (``console``, ``vbd``, ``vif``) and one row
of :data:`DEVICE_TYPES`.  ``create`` takes every row's node sets from the config and
attaches them in table order, ``destroy`` unplugs whatever the domain has (by the kinds
recorded under ``/libxl/<domid>/device``), and the list/attach/detach verbs find their row
by name.  Adding a device type is a new module with the four functions a row names and one
row here.

The node sets, xenbus handshakes and hotplug scripts themselves live in
``xenstore.devices``; this package maps xl's specs onto them and says which kinds have a
hotplug script and how a detach may be forced.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from xenstore import paths
from xenstore.client import Store
from xenstore.devices.attach import (
    DeviceInfo,
    Force,
    Timeouts,
    attach,
    destroy_all,
    detach,
    find_device,
    list_devices,
    list_devids,
)
from xenstore.devices.common import DeviceNodes
from xenstore.devices.vif import vif_nodes
from xentool.devices import console, vbd, vif
from xentool.errors import DeviceError, NotFoundError, UsageError

if TYPE_CHECKING:
    from xentool.config.model import DomainConfig
    from xentool.config.xlconf import GlobalConfig


@dataclass(frozen=True)
class DeviceType:
    """One row of the device table."""

    kind: str  #: xenstore's name of the kind (``vbd``), as under ``device/`` and ``backend/``
    xl_name: str  #: xl's name (``disk``, ``nic``, ``console``)
    config_nodes: Callable[[int, DomainConfig], list[DeviceNodes]]  #: nodes from a config
    preflight: Callable[[DomainConfig], None]  #: checks before a create builds anything
    hotplug: bool  #: backend runs a hotplug script (block, vif-bridge)
    runtime: bool  #: can be attached and detached while the domain runs
    detach_force: Force  #: how a detach insists by default (xl: block waits, vif forces)


DEVICE_TYPES: tuple[DeviceType, ...] = (
    DeviceType(console.KIND, "console", console.config_nodes, console.preflight,
               hotplug=False, runtime=False, detach_force=Force.ON),
    DeviceType(vbd.KIND, "disk", vbd.config_nodes, vbd.preflight,
               hotplug=True, runtime=True, detach_force=Force.OFF),
    DeviceType(vif.KIND, "nic", vif.config_nodes, vif.preflight,
               hotplug=True, runtime=True, detach_force=Force.AUTO),
)

_BY_NAME = {n: t for t in DEVICE_TYPES for n in (t.kind, t.xl_name)}


def device_type(name: str) -> DeviceType:
    """The row for ``name``, xenstore's (``vbd``) or xl's (``disk``)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UsageError(f"unknown device type '{name}' (known: "
                         f"{', '.join(t.xl_name for t in DEVICE_TYPES)})") from None


def preflight(config: DomainConfig) -> None:
    """Every device of ``config`` is valid: a bad spec fails before the domain exists."""
    for t in DEVICE_TYPES:
        t.preflight(config)


def config_devices(domid: int, config: DomainConfig) -> list[DeviceNodes]:
    """The node sets of every device of ``config``, in table order (xl's attach order)."""
    return [dev for t in DEVICE_TYPES for dev in t.config_nodes(domid, config)]


def timeouts(seconds: float | None = None) -> Timeouts:
    """libxl's timeouts, or ``seconds`` for the backend and at least as long for the
    hotplug script (scripts queue on one lock: a caller who waits longer for the backend
    must not see the script of the last device in line cut off)."""
    t = Timeouts()
    if seconds is None:
        return t
    if seconds <= 0:
        raise UsageError("--timeout must be positive")
    return replace(t, init=seconds, destroy=seconds, hotplug=max(t.hotplug, seconds))


#: The journal (operation) names of the device verbs, by kind: their fault points.
_VERB = {vbd.KIND: "block", vif.KIND: "network", console.KIND: "console"}


def attach_nodes(xs: Store, dev: DeviceNodes, wait: Timeouts | None = None) -> None:
    """Plug one device (written, backend ready, hotplug script run) as the verb
    ``<block|network>-attach``: its steps run in a journal of that name, which unplugs
    what a failure left half-done."""
    from xentool.journal import Journal

    with Journal(f"{_VERB[dev.kind]}-attach") as j:
        attach(xs, dev, wait or Timeouts(), has_script=device_type(dev.kind).hotplug,
               steps=j)


def attach_vif(xs: Store, domid: int, options: Sequence[str],
               wait: Timeouts | None = None, gconf: GlobalConfig | None = None) -> int:
    """``network-attach``: the next free devid, retried if a concurrent attach took it.
    Returns the devid.  ``gconf``: xl.conf, whose vif defaults apply."""
    vif.parse_vif_args(options, 0, gconf)  # reject bad input before touching anything
    for _ in range(8):
        devid = vif.next_devid(list_devids(xs, domid, vif.KIND))
        nic = vif.parse_vif_args(options, devid, gconf)
        try:
            attach_nodes(xs, vif_nodes(domid, nic), wait)
            return devid
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise
    raise DeviceError("network-attach: no free device id (concurrent attaches?)")


def detach_device(xs: Store, domid: int, kind: str, devid: int, *, force: Force | None = None,
                  wait: Timeouts | None = None, label: str | None = None,
                  missing: str | None = None) -> None:
    """Unplug device ``devid`` of ``kind`` (the row's default force unless given); one
    that is not there is a ``NotFoundError`` saying ``missing`` (default: xl's words for a
    disk, naming ``label``)."""
    row = device_type(kind)
    ref = find_device(xs, domid, row.kind, devid)
    if ref is None:
        raise NotFoundError(missing or f"Error: Device {label or devid} not connected.")
    from xentool.journal import Journal

    # A failure once the backend was asked to close finishes the removal (see detach).
    with Journal(f"{_VERB[row.kind]}-detach") as j:
        detach(xs, ref, row.detach_force if force is None else force, wait or Timeouts(),
               has_script=row.hotplug, steps=j)


def devices(xs: Store, domid: int, kind: str) -> list[DeviceInfo]:
    """What the backend says of each device of ``kind`` the domain has."""
    return list_devices(xs, domid, device_type(kind).kind)


def vif_devid_of(xs: Store, domid: int, device: str) -> int | None:
    """A vif named by devid or by MAC (``network-detach``)."""
    from xenstore.devices.vif import parse_mac

    if ":" in device:
        try:
            mac = parse_mac(device)
        except ValueError:
            return None
        for info in list_devices(xs, domid, paths.VIF):
            if info.mac and info.mac.lower() == mac:
                return info.devid
        return None
    return int(device) if device.isascii() and device.isdigit() else None


def remove_all_devices(xs: Store, domid: int, wait: Timeouts | None = None) -> list[str]:
    """Unplug every device of a dying domain: runs the hotplug scripts' remove (frees loop
    devices, takes vifs off the bridge) and removes every node; returns problems found."""
    # Devices before the console, as libxl tears them down.
    kinds = [(t.kind, t.hotplug) for t in sorted(DEVICE_TYPES, key=lambda t: not t.runtime)]
    return destroy_all(xs, domid, wait or Timeouts(), kinds)
