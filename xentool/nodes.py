"""The XenStore nodes of a domain as libxl 4.17 writes them (pure, and one writer).

The layout and permissions are libxl's (libxl__domain_make in libxl_create.c,
libxl__build_post in libxl_dom.c): ``/local/domain/<id>`` is owned by dom0 and readable by
the guest, the guest owns the few nodes it must write (control/shutdown, data, ...),
``/vm/<uuid>`` mirrors name and uuid, ``/libxl/<id>`` is dom0's private bookkeeping.
:func:`shell_nodes` and :func:`identity_nodes` split :func:`domain_make_nodes` into what
every guest has and what is its own, for the domain shells (:mod:`xentool.shells`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xenstore.client import Perms
from xenstore.paths import domain_path, libxl_domain_path

if TYPE_CHECKING:
    from xenstore.client import Transaction


Node = tuple[str, str, "Perms | None"]  # path, value, perms (None: inherit from the parent)


def domain_make_nodes(domid: int, name: str, uuid: str, dtype: str = "pv") -> list[Node]:
    """What libxl__domain_make writes before the build."""
    return shell_nodes(domid, None, dtype) + identity_nodes(domid, name, uuid)


def shell_nodes(domid: int, name: str | None, dtype: str = "pv") -> list[Node]:
    """The part of :func:`domain_make_nodes` that is the same for every guest of a type:
    what a domain shell is made with (:mod:`xentool.shells`), under a ``name`` of its own
    until a create takes it and writes the guest's (:func:`identity_nodes`)."""
    dom = domain_path(domid)
    lx = libxl_domain_path(domid)
    ro = Perms.private(0, domid)  # dom0 owns, the guest reads
    rw = Perms.private(domid)  # the guest owns
    no = Perms.private(0)  # dom0 only
    return [
        (dom, "", ro),
        (lx, "", no),
        (f"{lx}/device", "", no),
        (f"{lx}/type", dtype, None),
        (f"{lx}/dm-version", "qemu_xen", None),  # libxl's default, written for PV too
        *([] if name is None else [(f"{dom}/name", name, None)]),
        (f"{dom}/control/platform-feature-multiprocessor-suspend", "1", None),
        (f"{dom}/control/platform-feature-xs_reset_watches", "1", None),
        (f"{dom}/device", "", ro),
        (f"{dom}/control", "", ro),
        (f"{dom}/control/shutdown", "", rw),
        (f"{dom}/control/feature-poweroff", "", rw),
        (f"{dom}/control/feature-reboot", "", rw),
        (f"{dom}/control/feature-suspend", "", rw),
        (f"{dom}/control/sysrq", "", rw),
        (f"{dom}/device/suspend/event-channel", "", rw),
        (f"{dom}/data", "", rw),
        (f"{dom}/drivers", "", rw),
        (f"{dom}/feature", "", rw),
        (f"{dom}/attr", "", rw),
        (f"{dom}/error", "", rw),
    ]


def identity_nodes(domid: int, name: str, uuid: str) -> list[Node]:
    """The guest's own part of :func:`domain_make_nodes`: its name and ``/vm/<uuid>``."""
    dom = domain_path(domid)
    vm = f"/vm/{uuid}"
    return [
        (vm, "", Perms.private(0, domid)),
        (f"{dom}/vm", vm, None),
        (f"{dom}/name", name, None),
        (f"{vm}/name", name, None),
        (f"{vm}/uuid", uuid, None),
    ]


def build_post_nodes(domid: int, uuid: str, *, max_memkb: int, target_memkb: int,
                     vcpus: int, max_vcpus: int, store_port: int, store_mfn: int,
                     start_time: float, kernel: str | None, ramdisk: str | None = None,
                     cmdline: str | None = None) -> list[Node]:
    """What libxl__build_post writes once the guest is built (then it introduces it),
    with the ``/vm/<uuid>/image`` entries libxl__build_pv hands it (``kernel`` None: a
    PVH guest, for which libxl writes only the start time)."""
    dom = domain_path(domid)
    nodes: list[Node] = [
        (f"{dom}/memory/static-max", str(max_memkb), None),
        (f"{dom}/memory/target", str(target_memkb), None),
        (f"{dom}/memory/videoram", "0", None),
        (f"{dom}/domid", str(domid), None),
        (f"{dom}/store/port", str(store_port), None),
        (f"{dom}/store/ring-ref", str(store_mfn), None),
    ]
    for i in range(max_vcpus):
        nodes.append((f"{dom}/cpu/{i}/availability", "online" if i < vcpus else "offline",
                      None))
    vm = f"/vm/{uuid}"
    if kernel is not None:
        nodes += [(f"{vm}/image/ostype", "linux", None),
                  (f"{vm}/image/kernel", kernel, None)]
        if ramdisk is not None:
            nodes.append((f"{vm}/image/ramdisk", ramdisk, None))
        if cmdline:
            nodes.append((f"{vm}/image/cmdline", cmdline, None))
    nodes.append((f"{vm}/start_time", f"{start_time:.2f}", None))
    return nodes


def write_nodes(t: Transaction, nodes: list[Node]) -> None:
    for path, value, perms in nodes:
        if value == "" and perms is not None:
            t.mkdir(path)
        else:
            t.write(path, value)
        if perms is not None:
            t.set_perms(path, perms)
