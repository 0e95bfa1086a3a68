"""The validated, immutable domain configuration that the builder and device code consume.

Field meanings follow libxl's ``libxl_domain_config`` (see ``libxl_types.idl``); sizes are
kept in MiB as written in xl.cfg, devices keep both what the file said and what xl derives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from uuid import UUID


class DomainType(Enum):
    PV = "pv"
    PVH = "pvh"
    HVM = "hvm"


class ShutdownAction(Enum):
    """What to do when the guest shuts down for a reason (xl.cfg ``on_*``).

    ``value`` is the xl.cfg spelling; :attr:`libxl_name` the libxl JSON one.
    """

    DESTROY = "destroy"
    RESTART = "restart"
    RENAME_RESTART = "rename-restart"
    PRESERVE = "preserve"
    COREDUMP_DESTROY = "coredump-destroy"
    COREDUMP_RESTART = "coredump-restart"
    SOFT_RESET = "soft-reset"

    @property
    def libxl_name(self) -> str:
        return "restart_rename" if self is ShutdownAction.RENAME_RESTART else \
            self.value.replace("-", "_")


class DiskFormat(Enum):
    UNKNOWN = "unknown"
    QCOW = "qcow"
    QCOW2 = "qcow2"
    VHD = "vhd"
    RAW = "raw"
    EMPTY = "empty"
    QED = "qed"


class DiskBackend(Enum):
    UNKNOWN = "unknown"
    PHY = "phy"
    TAP = "tap"
    QDISK = "qdisk"
    STANDALONE = "standalone"


class DiskSpecification(Enum):
    UNKNOWN = "unknown"
    XEN = "xen"
    VIRTIO = "virtio"


class NicType(Enum):
    UNKNOWN = "unknown"
    VIF_IOEMU = "vif_ioemu"
    VIF = "vif"


@dataclass(frozen=True)
class DiskSpec:
    """One ``disk=[...]`` entry, as libxlu's disk parser leaves ``libxl_device_disk``.

    ``target`` is None only for an empty removable (cdrom) drive.
    """

    vdev: str
    target: str | None
    format: DiskFormat = DiskFormat.RAW
    readwrite: bool = True
    is_cdrom: bool = False
    removable: bool = False
    backend: DiskBackend = DiskBackend.UNKNOWN
    backend_domname: str | None = None
    script: str | None = None
    specification: DiskSpecification = DiskSpecification.UNKNOWN
    direct_io_safe: bool = False
    discard_enable: bool | None = None
    trusted: bool | None = None
    colo_enable: bool | None = None
    colo_host: str | None = None
    colo_port: int | None = None
    colo_export: str | None = None
    active_disk: str | None = None
    hidden_disk: str | None = None


@dataclass(frozen=True)
class VifSpec:
    """One ``vif=[...]`` entry (``libxl_device_nic`` as xl fills it in).

    ``mac`` is always set: the one from the file, or a stable generated ``00:16:3e:…``
    address (``mac_generated`` True) so the guest keeps its MAC across restarts.
    """

    devid: int
    mac: str
    mac_generated: bool = False
    bridge: str | None = None
    ip: str | None = None
    script: str | None = None
    vifname: str | None = None
    nictype: NicType = NicType.UNKNOWN
    model: str | None = None
    backend_domname: str | None = None
    gatewaydev: str | None = None
    mtu: int | None = None
    rate_bytes_per_interval: int | None = None
    rate_interval_usecs: int | None = None
    trusted: bool | None = None


@dataclass(frozen=True)
class CpuSet:
    """A set of pcpus as one ``cpus`` string says it (``"all,^0"``, ``"0-3,^2"``).

    "all" means every pcpu of the host, so the set is kept symbolic until the host's
    pcpu count is known: (all pcpus if ``all``) + ``added`` - ``removed``.
    """

    all: bool
    added: frozenset[int]
    removed: frozenset[int] = frozenset()

    def resolve(self, host_cpus: int) -> frozenset[int]:
        base = set(range(host_cpus)) if self.all else set()
        return frozenset(c for c in (base | self.added) - self.removed if c < host_cpus)


@dataclass(frozen=True)
class CpuAffinity:
    """A vcpu affinity as xl.cfg ``cpus``/``cpus_soft`` gives it: one CpuSet per vcpu.

    A list in the file gives one set per listed vcpu; a single string applies to every
    vcpu (xl sizes both by the domain's maxvcpus).
    """

    per_vcpu: tuple[CpuSet, ...]
    from_list: bool


@dataclass(frozen=True)
class DomainConfig:
    """Everything needed to build and run a PV or PVH guest, validated; sizes in MiB."""

    name: str
    source: str
    type: DomainType = DomainType.PV
    uuid: UUID | None = None
    kernel: str | None = None
    ramdisk: str | None = None
    cmdline: str | None = None
    memory: int = 32
    maxmem: int = 32
    memory_set: bool = False
    maxmem_set: bool = False
    vcpus: int = 1
    maxvcpus: int = 1
    vcpus_set: bool = False
    maxvcpus_set: bool = False
    cpus: CpuAffinity | None = None
    cpus_soft: CpuAffinity | None = None
    cpu_weight: int | None = None
    cpu_cap: int | None = None
    on_poweroff: ShutdownAction = ShutdownAction.DESTROY
    on_reboot: ShutdownAction = ShutdownAction.RESTART
    on_watchdog: ShutdownAction = ShutdownAction.DESTROY
    on_crash: ShutdownAction = ShutdownAction.DESTROY
    on_soft_reset: ShutdownAction = ShutdownAction.SOFT_RESET
    disks: tuple[DiskSpec, ...] = ()
    vifs: tuple[VifSpec, ...] = ()
    max_grant_frames: int | None = None
    max_maptrack_frames: int | None = None
    max_event_channels: int | None = None
    pool: str | None = None
    e820_host: bool | None = None
    tsc_mode: int | None = None  # libxl_tsc_mode: 0 default, 1 always_emulate, 2 native
    nomigrate: bool | None = None
    # PVH guests (type="pvh"); None where the file says nothing.
    #: ``cpuid="host,NAME=VALUE,..."``: the (NAME, VALUE) items after ``host``.
    cpuid: tuple[tuple[str, str], ...] | None = None
    timer_mode: int | None = None  # libxl_timer_mode
    nestedhvm: bool | None = None
    shadow_memory: int | None = None  # MiB: the p2m pool
    hap: bool | None = None
    oos: bool | None = None
    altp2m: int | None = None  # libxl_altp2m_mode
    pvshim: bool | None = None
    warnings: tuple[str, ...] = field(default=(), compare=False)
    #: What xl would build but xentool cannot (a qcow2 disk, a driver-domain vif), one
    #: ``file:line:col: message`` each: ``config-check`` and ``create`` refuse the config
    #: before anything is built; ``create -n`` still prints what xl would.
    refusals: tuple[str, ...] = field(default=(), compare=False)
    #: The xl.cfg text (with any overrides appended) this config was read from; None for
    #: one built in Python.  A record keeps it, to create the domain again on restart.
    text: str | None = field(default=None, compare=False, repr=False)

    @property
    def memory_kib(self) -> int:
        return self.memory * 1024

    @property
    def maxmem_kib(self) -> int:
        return self.maxmem * 1024
