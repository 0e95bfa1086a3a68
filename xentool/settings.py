"""What a config asks of the hypervisor besides memory and vCPUs, as libxl applies it.

Pure: from a :class:`~xentool.config.DomainConfig` and facts about the host (its number of
pCPUs, the cpupool's scheduler) to the values ``create`` hands to libxenctrl, so each
mapping is tested without Xen.  Semantics are libxl 4.17's (``libxl__build_pre``,
``libxl__sched_set_params``):

* ``cpus``/``cpus_soft`` as one string pin every vCPU to the same set; as a list, vCPU i
  gets item i and vCPUs past the end of the list keep the default (every pCPU).  ``all``
  means every pCPU the hypervisor can address; Xen then restricts a hard affinity to the
  domain's cpupool.
* ``cpu_weight``/``cap`` are set only when given, for the scheduler of the domain's cpupool
  (credit or credit2); the other schedulers have no weight or cap and refuse them.
"""

from __future__ import annotations

from dataclasses import dataclass

from xentool.config.model import CpuAffinity, DomainConfig
from xentool.errors import XentoolError
from xentool.scheduler import CREDIT, CREDIT2, SCHEDULER_NAMES


@dataclass(frozen=True)
class VcpuAffinity:
    """The affinity of one vCPU to set; None leaves that side at Xen's default (all)."""

    vcpu: int
    hard: frozenset[int] | None
    soft: frozenset[int] | None


def _per_vcpu(aff: CpuAffinity | None, vcpu: int, host_cpus: int) -> frozenset[int] | None:
    if aff is None or vcpu >= len(aff.per_vcpu):
        return None
    return aff.per_vcpu[vcpu].resolve(host_cpus)


def vcpu_affinities(config: DomainConfig, max_vcpus: int, host_cpus: int,
                    mask: frozenset[int] | None = None) -> list[VcpuAffinity]:
    """The affinity of every vCPU that ``cpus``/``cpus_soft`` set, in vCPU order.

    ``mask`` is xl.conf's global hard affinity mask (``vm.cpumask`` and ``vm.pv.cpumask``),
    applied as xl applies it: it restricts every hard affinity the config gives, and with
    no ``cpus`` at all it becomes every vCPU's hard affinity.
    """
    if config.cpus is None and config.cpus_soft is None and mask is None:
        return []
    out = []
    for v in range(max_vcpus):
        hard = _per_vcpu(config.cpus, v, host_cpus)
        soft = _per_vcpu(config.cpus_soft, v, host_cpus)
        if hard is not None and not hard:
            raise XentoolError(f"{config.source}: cpus selects no pcpu of this host for "
                               f"vcpu {v} (it has {host_cpus})")
        if mask is not None and (hard is not None or config.cpus is None):
            hard = (frozenset(range(host_cpus)) if hard is None else hard) & mask
            if not hard:
                raise XentoolError("vcpu hard affinity map is empty")  # xl's message
        if hard is not None or soft is not None:
            out.append(VcpuAffinity(v, hard, soft))
    return out


def sched_scheduler(config: DomainConfig, sched_id: int) -> str | None:
    """Which scheduler's parameters ``cpu_weight``/``cap`` go to: None if the config sets
    neither.  Refused for a pool whose scheduler has no weight or cap."""
    if config.cpu_weight is None and config.cpu_cap is None:
        return None
    if sched_id == CREDIT:
        return "credit"
    if sched_id == CREDIT2:
        return "credit2"
    name = SCHEDULER_NAMES.get(sched_id, f"scheduler {sched_id}")
    raise XentoolError(f"{config.source}: cpu_weight and cap need the credit or credit2 "
                       f"scheduler, but the domain's cpupool runs {name}")
