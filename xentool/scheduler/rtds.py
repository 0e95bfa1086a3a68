"""RTDS parameters of domains and their vCPUs (``sched-rtds``), with libxl 4.17's checks
and messages (``libxl_sched.c``): period and budget in microseconds, both at least 1, the
budget no larger than the period; per-vCPU access only for a domain run by RTDS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xentool.errors import DomainNotFound, XentoolError

if TYPE_CHECKING:
    from domain_builder.xenctrl import DomainInfo, RtdsParams
    from xentool.session import Session

#: XEN_SCHEDULER_RTDS
RTDS = 8


class RtdsError(XentoolError):
    """An RTDS request libxl refuses; the message is libxl's reason."""


def check_params(period: int, budget: int) -> None:
    """libxl's sched_rtds_validate_params."""
    if period < 1:
        raise RtdsError(f"Invalid VCPU period of {period} (it should be >= 1)")
    if budget < 1:
        raise RtdsError(f"Invalid VCPU budget of {budget} (it should be >= 1)")
    if budget > period:
        raise RtdsError("VCPU budget must be smaller than or equal to period, "
                        f"but {budget} > {period}")


def domain_scheduler(s: Session, domid: int) -> int:
    """The scheduler id of the domain's cpupool."""
    return s.xc.cpupool_info(_info(s, domid).cpupool).sched_id


def _info(s: Session, domid: int) -> DomainInfo:
    info = s.xc.domain_info(domid)
    if info is None:
        raise DomainNotFound(str(domid))
    return info


def _rtds_info(s: Session, domid: int, what: str) -> DomainInfo:
    info = _info(s, domid)
    if s.xc.cpupool_info(info.cpupool).sched_id != RTDS:
        raise RtdsError(f"per-VCPU parameter {what} not supported for this scheduler")
    return info


def vcpu_params(s: Session, domid: int,
                vcpus: list[int] | None = None) -> list[tuple[int, RtdsParams]]:
    """(vCPU, parameters) of the given vCPUs, or of all of them."""
    info = _rtds_info(s, domid, "getting")
    if vcpus is None:
        vcpus = list(range(info.max_vcpu_id + 1))
    for v in vcpus:
        if not 0 <= v <= info.max_vcpu_id:
            raise RtdsError("VCPU index is out of range, valid values are within range "
                            f"from 0 to {info.max_vcpu_id}")
    return list(zip(vcpus, s.xc.sched_rtds_vcpus(domid, vcpus), strict=True))


def set_vcpu_params(s: Session, domid: int, params: dict[int, RtdsParams] | RtdsParams) -> None:
    """Set the given vCPUs' parameters, or (one ``RtdsParams``) every vCPU's."""
    from domain_builder.xenctrl import RtdsParams

    info = _rtds_info(s, domid, "setting")
    if isinstance(params, RtdsParams):
        check_params(params.period, params.budget)
        params = dict.fromkeys(range(info.max_vcpu_id + 1), params)
    else:
        for v, p in params.items():
            if not 0 <= v <= info.max_vcpu_id:
                raise RtdsError(f"Invalid VCPU {v}: valid range is [0, {info.max_vcpu_id}]")
            check_params(p.period, p.budget)
    s.xc.set_sched_rtds_vcpus(domid, params)


def params(period: int, budget: int, extratime: bool = True) -> RtdsParams:
    """An ``RtdsParams`` value (period and budget in microseconds)."""
    from domain_builder.xenctrl import RtdsParams

    return RtdsParams(period, budget, extratime)
