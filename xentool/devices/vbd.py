"""Virtual block devices (``disk=`` in xl.cfg, ``block-attach``): one row of the device
table.  Specs are parsed by :mod:`xentool.config.disk` exactly as xl parses them and mapped
here onto what blkback and the ``block`` hotplug script need.

:mod:`xentool.config` (dataclasses, enums, the disk spec's rule table) is imported by the
functions that read specs: ``destroy`` and the device list verbs load this module for its
row of the device table only and must not pay for that (start-up cost of one-shot
commands)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from xenstore import paths
from xenstore.devices.common import DeviceNodes
from xenstore.devices.vbd import Vbd, vbd_nodes
from xentool.errors import DeviceError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from xentool.config.model import DiskSpec, DomainConfig

KIND = paths.VBD


def vbd_from_spec(d: DiskSpec) -> Vbd:
    """Map a parsed xl disk spec onto what blkback needs; refuse what needs qemu or a
    driver domain (libxl would pick qdisk / another backend domain for those)."""
    from xentool.config.support import disk_unsupported

    where = f"disk {d.vdev}"
    why = disk_unsupported(d)
    if why is not None:
        raise DeviceError(f"{where}: {why}")
    disk = Vbd(vdev=d.vdev, target=d.target or "", readwrite=d.readwrite, cdrom=d.is_cdrom,
               removable=d.removable, script=d.script, discard=d.discard_enable,
               trusted=True if d.trusted is None else d.trusted,
               direct_io_safe=d.direct_io_safe)
    try:
        _ = disk.devid  # computing it validates the vdev
    except ValueError as e:
        raise DeviceError(f"{where}: {e}") from None
    return disk


def parse_disk_args(components: Sequence[str]) -> Vbd:
    """block-attach's disk spec components (xl joins them into one spec) to a ``Vbd``."""
    from xentool.config.disk import parse_disk_spec

    spec = ",".join(components)
    try:
        parsed = parse_disk_spec(spec)
    except ValueError as e:
        raise DeviceError(str(e)) from None
    try:
        return vbd_from_spec(parsed)
    except DeviceError as e:
        raise DeviceError(f"{e} in disk spec '{spec}'") from None


def check_disk_targets(config: DomainConfig) -> None:
    """Fail early, naming the file, when a disk's target is missing (xl only finds out when
    the hotplug script fails, after the domain was built).  Custom scripts interpret the
    target themselves (iscsi:, drbd:, ...) and are left alone."""
    for d in config.disks:
        if d.target and not d.is_cdrom and d.script in (None, "", "block") \
                and not os.path.exists(d.target):
            raise DeviceError(f"disk {d.vdev}: target '{d.target}' does not exist")


def config_nodes(domid: int, config: DomainConfig) -> list[DeviceNodes]:
    """The node set of every disk of ``config``, in xl's order."""
    from xentool.config.model import DomainType

    protocol = native_protocol(hvm=config.type is not DomainType.PV)
    return [vbd_nodes(domid, vbd_from_spec(d), protocol) for d in config.disks]


def native_protocol(*, hvm: bool) -> str | None:
    """The ring protocol libxl names in a disk's frontend: a PV guest's ABI (x86_64-abi:
    xentool builds 64-bit PV guests only); none for an HVM container (PVH), whose rings
    are native."""
    return None if hvm else "x86_64-abi"


def preflight(config: DomainConfig) -> None:
    """What must hold before a create builds anything."""
    for d in config.disks:
        vbd_from_spec(d)
    check_disk_targets(config)
