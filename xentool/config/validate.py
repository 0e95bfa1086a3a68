"""From parsed xl.cfg settings to a validated :class:`DomainConfig`.

Each key is read the way ``xl_parse.c`` (Xen 4.17) reads it -- numbers with
``strtol(, 0)``, ``type=`` by prefix, ``cmdline`` from ``cmdline``/``root``/``extra`` -- so a
file means the same here as to xl.  Where xl prints a warning and carries on with a value
it then ignores (a list where a number belongs, ``+=`` on a number, a bad vif option) we
stop with an error that names the key, file, line and column instead.
"""

from __future__ import annotations

import re
from dataclasses import replace
from uuid import UUID

from xentool.config.disk import DiskSpecError, parse_disk_spec
from xentool.config.errors import ConfigError
from xentool.config.grammar import Atom, ListValue, Op, ParsedConfig, Setting
from xentool.config.keys import (
    APPLIED,
    APPLIED_PVH,
    IGNORED_FOR_PV,
    IGNORED_FOR_PVH,
    REFUSED,
    XL_WARNS,
)
from xentool.config.model import (
    CpuAffinity,
    CpuSet,
    DiskSpec,
    DomainConfig,
    DomainType,
    ShutdownAction,
    VifSpec,
)
from xentool.config.support import disk_unsupported, vif_unsupported
from xentool.config.vif import VifSpecError, VifWarning, parse_vif_spec

LONG_MIN, LONG_MAX = -(1 << 63), (1 << 63) - 1
INT_MAX = (1 << 31) - 1
MAX_PCPUS = 4096  # Xen x86's NR_CPUS ceiling
# Where Debian's xen-utils-4.17 keeps pvgrub (XENFIRMWAREDIR).
XEN_FIRMWARE_DIR = "/usr/lib/xen-4.17/boot"

_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                      r"[0-9a-fA-F]{12}")
_STRTOL_RE = re.compile(r"[ \t\n\v\f\r]*([+-]?)(?:0[xX]([0-9a-fA-F]+)|(0[0-7]*)|([1-9][0-9]*))")


def c_strtol(text: str) -> int | None:
    """C ``strtol(text, &end, 0)`` that must consume all of ``text``; None if it does not.

    Raises OverflowError where strtol would set ERANGE.
    """
    m = _STRTOL_RE.match(text)
    if m is None or m.end() != len(text):
        return None
    sign, hexa, octal, dec = m.groups()
    value = int(hexa, 16) if hexa else int(octal, 8) if octal else int(dec)
    value = -value if sign == "-" else value
    if not LONG_MIN <= value <= LONG_MAX:
        raise OverflowError(text)
    return value


class _Reader:
    """Typed access to settings, with errors located at the offending value."""

    def __init__(self, parsed: ParsedConfig) -> None:
        self.p = parsed
        self.s = parsed.settings
        self.warnings: list[str] = list(parsed.warnings)
        self.refusals: list[str] = []

    def err(self, msg: str, at: Setting | Atom | ListValue) -> ConfigError:
        return self.p.error(msg, at)

    def warn(self, msg: str, at: Setting | Atom | ListValue) -> None:
        self.warnings.append(f"{at.file}:{at.line}:{at.column}: warning: {msg}")

    def atom(self, key: str) -> Atom | None:
        st = self.s.get(key)
        if st is None:
            return None
        if not isinstance(st.value, Atom):
            raise self.err(f"'{key}' must be a single value, not a list", st.value)
        return st.value

    def string(self, key: str) -> str | None:
        a = self.atom(key)
        return None if a is None else a.text

    def long(self, key: str, lo: int = LONG_MIN, hi: int = LONG_MAX) -> int | None:
        a = self.atom(key)
        if a is None:
            return None
        if self.s[key].op is Op.APPEND:
            raise self.err(f"'{key} +=' cannot be used with a number", self.s[key])
        try:
            v = c_strtol(a.text)
        except OverflowError:
            raise self.err(f"{key} = {a.describe()} is out of range", a) from None
        if v is None:
            raise self.err(f"{key} = {a.describe()} is not a number", a)
        if re.fullmatch(r"\s*[+-]?0[0-7]+", a.text):
            self.warn(f"{key} = {a.text} is octal ({v}), as in C", a)
        if not lo <= v <= hi:
            bound = f"at least {lo}" if v < lo else f"at most {hi}"
            raise self.err(f"{key} = {a.describe()} must be {bound}", a)
        return v

    def boolean(self, key: str) -> bool | None:
        v = self.long(key)
        return None if v is None else v != 0

    def strings(self, key: str) -> list[Atom] | None:
        st = self.s.get(key)
        if st is None:
            return None
        if not isinstance(st.value, ListValue):
            raise self.err(f"'{key}' must be a list, e.g. {key} = [ '...' ]", st.value)
        atoms: list[Atom] = []
        for item in st.value.items:
            if not isinstance(item, Atom):
                raise self.err(f"'{key}' items must be strings, not lists", item)
            atoms.append(item)
        return atoms


def _domain_type(r: _Reader) -> DomainType:
    dtype: DomainType | None = None
    a = r.atom("type")
    if a is not None:
        # xl compares with strncmp(value, name, strlen(value)): any prefix selects.
        for t in (DomainType.HVM, DomainType.PV, DomainType.PVH):
            if t.value.startswith(a.text):
                dtype = t
                break
        else:
            raise r.err(f"type = {a.describe()} is not 'pv', 'pvh' or 'hvm'", a)
    b = r.atom("builder")
    if b is not None:
        if "hvm".startswith(b.text):
            btype = DomainType.HVM
        elif "generic".startswith(b.text):
            btype = DomainType.PV
        else:
            raise r.err(f"builder = {b.describe()} is not 'generic' or 'hvm'", b)
        if dtype is not None and dtype is not btype:
            raise r.err("'builder' contradicts 'type'", b)
        dtype = btype
        r.warn("'builder' is deprecated, use 'type'", b)
    dtype = dtype or DomainType.PV
    if dtype is DomainType.HVM:
        at = a if a is not None else b
        assert at is not None  # only type= or builder= selects HVM
        raise r.err("type 'hvm' is not supported: xentool builds PV and PVH guests only "
                    "(for now)", at)
    return dtype


def _name(r: _Reader) -> str:
    a = r.atom("name")
    if a is None:
        raise ConfigError("'name' must be set (the domain name)", r.p.source)
    if not a.text:
        raise r.err("name is empty", a)
    if a.text.isdigit():
        raise r.err(f"name {a.describe()} is all digits and would read as a domain id", a)
    if any(not c.isprintable() for c in a.text):
        raise r.err(f"name {a.describe()} contains control characters", a)
    return a.text


def _uuid(r: _Reader) -> UUID | None:
    a = r.atom("uuid")
    if a is None:
        return None
    if not _UUID_RE.fullmatch(a.text):
        raise r.err(f"uuid = {a.describe()} is not a UUID "
                    "(xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)", a)
    return UUID(a.text)


def _cmdline(r: _Reader) -> str | None:
    cmdline, root, extra = r.string("cmdline"), r.string("root"), r.string("extra")
    if cmdline is not None:
        if root is not None or extra is not None:
            r.warn("'root' and 'extra' are ignored in favour of 'cmdline'",
                   r.s["cmdline"])
        return cmdline
    if root is not None and extra is not None:
        return f"root={root} {extra}"
    if root is not None:
        return f"root={root}"
    return extra


_ACTIONS = {a.value: a for a in ShutdownAction}


#: libxl_tsc_mode, as xl.cfg names them; native_paravirt was removed from Xen.
TSC_MODES = {"default": 0, "always_emulate": 1, "native": 2, "native_paravirt": 3}


def _tsc_mode(r: _Reader) -> int | None:
    """``tsc_mode`` as xl reads it: a name (any case), or a number with a warning."""
    a = r.atom("tsc_mode")
    if a is None:
        return None
    if c_strtol(a.text) is not None and not a.quoted:
        mode = r.long("tsc_mode", 0, 3)
        assert mode is not None
        name = next(k for k, v in TSC_MODES.items() if v == mode)
        r.warn(f"tsc_mode as an integer is deprecated; use tsc_mode = \"{name}\"", a)
    else:
        mode = TSC_MODES.get(a.text.lower())
        if mode is None:
            raise r.err(f"invalid value {a.describe()} for tsc_mode (one of "
                        f"{', '.join(TSC_MODES)})", a)
    if mode == TSC_MODES["native_paravirt"]:
        raise r.err("tsc_mode native_paravirt (PVRDTSCP) has been removed from Xen", a)
    return mode


#: libxl_timer_mode and libxl_altp2m_mode, as xl.cfg names them.
TIMER_MODES = {"delay_for_missed_ticks": 0, "no_delay_for_missed_ticks": 1,
               "no_missed_ticks_pending": 2, "one_missed_tick_pending": 3}
ALTP2M_MODES = {"disabled": 0, "mixed": 1, "external": 2, "limited": 3}


def _named(r: _Reader, key: str, names: dict[str, int]) -> int | None:
    """A libxl enum key as xl reads it: a number (deprecated, with a warning) or a name."""
    a = r.atom(key)
    if a is None:
        return None
    if c_strtol(a.text) is not None and not a.quoted:
        value = r.long(key, 0, max(names.values()))
        assert value is not None
        name = next(k for k, v in names.items() if v == value)
        r.warn(f"{key} as an integer is deprecated; use {key} = \"{name}\"", a)
        return value
    value = names.get(a.text)
    if value is None:
        raise r.err(f"invalid value {a.describe()} for {key} (one of {', '.join(names)})", a)
    return value


def _check_cpuid_names(items: tuple[tuple[str, str], ...]) -> None:
    """Resolve the flag names against the featureset the binding was built with, so that
    config-check and create refuse an unknown one before anything is built.  Without the
    binding (a host without Xen's libraries) only the syntax is checked here."""
    from domain_builder.cpuid import policy
    from domain_builder.errors import XenError

    try:
        from domain_builder.xenctrl import cpu_feature_bits

        features = cpu_feature_bits()
    except (ImportError, XenError):
        return
    policy(items, features)


def _pvh_keys(r: _Reader, cfg: DomainConfig) -> DomainConfig:
    """``cfg`` with the keys a PVH guest has beyond a PV guest's (keys.py APPLIED_PVH)."""
    from domain_builder.cpuid import CpuidError, split

    cpuid = None
    st = r.s.get("cpuid")
    if st is not None:
        if isinstance(st.value, ListValue):
            raise r.err("cpuid as a list (the xend 'leaf:reg=bits' form) is not supported by "
                        "xentool yet; use the string form cpuid = \"host,NAME=VALUE,...\"",
                        st.value)
        try:
            cpuid = split(st.value.text)
            _check_cpuid_names(cpuid)
        except CpuidError as exc:
            raise r.err(f"cpuid = {st.value.describe()}: {exc}", st.value) from None
    altp2m = _named(r, "altp2m", ALTP2M_MODES)
    if altp2m:
        raise r.err("'altp2m' is not supported by xentool: only altp2m = \"disabled\" (the "
                    "default)", r.s["altp2m"])
    defaults: dict[str, bool | None] = {}
    for key, good in (("hap", True), ("pvshim", False)):
        value = r.boolean(key)
        if value is not None and value is not good:
            why = ("shadow-paged PVH guests are not built yet" if key == "hap" else
                   "the PV shim (a PV guest inside a PVH container) is not built yet")
            raise r.err(f"'{key} = {int(value)}' is not supported by xentool: {why}",
                        r.s[key])
        defaults[key] = value
    return replace(cfg, cpuid=cpuid, timer_mode=_named(r, "timer_mode", TIMER_MODES),
                   altp2m=altp2m, nestedhvm=r.boolean("nestedhvm"),
                   shadow_memory=r.long("shadow_memory", 0, LONG_MAX // 1024),
                   oos=r.boolean("oos"), hap=defaults["hap"], pvshim=defaults["pvshim"])


def _action(r: _Reader, key: str, default: ShutdownAction) -> ShutdownAction:
    a = r.atom(key)
    if a is None:
        return default
    act = _ACTIONS.get(a.text)
    if act is None:
        raise r.err(f"{key} = {a.describe()} is not one of: {', '.join(_ACTIONS)}", a)
    return act


_CPU_RANGE_RE = re.compile(r"([0-9]+)(?:-([0-9]+))?")


def _cpu_set(r: _Reader, a: Atom, text: str) -> CpuSet:
    """One ``cpus`` string -> CpuSet, applying its items in order as xl does."""
    everything = False
    added: set[int] = set()
    removed: set[int] = set()
    for item in text.split(","):
        if not item:
            continue  # strtok skips empty items
        neg = item.startswith("^")
        body = item[1:] if neg else item
        if body.startswith(("node:", "nodes:")):
            raise r.err(f"cpus item '{item}': NUMA node ranges are not supported by xentool "
                        "yet; list the pcpus", a)
        if body == "all":
            if neg:
                raise r.err("cpus: '^' and 'all' cannot be combined", a)
            everything, added, removed = True, set(), set()
            continue
        m = _CPU_RANGE_RE.fullmatch(body)
        if m is None or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            raise r.err(f"cpus item '{item}' is not a pcpu or range (e.g. 3, 0-3, ^2)", a)
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if hi >= MAX_PCPUS:
            raise r.err(f"cpus item '{item}' goes beyond pcpu {MAX_PCPUS - 1} (Xen's limit)",
                        a)
        rng = set(range(lo, hi + 1))
        if neg:
            removed |= rng
            added -= rng
        else:
            added |= rng
            removed -= rng
    return CpuSet(everything, frozenset(added), frozenset(removed))


def _affinity(r: _Reader, key: str, maxvcpus: int) -> CpuAffinity | None:
    st = r.s.get(key)
    if st is None:
        return None
    if isinstance(st.value, ListValue):
        items = r.strings(key) or []
        sets = tuple(_cpu_set(r, a, a.text) for a in items[:maxvcpus])
        return CpuAffinity(sets, from_list=True)
    a = st.value
    one = _cpu_set(r, a, a.text)
    return CpuAffinity((one,) * maxvcpus, from_list=False)


def _disks(r: _Reader) -> tuple[DiskSpec, ...]:
    items = r.strings("disk")
    if items is None:
        return ()
    disks = []
    for i, a in enumerate(items):
        try:
            disks.append(parse_disk_spec(a.text))
        except DiskSpecError as exc:
            # Columns inside the string are exact unless it contains escapes.
            col = a.column + (1 if a.quoted else 0) + min(exc.offset, len(a.text))
            raise r.p.error(f"disk {i}: {exc}", a, col) from None
    vdevs: dict[str, int] = {}
    for i, d in enumerate(disks):
        why = disk_unsupported(d)
        if why is not None:
            r.refusals.append(str(r.err(f"disk {i}: {why}", items[i])))
        if d.vdev in vdevs:
            raise r.err(f"disk {i}: vdev '{d.vdev}' is already used by disk {vdevs[d.vdev]}",
                        items[i])
        vdevs[d.vdev] = i
    return tuple(disks)


def _vifs(r: _Reader, mac_seed: str) -> tuple[VifSpec, ...]:
    items = r.strings("vif")
    if items is None:
        return ()
    vifs = []
    for i, a in enumerate(items):
        warns: list[VifWarning] = []
        try:
            vifs.append(parse_vif_spec(a.text, i, mac_seed, warns))
        except VifSpecError as exc:
            col = a.column + (1 if a.quoted else 0) + exc.offset
            raise r.p.error(f"vif {i}: {exc}", a, col) from None
        for w in warns:
            r.warnings.append(f"{a.file}:{a.line}:{a.column + 1 + w.offset}: warning: "
                              f"vif {i}: {w.message}")
    seen: dict[int, int] = {}
    for i, v in enumerate(vifs):
        why = vif_unsupported(v)
        if why is not None:
            r.refusals.append(str(r.err(f"vif {i}: {why}", items[i])))
        if v.devid in seen:
            raise r.err(f"vif {i}: devid {v.devid} is already used by vif {seen[v.devid]}",
                        items[i])
        seen[v.devid] = i
    return tuple(vifs)


def _check_keys(r: _Reader, dtype: DomainType) -> None:
    """Refuse what xl would apply and xentool cannot; say what is ignored (config/keys.py)."""
    pvh = dtype is DomainType.PVH
    ignored = IGNORED_FOR_PVH if pvh else IGNORED_FOR_PV
    for key, st in r.s.items():
        if (key in APPLIED and not (pvh and key in ignored)) or (pvh and key in APPLIED_PVH):
            continue
        if key in REFUSED:
            raise r.err(f"'{key}' is not supported by xentool: {REFUSED[key]}", st)
        if key in ignored:
            r.warn(f"'{key}' does not apply to {dtype.value.upper()} guests and is ignored "
                   "(as xl does)", st)
        elif key in XL_WARNS:
            r.warn(f"'{key}' is ignored: {XL_WARNS[key]}", st)
        else:
            r.warn(f"unknown key '{key}' is ignored (xl ignores it too)", st)


def build_domain_config(parsed: ParsedConfig) -> DomainConfig:
    """Validate ``parsed`` and build the DomainConfig; warnings go to ``.warnings``."""
    r = _Reader(parsed)
    dtype = _domain_type(r)
    name = _name(r)
    uuid = _uuid(r)

    bl = r.atom("bootloader")
    if bl is not None:
        raise r.err(f"bootloader {bl.describe()} is not supported: xentool does not run "
                    "bootloaders such as pygrub; set kernel= (and ramdisk=, cmdline=) to "
                    "files in dom0", bl)
    if "bootloader_args" in r.s:
        r.warn("'bootloader_args' is ignored (no bootloader)", r.s["bootloader_args"])
    kernel = r.string("kernel")
    fw = r.atom("firmware")
    if fw is not None:
        if kernel is not None:
            raise r.err("both 'kernel' and 'firmware' are set", fw)
        if not ("pvgrub32".startswith(fw.text) or "pvgrub64".startswith(fw.text)):
            raise r.err(f"firmware = {fw.describe()}: only pvgrub32 or pvgrub64 are "
                        "possible for PV guests", fw)
        kernel = f"{XEN_FIRMWARE_DIR}/{fw.text}.bin"
    if kernel is None:
        raise ConfigError("'kernel' must be set (xentool does not run bootloaders)",
                          parsed.source)
    ramdisk = r.string("ramdisk")
    cmdline = _cmdline(r)

    memory = r.long("memory", 1, LONG_MAX // 1024)
    maxmem = r.long("maxmem", 1, LONG_MAX // 1024)
    mem = memory if memory is not None else 32
    mmax = maxmem if maxmem is not None else (memory if memory is not None else 32)
    if mem > mmax:
        at = r.s["memory"] if maxmem is None else r.s["maxmem"]
        raise r.err(f"memory ({mem} MiB) is more than maxmem ({mmax} MiB)", at)

    vcpus = r.long("vcpus", 1, 4096)
    maxvcpus = r.long("maxvcpus", 1, 4096)
    nv = vcpus if vcpus is not None else 1
    nmax = maxvcpus if maxvcpus is not None else (vcpus if vcpus is not None else 1)
    if nmax < nv:
        raise r.err(f"maxvcpus ({nmax}) is less than vcpus ({nv})", r.s["maxvcpus"])

    # xl sizes the affinity array by max_vcpus as it stands after parsing (0 if unset).
    aff_n = maxvcpus if maxvcpus is not None else (vcpus or 0)
    cpus = _affinity(r, "cpus", aff_n)
    cpus_soft = _affinity(r, "cpus_soft", aff_n)
    for key in ("cpus", "cpus_soft"):
        if aff_n == 0 and key in r.s:
            r.warn(f"'{key}' has no effect without vcpus or maxvcpus (xl ignores it too)",
                   r.s[key])

    cpu_weight = r.long("cpu_weight", 1, 65535)
    cap = r.long("cap", 0, INT_MAX)

    pvh = dtype is DomainType.PVH
    for key in ("nomigrate",) if pvh else ("e820_host", "nomigrate"):
        if not pvh and r.boolean(key):
            raise r.err(f"'{key}' is not supported by xentool: only {key} = 0 (the default)",
                        r.s[key])
    _check_keys(r, dtype)

    vfb = r.s.get("vfb")
    if vfb is not None and not (isinstance(vfb.value, ListValue) and not vfb.value.items):
        raise r.err("'vfb' (virtual framebuffer) is not supported by xentool; remove it or "
                    "set vfb = []", vfb.value)

    cfg = DomainConfig(
        name=name, source=parsed.source, type=dtype, uuid=uuid, kernel=kernel,
        ramdisk=ramdisk, cmdline=cmdline, memory=mem, maxmem=mmax,
        memory_set=memory is not None, maxmem_set=maxmem is not None,
        vcpus=nv, maxvcpus=nmax, vcpus_set=vcpus is not None,
        maxvcpus_set=maxvcpus is not None, cpus=cpus, cpus_soft=cpus_soft,
        cpu_weight=cpu_weight, cpu_cap=cap,
        on_poweroff=_action(r, "on_poweroff", ShutdownAction.DESTROY),
        on_reboot=_action(r, "on_reboot", ShutdownAction.RESTART),
        on_watchdog=_action(r, "on_watchdog", ShutdownAction.DESTROY),
        on_crash=_action(r, "on_crash", ShutdownAction.DESTROY),
        on_soft_reset=_action(r, "on_soft_reset", ShutdownAction.SOFT_RESET),
        disks=_disks(r),
        vifs=_vifs(r, str(uuid) if uuid is not None else name),
        max_grant_frames=r.long("max_grant_frames", 0, INT_MAX),
        max_maptrack_frames=r.long("max_maptrack_frames", 0, INT_MAX),
        max_event_channels=r.long("max_event_channels", 0, (1 << 32) - 1),
        pool=r.string("pool"),
        e820_host=None if pvh else r.boolean("e820_host"),
        tsc_mode=_tsc_mode(r),
        nomigrate=r.boolean("nomigrate"),
    )
    if pvh:
        cfg = _pvh_keys(r, cfg)
    return replace(cfg, warnings=tuple(r.warnings), refusals=tuple(r.refusals))

