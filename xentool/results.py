"""Result records of the public API that are not the hypervisor's own.

Named tuples rather than dataclasses: ``xentool list`` and friends build them on the
start-up path of every command, where importing ``dataclasses`` is measurable; they are
just as immutable.  The hypervisor's records (``DomainInfo``, ``VcpuInfo``, ``PhysInfo``,
``VersionInfo``, ``CpupoolInfo``, ``SchedCredit``) are frozen dataclasses of
``domain_builder.xenctrl``.
"""

from __future__ import annotations

from collections import namedtuple

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    # What type checkers see: the same named tuples, with their field types.  At run time
    # they are made by collections.namedtuple (below), which does not import typing.
    from typing import NamedTuple

    from domain_builder.xenctrl import PhysInfo, VcpuInfo, VersionInfo

    class Uname(NamedTuple):
        nodename: str
        release: str
        version: str
        machine: str

    class HostInfo(NamedTuple):
        uname: Uname
        physinfo: PhysInfo
        version: VersionInfo
        sched_id: int
        free_cpus: int

    class VcpuRow(NamedTuple):
        domid: int
        name: str | None
        info: VcpuInfo
        hard: frozenset[int]
        soft: frozenset[int]

    class UptimeRow(NamedTuple):
        domid: int
        name: str | None
        seconds: int | None
else:
    #: The ``os.uname()`` fields ``xl info`` prints, all str.
    Uname = namedtuple("Uname", ["nodename", "release", "version", "machine"])

    #: What ``xl info`` shows: ``uname`` (Uname), ``physinfo`` (PhysInfo), ``version``
    #: (VersionInfo), ``sched_id`` (int), ``free_cpus`` (int: pCPUs in no cpupool).
    HostInfo = namedtuple("HostInfo", ["uname", "physinfo", "version", "sched_id",
                                       "free_cpus"])

    #: One ``xl vcpu-list`` line: ``domid`` (int), ``name`` (str | None), ``info``
    #: (VcpuInfo), ``hard`` and ``soft`` affinity (frozenset[int]).
    VcpuRow = namedtuple("VcpuRow", ["domid", "name", "info", "hard", "soft"])

    #: One ``xl uptime`` line: ``domid`` (int), ``name`` (str | None), ``seconds`` (int,
    #: or None when XenStore does not hold the domain's start time).
    UptimeRow = namedtuple("UptimeRow", ["domid", "name", "seconds"])
