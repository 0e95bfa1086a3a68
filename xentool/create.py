"""``create``: a PV or PVH guest from a DomainConfig, libxl's ``domain_create`` in Python.

Every step runs in a :class:`xentool.journal.Journal` that registers its undo; if a later
step fails (or SIGINT/SIGTERM arrives) the undos run in reverse, so a failed create leaves
no domain, no memory, no XenStore node, no backend and no hotplug state behind (libxl's
domain_create failure path).  A create killed outright leaves a crash record naming the
domid, so ``destroy`` and ``list`` know the domain is debris.

The XenStore nodes it writes are libxl 4.17's (:mod:`xentool.nodes`).  A PV guest of the
size of a domain shell that xentoold keeps ready takes the shell instead of making a domain
(:mod:`xentool.shells`).
"""

from __future__ import annotations

import contextlib
import time
import uuid as uuidlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xenstore.paths import domain_path, libxl_domain_path
from xentool.config.model import DomainConfig, DomainType
from xentool.errors import XentoolError
from xentool.logs import get_logger
from xentool.nodes import (
    build_post_nodes,
    domain_make_nodes,
    identity_nodes,
    write_nodes,
)
from xentool.state import kernel_cache_dir

if TYPE_CHECKING:
    from collections.abc import Callable

    from domain_builder import pv
    from domain_builder.image import KernelImage
    from domain_builder.layout import BuildPlan
    from domain_builder.pvh import BuiltPvh, PvhPlan
    from domain_builder.xenctrl import CreateConfig, XenCtrl
    from xenstore.client import Store
    from xenstore.devices.common import DeviceNodes
    from xentool.config.xlconf import GlobalConfig
    from xentool.journal import Journal
    from xentool.settings import VcpuAffinity
    from xentool.shells import Shape, Taken

log = get_logger(__name__)

# ---------------------------------------------------------------------------------------------
# create


@dataclass(frozen=True)
class Prepared:
    """The pure part of a create: image parsed, ramdisk read, layout computed.  For a PVH
    guest ``ramdisk`` is the module as it goes to the guest (gzip inflated)."""

    image: KernelImage
    ramdisk: bytes | None
    plan: BuildPlan | PvhPlan

    @property
    def target_memkb(self) -> int:
        return self.plan.nr_pages * 4

    @property
    def max_memkb(self) -> int:
        return self.plan.max_pages * 4


def prepare(config: DomainConfig) -> Prepared:
    """Parse the kernel, read the ramdisk and compute the layout (no Xen needed)."""
    from domain_builder.image import load_kernel, load_ramdisk

    if config.type not in (DomainType.PV, DomainType.PVH):
        raise XentoolError(f"{config.name}: type={config.type.value} guests are not supported "
                           f"by this builder, only type=\"pv\" and type=\"pvh\"")
    if not config.kernel:
        raise XentoolError(f"{config.name}: no kernel= given; a {config.type.value.upper()} "
                           "guest needs one")
    # Decompressed kernels are cached (root-only directory); see xentool.state.
    image = load_kernel(config.kernel, cache_dir=kernel_cache_dir())
    ramdisk = load_ramdisk(config.ramdisk) if config.ramdisk else None
    maxmem = max(config.maxmem, config.memory)
    max_vcpus = max(config.maxvcpus, config.vcpus)
    if config.type is DomainType.PVH:
        from domain_builder import pvh

        module = pvh.module_image(ramdisk) if ramdisk is not None else None
        pvh_plan = pvh.compute(
            image, memory_mib=config.memory, maxmem_mib=maxmem, vcpus=config.vcpus,
            max_vcpus=max_vcpus, ramdisk_size=len(module) if module else 0,
            cmdline=config.cmdline, paging_pool_mib=config.shadow_memory,
            # libxl sizes the pool before it defaults max_vcpus to 1: a config that says
            # neither vcpus nor maxvcpus gets no room for vCPUs in it.
            pool_vcpus=max_vcpus if config.vcpus_set or config.maxvcpus_set else 0)
        return Prepared(image, module, pvh_plan)
    from domain_builder.layout import compute

    plan = compute(image, memory_mib=config.memory, maxmem_mib=maxmem,
                   vcpus=config.vcpus, max_vcpus=max_vcpus,
                   ramdisk_size=len(ramdisk) if ramdisk else 0, cmdline=config.cmdline or "")
    return Prepared(image, ramdisk, plan)


def plan_document(config: DomainConfig, prep: Prepared) -> dict[str, object]:
    """What ``create --plan`` shows: the image as the builder sees it and the layout."""
    return {
        "name": config.name,
        "kernel": config.kernel,
        "ramdisk": config.ramdisk,
        "image": {k: v for k, v in prep.image.summary().items() if k != "segments"},
        "plan": prep.plan.to_dict(),
    }


@dataclass(frozen=True)
class Restoring:
    """What a restore gives the create steps instead of a :class:`Prepared`: the sizes
    from the saved configuration and ``build(xc, domid)``, which fills the new domain from
    the stream instead of booting a kernel (:mod:`xentool.migration.restore`)."""

    vcpus: int
    max_vcpus: int
    target_memkb: int
    max_memkb: int
    build: Callable[[XenCtrl, int], pv.BuiltPv]


@dataclass(frozen=True)
class Source:
    """Where a config came from, recorded so the monitor can create the domain again."""

    path: str
    overrides: tuple[str, ...] = ()
    text: str | None = None  # None: the file's content now


def create(config: DomainConfig, *, paused: bool = False, source: Source | None = None,
           handle_signals: bool = False, gconf: GlobalConfig | None = None,
           ignore_masks: bool = False) -> int:
    """Create the PV guest described by ``config`` and return its domid.

    The guest runs unless ``paused``.  With ``source`` the domain gets a record
    (:mod:`xentool.records`), so its on_* actions can be applied.  ``handle_signals``
    makes SIGINT/SIGTERM/SIGHUP roll the create back (for command-line front ends; a
    library caller keeps its own handlers).  On any failure nothing is left behind.

    ``gconf`` is xl.conf (:mod:`xentool.config.xlconf`, xl's defaults if None): its
    defaults fill in what ``config`` leaves out; with autoballoon the create runs under
    its global lock after dom0 made room (:mod:`xentool.balloon`); its affinity masks
    restrict the vCPUs unless ``ignore_masks`` (``create -i``).
    """
    from xentool.config.xlconf import GlobalConfig, apply_global_defaults
    from xentool.devices import preflight

    if config.refusals:  # what xl would build and xentool cannot: before anything exists
        raise XentoolError(config.refusals[0])
    gconf = gconf or GlobalConfig()
    gconf.check_applicable()
    config = apply_global_defaults(config, gconf)
    prep = prepare(config)
    preflight(config)  # a bad disk or vif spec fails before anything exists

    from domain_builder.xenctrl import XenCtrl
    from xenstore.client import Store
    from xentool.balloon import freemem, global_lock, need_memkb
    from xentool.journal import Journal, default_record_dir

    with XenCtrl() as xc, Store.connect() as xs:
        balloon = gconf.autoballoon_enabled(xc.version().commandline)
        with global_lock(gconf.lockfile) if balloon else contextlib.nullcontext():
            if balloon:
                pool = getattr(prep.plan, "paging_pool_kb", None)
                freemem(xc, xs, need_memkb(prep.target_memkb, hvm_pool_kb=pool))
            with Journal("create", record_dir=default_record_dir(),
                         handle_signals=handle_signals) as j:
                return _create_steps(j, xc, xs, config, prep, paused, source, gconf,
                                     ignore_masks)


def _create_steps(j: Journal, xc: XenCtrl, xs: Store, config: DomainConfig,
                  prep: Prepared | Restoring, paused: bool, source: Source | None,
                  gconf: GlobalConfig, ignore_masks: bool) -> int:
    from domain_builder import pv
    from domain_builder.pvh import PvhPlan
    from xenstore.devices.attach import Force, attach, detach, ref_of
    from xenstore.devices.common import write_nodes as write_device
    from xentool.config.xlconf import global_mask
    from xentool.devices import config_devices, device_type
    from xentool.devices.console import built_nodes as console_nodes
    from xentool.locks import create_lock
    from xentool.session import name_to_domid
    from xentool.settings import sched_scheduler, vcpu_affinities

    restoring = isinstance(prep, Restoring)
    bp = prep if isinstance(prep, Restoring) else prep.plan
    pvh = config.type is DomainType.PVH
    uuid = config.uuid or uuidlib.uuid4()
    uuid_s = str(uuid)
    # The name is checked and claimed (written to XenStore) under the create lock, so two
    # parallel creates of the same name cannot both succeed.
    with create_lock():
        if name_to_domid(xc, xs, config.name) is not None:
            raise XentoolError(f'domain with name "{config.name}" already exists')
        poolid = _pool_id(xc, xs, config.pool)
        # Refused before anything exists: a weight for a scheduler without one, a cpus
        # set that names no pcpu of this host.
        sched = sched_scheduler(config, xc.cpupool_info(poolid).sched_id)
        max_cpus = xc.max_cpus()
        mask = None if ignore_masks else global_mask(gconf, max_cpus, hvm=pvh)
        affinities = vcpu_affinities(config, bp.max_vcpus, max_cpus, mask)
        cc = create_config(config, gconf, poolid=poolid, max_vcpus=bp.max_vcpus,
                           handle=uuid.bytes)
        shell = _take_shell(j, xc, xs, cc, prep)
        if shell is not None:
            domid = shell.domid
            j.note("domid", domid)
            shell.adopted()  # the journal's record names the domain from here
            j.do("domain handle", lambda: xc.set_handle(domid, uuid.bytes))
        else:
            domid = j.do("create domain", lambda: xc.create_domain(cc),
                         undo=lambda d: _destroy_and_release(xc, xs, d))
            j.note("domid", domid)
        j.note("uuid", uuid_s)
        log.info("%s domain %d for %s", "took shell" if shell else "created", domid,
                 config.name)

        def make_nodes() -> None:
            with xs.transaction() as t, t.pipelined():
                t.rm(f"/vm/{uuid_s}", missing_ok=True)
                if shell is not None:  # its other nodes are the shell's
                    write_nodes(t, identity_nodes(domid, config.name, uuid_s))
                    return
                t.rm(domain_path(domid), missing_ok=True)
                t.rm(libxl_domain_path(domid), missing_ok=True)
                write_nodes(t, domain_make_nodes(domid, config.name, uuid_s,
                                                 config.type.value))

        # The undo is registered first: a transaction that failed half-way wrote nothing,
        # but removing nodes that are not there is harmless either way.
        j.push("xenstore nodes", lambda: _rm_nodes(xs, domid, uuid_s))
        j.do("xenstore nodes", make_nodes)

    # claim_mode (xl.conf, on by default): as libxl, the guest's memory is claimed before
    # it is populated, so a parallel create cannot take it half-way through the build.
    claim = (lambda n: xc.claim_pages(domid, n)) if gconf.claim_mode else None
    built: pv.BuiltPv | BuiltPvh
    if isinstance(prep, Restoring):
        restore = prep.build
        built = j.do("restore", lambda: restore(xc, domid))
    elif isinstance(bp, PvhPlan):
        built = j.do("build", lambda: _build_pvh(xc, domid, config, prep, bp, claim))
    elif shell is not None:
        shell_plan = prep.plan
        assert not isinstance(shell_plan, PvhPlan)
        memory = shell.shell.memory

        def load() -> pv.BuiltPv:
            # The one limit that differs between guests of a shell's size: maxmem.
            xc.set_memmap_limit(domid, shell_plan.max_pages * 4)
            return pv.load(xc, domid, prep.image, shell_plan, prep.ramdisk, memory)

        built = j.do("build", load)
    else:
        plan = prep.plan
        assert not isinstance(plan, PvhPlan)
        built = j.do("build", lambda: pv.build(xc, domid, prep.image, plan, prep.ramdisk,
                                               claim=claim))
    # After the build: the vCPUs exist only once it has set max_vcpus (libxl too sets
    # affinity after xc_domain_max_vcpus and the scheduler parameters in build_post).
    # A restored guest's TSC mode came with its stream.
    _sched_steps(j, xc, config, domid, sched, affinities, tsc=not restoring)

    def post_nodes() -> None:
        with xs.transaction() as t, t.pipelined():
            write_nodes(t, build_post_nodes(
                domid, uuid_s, max_memkb=prep.max_memkb, target_memkb=prep.target_memkb,
                vcpus=bp.vcpus, max_vcpus=bp.max_vcpus, store_port=built.store_evtchn,
                store_mfn=built.store_mfn, start_time=time.time(),
                kernel=None if pvh else config.kernel or "", ramdisk=config.ramdisk,
                cmdline=config.cmdline))
            write_device(t, console_nodes(domid, built.console_evtchn, built.console_mfn))

    j.do("post-build nodes", post_nodes)
    # No undo of its own: releasing a live domain would make xenconsoled look, find it
    # alive, keep its console mapping and so keep the destroyed domain a zombie.  The
    # domain's undo releases it once it is dying.
    j.do("introduce to xenstored",
         lambda: xs.introduce_domain(domid, built.store_mfn, built.store_evtchn))

    def attach_step(dev: DeviceNodes) -> None:
        # attach() unplugs the device again if it fails half-way; once it is in, the undo
        # unplugs it without asking the (paused, never started) guest.
        script = device_type(dev.kind).hotplug
        j.do(f"attach {dev.kind} {dev.devid}", lambda: attach(xs, dev, has_script=script),
             undo=lambda _: detach(xs, ref_of(dev), Force.ON, has_script=script))

    for dev in config_devices(domid, config):
        attach_step(dev)
    j.do("stored config",
         lambda: _store_libxl_config(xc, config, domid, uuid, claim_mode=gconf.claim_mode),
         undo=lambda path: _unlink(path))
    if source is not None:
        from xentool.records import remove_domain_config, save_domain_config

        j.do("save config",
             lambda: save_domain_config(config, uuid_s, source.path, source.overrides,
                                        config_text=source.text),
             undo=lambda _: remove_domain_config(uuid_s))
    if not paused:
        j.do("unpause", lambda: xc.unpause(domid))
    return domid


def create_config(config: DomainConfig, gconf: GlobalConfig, *, poolid: int,
                  max_vcpus: int, handle: bytes) -> CreateConfig:
    """The ``XEN_DOMCTL_createdomain`` inputs of ``config``'s domain, as libxl makes them."""
    from domain_builder.xenctrl import CreateConfig

    return CreateConfig(
        max_vcpus=max_vcpus, handle=handle,
        grant_version=gconf.max_grant_version or 2,
        max_grant_frames=config.max_grant_frames or -1,
        max_maptrack_frames=config.max_maptrack_frames or -1,
        max_evtchn_port=config.max_event_channels or 1023, cpupool_id=poolid,
        **(_pvh_container(config) if config.type is DomainType.PVH else {}),
    )


def shell_shape(memory_mib: int, vcpus: int) -> Shape:
    """The shape of a PV guest with ``memory`` MiB and ``vcpus`` vCPUs and nothing else
    set, as create makes it with this host's xl.conf."""
    from xentool.config.model import DomainConfig
    from xentool.config.xlconf import apply_global_defaults, load_global_config
    from xentool.shells import Shape

    gconf = load_global_config()
    config = apply_global_defaults(DomainConfig(source="xentoold", name="shell",
                                                memory=memory_mib, vcpus=vcpus,
                                                maxvcpus=vcpus), gconf)
    pages = memory_mib << 8
    return Shape(create_config(config, gconf, poolid=0, max_vcpus=vcpus,
                               handle=bytes(16)), pages, pages)


def _take_shell(j: Journal, xc: XenCtrl, xs: Store, cc: CreateConfig,
                prep: Prepared | Restoring) -> Taken | None:
    """A ready domain shell that fits this PV guest (:mod:`xentool.shells`), taken in a
    step of its own (so a fault can be injected there), or None: no step at all when no
    shell is ready, as on a host without the shell pool."""
    from domain_builder.layout import BuildPlan
    from xentool import shells

    if not isinstance(prep, Prepared) or not isinstance(prep.plan, BuildPlan) \
            or not shells.available():
        return None
    nr_pages = prep.plan.nr_pages

    def undo(taken: Taken | None) -> None:
        if taken is not None:  # destroyed with the rest, never put back
            _destroy_and_release(xc, xs, taken.domid)
            shells.remove_nodes(xs, taken.domid)
            taken.adopted()

    return j.do("take shell", lambda: shells.take(xc, cc, nr_pages), undo=undo)


def _pvh_container(config: DomainConfig) -> dict[str, int]:
    """What libxl asks of XEN_DOMCTL_createdomain for a PVH guest: an HVM container with
    hardware-assisted paging and nothing emulated but the local APICs."""
    from domain_builder.xenctrl import CDF_HAP, CDF_HVM, CDF_NESTED_VIRT, CDF_OOS_OFF

    flags = CDF_HVM | CDF_HAP
    if config.oos is False:
        flags |= CDF_OOS_OFF
    if config.nestedhvm:
        flags |= CDF_NESTED_VIRT
    return {"flags": flags, "emulation_flags": XEN_X86_EMU_LAPIC}


#: XEN_X86_EMU_LAPIC (public/arch-x86/xen.h): the one device Xen emulates for PVH.
XEN_X86_EMU_LAPIC = 1 << 0


def _build_pvh(xc: XenCtrl, domid: int, config: DomainConfig, prep: Prepared,
               plan: PvhPlan, claim: Callable[[int], None] | None) -> BuiltPvh:
    """The PVH build with what libxl__build_pre adds for an HVM container: its timer
    mode and the CPUID policy (with ``cpuid=``, invariant TSC for a guest that will not
    migrate or always emulates the TSC, nested virtualisation)."""
    from domain_builder import pvh, xenctrl
    from domain_builder.cpuid import policy

    entries = [(e.leaf, e.subleaf, e.regs) for e in
               policy(config.cpuid or (), xenctrl.cpu_feature_bits())]
    itsc = bool(config.nomigrate) or config.tsc_mode == 1

    def cpuid() -> None:
        xc.apply_cpuid_policy(domid, entries, itsc=itsc, nested_virt=bool(config.nestedhvm))

    cpu = pvh.CpuState(cpu_record=lambda rip, rbx: xenctrl.hvm_boot_cpu(rip=rip, rbx=rbx),
                       mtrr_def_type_at=xenctrl.hvm_mtrr_def_type_offset())
    return pvh.build(xc, domid, prep.image, plan, prep.ramdisk, cpu, cpuid=cpuid,
                     timer_mode=pvh.TIMER_MODE_DEFAULT if config.timer_mode is None
                     else config.timer_mode, claim=claim)


def _store_libxl_config(xc: XenCtrl, config: DomainConfig, domid: int,
                        uuid: uuidlib.UUID, *, claim_mode: bool) -> str:
    """Keep the domain's configuration where libxl keeps it (``libxl-json`` userdata), so
    ``xl list -l`` and the other xl verbs know a xentool guest like one of their own.
    Written under a temporary name and renamed, as libxl__userdata_store does."""
    import os

    from xentool.config.libxl_json import stored_dumps, to_libxl
    from xentool.state import LIBXL_USERDATA_DIR, libxl_userdata_path

    path = libxl_userdata_path(domid, str(uuid), "libxl-json")
    tmp = os.path.join(LIBXL_USERDATA_DIR, f"userdata-n.{domid}.{uuid}.libxl-json")
    os.makedirs(LIBXL_USERDATA_DIR, mode=0o755, exist_ok=True)
    # "all" is every bit of libxl's cpumap (whole bytes), not just the CPUs there are.
    text = stored_dumps(to_libxl(config, uuid, xc.cpumap_size() * 8, stored=True,
                                 claim_mode=claim_mode))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def _unlink(path: str) -> None:
    import contextlib
    import os

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _pool_id(xc: XenCtrl, xs: Store, name: str | None) -> int:
    """The cpupool ``pool=`` names (libxl_name_to_cpupoolid); Pool-0 when none."""
    if name is None:
        return 0
    for pool in xc.cpupools():
        if xs.get(f"/local/pool/{pool.poolid}/name") == name:
            return pool.poolid
    raise XentoolError(f"Illegal pool specified: {name}")


def _sched_steps(j: Journal, xc: XenCtrl, config: DomainConfig, domid: int,
                 sched: str | None, affinities: list[VcpuAffinity], tsc: bool = True) -> None:
    """Weight, cap, TSC mode and vCPU affinity, as libxl sets them around the build.
    Nothing to undo: they go with the domain."""
    from dataclasses import replace

    if sched is not None:
        def set_sched() -> None:
            get, put = ((xc.sched_credit, xc.set_sched_credit) if sched == "credit"
                        else (xc.sched_credit2, xc.set_sched_credit2))
            cur = get(domid)
            put(domid, replace(cur, weight=config.cpu_weight or cur.weight,
                               cap=cur.cap if config.cpu_cap is None else config.cpu_cap))

        j.do("scheduler parameters", set_sched)
    if tsc and config.tsc_mode:  # libxl__arch_domain_create; 0 is what Xen starts a domain with
        mode = config.tsc_mode
        j.do("tsc mode", lambda: xc.set_tsc_mode(domid, mode))
    if affinities:
        def set_affinity() -> None:
            for a in affinities:
                xc.set_vcpu_affinity(domid, a.vcpu, a.hard, a.soft)

        j.do("vcpu affinity", set_affinity)


def _destroy_and_release(xc: XenCtrl, xs: Store, domid: int) -> None:
    xc.destroy(domid)
    try:
        # @releaseDomain now: xenconsoled and others drop what they hold of the dying domain.
        xs.release_domain(domid)
    except OSError:
        pass  # never introduced


def _rm_nodes(xs: Store, domid: int, uuid: str) -> None:
    from xenstore.devices.common import path_cleanup

    with xs.transaction() as t:
        for path in (domain_path(domid), f"/vm/{uuid}", libxl_domain_path(domid)):
            t.rm(path, missing_ok=True)
        # Like libxl, also the parents the console backend leaves empty.
        path_cleanup(t, f"/local/domain/0/backend/console/{domid}")
