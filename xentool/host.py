"""The public API: a :class:`Host` and its :class:`Domain`\\ s.

A provisioning script does with a few typed calls what it does with ``xl`` today, and pays
the import cost once for all its guests::

    import xentool

    with xentool.Host() as host:
        guest = host.create("/etc/xen/web.cfg", overrides=["name='web1'", "memory=512"])
        guest.set_sched(weight=512)
        print(guest.info().current_memkb)
        guest.shutdown(wait=True)

Every method raises only :class:`xentool.errors.XentoolError` subclasses (errors of the
hypervisor, xenstored or the OS are :class:`~xentool.errors.HostError`), prints nothing and
leaves the caller's signal handlers alone.  Results are immutable values: the hypervisor's
own records (``DomainInfo``, ``VcpuInfo``, ...: frozen dataclasses) or the named tuples of
:mod:`xentool.results`.

The handles to libxenctrl and xenstored are opened on first use and closed with the host;
a ``Host`` is not thread-safe (give each thread its own).  Heavy modules are imported by the
methods that need them, so a script that only lists domains pays for nothing else.
"""

from __future__ import annotations

import os

from xenstore.paths import domain_path
from xentool.errors import DomainNotFound, UsageError, translating
from xentool.session import Session

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from types import TracebackType

    from domain_builder.xenctrl import (
        CpupoolInfo,
        Credit2Params,
        CreditParams,
        DomainInfo,
        PhysInfo,
        RtdsParams,
        SchedCredit,
    )
    from xenstore.devices.attach import DeviceInfo
    from xentool.config.model import DomainConfig
    from xentool.config.xlconf import GlobalConfig
    from xentool.cpupool import PoolConfig, PoolPlan
    from xentool.results import HostInfo, UptimeRow, VcpuRow
    from xentool.retrieve import Retrieved
    from xentool.scheduler.stats import StatRow

    #: A config: a DomainConfig, a path to an xl.cfg file, or (``text=True``) its text.
    ConfigLike = DomainConfig | str | os.PathLike[str]


class Host:
    """The Xen host this process runs on (dom0), as a toolstack sees it.

    ``handle_signals``: let SIGINT, SIGTERM and SIGHUP roll back a create in progress (the
    CLI sets it; a library caller normally keeps its own handlers and gets the rollback
    from any exception it raises instead).
    """

    def __init__(self, *, handle_signals: bool = False) -> None:
        self._session = Session()
        self.handle_signals = handle_signals

    def __enter__(self) -> Host:
        return self

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections to libxenctrl and xenstored."""
        self._session.close()

    @property
    def session(self) -> Session:
        """The underlying handles, for the library's own modules (daemons)."""
        return self._session

    # -- configs ---------------------------------------------------------------------------

    @staticmethod
    def load_config(config: ConfigLike, overrides: Sequence[str] = (), *,
                    text: bool = False, source: str = "<config>",
                    cached: bool = False) -> DomainConfig:
        """A validated :class:`~xentool.config.DomainConfig` from a path, from text
        (``text=True``, named ``source`` in errors) or as given.  ``overrides`` are xl's
        trailing ``KEY=VALUE`` arguments.  ``cached`` goes through the built-config cache
        (:mod:`xentool.config.cache`)."""
        from xentool.config import load, loads
        from xentool.config.model import DomainConfig
        from xentool.state import config_cache_dir

        if isinstance(config, DomainConfig):
            if overrides:
                raise UsageError("overrides apply to config files and texts, not to a "
                                 "DomainConfig (use dataclasses.replace)")
            return config
        if text:
            return loads(str(config), source, overrides)
        return load(os.fspath(config), overrides,
                    cache_dir=config_cache_dir() if cached else None)

    @staticmethod
    def global_config(path: str | None = None) -> GlobalConfig:
        """xl's global configuration, xl.conf (``XENTOOL_XL_CONF`` or /etc/xen/xl.conf
        unless ``path``): its defaults where the file says nothing; ``ConfigError`` for a
        bad file.  ``output_format`` there is what ``list -l`` and ``create -n`` print."""
        from xentool.config.xlconf import load_global_config

        return load_global_config(path)

    @staticmethod
    def image_info(kernel: str, max_size: int | None = None) -> dict[str, object]:
        """What the PV builder finds in a kernel image (container, compression, ELF
        layout, Xen notes), decompressing at most ``max_size`` bytes (default 256 MiB)."""
        from domain_builder.image import DEFAULT_MAX_SIZE, load_kernel

        with translating():
            return load_kernel(kernel, max_size=max_size or DEFAULT_MAX_SIZE).summary()

    @staticmethod
    def plan(config: DomainConfig) -> dict[str, object]:
        """What the PV builder would do (image, memory layout, page tables), touching no
        Xen: ``create --plan``."""
        from xentool.create import plan_document, prepare

        with translating():
            return plan_document(config, prepare(config))

    # -- domains ---------------------------------------------------------------------------

    def create(self, config: ConfigLike, overrides: Sequence[str] = (), *,
               paused: bool = False, record: bool = True, cached: bool = False,
               ignore_global_masks: bool = False,
               xl_conf: GlobalConfig | None = None) -> Domain:
        """Create and start (unless ``paused``) the PV guest ``config`` describes.

        ``record`` keeps how it was created (:mod:`xentool.records`), so its on_* actions
        are applied by the host's monitor.  ``cached``: see :meth:`load_config`.  On any
        failure nothing is left behind.  xl.conf (``xl_conf``, else
        :meth:`global_config`) is honoured as xl honours it; ``ignore_global_masks`` leaves
        out its vCPU affinity masks (``create -i``).
        """
        from xentool.create import Source, create

        cfg = self.load_config(config, overrides, cached=cached)
        source = None
        if record:
            if isinstance(config, (str, os.PathLike)):
                source = Source(os.fspath(config), tuple(overrides))
            else:
                source = Source(cfg.source, (), _restartable_text(cfg))
        with translating():
            domid = create(cfg, paused=paused, source=source,
                           handle_signals=self.handle_signals,
                           gconf=xl_conf or self.global_config(),
                           ignore_masks=ignore_global_masks)
        return Domain(self, domid)

    def domain(self, qualifier: str | int) -> Domain:
        """The live domain with this name or id (``DomainNotFound`` otherwise)."""
        with translating():
            return Domain(self, self._session.resolve(str(qualifier)), str(qualifier))

    def finish_destroy(self, qualifier: str) -> bool:
        """Finish what a killed or failed ``destroy`` of ``qualifier`` (name, id or uuid)
        left once the domain itself is gone; False if no such destroy is on record."""
        from xentool.destroy import finish_destroy

        with translating():
            return finish_destroy(self._session, qualifier)

    def domains(self) -> list[Domain]:
        """Every live domain, dom0 included, by domid."""
        with translating():
            return [Domain(self, d.domid) for d in self._session.xc.domains()]

    def domain_infos(self, qualifiers: Iterable[str] = ()) -> list[tuple[str | None,
                                                                         DomainInfo]]:
        """(name, hypervisor record) of the given domains, or of all: ``list``."""
        s = self._session
        with translating():
            qualifiers = list(qualifiers)
            if qualifiers:
                infos = []
                for q in qualifiers:
                    info = s.xc.domain_info(s.resolve(q))
                    if info is None:  # vanished between resolve and here
                        raise DomainNotFound(q)
                    infos.append(info)
            else:
                infos = _no_shells(s.xc.domains())
            names = s.names(d.domid for d in infos)
        return [(names[d.domid], d) for d in infos]

    def domain_configs(self, qualifiers: Iterable[str] = ()
                       ) -> tuple[list[Retrieved], list[str]]:
        """The configuration of the given domains (or of all, dom0 included) as libxl
        retrieves it: the stored one updated with the runtime state (``list -l``).
        Returns them and the errors and warnings for the domains left out, as libxl
        reports them."""
        from xentool.retrieve import RetrieveError, retrieve

        s = self._session
        out: list[Retrieved] = []
        problems: list[str] = []
        with translating():
            qualifiers = list(qualifiers)
            domids = ([s.resolve(q) for q in qualifiers] if qualifiers
                      else [d.domid for d in _no_shells(s.xc.domains())])
            for domid in domids:
                try:
                    r = retrieve(s, domid)
                except (RetrieveError, DomainNotFound) as e:
                    problems.append(f"error: {e}")
                    continue
                problems.extend(f"warning: {w}" for w in r.warnings)
                out.append(r)
        return out, problems

    def half_built(self) -> dict[int, int]:
        """Domains a create left half-built when it was killed: domid -> the dead
        create's pid (``destroy`` removes such a domain and its crash record)."""
        import os

        from xentool.state import journal_dir_name

        try:
            if not os.listdir(journal_dir_name()):
                return {}
        except OSError:
            return {}  # no journal directory: no create ever died here
        from xentool.journal import half_built_domains

        return {domid: rec.pid for domid, rec in half_built_domains().items()}

    def domid(self, name: str) -> int:
        """The domid of the domain called ``name`` (XenStore and the hypervisor agree)."""
        from xentool.session import name_to_domid

        with translating():
            domid = name_to_domid(self._session.xc, self._session.reader, name)
        if domid is None:
            raise DomainNotFound(name)
        return domid

    def domname(self, domid: int) -> str:
        """The name XenStore holds for ``domid`` (no hypercall, like xl)."""
        with translating():
            name = self._session.name(domid)
        if name is None:
            raise DomainNotFound(str(domid))
        return name

    def wait_for_deaths(self, domains: Sequence[Domain],
                        progress: Callable[[str], None] | None = None) -> None:
        """Block until every one of ``domains`` has shut down or gone."""
        from xentool.control import _log_progress, wait_for_deaths

        with translating():
            wait_for_deaths(self._session, [d.domid for d in domains],
                            progress or _log_progress)

    # -- host ------------------------------------------------------------------------------

    def info(self) -> HostInfo:
        """What ``xl info`` shows: the host's uname, physinfo, Xen's version, scheduler."""
        from xentool.results import HostInfo, Uname

        u = os.uname()
        xc = self._session.xc
        with translating():
            return HostInfo(Uname(u.nodename, u.release, u.version, u.machine),
                            xc.physinfo(), xc.version(), xc.sched_id(),
                            len(xc.free_cpus()))

    def physinfo(self) -> PhysInfo:
        """The hypervisor's physinfo (CPUs, memory, capabilities)."""
        with translating():
            return self._session.xc.physinfo()

    def max_cpus(self) -> int:
        """How many physical CPUs Xen can address (the size of a cpumap)."""
        with translating():
            return int(self._session.xc.max_cpus())

    def uptimes(self, domains: Sequence[Domain] | None = None) -> list[UptimeRow]:
        """(domid, name, seconds up) of the given domains, or of dom0 and every domain that
        is not a stub domain, like ``xl uptime``; seconds is None for a domain whose start
        time XenStore does not hold."""
        from xentool.results import UptimeRow

        s = self._session
        now = int(__import__("time").time())
        with translating():
            if domains is not None:
                domids = [d.domid for d in domains]
            else:
                domids = [0] + [d.domid for d in s.xc.domains()
                                if d.domid != 0 and
                                s.reader.get(f"{domain_path(d.domid)}/target") is None]
            rows: list[UptimeRow] = []
            for domid in domids:
                up: int | None
                if domid == 0:
                    up = _dom0_uptime()
                else:
                    start = _start_time(s, domid)
                    up = None if start is None else (now - start) & 0xFFFFFFFF
                rows.append(UptimeRow(domid, s.name(domid), up))
        return rows

    def vcpus(self, domains: Sequence[Domain] | None = None) -> list[VcpuRow]:
        """Every vCPU of the given domains (or of all) with its hard and soft affinity."""
        s = self._session
        with translating():
            domids = ([d.domid for d in domains] if domains is not None
                      else [d.domid for d in s.xc.domains()])
            return [r for domid in domids for r in _vcpu_rows(s, domid)]

    def console_ring(self, *, clear: bool = False) -> bytes:
        """Xen's console ring, oldest first (``dmesg``); ``clear`` empties it after."""
        with translating():
            return self._session.xc.read_console_ring(clear=clear)

    def send_debug_keys(self, keys: str) -> None:
        """Press Xen's debug ``keys`` (``debug-keys``); what they print goes to ``dmesg``."""
        with translating():
            self._session.xc.send_debug_keys(keys)

    def set_parameters(self, params: str) -> None:
        """Set Xen runtime parameters, ``"name=value noname ..."`` (``set-parameters``)."""
        from xentool.hostops import set_parameters

        with translating():
            set_parameters(self._session, params)

    def numa_info(self) -> tuple[list[tuple[int, int]], list[list[int]]]:
        """Per node (memory size, free memory) in bytes, and the node distances."""
        with translating():
            return self._session.xc.numa_info()

    def cpu_topology(self) -> list[tuple[int, int, int] | None]:
        """Per CPU (core, socket, node); None for a CPU that is not present."""
        with translating():
            return self._session.xc.cpu_topology()

    def pci_topology(self) -> list[tuple[int, int, int, int | None]]:
        """(segment, bus, devfn, NUMA node or None) of each PCI device of the host."""
        from xentool.hostops import pci_topology

        with translating():
            return pci_topology()

    def vms(self) -> list[tuple[str, int, str | None]]:
        """(uuid, domid, name) of every domain but stub domains (``vm-list``)."""
        from xentool.hostops import is_stubdom

        s = self._session
        with translating():
            infos = [d for d in s.xc.domains() if not is_stubdom(s, d.domid)]
            names = s.names(d.domid for d in infos)
        return [(d.uuid, d.domid, names[d.domid]) for d in infos]

    def cpupools(self) -> list[tuple[str | None, CpupoolInfo]]:
        """(name, record) of every cpupool."""
        from xentool.scheduler.params import pool_name

        s = self._session
        with translating():
            return [(pool_name(s, p.poolid), p) for p in s.xc.cpupools()]

    def resolve_pool(self, qualifier: str) -> int:
        """A cpupool name or id to its id."""
        from xentool.scheduler.params import resolve_pool

        with translating():
            return resolve_pool(self._session, qualifier)

    def pool_sched_params(self, scheduler: str, poolid: int
                          ) -> CreditParams | Credit2Params | None:
        """A pool's scheduler parameters (``CreditParams``/``Credit2Params``), or None
        when Xen does not answer for that pool."""
        from xentool.scheduler.params import kind, pool_params

        with translating():
            return pool_params(self._session, kind(scheduler), poolid)

    def set_pool_sched_params(self, scheduler: str, poolid: int, *,
                              tslice_ms: int | None = None, ratelimit_us: int | None = None,
                              vcpu_migr_delay_us: int | None = None) -> None:
        """Change a pool's scheduler parameters (None leaves one as it is)."""
        from xentool.scheduler.params import kind, set_pool_params

        with translating():
            set_pool_params(self._session, kind(scheduler), poolid, tslice_ms=tslice_ms,
                            ratelimit_us=ratelimit_us, vcpu_migr_delay_us=vcpu_migr_delay_us)


    # -- cpupools (xentool.cpupool) ---------------------------------------------------------

    def cpupool_by_name(self, name: str) -> int | None:
        """The id of the pool of that name (names only, as ``cpupool-list POOL``)."""
        from xentool import cpupool

        with translating():
            return cpupool.by_name(self._session, name)

    def cpupool_id(self, qualifier: str) -> int:
        """A pool name or id to its id; ``NotFoundError`` "unknown cpupool 'X'"."""
        from xentool import cpupool

        with translating():
            return cpupool.resolve(self._session, qualifier)

    def parse_cpus(self, text: str) -> frozenset[int]:
        """pCPUs in xl's range syntax, ``node:N`` included, sized to this host's cpumap
        (``CpuRangeError`` with xl's message)."""
        from xentool import cpupool

        s = self._session
        with translating():
            return cpupool.parse_cpurange(text, cpupool.host_nbits(s),
                                          lambda n: cpupool.node_cpus(s, n))

    def plan_cpupool(self, config: PoolConfig, filename: str | None = None) -> PoolPlan:
        """The pool ``cpupool-create`` would make of ``config`` on this host (xl's
        defaults and checks); ``filename`` gives the default name."""
        from xentool import cpupool

        s = self._session
        with translating():
            return cpupool.plan_pool(
                config, filename=filename,
                existing=[n for n, _ in cpupool.named_pools(s) if n is not None],
                default_sched=s.xc.sched_id(), free=s.xc.free_cpus(),
                nbits=cpupool.host_nbits(s), topology=s.xc.cpu_topology())

    def create_cpupool(self, name: str, sched_id: int, cpus: Iterable[int] = ()) -> int:
        """Create a named pool run by scheduler ``sched_id`` with those free pCPUs; its id."""
        from xentool import cpupool

        with translating():
            return cpupool.create(self._session, name, sched_id, cpus)

    def destroy_cpupool(self, poolid: int) -> None:
        """Destroy an empty pool; its pCPUs become free."""
        from xentool import cpupool

        with translating():
            cpupool.destroy(self._session, poolid)

    def rename_cpupool(self, poolid: int, new_name: str) -> None:
        from xentool import cpupool

        with translating():
            cpupool.rename(self._session, poolid, new_name)

    def cpupool_add_cpus(self, poolid: int, cpus: Iterable[int]
                         ) -> list[tuple[int, OSError]]:
        """Move free pCPUs into a pool; returns those that would not go, with why."""
        from xentool import cpupool

        with translating():
            return cpupool.add_cpus(self._session, poolid, cpus)

    def cpupool_remove_cpus(self, poolid: int, cpus: Iterable[int]
                            ) -> list[tuple[int, OSError]]:
        """Free pCPUs of a pool; returns those that would not go, with why."""
        from xentool import cpupool

        with translating():
            return cpupool.remove_cpus(self._session, poolid, cpus)

    def cpupool_numa_split(self) -> None:
        """One pool per NUMA node, Pool-0 becoming the first node's (``Pool-node<N>``)."""
        import time

        from xentool import cpupool

        with translating():
            cpupool.numa_split(self._session, self.domain(0).set_vcpus, time.sleep)

    def sched_stats(self, domains: Sequence[Domain] | None = None, *,
                    cpupool: str | None = None, interval: float = 1.0, count: int = 1,
                    clock: Callable[[], float] | None = None,
                    sleep: Callable[[float], None] | None = None) -> Iterator[list[StatRow]]:
        """``count`` samples (0: forever) of CPU use over ``interval`` seconds each, next to
        weight, cap and fair share: ``sched-stats``."""
        import time

        from xentool.scheduler.stats import sample, stat_rows

        clock = clock or time.monotonic
        sleep = sleep or time.sleep
        s = self._session
        only = {d.domid for d in domains} if domains is not None else None
        n = 0
        with translating():
            t0, before, _ = sample(s, clock)
        while count == 0 or n < count:
            sleep(max(0.0, t0 + interval - clock()))
            with translating():
                t1, after, doms = sample(s, clock)
                rows = stat_rows(s, doms, before, after, t1 - t0, cpupool, only)
            yield rows
            t0, before = t1, after
            n += 1


#: How long a device verb waits for the domain's lock: attaches to one domain queue on it
#: for their whole plug (hotplug script included), seconds each under emulation.
DEVICE_LOCK_WAIT = 300.0


class Domain:
    """A live domain of a :class:`Host`, by domid.

    A domain that is destroyed meanwhile makes its methods raise ``DomainNotFound`` (or a
    ``HostError`` from the hypervisor).
    """

    __slots__ = ("domid", "host", "label")

    def __init__(self, host: Host, domid: int, label: str | None = None) -> None:
        self.host = host
        self.domid = domid
        #: How the caller named the domain (for messages); its domid if by id.
        self.label = label if label is not None else str(domid)

    def __repr__(self) -> str:
        return f"<Domain {self.domid}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Domain) and other.domid == self.domid \
            and other.host is self.host

    def __hash__(self) -> int:
        return hash(self.domid)

    @property
    def _s(self) -> Session:
        return self.host.session

    # -- state -----------------------------------------------------------------------------

    def info(self) -> DomainInfo:
        """The hypervisor's record of the domain (state, memory, vCPUs, cpupool, ...)."""
        with translating():
            info = self._s.xc.domain_info(self.domid)
        if info is None:
            raise DomainNotFound(str(self.domid))
        return info

    @property
    def name(self) -> str | None:
        """The domain's name in XenStore (None while it has none)."""
        with translating():
            return self._s.name(self.domid)

    # -- lifecycle -------------------------------------------------------------------------

    def destroy(self, *, force: bool = False) -> None:
        """Destroy the domain as libxl does (devices, domain, XenStore, records).
        Domain 0 only with ``force``."""
        from xentool.destroy import destroy_domain
        from xentool.errors import XentoolError

        if self.domid == 0 and not force:
            raise XentoolError("cannot destroy privileged domain 0 (use -f to insist)")
        with translating():
            destroy_domain(self._s, self.domid)

    def pause(self) -> None:
        with translating():
            self._s.xc.pause(self.domid)

    def unpause(self) -> None:
        with translating():
            self._s.xc.unpause(self.domid)

    def shutdown(self, *, wait: bool = False, fallback: bool = False,
                 timeout: float | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        """Ask the guest to power off (PV control protocol); with ``fallback`` use the
        hypercall if the guest has no PV control or does not acknowledge; with ``wait``
        return only once it has shut down or gone."""
        self._request("poweroff", wait, fallback, timeout, progress)

    def reboot(self, *, wait: bool = False, fallback: bool = False,
               timeout: float | None = None,
               progress: Callable[[str], None] | None = None) -> None:
        """Ask the guest to reboot (see :meth:`shutdown`); its on_reboot action follows."""
        self._request("reboot", wait, fallback, timeout, progress)

    def _request(self, action: str, wait: bool, fallback: bool, timeout: float | None,
                 progress: Callable[[str], None] | None) -> None:
        from xentool.control import _log_progress, request, wait_for_deaths

        report = progress or _log_progress
        with translating():
            request(self._s, self.domid, action, fallback, timeout, report)
            if wait:
                wait_for_deaths(self._s, [self.domid], report)

    def rename(self, new_name: str) -> None:
        """Give the domain a new name (unique among live domains)."""
        from xentool.control import rename_domain

        with translating():
            rename_domain(self._s, self.domid, new_name)

    # -- resources -------------------------------------------------------------------------

    def set_memory(self, kib: int) -> None:
        """Move the balloon target (``mem-set``)."""
        from xentool.control import set_memory_target

        with translating():
            set_memory_target(self._s, self.domid, kib)

    def set_max_memory(self, kib: int) -> None:
        """Change the hypervisor's limit and ``memory/static-max`` (``mem-max``)."""
        from xentool.control import set_memory_max

        with translating():
            set_memory_max(self._s, self.domid, kib)

    def set_vcpus(self, n: int, *, check_host: bool = True) -> None:
        """Bring vCPUs 0..n-1 online and the rest offline (``vcpu-set``); more vCPUs than
        the host has CPUs only without ``check_host``."""
        from xentool.control import set_vcpus

        with translating():
            set_vcpus(self._s, self.domid, n, check_host=check_host)

    def pin_vcpu(self, vcpu: int | None, hard: str | None,
                 soft: str | None = None, *,
                 force: bool = False) -> list[tuple[int, frozenset[int]]]:
        """Set vCPU affinity in xl's cpu list syntax (``vcpu-pin``); ``vcpu`` None for all.
        ``force`` also overrides a temporary pinning the guest made (``vcpu-pin -f``).
        Returns the vCPUs whose effective hard affinity the cpupool restricted."""
        from xentool.control import set_vcpu_affinity

        with translating():
            return set_vcpu_affinity(self._s, self.domid, vcpu, hard, soft, force=force)

    def sched(self, scheduler: str | None = None) -> SchedCredit:
        """Weight and cap; ``scheduler`` ("credit"/"credit2") must be the pool's if given,
        else the pool's own scheduler is used."""
        from xentool.scheduler.params import domain_info_for, domain_params, kind

        with translating():
            k = kind(scheduler or self._pool_scheduler())
            domain_info_for(self._s, k, self.domid, self.label)
            return domain_params(self._s, k, self.domid)

    def set_sched(self, *, weight: int | None = None, cap: int | None = None,
                  scheduler: str | None = None) -> None:
        """Change weight and/or cap (libxl's ranges)."""
        from xentool.scheduler.params import kind, set_domain_params

        with translating():
            k = kind(scheduler or self._pool_scheduler())
            set_domain_params(self._s, k, self.domid, weight=weight, cap=cap,
                              label=self.label)

    def move_to_cpupool(self, poolid: int) -> None:
        """Move the domain into cpupool ``poolid`` (``cpupool-migrate``)."""
        with translating():
            self._s.xc.cpupool_move_domain(poolid, self.domid)

    def scheduler_id(self) -> int:
        """The scheduler id of the domain's cpupool."""
        from xentool.scheduler.rtds import domain_scheduler

        with translating():
            return domain_scheduler(self._s, self.domid)

    def rtds(self) -> RtdsParams:
        """The domain's RTDS period and budget (the domain must be run by RTDS)."""
        with translating():
            return self._s.xc.sched_rtds(self.domid)

    def rtds_vcpus(self, vcpus: list[int] | None = None) -> list[tuple[int, RtdsParams]]:
        """(vCPU, RTDS parameters) of the given vCPUs, or of all; ``RtdsError`` with
        libxl's reason for a domain not run by RTDS or a vCPU it does not have."""
        from xentool.scheduler.rtds import vcpu_params

        with translating():
            return vcpu_params(self._s, self.domid, vcpus)

    def set_rtds_vcpus(self, params: dict[int, RtdsParams] | RtdsParams) -> None:
        """Set RTDS parameters per vCPU, or (one ``RtdsParams``) of every vCPU."""
        from xentool.scheduler.rtds import set_vcpu_params

        with translating():
            set_vcpu_params(self._s, self.domid, params)

    def _pool_scheduler(self) -> str:
        from xentool.scheduler import SCHEDULER_NAMES

        pool = self._s.xc.cpupool_info(self.info().cpupool)
        return SCHEDULER_NAMES.get(pool.sched_id, str(pool.sched_id))

    def node_affinity(self) -> frozenset[int]:
        """The NUMA nodes the domain's memory comes from (``list -n``)."""
        with translating():
            return self._s.xc.node_affinity(self.domid)

    # -- triggers, sysrq, core dumps ---------------------------------------------------------

    def send_trigger(self, trigger: str, vcpu: int = 0) -> None:
        """Send a libxl trigger (``nmi``, ``reset``, ``init``, ``power``, ``sleep``,
        ``s3resume``; any case) to ``vcpu``.  Xen refuses most of them for a PV guest:
        :class:`xentool.hostops.TriggerFailed` (exit code 0, as xl) says so."""
        from xentool.hostops import parse_trigger, send_trigger

        name = parse_trigger(trigger)
        if name is None:
            raise UsageError(f'Invalid trigger "{trigger}"')
        with translating():
            send_trigger(self._s, self.domid, name, vcpu)

    def send_sysrq(self, letter: str) -> None:
        """Ask the guest's kernel to act on the magic SysRq ``letter`` (``sysrq``)."""
        from xentool.hostops import send_sysrq

        with translating():
            send_sysrq(self._s, self.domid, letter)

    def dump_core(self, path: str | os.PathLike[str]) -> None:
        """Write an ELF core of the domain's memory and vCPUs to ``path`` (``dump-core``)."""
        from xentool.hostops import dump_core

        with translating():
            dump_core(self._s, self.domid, os.fspath(path))

    def channels(self) -> list[int]:
        """The devids of the domain's channels (``channel-list``)."""
        from xentool.hostops import channel_devids

        with translating():
            return channel_devids(self._s, self.domid)

    # -- devices ---------------------------------------------------------------------------

    def attach_disk(self, spec: str | Sequence[str], *, timeout: float | None = None) -> None:
        """Plug a disk given in xl's disk spec syntax (``"phy:/dev/vg/x,xvdb,w"``)."""
        from xenstore.devices.vbd import vbd_nodes
        from xentool.devices import attach_nodes, timeouts
        from xentool.devices.vbd import native_protocol, parse_disk_args
        from xentool.locks import domain_lock

        disk = parse_disk_args([spec] if isinstance(spec, str) else spec)
        with translating(), domain_lock(self.domid, timeout=DEVICE_LOCK_WAIT):
            info = self._s.xc.domain_info(self.domid)
            protocol = native_protocol(hvm=info is not None and info.hvm)
            attach_nodes(self._s.xs, vbd_nodes(self.domid, disk, protocol),
                         timeouts(timeout))

    def detach_disk(self, vdev: str | int, *, force: bool = False,
                    timeout: float | None = None) -> None:
        """Unplug a disk by vdev (``xvdb``) or device number; ``force`` does not wait for
        the guest to let go."""
        from xenstore.devices.attach import Force
        from xentool.devices import detach_device, timeouts
        from xentool.errors import NotFoundError
        from xentool.locks import domain_lock

        try:
            from xenstore.paths import vdev_to_devid

            devid = vdev_to_devid(str(vdev))
        except ValueError:
            raise NotFoundError(f"Error: Device {vdev} not connected.") from None
        with translating(), domain_lock(self.domid, timeout=DEVICE_LOCK_WAIT):
            detach_device(self._s.xs, self.domid, "vbd", devid,
                          force=Force.ON if force else Force.OFF, wait=timeouts(timeout),
                          label=str(vdev))

    def attach_nic(self, *options: str, timeout: float | None = None,
                   xl_conf: GlobalConfig | None = None) -> int:
        """Plug a vif given as xl's ``KEY=VALUE`` options; returns its devid.  The vif
        defaults of xl.conf (``xl_conf``, else :meth:`Host.global_config`) apply."""
        from xentool.devices import attach_vif, timeouts
        from xentool.locks import domain_lock

        gconf = xl_conf or Host.global_config()
        gconf.check_applicable()
        with translating(), domain_lock(self.domid, timeout=DEVICE_LOCK_WAIT):
            return attach_vif(self._s.xs, self.domid, options, timeouts(timeout), gconf)

    def detach_nic(self, device: str | int, *, timeout: float | None = None) -> None:
        """Unplug a vif by devid or MAC."""
        from xentool.devices import detach_device, timeouts, vif_devid_of
        from xentool.errors import NotFoundError
        from xentool.locks import domain_lock

        with translating(), domain_lock(self.domid, timeout=DEVICE_LOCK_WAIT):
            devid = vif_devid_of(self._s.xs, self.domid, str(device))
            if devid is None:
                raise NotFoundError(f"Unknown device {device}.")
            detach_device(self._s.xs, self.domid, "vif", devid, wait=timeouts(timeout),
                          missing=f"Unknown device {device}.")

    def devices(self, kind: str) -> list[DeviceInfo]:
        """The domain's devices of ``kind`` (``disk``/``vbd``, ``nic``/``vif``) as their
        backends describe them."""
        from xentool.devices import devices

        with translating():
            return devices(self._s.xs, self.domid, kind)

    # -- stored configuration ----------------------------------------------------------------

    def retrieve_config(self) -> dict[str, object]:
        """The domain's configuration as libxl retrieves it (one entry of ``list -l``):
        the stored libxl_domain_config brought up to date with the running domain."""
        from xentool.retrieve import retrieve

        with translating():
            return retrieve(self._s, self.domid).config

    def update_config(self, text: str, source: str = "<updated>") -> DomainConfig:
        """``config-update``: keep the xl.cfg ``text`` as the configuration the domain is
        created from when it next restarts (on_reboot and the other restart actions),
        where xl keeps it (the domain's ``xl`` userdata), so xl and xentool both use it.
        The text must be a valid configuration (``ConfigError`` otherwise); it is
        returned parsed."""
        from xentool.config import loads
        from xentool.retrieve import store_userdata

        cfg = loads(text, source)
        uuid = self.info().uuid
        with translating():
            store_userdata(self.domid, uuid, "xl", text.encode("utf-8", "surrogateescape"))
        return cfg

    # -- on_* actions ------------------------------------------------------------------------

    def watch(self, *, background: bool = True) -> int | None:
        """Make sure the domain's on_poweroff/on_reboot/on_crash/... actions happen, as the
        process ``xl create`` leaves behind does: in the background (a monitor for every
        domain with a record, started unless one runs; returns its pid or None), or in the
        foreground (returns once the domain is gone for good; ``create -F``).  The domain
        needs a record (``create(record=True)``)."""
        from xentool.monitor import serve, spawn_monitor

        if background:
            with translating():
                return spawn_monitor(wait=True)
        uuid = str(self.info().uuid)
        with translating():
            serve(domain=uuid)
        return None

    # -- console ---------------------------------------------------------------------------

    def console_argv(self, ctype: str | None = None, num: int = 0) -> list[str]:
        """The xenconsole command line that attaches to this domain's console."""
        from xentool.console import console_argv, require_client

        if num < 0:
            raise UsageError(f"console: invalid console number {num}")
        require_client()
        return console_argv(self.domid, ctype, num)


def _restartable_text(cfg: DomainConfig) -> str:
    """The xl.cfg text a record keeps to create ``cfg`` again: only one that still says
    exactly ``cfg`` (a config changed with ``dataclasses.replace`` no longer does)."""
    from xentool.config import loads

    if cfg.text is None or loads(cfg.text, cfg.source) != cfg:
        raise UsageError(f"{cfg.name}: this DomainConfig has no xl.cfg text that describes "
                         "it, so its on_* actions could not create it again; create it from "
                         "a file or text (overrides allowed), or pass record=False")
    return cfg.text


def _dom0_uptime() -> int:
    with open("/proc/uptime") as f:
        return int(f.read().split()[0].split(".")[0])


def _start_time(s: Session, domid: int) -> int | None:
    """Seconds since the epoch when the domain started (``/vm/<uuid>/start_time``)."""
    vm = s.reader.get(f"{domain_path(domid)}/vm")
    if vm is None:
        return None
    raw = s.reader.get(f"{vm}/start_time")
    if raw is None:
        return None
    digits = ""
    for c in raw.strip():  # strtoul: leading digits only ("1700000000.42")
        if not c.isdigit():
            break
        digits += c
    return int(digits or 0) & 0xFFFFFFFF


def _vcpu_rows(s: Session, domid: int) -> list[VcpuRow]:
    from xentool.results import VcpuRow

    info = s.xc.domain_info(domid)
    if info is None or info.max_vcpu_id == 0xFFFFFFFF:
        return []
    name = s.name(domid)
    rows = []
    for vcpu in range(info.max_vcpu_id + 1):
        hard, soft = s.xc.vcpu_affinity(domid, vcpu)
        rows.append(VcpuRow(domid, name, s.xc.vcpu_info(domid, vcpu), hard, soft))
    return rows


def _no_shells(infos: list[DomainInfo]) -> list[DomainInfo]:
    """``infos`` without the domain shells kept ready for creates (:mod:`xentool.shells`),
    made or being made: they are not guests yet."""
    from xentool.state import shell_domids, shells_making

    ready, making = shell_domids(), shells_making()
    if not ready and not making:
        return infos
    return [d for d in infos if d.domid not in ready and d.handle.hex() not in making]
