"""The PV console, as libxl 4.17 writes it (libxl__device_console_add) for xenconsoled.

The primary console (devid 0) lives at ``/local/domain/<domid>/console``: the domain
builder supplies the ring page (``ring-ref``, an MFN for PV) and its event channel
(``port``); xenconsoled watches the backend, maps the ring and writes ``tty`` back.
The whole directory is read-only for the guest, except ``backend-id``.
"""

from __future__ import annotations

from xenstore import paths
from xenstore.devices.common import DeviceNodes, device_nodes
from xenstore.devices.xenbus import XenbusState

PROTOCOL = "vt100"   # LIBXL_XENCONSOLE_PROTOCOL
LIMIT = 1048576      # LIBXL_XENCONSOLE_LIMIT: bytes xenconsoled buffers


def console_nodes(domid: int, port: int, ring_ref: int, *, backend_domid: int = 0,
                  output: str = "pty", tty: str = "") -> DeviceNodes:
    """The primary console's node set; ``ring_ref`` is the console page's MFN."""
    back = [
        ("frontend-id", str(domid)),
        ("online", "1"),
        ("state", str(int(XenbusState.INITIALISING))),
        ("protocol", PROTOCOL),
    ]
    front = [("backend-id", str(backend_domid))]
    ro_front = [
        ("limit", str(LIMIT)),
        ("type", "xenconsoled"),
        ("output", output),
        ("tty", tty),
        ("port", str(int(port))),
        ("ring-ref", str(int(ring_ref))),
    ]
    return device_nodes(paths.CONSOLE, domid, 0, backend_domid, back, front, ro_front)
