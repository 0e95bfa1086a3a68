"""The NUMA node of PCI devices (``xc_pcitopoinfo``), as ``xl info -n`` shows them.

Reached through cffi's ABI mode (a ``dlopen`` of libxenctrl) so the compiled binding need
not change for this one rarely used call.
"""

from __future__ import annotations

import ctypes.util

from domain_builder.errors import XenError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Sequence

#: Node values Xen returns for a device with no known node / a device it does not know.
INVALID_NODE_ID = 0xFFFFFFFF
INVALID_DEV = 0xFFFFFFFE

_CDEF = """
typedef struct xc_interface_core xc_interface;
typedef struct { uint16_t seg; uint8_t bus; uint8_t devfn; } physdev_pci_device_t;
xc_interface *xc_interface_open(void *logger, void *dombuild_logger, unsigned open_flags);
int xc_interface_close(xc_interface *xch);
int xc_pcitopoinfo(xc_interface *xch, unsigned num_devs, physdev_pci_device_t *devs,
                   uint32_t *nodes);
"""


def pci_nodes(devices: Sequence[tuple[int, int, int]]) -> list[int]:
    """Xen's node for each (segment, bus, devfn); :data:`INVALID_NODE_ID` or
    :data:`INVALID_DEV` where it has none."""
    import cffi  # type: ignore[import-untyped]  # cffi ships no stubs (types-cffi)

    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    name = ctypes.util.find_library("xenctrl")
    if name is None:
        raise XenError("xc_pcitopoinfo", 38, "libxenctrl not found")
    lib = ffi.dlopen(name)
    xch = lib.xc_interface_open(ffi.NULL, ffi.NULL, 0)
    if xch == ffi.NULL:
        raise XenError("xc_interface_open", ffi.errno or 5)
    try:
        n = len(devices)
        devs = ffi.new("physdev_pci_device_t[]", max(n, 1))
        nodes = ffi.new("uint32_t[]", max(n, 1))
        for i, (seg, bus, devfn) in enumerate(devices):
            devs[i].seg, devs[i].bus, devs[i].devfn = seg, bus, devfn
        if lib.xc_pcitopoinfo(xch, n, devs, nodes) != 0:
            raise XenError("xc_pcitopoinfo", ffi.errno or 5)
        return [int(nodes[i]) for i in range(n)]
    finally:
        lib.xc_interface_close(xch)
