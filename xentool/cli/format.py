"""Text output identical to xl 4.17, and the ``--json`` documents of the read verbs.

Everything here is pure: it formats dataclasses from ``domain_builder.xenctrl`` (or plain
values) into strings, so it is tested byte for byte without Xen.  The formats follow
``tools/xl/xl_info.c``, ``xl_vcpu.c`` and ``xl_sched.c`` of Xen 4.17, including their C
quirks: cpu times go through a C ``float`` before printing, a missing XenStore name prints
as ``(null)`` (glibc's rendering of a NULL ``%s``), bitmaps print as ``all``/``none``/ranges.

JSON schema (stable; new keys may be added, existing ones keep name, type and meaning):

``list --json`` -> array of objects, one per domain, in domid order::

    {"domid": int, "name": str|null, "uuid": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
     "memory_kb": int (current + outstanding, what the Mem column shows in MiB),
     "current_memory_kb": int, "outstanding_memory_kb": int, "max_memory_kb": int,
     "vcpus_online": int, "max_vcpu_id": int|null, "cpupool": int,
     "state": "r-----" (the xl State column),
     "running": bool, "blocked": bool, "paused": bool, "shutdown": bool, "dying": bool,
     "shutdown_reason": int|null (SHUTDOWN_* code while shut down),
     "cpu_time_ns": int, "type": "pv"|"hvm"}

``info --json`` -> object: every ``xl info`` key (``host`` ... ``xend_config_format``) with
its value as xl prints it (strings), except integers for the numeric keys
(``nr_cpus``, ``max_cpu_id``, ``nr_nodes``, ``cores_per_socket``, ``threads_per_core``,
``xen_major``, ``xen_minor``, ``xen_pagesize``, ``total_memory``, ``free_memory``,
``sharing_freed_memory``, ``sharing_used_memory``, ``outstanding_claims``, ``free_cpus``,
``xend_config_format``), ``virt_caps`` as a list of strings and ``hw_caps`` as a list of 8
ints.  Memory values are MiB like xl's.

``vcpu-list --json`` -> array of
``{"domid", "name", "vcpu", "cpu": int|null (null when offline), "online", "running",
"blocked": bool, "cpu_time_ns": int, "hard_affinity": [int], "soft_affinity": [int]}``.

``uptime --json`` -> array of ``{"domid", "name", "uptime_s": int}``.

``domid --json`` -> ``{"domid": int, "name": str}``; ``domname --json`` the same.

``sched-credit --json`` / ``sched-credit2 --json`` -> array of pools
``{"cpupool": int, "name": str|null, "scheduler": "credit"|"credit2", "params": {...},
"domains": [{"domid", "name", "weight", "cap"}]}``; with ``-d`` just ``{"domid", "name",
"weight", "cap"}``; with ``-s`` the pool's ``params`` object.
"""

from __future__ import annotations

import time

from xentool.results import Uname, VcpuRow
from xentool.scheduler import SCHEDULER_NAMES

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from domain_builder.xenctrl import (
        Credit2Params,
        CreditParams,
        DomainInfo,
        PhysInfo,
        VersionInfo,
    )

SHUTDOWN_LETTERS = "-rscwS"


def c_str(s: str | None) -> str:
    """How glibc printf renders a ``%s`` argument that may be NULL."""
    return "(null)" if s is None else s


def c_float(n: int) -> float:
    """``(float)n`` for an unsigned 64-bit integer: round to nearest-even 24-bit mantissa."""
    if n < 0:
        return -c_float(-n)
    bl = n.bit_length()
    if bl <= 24:
        return float(n)
    shift = bl - 24
    q, r = divmod(n, 1 << shift)
    half = 1 << (shift - 1)
    if r > half or (r == half and q & 1):
        q += 1
    return float(q << shift)


def cpu_seconds(ns: int) -> float:
    """xl's ``(float)cpu_time / 1e9``."""
    return c_float(ns) / 1e9


def print_bitmap(cpus: Iterable[int], maplen: int) -> str:
    """xl's ``print_bitmap``: ``all``, ``none`` or ``0-3,6`` over bits [0, maplen)."""
    s = set(cpus)
    bits = [i in s for i in range(maplen)]
    runs: list[tuple[int, int]] = []
    i = 0
    while i < maplen:
        if bits[i]:
            j = i
            while j + 1 < maplen and bits[j + 1]:
                j += 1
            runs.append((i, j))
            i = j + 1
        else:
            i += 1
    if not runs:
        return "none"
    if len(runs) == 1 and runs[0] == (0, maplen - 1):
        return "all"
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


def to_json(obj: object) -> str:
    import json  # only --json pays for it

    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


# --------------------------------------------------------------------------------------
# list
# --------------------------------------------------------------------------------------


def state_flags(d: DomainInfo) -> str:
    """The six-letter State column: running, blocked, paused, shutdown, reason, dying."""
    reason = (d.shutdown_reason or 0) if d.shutdown else 0  # an int once shut down
    letter = SHUTDOWN_LETTERS[reason] if 0 <= reason < len(SHUTDOWN_LETTERS) else "?"
    return "".join((
        "r" if d.running else "-", "b" if d.blocked else "-", "p" if d.paused else "-",
        "s" if d.shutdown else "-", letter, "d" if d.dying else "-",
    ))


def format_list(entries: Sequence[tuple[str | None, DomainInfo]], verbose: bool = False,
                *, context: bool = False, claim: bool = False,
                nodes: Sequence[str] | None = None,
                pools: Sequence[str | None] | None = None) -> str:
    """``xl list [-v] [-Z] [-c] [-n]`` and ``xl claims`` (``claim``); entries are (XenStore
    name, DomainInfo) in domid order, ``nodes`` each domain's NODE Affinity text, ``pools``
    each domain's cpupool name."""
    out = ["Name                                        ID   Mem VCPUs\tState\tTime(s)"]
    if verbose:
        out[0] += "   UUID                            Reason-Code\tSecurity Label"
    if context and not verbose:
        out[0] += "   Security Label"
    if claim:
        out[0] += "  Claimed"
    if pools is not None:
        out[0] += "         Cpupool"
    if nodes is not None:
        out[0] += " NODE Affinity"
    for i, (name, d) in enumerate(entries):
        mem_mib = (d.current_memkb + d.outstanding_memkb) // 1024
        line = (f"{c_str(name):<40} {d.domid:5d} {mem_mib:5d} {d.nr_online_vcpus:5d}"
                f"     {state_flags(d)}  {cpu_seconds(d.cpu_time_ns):8.1f}")
        if verbose:
            reason = d.shutdown_reason if d.shutdown else 0
            line += f" {d.uuid}"
            line += f" {reason:8x}" if d.shutdown else f" {'-':>8}"
        if claim:
            line += f" {d.outstanding_memkb // 1024:5d}"
        if verbose or context:
            line += f" {'-':>16}"  # security label: Xen here has no XSM/FLASK policy
        if pools is not None:
            line += f"{c_str(pools[i]):>16}"
        if nodes is not None:
            line += f" {nodes[i]}"
        out.append(line)
    return "\n".join(out) + "\n"


def list_json(entries: Sequence[tuple[str | None, DomainInfo]]) -> list[dict[str, object]]:
    return [{
        "domid": d.domid, "name": name, "uuid": d.uuid,
        "memory_kb": d.current_memkb + d.outstanding_memkb,
        "current_memory_kb": d.current_memkb, "outstanding_memory_kb": d.outstanding_memkb,
        "max_memory_kb": d.max_memkb, "vcpus_online": d.nr_online_vcpus,
        "max_vcpu_id": None if d.max_vcpu_id == 0xFFFFFFFF else d.max_vcpu_id,
        "cpupool": d.cpupool, "state": state_flags(d),
        "running": d.running, "blocked": d.blocked, "paused": d.paused,
        "shutdown": d.shutdown, "dying": d.dying, "shutdown_reason": d.shutdown_reason,
        "cpu_time_ns": d.cpu_time_ns, "type": "hvm" if d.hvm else "pv",
    } for name, d in entries]


# --------------------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------------------







def virt_caps(phys: PhysInfo) -> list[str]:
    has = phys.has_cap
    caps = [("pv", has("pv")), ("hvm", has("hvm")),
            ("hvm_directio", has("hvm") and has("directio")),
            ("pv_directio", has("pv") and has("directio")),
            ("hap", has("hap")), ("shadow", has("shadow")),
            ("iommu_hap_pt_share", has("iommu_hap_pt_share")), ("vmtrace", has("vmtrace")),
            ("vpmu", has("vpmu")), ("gnttab-v1", has("gnttab_v1")),
            ("gnttab-v2", has("gnttab_v2"))]
    return [name for name, on in caps if on]


def info_items(uname: Uname, phys: PhysInfo, ver: VersionInfo, sched_id: int,
               free_cpus: int | None) -> list[tuple[str, object, str]]:
    """(key, json value, xl text line) for each ``xl info`` line, in xl's order."""
    per_mib = (1 << 20) // ver.pagesize
    items: list[tuple[str, object, str]] = []

    def add(key: str, value: object, text: str | None = None, sep: str = ": ") -> None:
        items.append((key, value, f"{key:<23}{sep}{value if text is None else text}\n"))

    add("host", uname.nodename)
    add("release", uname.release)
    add("version", uname.version)
    add("machine", uname.machine)
    add("nr_cpus", phys.nr_cpus)
    add("max_cpu_id", phys.max_cpu_id)
    add("nr_nodes", phys.nr_nodes)
    add("cores_per_socket", phys.cores_per_socket)
    add("threads_per_core", phys.threads_per_core)
    add("cpu_mhz", f"{phys.cpu_khz // 1000}.{phys.cpu_khz % 1000:03d}")
    add("hw_caps", list(phys.hw_cap), ":".join(f"{c:08x}" for c in phys.hw_cap))
    caps = virt_caps(phys)
    add("virt_caps", caps, "".join(f" {c}" for c in caps), sep=":")
    add("total_memory", phys.total_pages // per_mib)
    add("free_memory", (phys.free_pages - phys.outstanding_pages) // per_mib)
    add("sharing_freed_memory", phys.sharing_freed_pages // per_mib)
    add("sharing_used_memory", phys.sharing_used_frames // per_mib)
    add("outstanding_claims", phys.outstanding_pages // per_mib)
    if free_cpus is not None:
        add("free_cpus", free_cpus)
    add("xen_major", ver.major)
    add("xen_minor", ver.minor)
    add("xen_extra", ver.extra)
    add("xen_version", ver.version)
    add("xen_caps", ver.capabilities)
    add("xen_scheduler", c_str(SCHEDULER_NAMES.get(sched_id)))
    add("xen_pagesize", ver.pagesize)
    add("platform_params", f"virt_start=0x{ver.virt_start:x}")
    add("xen_changeset", ver.changeset)
    add("xen_commandline", ver.commandline)
    add("cc_compiler", ver.compiler)
    add("cc_compile_by", ver.compile_by)
    add("cc_compile_domain", ver.compile_domain)
    add("cc_compile_date", ver.compile_date)
    add("build_id", ver.build_id)
    add("xend_config_format", 4)
    return items


def format_info(items: Sequence[tuple[str, object, str]], select: str | None = None) -> str:
    """All lines, or (``xl info NAME``) the values of lines whose text starts with NAME."""
    if select is None:
        return "".join(line for _, _, line in items)
    out = []
    for _, _, line in items:
        colon = line.find(":")
        if line.startswith(select) and colon >= 0 and line[colon + 1:colon + 2] == " ":
            out.append(line[colon + 2:])
    return "".join(out)


def info_json(items: Sequence[tuple[str, object, str]]) -> dict[str, object]:
    return {key: value for key, value, _ in items}


# --------------------------------------------------------------------------------------
# vcpu-list
# --------------------------------------------------------------------------------------




VCPU_LIST_HEADER = (f"{'Name':<32} {'ID':>5} {'VCPU':>5} {'CPU':>5} {'State':>5} "
                    f"{'Time(s)':>9} Affinity (Hard / Soft)\n")


def format_vcpu_row(row: VcpuRow, nr_cpus: int) -> str:
    v = row.info
    line = f"{c_str(row.name):<32} {row.domid:5d} {v.vcpu:5d}"
    if not v.online:
        line += f"{'-':>5} {'-':>3}-p "
    else:
        line += f"{v.cpu:5d} {'r' if v.running else '-':>3}{'b' if v.blocked else '-'}- "
    line += f"{cpu_seconds(v.cpu_time_ns):9.1f}  "
    line += f"{print_bitmap(row.hard, nr_cpus)} / {print_bitmap(row.soft, nr_cpus)}\n"
    return line


def format_vcpu_list(rows: Sequence[VcpuRow], nr_cpus: int) -> str:
    """``xl vcpu-list``; ``nr_cpus`` is physinfo max_cpu_id + 1, like xl."""
    return VCPU_LIST_HEADER + "".join(format_vcpu_row(r, nr_cpus) for r in rows)


def vcpu_list_json(rows: Sequence[VcpuRow]) -> list[dict[str, object]]:
    return [{
        "domid": r.domid, "name": r.name, "vcpu": r.info.vcpu,
        "cpu": r.info.cpu if r.info.online else None, "online": r.info.online,
        "running": r.info.running, "blocked": r.info.blocked,
        "cpu_time_ns": r.info.cpu_time_ns,
        "hard_affinity": sorted(r.hard), "soft_affinity": sorted(r.soft),
    } for r in rows]


# --------------------------------------------------------------------------------------
# uptime
# --------------------------------------------------------------------------------------


def uptime_to_string(uptime: int, short: bool) -> str:
    day, rest = divmod(uptime, 86400)
    hour, rest = divmod(rest, 3600)
    minute, sec = divmod(rest, 60)
    days = f"{day} days, " if day > 1 else ("1 day, " if day == 1 else "")
    if short:
        return f"{days}{hour:2d}:{minute:02d}"
    return f"{days}{hour:2d}:{minute:02d}:{sec:02d}"


def format_uptime(rows: Sequence[tuple[int, str | None, int]], short: bool,
                  now: float | None = None) -> str:
    """``xl uptime [-s]``; rows are (domid, name, uptime seconds)."""
    out = [] if short else [f"{'Name':<33} {'ID':>4} Uptime\n"]
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    for domid, name, up in rows:
        if short:
            out.append(f" {clock} up {uptime_to_string(up, True)}, {c_str(name)} ({domid})\n")
        else:
            out.append(f"{c_str(name):<33} {domid:4d} {uptime_to_string(up, False)}\n")
    return "".join(out)


def uptime_json(rows: Sequence[tuple[int, str | None, int]]) -> list[dict[str, object]]:
    return [{"domid": d, "name": n, "uptime_s": u} for d, n, u in rows]


# --------------------------------------------------------------------------------------
# sched-credit / sched-credit2
# --------------------------------------------------------------------------------------

SCHED_HEADER = f"{'Name':<33} {'ID':>4} {'Weight':>6} {'Cap':>4}\n"


def format_sched_row(name: str | None, domid: int, weight: int, cap: int) -> str:
    return f"{c_str(name):<33} {domid:4d} {weight:6d} {cap:4d}\n"


def format_credit_pool(pool_name: str | None, params: CreditParams | None) -> str:
    if params is None:
        return f"Cpupool {c_str(pool_name)}: [sched params unavailable]\n"
    return (f"Cpupool {c_str(pool_name)}: tslice={params.tslice_ms}ms "
            f"ratelimit={params.ratelimit_us}us migration-delay={params.vcpu_migr_delay_us}us\n")


def format_credit2_pool(pool_name: str | None, params: Credit2Params | None) -> str:
    if params is None:
        return f"Cpupool {c_str(pool_name)}: [sched params unavailable]\n"
    return f"Cpupool {c_str(pool_name)}: ratelimit={params.ratelimit_us}us\n"


def params_json(params: CreditParams | Credit2Params | None) -> dict[str, int] | None:
    if params is None:
        return None
    return {k: getattr(params, k) for k in params.__dataclass_fields__}


def sched_row_json(name: str | None, domid: int, weight: int, cap: int) -> dict[str, object]:
    return {"domid": domid, "name": name, "weight": weight, "cap": cap}

