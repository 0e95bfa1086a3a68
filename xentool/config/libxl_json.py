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
from dataclasses import dataclass, field
from uuid import UUID

from xentool.config.model import (
    CpuAffinity,
    DiskBackend,
    DiskSpec,
    DiskSpecification,
    DomainConfig,
    DomainType,
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


def _disk(d: DiskSpec, stored: bool = False) -> dict[str, object]:
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
    if stored:  # libxl's disk setdefault settles it before the config is kept
        out["colo_restore_enable"] = "False"
    for key in ("colo_host", "colo_port", "colo_export", "active_disk", "hidden_disk"):
        if getattr(d, key) is not None:
            out[key] = getattr(d, key)
    if d.trusted is not None:
        out["trusted"] = _defbool(d.trusted)
    return out


def _nic(v: VifSpec, stored: bool = False) -> dict[str, object]:
    out: dict[str, object] = {}
    if v.backend_domname is not None:
        out["backend_domname"] = v.backend_domname
    out["devid"] = v.devid
    if v.mtu:
        out["mtu"] = v.mtu
    if v.model is not None:
        out["model"] = v.model
    if stored or not v.mac_generated:
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
    elif stored:  # libxl's nic setdefault: a PV guest's NIC is a plain vif
        out["nictype"] = NicType.VIF.value
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
             host_cpus: int | None = None, *, stored: bool = False,
             claim_mode: bool = True) -> dict[str, object]:
    """The libxl_domain_config object for ``cfg`` (keys in libxl's order).

    ``uuid`` is printed when the config has none (xl prints the random one it drew);
    ``host_cpus`` is needed only to print affinities that say "all".  ``stored``: the
    document libxl keeps for a created domain (its ``libxl-json`` userdata, which
    ``xl list -l`` and every other xl verb read): also each vif's MAC, and what xl and
    libxl add to the parsed config before they store it (xl.conf's ``claim_mode``).
    """
    c_info: dict[str, object] = {"type": cfg.type.value, "name": cfg.name}
    u = cfg.uuid or uuid
    if u is not None:
        c_info["uuid"] = str(u)
    if cfg.pool is not None:
        c_info["pool_name"] = cfg.pool
    pvh = cfg.type is DomainType.PVH
    if pvh:
        for key, value in (("hap", cfg.hap), ("oos", cfg.oos)):
            if value is not None:
                c_info[key] = _defbool(value)

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
    if pvh and cfg.shadow_memory is not None:
        b_info["shadow_memkb"] = cfg.shadow_memory * 1024
    if cfg.nomigrate is not None:
        b_info["disable_migrate"] = _defbool(cfg.nomigrate)
    if pvh and cfg.cpuid is not None:
        b_info["cpuid"] = cpuid_json(cfg.cpuid)
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
    if pvh:
        if cfg.timer_mode is not None:
            b_info["timer_mode"] = TIMER_MODE_NAMES[cfg.timer_mode]
        if cfg.nestedhvm is not None:
            b_info["nested_hvm"] = _defbool(cfg.nestedhvm)
        b_info["type.pvh"] = {} if cfg.pvshim is None else {"pvshim": _defbool(cfg.pvshim)}
    else:
        pv: dict[str, object] = {}
        if cfg.e820_host is not None:
            pv["e820_host"] = _defbool(cfg.e820_host)
        b_info["type.pv"] = pv

    if stored:
        # Set by xl (from xl.conf) and libxl's defaults before libxl copies the config it
        # keeps; the domid is not known yet when the copy is made.
        c_info["domid"] = INVALID_DOMID
        c_info["run_hotplug_scripts"] = "True"  # xentool refuses xl.conf's "0"
        b_info["claim_mode"] = _defbool(claim_mode)
        b_info["arch_arm"] = {}
        b_info["arch_x86"] = {"msr_relaxed": "False"}
        c_info = _ordered(c_info, _ORDER["c_info"])
        b_info = _ordered(b_info, _ORDER["b_info"])
    out: dict[str, object] = {"c_info": c_info, "b_info": b_info}
    if cfg.disks:
        out["disks"] = [_disk(d, stored) for d in cfg.disks]
    if cfg.vifs:
        out["nics"] = [_nic(v, stored) for v in cfg.vifs]
    for key in ("on_poweroff", "on_reboot", "on_watchdog", "on_crash", "on_soft_reset"):
        act: ShutdownAction = getattr(cfg, key)
        if act is not ShutdownAction.DESTROY:  # the IDL default, never printed
            out[key] = act.libxl_name
    return out


TIMER_MODE_NAMES = ("delay_for_missed_ticks", "no_delay_for_missed_ticks",
                    "no_missed_ticks_pending", "one_missed_tick_pending")


def cpuid_json(items: tuple[tuple[str, str], ...]) -> dict[str, object]:
    """``b_info.cpuid`` as libxl's JSON writer prints the policy of ``cpuid=``."""
    from domain_builder.cpuid import policy
    from domain_builder.xenctrl import cpu_feature_bits

    return {"cpuid": [e.to_libxl() for e in policy(items, cpu_feature_bits())], "msr": []}


def dumps(obj: dict[str, object]) -> str:
    """Formatted like libxl's yajl generator in beautify mode (4-space indent)."""
    return json.dumps(obj, indent=4, ensure_ascii=False, separators=(",", ": ")) + "\n"


# ---------------------------------------------------------------------------------------------
# The document libxl_retrieve_domain_configuration builds (``xl list -l``)

#: Field order of the libxl IDL structs the runtime view touches (libxl_types.idl, 4.17):
#: libxl's JSON generator prints fields in this order, whatever order the file had.
_ORDER: dict[str, tuple[str, ...]] = {
    "config": (
        "c_info", "b_info", "disks", "nics", "pcidevs", "rdms", "dtdevs", "vfbs", "vkbs",
        "vtpms", "p9s", "pvcallsifs", "vdispls", "vsnds", "channels", "usbctrls", "usbdevs",
        "on_poweroff", "on_reboot", "on_watchdog", "on_crash", "on_soft_reset"),
    "c_info": (
        "type", "hap", "oos", "ssidref", "ssid_label", "name", "domid", "uuid", "xsdata",
        "platformdata", "poolid", "pool_name", "run_hotplug_scripts", "driver_domain",
        "passthrough", "xend_suspend_evtchn_compat"),
    "b_info": (
        "max_vcpus", "avail_vcpus", "cpumap", "nodemap", "vcpu_hard_affinity",
        "vcpu_soft_affinity", "numa_placement", "tsc_mode", "max_memkb", "target_memkb",
        "video_memkb", "shadow_memkb", "iommu_memkb", "rtc_timeoffset", "exec_ssidref",
        "exec_ssid_label", "localtime", "disable_migrate", "cpuid", "blkdev_start",
        "vnuma_nodes", "max_grant_frames", "max_maptrack_frames", "max_grant_version",
        "device_model_version", "device_model_stubdomain", "stubdomain_memkb",
        "stubdomain_kernel", "stubdomain_cmdline", "stubdomain_ramdisk", "device_model",
        "device_model_ssidref", "device_model_ssid_label", "device_model_user", "extra",
        "extra_pv", "extra_hvm", "sched_params", "ioports", "irqs", "iomem", "claim_mode",
        "event_channels", "kernel", "cmdline", "ramdisk", "device_tree", "acpi",
        "bootloader", "bootloader_args", "timer_mode", "nested_hvm", "apic", "dm_restrict",
        "tee", "type.hvm", "type.pv", "type.pvh", "arch_arm", "arch_x86", "altp2m",
        "vmtrace_buf_kb", "vpmu"),
    "sched_params": ("sched", "weight", "cap", "period", "budget", "extratime", "slice",
                     "latency"),
}

#: INVALID_DOMID as libxl's JSON prints a uint32 domid that is not set yet.
INVALID_DOMID = 0xFFFFFFFF
#: LIBXL_MEMKB_DEFAULT: a MemKB libxl has not settled (an unsigned -1).
MEMKB_DEFAULT = (1 << 64) - 1
#: LIBXL_MAXMEM_CONSTANT (kB): the slack libxl gives an HVM guest over its target.
MAXMEM_CONSTANT = 1024


def _ordered(obj: dict[str, object], order: tuple[str, ...]) -> dict[str, object]:
    rank = {k: i for i, k in enumerate(order)}
    return dict(sorted(obj.items(), key=lambda kv: rank.get(kv[0], len(order))))


def _struct(doc: dict[str, object], key: str) -> dict[str, object]:
    value = doc.get(key)
    return dict(value) if isinstance(value, dict) else {}


@dataclass(frozen=True)
class RuntimeView:
    """What libxl_retrieve_domain_configuration reads of a live domain, next to its stored
    configuration: name and uuid (XenStore, hypervisor), the vCPUs XenStore marks online,
    the memory target and static maximum in XenStore, the scheduler parameters and the
    devices of the domain's ``/libxl/<domid>/device`` tree."""

    name: str
    uuid: str
    vcpus_online: frozenset[int]
    target_memkb: int
    max_memkb: int
    #: libxl_domain_sched_params as libxl_domain_sched_params_get fills it.
    sched_params: dict[str, object]
    #: vdev -> (backend domid, medium path) of every vbd; None: no vbd directory.
    disks: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: devids of the vifs.
    nic_devids: frozenset[int] = frozenset()


def merge_runtime(stored: dict[str, object], rt: RuntimeView
                  ) -> tuple[dict[str, object], list[str]]:
    """The stored libxl_domain_config updated with ``rt`` as libxl 4.17 does for
    ``xl list -l`` (retrieve_domain_configuration_end), in the IDL's field order.
    Also returns libxl's warnings (a device in the stored config that XenStore no longer
    has is left out)."""
    warnings: list[str] = []
    c_info = _struct(stored, "c_info")
    b_info = _struct(stored, "b_info")
    c_info["name"] = rt.name
    if rt.uuid.strip("0-"):
        c_info["uuid"] = rt.uuid
    else:
        c_info.pop("uuid", None)  # the nil uuid (dom0) is libxl's default: not printed
    max_vcpus = _int(b_info.get("max_vcpus"))
    online = sorted(v for v in rt.vcpus_online if 0 <= v < max_vcpus)
    if online:
        b_info["avail_vcpus"] = online
    else:
        b_info.pop("avail_vcpus", None)
    # libxl__get_targetmem_fudge: the video RAM (unset reads as -1) and, for an HVM guest
    # with room above its target, LIBXL_MAXMEM_CONSTANT.
    video = b_info.get("video_memkb", MEMKB_DEFAULT)
    fudge = _int(video) if isinstance(video, int) else MEMKB_DEFAULT
    if c_info.get("type") == "hvm" and \
            _int(b_info.get("max_memkb", MEMKB_DEFAULT)) > \
            _int(b_info.get("target_memkb", MEMKB_DEFAULT)):
        fudge += MAXMEM_CONSTANT
    target = (rt.target_memkb + fudge) % (1 << 64)
    for key, value in (("target_memkb", target), ("max_memkb", rt.max_memkb)):
        if value == MEMKB_DEFAULT:
            b_info.pop(key, None)
        else:
            b_info[key] = value
    b_info["sched_params"] = _ordered(dict(rt.sched_params), _ORDER["sched_params"])
    # Every nested struct and the type's union member are always printed.
    for key in (f"type.{c_info.get('type', 'pv')}", "arch_arm", "arch_x86"):
        b_info.setdefault(key, {})
    out: dict[str, object] = dict(stored)
    out["c_info"] = _ordered(c_info, _ORDER["c_info"])
    out["b_info"] = _ordered(b_info, _ORDER["b_info"])
    disks = [d for d in _dicts(stored.get("disks")) if _disk_present(d, rt, warnings)]
    nics = [n for n in _dicts(stored.get("nics")) if _nic_present(n, rt, warnings)]
    for key, devs in (("disks", disks), ("nics", nics)):
        if devs:
            out[key] = devs
        else:
            out.pop(key, None)
    return _ordered(out, _ORDER["config"]), warnings


_GONE = "Device present in JSON but not in xenstore, ignored"


def _int(v: object) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def _dicts(v: object) -> list[dict[str, object]]:
    return [dict(d) for d in v if isinstance(d, dict)] if isinstance(v, list) else []


def _disk_present(d: dict[str, object], rt: RuntimeView, warnings: list[str]) -> bool:
    """libxl_device_disk_compare (same vdev and backend) and _merge (a removable disk
    whose drive XenStore says is empty is printed empty)."""
    seen = rt.disks.get(str(d.get("vdev")))
    if seen is None or seen[0] != _int(d.get("backend_domid")):
        warnings.append(_GONE)
        return False
    if d.get("removable") and not seen[1]:
        d["pdev_path"] = ""
        d["format"] = "empty"
    return True


def _nic_present(n: dict[str, object], rt: RuntimeView, warnings: list[str]) -> bool:
    """libxl_device_nic_compare: the same devid."""
    if _int(n.get("devid")) in rt.nic_devids:
        return True
    warnings.append(_GONE)
    return False


def _yajl_string(s: str) -> str:
    """A JSON string escaped as yajl escapes it (upper-case hex, '/' left alone)."""
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in "\b\f\n\r\t":
            out.append({"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _yajl(obj: object, depth: int, out: list[str]) -> None:
    pad = "    "
    if isinstance(obj, dict):
        out.append("{\n")
        for i, (k, v) in enumerate(obj.items()):
            if i:
                out.append(",\n")
            out.append(pad * (depth + 1) + _yajl_string(str(k)) + ": ")
            _yajl(v, depth + 1, out)
        out.append("\n" + pad * depth + "}")
    elif isinstance(obj, list):
        out.append("[\n")
        for i, v in enumerate(obj):
            if i:
                out.append(",\n")
            out.append(pad * (depth + 1))
            _yajl(v, depth + 1, out)
        out.append("\n" + pad * depth + "]")
    elif obj is None:
        out.append("null")
    elif isinstance(obj, bool):
        out.append("true" if obj else "false")
    elif isinstance(obj, int):
        out.append(str(obj))
    elif isinstance(obj, float):
        out.append(repr(obj))
    else:
        out.append(_yajl_string(str(obj)))


def stored_dumps(doc: dict[str, object]) -> str:
    """The text of a ``libxl-json`` userdata file: libxl stores its JSON string with the
    terminating NUL."""
    return yajl_dumps(doc) + "\0"


def yajl_dumps(obj: object) -> str:
    """``obj`` as libxl's yajl generator prints it in beautify mode: 4-space indent, an
    empty object or array as an opening line, an empty line and its closing line, and a
    newline after the document."""
    out: list[str] = []
    _yajl(obj, 0, out)
    return "".join(out) + "\n"
