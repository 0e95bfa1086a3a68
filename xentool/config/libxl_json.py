"""A DomainConfig as the libxl_domain_config JSON that ``xl create -n`` prints.

libxl's generated JSON writer (``gentypes.py``) prints a field only when it differs from
its IDL default: strings when set, numbers when non-zero (or != their ``init_val``),
defbools as ``"True"``/``"False"`` when set, enums by lower-case name, bitmaps as the list
of set bits.  Nested structs are always printed.  We print the fields of the keys xentool
supports, with the values xl gives them before libxl fills in defaults (so a memory that
was not set is absent, and a vif without ``mac=`` has no MAC: libxl draws one at create).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from uuid import UUID

from xentool.config.model import (
    CpuAffinity,
    DiskBackend,
    DiskSpec,
    DiskSpecification,
    DomainConfig,
    NicType,
    ShutdownAction,
    VifSpec,
)


def _defbool(v: bool) -> str:
    return "True" if v else "False"


def _bitmap(bits: Iterable[int]) -> list[int]:
    return sorted(bits)


def _affinity(aff: CpuAffinity, host_cpus: int | None) -> list[list[int]] | None:
    if any(s.all for s in aff.per_vcpu) and host_cpus is None:
        return None  # needs the host's pcpu count; the caller left it out
    n = host_cpus if host_cpus is not None else 1 << 30
    return [_bitmap(s.resolve(n)) for s in aff.per_vcpu]


def _disk(d: DiskSpec) -> dict[str, object]:
    out: dict[str, object] = {}
    if d.backend_domname is not None:
        out["backend_domname"] = d.backend_domname
    if d.target is not None:
        out["pdev_path"] = d.target
    out["vdev"] = d.vdev
    if d.backend is not DiskBackend.UNKNOWN:
        out["backend"] = d.backend.value
    out["format"] = d.format.value
    if d.script is not None:
        out["script"] = d.script
    if d.removable:
        out["removable"] = 1
    if d.readwrite:
        out["readwrite"] = 1
    if d.is_cdrom:
        out["is_cdrom"] = 1
    if d.direct_io_safe:
        out["direct_io_safe"] = True
    if d.discard_enable is not None:
        out["discard_enable"] = _defbool(d.discard_enable)
    if d.specification is not DiskSpecification.UNKNOWN:
        out["specification"] = d.specification.value
    if d.colo_enable is not None:
        out["colo_enable"] = _defbool(d.colo_enable)
    for key in ("colo_host", "colo_port", "colo_export", "active_disk", "hidden_disk"):
        if getattr(d, key) is not None:
            out[key] = getattr(d, key)
    if d.trusted is not None:
        out["trusted"] = _defbool(d.trusted)
    return out


def _nic(v: VifSpec, with_mac: bool = False) -> dict[str, object]:
    out: dict[str, object] = {}
    if v.backend_domname is not None:
        out["backend_domname"] = v.backend_domname
    out["devid"] = v.devid
    if v.mtu:
        out["mtu"] = v.mtu
    if v.model is not None:
        out["model"] = v.model
    if with_mac or not v.mac_generated:
        out["mac"] = v.mac
    if v.ip is not None:
        out["ip"] = v.ip
    if v.bridge is not None:
        out["bridge"] = v.bridge
    if v.vifname is not None:
        out["ifname"] = v.vifname
    if v.script is not None:
        out["script"] = v.script
    if v.nictype is not NicType.UNKNOWN:
        out["nictype"] = v.nictype.value
    if v.rate_bytes_per_interval:
        out["rate_bytes_per_interval"] = v.rate_bytes_per_interval
    if v.rate_interval_usecs:
        out["rate_interval_usecs"] = v.rate_interval_usecs
    if v.gatewaydev is not None:
        out["gatewaydev"] = v.gatewaydev
    if v.trusted is not None:
        out["trusted"] = _defbool(v.trusted)
    return out


def to_libxl(cfg: DomainConfig, uuid: UUID | None = None,
             host_cpus: int | None = None, *, stored: bool = False) -> dict[str, object]:
    """The libxl_domain_config object for ``cfg`` (keys in libxl's order).

    ``uuid`` is printed when the config has none (xl prints the random one it drew);
    ``host_cpus`` is needed only to print affinities that say "all".  ``stored``: the
    document libxl keeps for a created domain (its ``libxl-json`` userdata, which
    ``xl list -l`` and every other xl verb read), which also names each vif's MAC.
    """
    c_info: dict[str, object] = {"type": cfg.type.value, "name": cfg.name}
    u = cfg.uuid or uuid
    if u is not None:
        c_info["uuid"] = str(u)
    if cfg.pool is not None:
        c_info["pool_name"] = cfg.pool

    b_info: dict[str, object] = {}
    # xl sets max_vcpus from maxvcpus, else from vcpus; avail_vcpus only from vcpus.
    if cfg.maxvcpus_set or cfg.vcpus_set:
        b_info["max_vcpus"] = cfg.maxvcpus
    if cfg.vcpus_set:
        b_info["avail_vcpus"] = list(range(cfg.vcpus))
    for key, aff in (("vcpu_hard_affinity", cfg.cpus), ("vcpu_soft_affinity", cfg.cpus_soft)):
        if aff is not None and aff.per_vcpu:
            maps = _affinity(aff, host_cpus)
            if maps is not None:
                b_info[key] = maps
    if (cfg.cpus is not None and cfg.cpus.from_list) or cfg.cpus_soft is not None:
        b_info["numa_placement"] = "False"
    if cfg.maxmem_set or cfg.memory_set:
        b_info["max_memkb"] = cfg.maxmem_kib
    if cfg.memory_set:
        b_info["target_memkb"] = cfg.memory_kib
    if stored:
        # libxl stores the video RAM it settled on (none for PV); without it xl list -l
        # adds libxl's "default" (-1 kB) to the target it reads back from XenStore.
        b_info["video_memkb"] = 0
    if cfg.nomigrate is not None:
        b_info["disable_migrate"] = _defbool(cfg.nomigrate)
    if cfg.tsc_mode:
        b_info["tsc_mode"] = ("default", "always_emulate", "native")[cfg.tsc_mode]
    if cfg.max_grant_frames is not None:
        b_info["max_grant_frames"] = cfg.max_grant_frames
    if cfg.max_maptrack_frames is not None:
        b_info["max_maptrack_frames"] = cfg.max_maptrack_frames
    sched: dict[str, object] = {}
    if cfg.cpu_weight is not None:
        sched["weight"] = cfg.cpu_weight
    if cfg.cpu_cap is not None:
        sched["cap"] = cfg.cpu_cap
    b_info["sched_params"] = sched
    if cfg.max_event_channels:
        b_info["event_channels"] = cfg.max_event_channels
    for key in ("kernel", "cmdline", "ramdisk"):
        if getattr(cfg, key) is not None:
            b_info[key] = getattr(cfg, key)
    pv: dict[str, object] = {}
    if cfg.e820_host is not None:
        pv["e820_host"] = _defbool(cfg.e820_host)
    b_info["type.pv"] = pv

    out: dict[str, object] = {"c_info": c_info, "b_info": b_info}
    if cfg.disks:
        out["disks"] = [_disk(d) for d in cfg.disks]
    if cfg.vifs:
        out["nics"] = [_nic(v, with_mac=stored) for v in cfg.vifs]
    for key in ("on_poweroff", "on_reboot", "on_watchdog", "on_crash", "on_soft_reset"):
        act: ShutdownAction = getattr(cfg, key)
        if act is not ShutdownAction.DESTROY:  # the IDL default, never printed
            out[key] = act.libxl_name
    return out


def dumps(obj: dict[str, object]) -> str:
    """Formatted like libxl's yajl generator in beautify mode (4-space indent)."""
    return json.dumps(obj, indent=4, ensure_ascii=False, separators=(",", ": ")) + "\n"
