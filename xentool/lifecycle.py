"""Domain lifecycle: ``create`` builds a PV guest from a DomainConfig.

Every step that changes the system registers its undo in a :class:`Rollback`; if a later
step fails, the undos run in reverse so a failed create leaves no domain, no memory and
no XenStore nodes behind (like libxl's domain_create failure path).

The XenStore layout and permissions are libxl 4.17's (libxl__domain_make in libxl_create.c,
libxl__build_post in libxl_dom.c): ``/local/domain/<id>`` is owned by dom0 and readable by
the guest, the guest owns the few nodes it must write (control/shutdown, data, ...),
``/vm/<uuid>`` mirrors name and uuid, ``/libxl/<id>`` is dom0's private bookkeeping.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field

from xenstore.client import Perms
from xentool.errors import XentoolError

log = logging.getLogger(__name__)

KERNEL_CACHE = "/var/cache/xentool/kernels"


@dataclass
class Rollback:
    """Undo actions, run newest first when the work they guard fails."""

    steps: list[tuple[str, Callable[[], None]]] = field(default_factory=list)

    def push(self, what: str, undo: Callable[[], None]) -> None:
        self.steps.append((what, undo))

    def run(self) -> list[str]:
        """Undo everything; returns what could not be undone (logged, never raised)."""
        failed = []
        while self.steps:
            what, undo = self.steps.pop()
            try:
                undo()
            except Exception as exc:  # noqa: BLE001 - keep undoing the rest
                log.warning("rollback: could not undo %s: %s", what, exc)
                failed.append(what)
        return failed

    def clear(self) -> None:
        self.steps.clear()


# ---------------------------------------------------------------------------------------------
# XenStore nodes (pure)

Node = tuple[str, str, "Perms | None"]  # path, value, perms (None: inherit from the parent)


def domain_make_nodes(domid: int, name: str, uuid: str) -> list[Node]:
    """What libxl__domain_make writes before the build, in its order."""
    dom = f"/local/domain/{domid}"
    vm = f"/vm/{uuid}"
    lx = f"/libxl/{domid}"
    ro = Perms.private(0, domid)  # dom0 owns, the guest reads
    rw = Perms.private(domid)  # the guest owns
    no = Perms.private(0)  # dom0 only
    nodes: list[Node] = [
        (dom, "", ro),
        (vm, "", ro),
        (lx, "", no),
        (f"{lx}/device", "", no),
        (f"{lx}/type", "pv", None),
        (f"{dom}/vm", vm, None),
        (f"{dom}/name", name, None),
        (f"{vm}/name", name, None),
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
        (f"{vm}/uuid", uuid, None),
    ]
    return nodes


def build_post_nodes(domid: int, uuid: str, *, max_memkb: int, target_memkb: int,
                     vcpus: int, max_vcpus: int, store_port: int, store_mfn: int,
                     start_time: float) -> list[Node]:
    """What libxl__build_post writes once the guest is built (then it introduces it)."""
    dom = f"/local/domain/{domid}"
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
    nodes.append((f"/vm/{uuid}/start_time", f"{start_time:.2f}", None))
    return nodes


def write_nodes(t, nodes: list[Node]) -> None:
    for path, value, perms in nodes:
        if value == "" and perms is not None:
            t.mkdir(path)
        else:
            t.write(path, value)
        if perms is not None:
            t.set_perms(path, perms)


# ---------------------------------------------------------------------------------------------
# create


@dataclass(frozen=True)
class Prepared:
    """The pure part of a create: image parsed, ramdisk read, layout computed."""

    image: object  # domain_builder.image.KernelImage
    ramdisk: bytes | None
    plan: object  # domain_builder.layout.BuildPlan


def prepare(config) -> Prepared:
    """Parse the kernel, read the ramdisk and compute the layout (no Xen needed)."""
    from domain_builder.image import load_kernel, load_ramdisk
    from domain_builder.layout import compute
    from xentool.config.model import DomainType

    if config.type is not DomainType.PV:
        raise XentoolError(f"{config.name}: type={config.type.value} guests are not supported "
                           f"by this builder, only type=\"pv\"")
    if not config.kernel:
        raise XentoolError(f"{config.name}: no kernel= given; a PV guest needs one")
    # Decompressed kernels are cached (root-only directory); empty variable disables it.
    cache = os.environ.get("XENTOOL_KERNEL_CACHE", KERNEL_CACHE) or None
    image = load_kernel(config.kernel, cache_dir=cache)
    ramdisk = load_ramdisk(config.ramdisk) if config.ramdisk else None
    plan = compute(image, memory_mib=config.memory, maxmem_mib=max(config.maxmem, config.memory),
                   vcpus=config.vcpus, max_vcpus=max(config.maxvcpus, config.vcpus),
                   ramdisk_size=len(ramdisk) if ramdisk else 0, cmdline=config.cmdline or "")
    return Prepared(image, ramdisk, plan)


def print_plan(config, prep: Prepared, out=None) -> None:
    doc = {
        "name": config.name,
        "kernel": config.kernel,
        "ramdisk": config.ramdisk,
        "image": {k: v for k, v in prep.image.summary().items()  # type: ignore[attr-defined]
                  if k != "segments"},
        "plan": prep.plan.to_dict(),  # type: ignore[attr-defined]
    }
    (out or sys.stdout).write(json.dumps(doc, indent=2) + "\n")


def create(config, *, paused: bool, console: bool, plan: bool = False) -> int:
    """Create and start the PV guest described by ``config``; returns its domid.

    With ``plan`` only the build plan is printed (nothing touches Xen) and 0 is returned.
    """
    prep = prepare(config)
    if plan:
        print_plan(config, prep)
        return 0

    from domain_builder import pv
    from domain_builder.xenctrl import CreateConfig, XenCtrl
    from xenstore.client import Store
    from xenstore.devices.common import write_nodes as write_device
    from xenstore.devices.console import console_nodes
    from xentool.domains import name_to_domid

    bp = prep.plan
    uuid = config.uuid or uuidlib.uuid4()
    uuid_s = str(uuid)
    undo = Rollback()
    with XenCtrl() as xc, Store.connect() as xs:
        if name_to_domid(xc, xs, config.name) is not None:
            raise XentoolError(f'domain with name "{config.name}" already exists')
        try:
            cc = CreateConfig(
                max_vcpus=bp.max_vcpus, handle=uuid.bytes, grant_version=2,
                max_grant_frames=config.max_grant_frames or -1,
                max_maptrack_frames=config.max_maptrack_frames or -1,
                max_evtchn_port=config.max_event_channels or 1023,
            )
            domid = xc.create_domain(cc)
            undo.push(f"domain {domid}", lambda: xc.destroy(domid))
            log.info("created domain %d for %s", domid, config.name)

            dom = f"/local/domain/{domid}"
            undo.push("xenstore nodes", lambda: _rm_nodes(xs, domid, uuid_s))
            with xs.transaction() as t:
                t.rm(dom, missing_ok=True)
                t.rm(f"/vm/{uuid_s}", missing_ok=True)
                t.rm(f"/libxl/{domid}", missing_ok=True)
                write_nodes(t, domain_make_nodes(domid, config.name, uuid_s))

            built = pv.build(xc, domid, prep.image, bp, prep.ramdisk)  # type: ignore[arg-type]

            with xs.transaction() as t:
                write_nodes(t, build_post_nodes(
                    domid, uuid_s, max_memkb=bp.max_pages * 4, target_memkb=bp.nr_pages * 4,
                    vcpus=bp.vcpus, max_vcpus=bp.max_vcpus, store_port=built.store_evtchn,
                    store_mfn=built.store_mfn, start_time=time.time()))
                write_device(t, console_nodes(domid, built.console_evtchn, built.console_mfn))
            xs.introduce_domain(domid, built.store_mfn, built.store_evtchn)
            undo.push("xenstored introduction", lambda: xs.release_domain(domid))
            if not paused:
                xc.unpause(domid)
        except BaseException:
            left = undo.run()
            if left:
                log.error("a failed create left behind: %s", ", ".join(left))
            raise
    if console:
        from xentool.commands.console import exec_console

        exec_console(domid)
    return domid


def _rm_nodes(xs, domid: int, uuid: str) -> None:
    for path in (f"/local/domain/{domid}", f"/vm/{uuid}", f"/libxl/{domid}",
                 f"/local/domain/0/backend/console/{domid}"):
        xs.rm(path, missing_ok=True)
