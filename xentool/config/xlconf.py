"""xl's global configuration, ``/etc/xen/xl.conf`` (xl.conf(5)), as xl 4.17 reads it.

The file has the xl.cfg syntax and is parsed with the same parser, so errors name the file
and line.  Every key xl reads is in :data:`GLOBAL_KEYS` with what xentool does with it:

* ``applied``: used exactly as xl uses it (the reason names where);
* ``warn``: it only concerns what xentool never does (HVM guests, Remus/COLO, a
  bootloader): read, checked, and ignored with a warning naming it;
* ``refuse``: applied at xl's default value; any other value is refused by name by the
  verbs it would change (``create``, ``network-attach``), as xentool cannot apply it.

Where xl only prints a warning for a bad value (``autoballoon``, ``output_format``,
``domid_policy``) and carries on with its default, xentool refuses the file: a typo in
xl.conf should not silently change what a create does.  A key xl does not read is ignored
with a warning (xl is silent).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from xentool.config.errors import ConfigError
from xentool.config.model import DomainConfig, VifSpec
from xentool.state import XL_LOCK_FILE, xl_conf_path

APPLIED = "applied"
WARN = "warn"
REFUSE = "refuse"

#: Every key of xl.conf that xl 4.17 reads (``parse_global_config`` in tools/xl/xl.c):
#: key -> (handling, why).
GLOBAL_KEYS: dict[str, tuple[str, str]] = {
    "autoballoon": (APPLIED, "create: balloon dom0 down when the host lacks free memory"),
    "run_hotplug_scripts": (REFUSE, "xentool runs the hotplug scripts itself; leaving "
                                    "them to udev (0) is not supported"),
    "lockfile": (APPLIED, "create: the lock held while ballooning and creating"),
    "vifscript": (APPLIED, "deprecated spelling of vif.default.script"),
    "vif.default.script": (APPLIED, "create, network-attach: a vif's default script"),
    "defaultbridge": (APPLIED, "deprecated spelling of vif.default.bridge"),
    "vif.default.bridge": (APPLIED, "create, network-attach: a vif's default bridge"),
    "vif.default.gatewaydev": (APPLIED, "create, network-attach: a vif's default gatewaydev"),
    "vif.default.backend": (APPLIED, "create, network-attach: a vif's default backend "
                                     "(a driver domain other than dom0 is refused there)"),
    "output_format": (APPLIED, "create -n/-d: json; sxp is refused there"),
    "blkdev_start": (WARN, "libxl uses it only to attach disks to dom0 for a bootloader, "
                           "which xentool does not run"),
    "claim_mode": (APPLIED, "create: claim the guest's memory before the build"),
    "remus.default.netbufscript": (WARN, "xentool has no Remus"),
    "colo.default.proxyscript": (WARN, "xentool has no COLO"),
    "max_grant_frames": (APPLIED, "create: default for the guest's max_grant_frames"),
    "max_maptrack_frames": (APPLIED, "create: default for the guest's max_maptrack_frames"),
    "max_grant_version": (REFUSE, "create: grant table version 1 or 2 is applied; other "
                                  "values are not supported"),
    "vm.cpumask": (APPLIED, "create, vcpu-pin: global hard affinity mask"),
    "vm.pv.cpumask": (APPLIED, "create, vcpu-pin: global hard affinity mask of PV guests"),
    "vm.hvm.cpumask": (APPLIED, "create: global hard affinity mask of PVH guests"),
    "domid_policy": (REFUSE, "create: domids are chosen by Xen ('xen'); 'random' is not "
                             "supported"),
}

#: xl's rule for ``autoballoon = "auto"``: off when Xen's command line sets dom0_mem.
_SIZE = r"-?[0-9]+[bBkKmMgGtT]?"
_DOM0_MEM_RE = re.compile(
    rf"(^| )dom0_mem=((|min:|max:)({_SIZE}|({_SIZE}\+)?[0-9]{{1,2}}%),?)+($| )")


def auto_autoballoon(xen_cmdline: str) -> bool:
    """xl's ``autoballoon = "auto"``: balloon unless Xen's command line has dom0_mem."""
    return _DOM0_MEM_RE.search(xen_cmdline) is None


@dataclass(frozen=True)
class GlobalConfig:
    """xl.conf as read; fields hold xl's defaults where the file says nothing."""

    source: str = ""
    autoballoon: str = "auto"  #: "on", "off" or "auto" (see :func:`auto_autoballoon`)
    run_hotplug_scripts: bool = True
    lockfile: str = XL_LOCK_FILE
    vif_script: str | None = None
    vif_bridge: str | None = None
    vif_gatewaydev: str | None = None
    vif_backend: str | None = None
    output_format: str = "json"  #: "json" or "sxp" (``list -l``, ``create -n``)
    blkdev_start: str | None = None
    claim_mode: bool = True
    max_grant_frames: int | None = None
    max_maptrack_frames: int | None = None
    max_grant_version: int | None = None
    vm_cpumask: str | None = None
    vm_pv_cpumask: str | None = None
    vm_hvm_cpumask: str | None = None
    domid_policy: str = "xen"
    #: One-line warnings, ``file:line:col: warning: ...``.
    warnings: tuple[str, ...] = field(default=(), compare=False)
    #: Settings xentool cannot apply, refused by the verbs they would change.
    refusals: tuple[ConfigError, ...] = field(default=(), compare=False)

    def autoballoon_enabled(self, xen_cmdline: str) -> bool:
        if self.autoballoon == "auto":
            return auto_autoballoon(xen_cmdline)
        return self.autoballoon == "on"

    def check_applicable(self) -> None:
        """Raise the first refusal: for the verbs that create domains or devices."""
        if self.refusals:
            raise self.refusals[0]


def parse_global_config(text: str, source: str) -> GlobalConfig:
    """Parse xl.conf ``text`` (named ``source`` in messages); ConfigError on bad input."""
    from xentool.config.grammar import parse
    from xentool.config.validate import INT_MAX, _Reader
    from xentool.control import parse_cpu_list

    r = _Reader(parse(text, source))
    refusals: list[ConfigError] = []

    def choice(key: str, allowed: tuple[str, ...]) -> str | None:
        v = r.string(key)
        if v is not None and v not in allowed:
            raise r.err(f"{key} = {v!r} is not one of {', '.join(allowed)}", r.s[key].value)
        return v

    def refuse(key: str) -> None:
        refusals.append(r.err(f"{key}: {GLOBAL_KEYS[key][1]}", r.s[key].value))

    def cpumask(key: str) -> str | None:
        v = r.string(key)
        if v is not None:
            try:
                parse_cpu_list(v, 1 << 16)  # syntax only: the host's size is known at use
            except ValueError as e:
                raise r.err(f"{key}: {e}", r.s[key].value) from None
        return v

    ab = choice("autoballoon", ("on", "off", "auto", "1", "0"))
    autoballoon = {"1": "on", "0": "off"}.get(ab or "auto", ab or "auto")
    hotplug = r.long("run_hotplug_scripts")
    if hotplug is not None and hotplug != 1:
        refuse("run_hotplug_scripts")
    script = r.string("vif.default.script")
    if r.string("vifscript") is not None:
        r.warn("the global config option vifscript is deprecated, please switch to "
               "vif.default.script", r.s["vifscript"])
        script = script or r.string("vifscript")
    bridge = r.string("vif.default.bridge")
    if r.string("defaultbridge") is not None:
        r.warn("the global config option defaultbridge is deprecated, please switch to "
               "vif.default.bridge", r.s["defaultbridge"])
        bridge = bridge or r.string("defaultbridge")
    grant_version = r.long("max_grant_version", 0, INT_MAX)
    if grant_version is not None and grant_version not in (1, 2):
        refuse("max_grant_version")
    policy = choice("domid_policy", ("xen", "random"))
    if policy == "random":
        refuse("domid_policy")
    claim = r.long("claim_mode")
    for key in r.s:
        handling = GLOBAL_KEYS.get(key)
        if handling is None:
            r.warn(f"unknown key '{key}' is ignored (xl ignores it too)", r.s[key])
        elif handling[0] == WARN:
            r.atom(key)  # a list is still an error
            r.warn(f"'{key}' is ignored: {handling[1]}", r.s[key])
    return GlobalConfig(
        source=source,
        autoballoon=autoballoon,
        run_hotplug_scripts=hotplug is None or hotplug == 1,
        lockfile=r.string("lockfile") or XL_LOCK_FILE,
        vif_script=script,
        vif_bridge=bridge,
        vif_gatewaydev=r.string("vif.default.gatewaydev"),
        vif_backend=r.string("vif.default.backend"),
        output_format=choice("output_format", ("json", "sxp")) or "json",
        blkdev_start=r.string("blkdev_start"),
        claim_mode=claim is None or claim != 0,
        max_grant_frames=r.long("max_grant_frames", 0, INT_MAX),
        max_maptrack_frames=r.long("max_maptrack_frames", 0, INT_MAX),
        max_grant_version=grant_version,
        vm_cpumask=cpumask("vm.cpumask"),
        vm_pv_cpumask=cpumask("vm.pv.cpumask"),
        vm_hvm_cpumask=cpumask("vm.hvm.cpumask"),
        domid_policy=policy or "xen",
        warnings=tuple(r.warnings),
        refusals=tuple(refusals),
    )


def load_global_config(path: str | None = None) -> GlobalConfig:
    """Read xl.conf (:func:`xentool.state.xl_conf_path` unless ``path``).

    A missing file gives xl's defaults (xl also prints a notice on every command; a
    host without xl.conf is normal enough for xentool to stay quiet).
    """
    from xentool.config import read_config_text

    path = path or xl_conf_path()
    if not os.path.exists(path):
        return GlobalConfig(source=path)
    return parse_global_config(read_config_text(path), path)


def global_mask(gconf: GlobalConfig, max_cpus: int, *, hvm: bool = False
                ) -> frozenset[int] | None:
    """The hard affinity mask for PV guests (``vm.cpumask`` and ``vm.pv.cpumask``), or for
    PVH guests with ``hvm`` (``vm.cpumask`` and ``vm.hvm.cpumask``, as xl picks them), or
    None if neither restricts anything."""
    from xentool.control import parse_cpu_list

    mask = frozenset(range(max_cpus))
    own = ("vm.hvm.cpumask", gconf.vm_hvm_cpumask) if hvm else \
        ("vm.pv.cpumask", gconf.vm_pv_cpumask)
    for key, text in (("vm.cpumask", gconf.vm_cpumask), own):
        if text is not None:
            try:
                mask &= parse_cpu_list(text, max_cpus)
            except ValueError as e:
                raise ConfigError(f"{key}: {e}", gconf.source) from None
    return None if len(mask) == max_cpus else mask


def apply_global_defaults(cfg: DomainConfig, gconf: GlobalConfig) -> DomainConfig:
    """``cfg`` with xl.conf's defaults filled in where the guest's config says nothing,
    as xl fills them in before it parses the guest's config (vif defaults, grant limits).
    """
    from dataclasses import replace

    def nic(v: VifSpec) -> VifSpec:
        return replace(
            v,
            script=v.script if v.script is not None else gconf.vif_script,
            bridge=v.bridge if v.bridge is not None else gconf.vif_bridge,
            gatewaydev=v.gatewaydev if v.gatewaydev is not None else gconf.vif_gatewaydev,
            backend_domname=(v.backend_domname if v.backend_domname is not None
                             else gconf.vif_backend))

    return replace(
        cfg,
        vifs=tuple(nic(v) for v in cfg.vifs),
        max_grant_frames=(cfg.max_grant_frames if cfg.max_grant_frames is not None
                          else gconf.max_grant_frames),
        max_maptrack_frames=(cfg.max_maptrack_frames if cfg.max_maptrack_frames is not None
                             else gconf.max_maptrack_frames))


def apply_nic_defaults(v: VifSpec, gconf: GlobalConfig) -> VifSpec:
    """One vif (``network-attach``) with xl.conf's vif defaults under what it says."""
    from dataclasses import replace

    return apply_global_defaults(replace(_EMPTY, vifs=(v,)), gconf).vifs[0]


_EMPTY = DomainConfig(name="", source="")
