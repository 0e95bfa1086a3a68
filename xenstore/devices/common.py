"""What every split device shares: its node set, writing it, and tearing it down.

A node set is pure data — path -> (value, permissions) — laid out exactly as
libxl__device_generic_add (libxl 4.17) lays it out:

* the frontend directory belongs to the guest and the backend domain may read it
  (``n<domid>,r<bdomid>``); "read-only" frontend entries and the whole primary console
  directory are the other way round (``n<bdomid>,r<domid>``), so the guest cannot change them;
* the backend directory belongs to the backend domain, the guest may read it;
* ``/libxl/<domid>/device/<kind>/<devid>`` keeps the toolstack's own copy of the backend
  entries plus ``frontend`` and ``backend`` pointers, readable by dom0 only.

Writers put the whole set in one transaction; removers delete the three directories
and then any parent left empty (libxl__xs_path_cleanup), so nothing is left behind.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from xenstore import paths
from xenstore.client import Perms, Store, Transaction
from xenstore.errors import XenStoreError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

Node = tuple[str, Perms]


@dataclass(frozen=True)
class DeviceNodes:
    """Everything XenStore holds for one device, and where."""

    kind: str
    domid: int
    devid: int
    backend_domid: int
    frontend: str
    backend: str
    libxl: str
    nodes: Mapping[str, Node] = field(repr=False)

    def under(self, top: str) -> dict[str, Node]:
        return {p: n for p, n in self.nodes.items() if p == top or p.startswith(top + "/")}


def device_nodes(kind: str, domid: int, devid: int, backend_domid: int,
                 back: Sequence[tuple[str, str]], front: Sequence[tuple[str, str]],
                 ro_front: Sequence[tuple[str, str]] = ()) -> DeviceNodes:
    """Lay out a device's nodes like libxl__device_generic_add (order: parents first)."""
    fe = paths.frontend_path(domid, kind, devid)
    be = paths.backend_path(backend_domid, kind, domid, devid)
    lx = paths.libxl_path(domid, kind, devid)
    fe_perms = Perms.private(domid, backend_domid)
    ro_perms = Perms.private(backend_domid, domid)
    be_perms = Perms.private(backend_domid, domid)
    libxl_perms = Perms.private(0)
    primary_console = kind == paths.CONSOLE and devid == 0
    fe_dir_perms = ro_perms if primary_console else fe_perms

    nodes: dict[str, Node] = {}
    nodes[lx] = ("", libxl_perms)
    nodes[f"{lx}/frontend"] = (fe, libxl_perms)
    nodes[f"{lx}/backend"] = (be, libxl_perms)
    for k, v in back:
        nodes[f"{lx}/{_key(k)}"] = (v, libxl_perms)

    nodes[fe] = ("", fe_dir_perms)
    nodes[f"{fe}/backend"] = (be, fe_dir_perms)
    for k, v in front:
        nodes[f"{fe}/{_key(k)}"] = (v, fe_perms)
    for k, v in ro_front:
        nodes[f"{fe}/{_key(k)}"] = (v, ro_perms)

    nodes[be] = ("", be_perms)
    nodes[f"{be}/frontend"] = (fe, be_perms)
    for k, v in back:
        nodes[f"{be}/{_key(k)}"] = (v, be_perms)
    return DeviceNodes(kind, domid, devid, backend_domid, fe, be, lx, nodes)


def _key(k: str) -> str:
    if not k or "/" in k:
        raise ValueError(f"bad node name {k!r}")
    return k


def write_nodes(t: Transaction | Store, dev: DeviceNodes) -> None:
    """Replace the device's three directories by its node set (inside ``t``)."""
    dirs = (dev.libxl, dev.frontend, dev.backend)
    for d in dirs:
        t.rm(d, missing_ok=True)
    inherited: dict[str, Perms] = {}
    for path, (value, perms) in dev.nodes.items():
        if path in dirs:
            t.mkdir(path)
            if value:
                t.write(path, value)
            t.set_perms(path, perms)
            inherited[path] = perms
            continue
        t.write(path, value)
        # A new node inherits its parent's permissions; set them only where they differ.
        parent = path.rsplit("/", 1)[0]
        if inherited.get(parent) != perms:
            t.set_perms(path, perms)


def device_exists(t: Transaction | Store, dev: DeviceNodes) -> bool:
    """libxl's test: the toolstack's own copy exists (libxl__device_exists)."""
    return t.exists(dev.libxl)


def add_nodes(store: Store, dev: DeviceNodes) -> None:
    """Write a new device in one transaction; ``EEXIST`` if it is already there."""
    with store.transaction() as t:
        if device_exists(t, dev) or t.exists(dev.frontend) or t.exists(dev.backend):
            raise XenStoreError(errno.EEXIST, dev.frontend,
                                f"{dev.kind} device {dev.devid} already exists")
        with t.pipelined():
            write_nodes(t, dev)


def path_cleanup(t: Transaction | Store, path: str) -> None:
    """Remove ``path``, then each parent that is left empty (no value, no children)."""
    t.rm(path, missing_ok=True)
    parent = path.rsplit("/", 1)[0]
    while parent:
        value = t.get(parent)
        if value is None or value != "":
            break
        try:
            if t.ls(parent):
                break
        except XenStoreError as e:
            if e.errno == errno.ENOENT:
                break
            raise
        t.rm(parent, missing_ok=True)
        parent = parent.rsplit("/", 1)[0]


def destroy_nodes(store: Store, frontend: str, backend: str, libxl: str) -> None:
    """Remove a device's frontend, backend and libxl directories (libxl__device_destroy).

    The frontend goes first and on its own: the guest may write there at any moment, and a
    transaction that touched it would conflict with every such write."""
    path_cleanup(store, frontend)

    def remove(t: Transaction) -> None:
        for p in (libxl, backend):
            path_cleanup(t, p)

    # Run again from the start on a conflict: what path_cleanup read decides what it
    # removes, so the recorded requests of the first try may no longer apply.
    store.transact(remove)
