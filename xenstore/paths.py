"""XenStore paths of domains and split devices, and the vdev <-> devid encoding, as libxl 4.17.

Layout (libxl_device.c):
  frontend  /local/domain/<domid>/device/<kind>/<devid>   (console 0: /local/domain/<domid>/console)
  backend   /local/domain/<bdomid>/backend/<kind>/<domid>/<devid>
  libxl     /libxl/<domid>/device/<kind>/<devid>          (toolstack's private copy)

Everything here is pure.
"""

from __future__ import annotations

import re
from collections import namedtuple

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)

# Kinds as libxl names them in paths (libxl__device_kind_to_string).
VBD = "vbd"
VIF = "vif"
CONSOLE = "console"
KINDS = (VBD, VIF, CONSOLE)


def domain_path(domid: int) -> str:
    return f"/local/domain/{int(domid)}"


def libxl_domain_path(domid: int) -> str:
    return f"/libxl/{int(domid)}"


def frontend_path(domid: int, kind: str, devid: int) -> str:
    if kind == CONSOLE and devid == 0:
        # The primary console predates xenbus devices and keeps its historic place.
        return f"{domain_path(domid)}/console"
    return f"{domain_path(domid)}/device/{kind}/{int(devid)}"


def backend_path(backend_domid: int, kind: str, domid: int, devid: int) -> str:
    return f"{domain_path(backend_domid)}/backend/{kind}/{int(domid)}/{int(devid)}"


def libxl_path(domid: int, kind: str, devid: int) -> str:
    return f"{libxl_domain_path(domid)}/device/{kind}/{int(devid)}"


# A named tuple, not a dataclass: this module is on the start-up path of every verb.
if TYPE_CHECKING:
    from typing import NamedTuple

    class BackendRef(NamedTuple):
        backend_domid: int
        kind: str
        domid: int
        devid: int
else:
    BackendRef = namedtuple("BackendRef", ["backend_domid", "kind", "domid", "devid"])


_BACKEND_RE = re.compile(r"/local/domain/(\d{1,5})/backend/([a-z0-9_]{1,15})/(\d{1,5})/(\d{1,10})")


def parse_backend_path(path: str) -> BackendRef:
    """Strict inverse of :func:`backend_path` (the value may come from a guest-writable node)."""
    m = _BACKEND_RE.fullmatch(path)
    if not m:
        raise ValueError(f"not a device backend path: {path[:120]!r}")
    bdom, kind, dom, devid = m.groups()
    return BackendRef(int(bdom), kind, int(dom), int(devid))


# -- virtual disk names ---------------------------------------------------------------------

_EXTENDED = 1 << 28


def _letters(s: str, max_index: int) -> tuple[int, str] | None:
    """Bijective base 26 drive letters (a=0, z=25, aa=26, ...) and the rest of the string."""
    i = 0
    index = -1
    while i < len(s) and "a" <= s[i] <= "z":
        index = (index + 1) * 26 + (ord(s[i]) - ord("a"))
        if index > max_index:
            return None
        i += 1
    if index < 0:
        return None
    return index, s[i:]


def _virtdisk(vdev: str, prefix: str, max_index: int, max_part: int) -> tuple[int, int] | None:
    if not vdev.startswith(prefix):
        return None
    got = _letters(vdev[len(prefix):], max_index)
    if got is None:
        return None
    disk, rest = got
    if not rest:
        return disk, 0
    if not rest.isascii() or not rest.isdigit() or rest[0] == "0":
        return None  # no sign, no spaces, no leading zeroes
    part = int(rest)
    return (disk, part) if part <= max_part else None


def vdev_to_devid(vdev: str) -> int:
    """The device number libxl derives from a disk name (libxl__device_disk_dev_number).

    ``xvda`` -> 51712, ``xvdb1`` -> 51729, ``hda`` -> 768, ``sdb`` -> 2064, ``xvdq`` and
    ``d<n>p<m>`` beyond 15 use the extended (1<<28) encoding; a bare number is taken as is.
    """
    m = re.fullmatch(r"d(\d{1,7})p(\d{1,3})", vdev)
    hit = ((int(m.group(1)), int(m.group(2))) if m and int(m.group(1)) < 1 << 20
           and int(m.group(2)) < 256 else None) or _virtdisk(vdev, "xvd", (1 << 20) - 1, 255)
    if hit:
        disk, part = hit
        if disk <= 15 and part <= 15:
            return (202 << 8) | (disk << 4) | part
        return _EXTENDED | (disk << 8) | part
    n = _number(vdev)
    if n is not None:
        return n
    hit = _virtdisk(vdev, "hd", 3, 63)
    if hit:
        disk, part = hit
        return ((3 if disk < 2 else 22) << 8) | ((disk & 1) << 6) | part
    hit = _virtdisk(vdev, "sd", 15, 15)
    if hit:
        disk, part = hit
        return (8 << 8) | (disk << 4) | part
    raise ValueError(f"invalid or unsupported virtual disk identifier {vdev[:40]!r}")


def _number(s: str) -> int | None:
    # libxl accepts strtoul(, 0): decimal, 0x hex, 0 octal, up to INT_MAX.
    try:
        if re.fullmatch(r"0[xX][0-9a-fA-F]+", s):
            n = int(s, 16)
        elif re.fullmatch(r"0[0-7]*", s):
            n = int(s, 8)
        elif re.fullmatch(r"[1-9][0-9]*", s):
            n = int(s)
        else:
            return None
    except ValueError:
        return None
    return n if n <= 0x7FFFFFFF else None


def _disk_name(n: int) -> str:
    out = ""
    while True:
        out = chr(ord("a") + n % 26) + out
        if n < 26:
            return out
        n = n // 26 - 1


def devid_to_vdev(devid: int) -> str:
    """The ``xvd*`` name of a device number (libxl__devid_to_vdev, as Linux names them)."""
    if devid & _EXTENDED:
        minor, parts = devid & ~_EXTENDED, 256
    else:
        minor, parts = devid & 0xFF, 16
    name = "xvd" + _disk_name(minor // parts)
    return name if minor % parts == 0 else f"{name}{minor & (parts - 1)}"
