"""Result records of the public API that are not the hypervisor's own.

Named tuples rather than dataclasses: ``xentool list`` and friends build them on the
start-up path of every command, where importing ``dataclasses`` is measurable; they are
just as immutable.  The hypervisor's records (``DomainInfo``, ``VcpuInfo``, ``PhysInfo``,
``VersionInfo``, ``CpupoolInfo``, ``SchedCredit``) are frozen dataclasses of
``domain_builder.xenctrl``.
"""

from __future__ import annotations

from collections import namedtuple

#: The ``os.uname()`` fields ``xl info`` prints, all str.
Uname = namedtuple("Uname", ["nodename", "release", "version", "machine"])

#: What ``xl info`` shows: ``uname`` (Uname), ``physinfo`` (PhysInfo), ``version``
#: (VersionInfo), ``sched_id`` (int), ``free_cpus`` (int: pCPUs in no cpupool).
HostInfo = namedtuple("HostInfo", ["uname", "physinfo", "version", "sched_id", "free_cpus"])

#: One ``xl vcpu-list`` line: ``domid`` (int), ``name`` (str | None), ``info`` (VcpuInfo),
#: ``hard`` and ``soft`` affinity (frozenset[int]).
VcpuRow = namedtuple("VcpuRow", ["domid", "name", "info", "hard", "soft"])

#: One ``xl uptime`` line: ``domid`` (int), ``name`` (str | None), ``seconds`` (int, or
#: None when XenStore does not hold the domain's start time).
UptimeRow = namedtuple("UptimeRow", ["domid", "name", "seconds"])
