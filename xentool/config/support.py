"""What of a disk or vif spec xentool can wire, as pure checks: ``config-check``, ``create``
(both before anything is built) and the attach verbs refuse the same specs with the same
reason.  xentool serves disks with blkback and vifs with netback in dom0; what needs qemu
(qdisk, non-raw images, emulated NICs) or a driver domain is refused by name.
"""

from __future__ import annotations

from xentool.config.model import (
    DiskBackend,
    DiskFormat,
    DiskSpec,
    DiskSpecification,
    NicType,
    VifSpec,
)

_DOM0_NAMES = (None, "", "0", "Domain-0")


def disk_unsupported(d: DiskSpec) -> str | None:
    """Why xentool cannot serve disk ``d``, or None if it can."""
    if d.format not in (DiskFormat.RAW, DiskFormat.EMPTY):
        return f"format {d.format.value} needs qemu (only raw is supported)"
    if d.backend not in (DiskBackend.UNKNOWN, DiskBackend.PHY):
        return f"backendtype={d.backend.value} is not supported"
    if d.specification is DiskSpecification.VIRTIO:
        return "specification=virtio is not supported"
    if d.backend_domname not in _DOM0_NAMES:
        return f"driver domain '{d.backend_domname}' is not supported"
    return None


def vif_unsupported(v: VifSpec) -> str | None:
    """Why xentool cannot wire vif ``v``, or None if it can."""
    if v.nictype is NicType.VIF_IOEMU:
        return "type=ioemu needs qemu; PV guests use type=vif"
    if v.backend_domname not in _DOM0_NAMES:
        return f"driver domain '{v.backend_domname}' is not supported"
    return None
