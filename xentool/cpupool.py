"""Cpupools as libxl 4.17 keeps them (``libxl_cpupool.c``) and as xl 4.17 reads a pool's
config (``xl cpupool-create``, the keys of xlcpupool.cfg(5): name, sched, cpus, nodes).

A pool is a hypervisor object (id, scheduler, pCPUs, domain count) plus its name in
XenStore, ``/local/pool/<id>/name`` (and ``uuid`` for pools a toolstack created): a pool
whose name is missing does not exist for xl, so every lookup here goes through the name.

The pure parts (xl's pCPU range syntax, the pool config, the plan of a pool to create) take
the host's facts as arguments and are tested without Xen; the rest drives libxenctrl and
XenStore in libxl's order, so a pool created here and one created by xl are the same.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xentool.errors import NotFoundError, XentoolError
from xentool.scheduler import SCHEDULER_NAMES

if TYPE_CHECKING:
    from domain_builder.xenctrl import CpupoolInfo
    from xenstore.client import Transaction
    from xentool.config.grammar import ParsedConfig, Value
    from xentool.session import Session

#: libxl's scheduler names (``libxl_scheduler_from_string``, case-insensitive) to Xen ids.
SCHEDULER_IDS = {name: sid for sid, name in SCHEDULER_NAMES.items()}


class CpupoolError(XentoolError):
    """A cpupool operation refused or failed; the message is xl's own line for it."""


class CpuRangeError(CpupoolError):
    """A pCPU list xl's ``parse_cpurange`` refuses (message as xl prints it)."""


def scheduler_label(sched_id: int) -> str:
    """What ``libxl_scheduler_to_string`` gives (xl prints "(null)" for an unknown id)."""
    return SCHEDULER_NAMES.get(sched_id, "(null)")


# -- xl's pCPU list syntax (xl_parse.c: parse_cpurange) -------------------------------------


def _strtoul_whole(text: str) -> int | None:
    """strtoul(text, &end, 10) with nothing left after the number: the value or None."""
    body = text.lstrip(" \t\n\v\f\r")
    if body[:1] == "+":
        body = body[1:]
    if not body.isdigit() or not body.isascii():
        return None
    return int(body)


def _range(text: str) -> tuple[int, int] | None:
    """xl's parse_range: ``A`` or ``A-B`` with ``A <= B``; None for anything else."""
    lo_s, sep, hi_s = text.partition("-")
    lo = _strtoul_whole(lo_s)
    if lo is None:
        return None
    if not sep:
        return lo, lo
    hi = _strtoul_whole(hi_s)
    if hi is None or hi < lo:
        return None
    return lo, hi


def parse_cpurange(text: str, nbits: int,
                   node_cpus: Callable[[int], Iterable[int]]) -> frozenset[int]:
    """The pCPUs of ``text`` in xl's syntax (``3``, ``0-3``, ``^2``, ``all``, ``node:1``,
    ``nodes:0-1``, comma-separated and applied in order).

    ``nbits`` is the size of libxl's cpumap in bits (the host's CPU count rounded up to a
    byte): as in libxl, CPUs at or past it are silently left out, and ``all`` is every one
    of them.  ``node_cpus(n)`` gives the pCPUs of NUMA node n (none for an unknown node).
    """
    cpus: set[int] = set()
    for elem in text.split(","):
        if not elem:
            continue  # strtok skips empty fields
        item = elem
        neg = item.startswith("^")
        if neg:
            item = item[1:]
        nodes = False
        for prefix in ("node:", "nodes:"):
            if item.startswith(prefix):
                item, nodes = item[len(prefix):], True
                break
        if item == "all":
            if neg:
                raise CpuRangeError('Can\'t combine "^" and "all".')
            cpus.update(range(nbits))
            continue
        rng = _range(item)
        if rng is None:
            raise CpuRangeError(f"Invalid pcpu range: {item}.")
        lo, hi = rng
        for n in range(lo, hi + 1):
            if nodes:
                picked = {c for c in node_cpus(n) if c < nbits}
            else:
                picked = {n} if n < nbits else set()
            if neg:
                cpus -= picked
            else:
                cpus |= picked
            if not nodes and n >= nbits:
                break  # the rest of the range is past the cpumap too
    return frozenset(cpus)


def cpumap_bits(max_cpus: int) -> int:
    """Bits of a libxl cpumap for a host addressing ``max_cpus`` CPUs."""
    return (max_cpus + 7) // 8 * 8


# -- the pool config (xlcpupool.cfg) ----------------------------------------------------------


@dataclass(frozen=True)
class PoolConfig:
    """What a pool config says, read as xl reads it (xlu_cfg_get_string / _get_list).

    ``cpus`` is a list of items (xl takes ``atoi`` of each), a string in pCPU range syntax,
    or None; ``nodes`` likewise is a list of node items or None.  ``warnings`` are libxlu's
    lines about a key of the wrong shape (that key then counts as absent).
    """

    source: str
    name: str | None
    sched: str | None
    cpus: tuple[str, ...] | str | None
    nodes: tuple[str, ...] | None
    warnings: tuple[str, ...] = ()


def _list_items(value: Value) -> tuple[str, ...]:
    """A list's leading atoms: xlu_cfg_get_listitem stops at the first nested list."""
    from xentool.config.grammar import Atom

    out = []
    for item in getattr(value, "items", ()):
        if not isinstance(item, Atom):
            break
        out.append(item.text)
    return tuple(out)


def pool_config(parsed: ParsedConfig, source: str) -> PoolConfig:
    """The pool keys of a parsed config, with libxlu's shape rules and warnings."""
    from xentool.config.grammar import Atom

    warnings: list[str] = []

    def string(key: str, warn: bool = True) -> str | None:
        st = parsed.settings.get(key)
        if st is None:
            return None
        if not isinstance(st.value, Atom):
            if warn:
                warnings.append(f"{source}:{st.line}: warning: parameter `{key}' is a list "
                                "but should be a single value")
            return None
        return st.value.text

    def items(key: str, warn: bool) -> tuple[str, ...] | None:
        st = parsed.settings.get(key)
        if st is None:
            return None
        if isinstance(st.value, Atom):
            if warn:
                warnings.append(f"{source}:{st.line}: warning: parameter `{key}' is a single "
                                "value but should be a list")
            return None
        return _list_items(st.value)

    name = string("name")
    sched = string("sched")
    nodes = items("nodes", warn=True)
    cpus: tuple[str, ...] | str | None = None
    if nodes is None:
        cpus = items("cpus", warn=False)
        if cpus is None:
            cpus = string("cpus")
    return PoolConfig(source, name, sched, cpus, nodes, tuple(warnings))


def read_pool_config(text: str, source: str, overrides: Sequence[str] = ()) -> PoolConfig:
    """Parse a pool config's text (``source`` names it in messages) with xl's trailing
    ``KEY=VALUE`` overrides appended, as xl does."""
    from xentool.config.grammar import parse

    extra = "".join(f"{o}\n" for o in overrides) if overrides else None
    return pool_config(parse(text, source, extra), source)


def _atoi(text: str) -> int:
    """C's atoi: optional blanks and sign, then digits; 0 when there are none."""
    s = text.lstrip(" \t\n\v\f\r")
    sign = -1 if s[:1] == "-" else 1
    if s[:1] in "+-":
        s = s[1:]
    n = 0
    for ch in s:
        if not ("0" <= ch <= "9"):
            break
        n = n * 10 + ord(ch) - 48
    return sign * n


@dataclass(frozen=True)
class PoolPlan:
    """The pool ``cpupool-create`` makes: name, scheduler id, pCPUs, and the CPU count xl
    prints (a node listed twice counts its CPUs twice, as in xl)."""

    name: str
    sched_id: int
    cpus: frozenset[int]
    n_cpus: int


def plan_pool(cfg: PoolConfig, *, filename: str | None, existing: Iterable[str],
              default_sched: int, free: frozenset[int], nbits: int,
              topology: Sequence[tuple[int, int, int] | None]) -> PoolPlan:
    """xl's checks and defaults for a new pool, in xl's order and with its messages:
    the name defaults to the config file's base name, the scheduler to the host's."""
    import os

    if cfg.name is not None:
        name = cfg.name
    elif filename is not None:
        name = os.path.basename(filename)
    else:
        raise CpupoolError("Missing cpupool name!")
    if name in set(existing):
        raise CpupoolError(f'Pool name "{name}" already exists')
    if cfg.sched is not None:
        sched_id = SCHEDULER_IDS.get(cfg.sched.lower())
        if sched_id is None:
            raise CpupoolError("Unknown scheduler")
    else:
        sched_id = default_sched
    free = frozenset(c for c in free if c < nbits)

    def node_cpus(node: int) -> list[int]:
        return [c for c, t in enumerate(topology) if t is not None and t[2] == node]

    cpus: set[int] = set()
    n_cpus = 0
    if cfg.nodes is not None:
        for item in cfg.nodes:
            picked = [c for c in node_cpus(_atoi(item)) if c in free]
            cpus.update(picked)
            n_cpus += len(picked)
        if n_cpus == 0:
            raise CpupoolError("no free cpu found")
    elif isinstance(cfg.cpus, tuple):
        for item in cfg.cpus:
            i = _atoi(item)
            if i < 0 or i not in free:
                raise CpupoolError(f"cpu {i} illegal or not free")
            cpus.add(i)
            n_cpus += 1
    elif isinstance(cfg.cpus, str):
        cpus = set(parse_cpurange(cfg.cpus, nbits, node_cpus))
        for i in sorted(cpus):
            if i not in free:
                raise CpupoolError(f"cpu {i} illegal or not free")
        n_cpus = len(cpus)
    return PoolPlan(name, sched_id, frozenset(cpus), n_cpus)


def dry_run_text(source: str, plan: PoolPlan) -> str:
    """What xl prints before it creates the pool (and all it prints with ``-n``)."""
    return (f'Using config file "{source}"\n'
            f"cpupool name:   {plan.name}\n"
            f"scheduler:      {scheduler_label(plan.sched_id)}\n"
            f"number of cpus: {plan.n_cpus}\n")


def format_pool_list(pools: Sequence[tuple[str | None, CpupoolInfo]], cpus: bool) -> str:
    """``xl cpupool-list [-c]`` for the given (name, record) pairs."""
    out = ["Name               " + ("CPU list" if cpus else
                                   "CPUs   Sched     Active   Domain count")]
    for name, p in pools:
        line = f"{name if name is not None else '(null)':<19}"
        if cpus:
            line += ",".join(str(c) for c in sorted(p.cpus))
        else:
            line += (f"{len(p.cpus):3d} {scheduler_label(p.sched_id):>9}       y       "
                     f"{p.n_dom:4d}")
        out.append(line)
    return "\n".join(out) + "\n"


# -- on the host ----------------------------------------------------------------------------


def pool_path(poolid: int) -> str:
    return f"/local/pool/{poolid}"


def name_of(s: Session, poolid: int) -> str | None:
    """libxl_cpupoolid_to_name: the XenStore name, None if the pool has none."""
    return s.reader.get(f"{pool_path(poolid)}/name")


def named_pools(s: Session) -> list[tuple[str | None, CpupoolInfo]]:
    """(name, record) of every pool, in id order."""
    return [(name_of(s, p.poolid), p) for p in s.xc.cpupools()]


def by_name(s: Session, name: str) -> int | None:
    """libxl_name_to_cpupoolid: a pool's id from its name only (``cpupool-list POOL``)."""
    for pname, p in named_pools(s):
        if pname == name:
            return p.poolid
    return None


def resolve(s: Session, qualifier: str) -> int:
    """A pool name or id to its id, as xl's verbs look it up
    (libxl_cpupool_qualifier_to_cpupoolid + libxl_cpupoolid_is_valid)."""
    from xentool.scheduler.params import resolve_pool

    try:
        return resolve_pool(s, qualifier)
    except NotFoundError:
        raise NotFoundError(f"unknown cpupool '{qualifier}'") from None


def node_cpus(s: Session, node: int) -> list[int]:
    return [c for c, t in enumerate(s.xc.cpu_topology()) if t is not None and t[2] == node]


def host_nbits(s: Session) -> int:
    return cpumap_bits(s.xc.max_cpus())


def create(s: Session, name: str, sched_id: int, cpus: Iterable[int]) -> int:
    """libxl_cpupool_create: a pool with those pCPUs (all free), named in XenStore.

    A pCPU that cannot be moved in destroys the new pool again, as libxl does."""
    poolid = s.xc.cpupool_create(sched_id)
    try:
        for cpu in sorted(cpus):
            s.xc.cpupool_add_cpu(poolid, cpu)
    except OSError:
        destroy(s, poolid)
        raise
    pool_uuid = str(uuid.uuid4())

    def record(t: Transaction) -> None:
        t.mkdir(pool_path(poolid))
        t.write(f"{pool_path(poolid)}/uuid", pool_uuid)
        t.write(f"{pool_path(poolid)}/name", name)

    s.xs.transact(record)
    return poolid


def destroy(s: Session, poolid: int) -> None:
    """libxl_cpupool_destroy: refused for a pool with domains; its pCPUs are freed first
    and its XenStore directory removed last."""
    info = s.xc.cpupool_info(poolid)
    if info.poolid != poolid or info.n_dom:
        raise CpupoolError(f"cpupool {poolid} has domains" if info.n_dom
                           else f"no cpupool {poolid}")
    for cpu in sorted(info.cpus):
        s.xc.cpupool_remove_cpu(poolid, cpu)
    s.xc.cpupool_destroy(poolid)
    s.xs.rm(pool_path(poolid), missing_ok=True)


def rename(s: Session, poolid: int, new_name: str) -> None:
    """libxl_cpupool_rename: only the XenStore name changes (no uniqueness check, as in
    libxl)."""
    info = s.xc.cpupool_info(poolid)
    if info.poolid != poolid:
        raise CpupoolError(f"no cpupool {poolid}")
    s.xs.transact(lambda t: t.write(f"{pool_path(poolid)}/name", new_name))


def add_cpus(s: Session, poolid: int, cpus: Iterable[int]) -> list[tuple[int, OSError]]:
    """Move each pCPU into the pool; the ones that would not go, with the reason."""
    return _each_cpu(lambda cpu: s.xc.cpupool_add_cpu(poolid, cpu), cpus)


def remove_cpus(s: Session, poolid: int, cpus: Iterable[int]) -> list[tuple[int, OSError]]:
    """Take each pCPU out of the pool; the ones that would not go, with the reason."""
    return _each_cpu(lambda cpu: s.xc.cpupool_remove_cpu(poolid, cpu), cpus)


def _each_cpu(move: Callable[[int], None], cpus: Iterable[int]) -> list[tuple[int, OSError]]:
    # As libxl: every CPU is tried, a failure does not stop the others.
    failed = []
    for cpu in sorted(cpus):
        try:
            move(cpu)
        except OSError as e:
            failed.append((cpu, e))
    return failed


def numa_split(s: Session, set_dom0_vcpus: Callable[[int], None],
               sleep: Callable[[float], None]) -> None:
    """xl cpupool-numa-split: Pool-0 keeps the first node's pCPUs and is renamed
    ``Pool-node<N>``; every other node gets a pool of its own under Pool-0's scheduler.
    Domain-0 is first cut down to as many vCPUs as that node has pCPUs."""
    pools = s.xc.cpupools()
    sched_id = pools[0].sched_id
    if len(pools) > 1:
        raise CpupoolError("splitting not possible, already cpupools in use")
    topo = s.xc.cpu_topology()
    nodes: list[int | None] = [t[2] if t is not None else None for t in topo]
    node = nodes[0] if nodes else None
    if node is None:
        raise CpupoolError("libxl_get_topologyinfo failed")
    free = s.xc.free_cpus()
    for cpu, n in enumerate(nodes):
        if n == node and cpu in free:
            try:
                s.xc.cpupool_add_cpu(0, cpu)
            except OSError:
                pass  # libxl counts these and goes on
    rename(s, 0, f"Pool-node{node}")
    n_first = sum(1 for n in nodes if n == node)
    nodes = [None if n == node else n for n in nodes]
    dom0 = s.xc.domain_info(0)
    if dom0 is None:
        raise CpupoolError("error on getting info for Domain-0")
    if dom0.nr_online_vcpus > n_first:
        set_dom0_vcpus(n_first)
    for _ in range(10):
        dom0 = s.xc.domain_info(0)
        if dom0 is None:
            raise CpupoolError("error on getting info for Domain-0")
        if dom0.nr_online_vcpus <= n_first:
            break
        sleep(1)
    else:
        raise CpupoolError("failed to offline vcpus")
    done: set[int] = set()
    for n in nodes:
        if n is None or n in done:
            continue
        done.add(n)
        members = [cpu for cpu, m in enumerate(nodes) if m == n]
        current = s.xc.cpupool_info(0).cpus
        remove_cpus(s, 0, [cpu for cpu in members if cpu in current])
        poolid = create(s, f"Pool-node{n}", sched_id, ())
        free = s.xc.free_cpus()
        add_cpus(s, poolid, [cpu for cpu in members if cpu in free])
