"""xl.cfg cpus/cpus_soft/cpu_weight/cap -> what create hands to libxenctrl (libxl 4.17)."""

from __future__ import annotations

import pytest

from xentool.config import loads
from xentool.errors import XentoolError
from xentool.settings import VcpuAffinity, sched_scheduler, vcpu_affinities

BASE = "name='g'\nkernel='/k'\nvcpus=4\n"


def cfg(extra: str):  # type: ignore[no-untyped-def]
    return loads(BASE + extra, "g.cfg")


def test_no_cpus_sets_nothing() -> None:
    assert vcpu_affinities(cfg(""), 4, 8) == []


def test_a_string_pins_every_vcpu_to_the_same_set() -> None:
    out = vcpu_affinities(cfg('cpus="1-3,^2"\n'), 4, 8)
    assert out == [VcpuAffinity(v, frozenset({1, 3}), None) for v in range(4)]


def test_all_means_every_pcpu_of_the_host() -> None:
    out = vcpu_affinities(cfg('cpus="all,^0"\ncpus_soft="2"\n'), 2, 4)
    assert out == [VcpuAffinity(v, frozenset({1, 2, 3}), frozenset({2})) for v in range(2)]


def test_a_list_pins_vcpu_i_to_item_i_and_leaves_the_rest() -> None:
    out = vcpu_affinities(cfg('cpus=["0", "1-2"]\n'), 4, 8)
    assert out == [VcpuAffinity(0, frozenset({0}), None),
                   VcpuAffinity(1, frozenset({1, 2}), None)]


def test_soft_only() -> None:
    out = vcpu_affinities(cfg('cpus_soft=["3"]\n'), 2, 8)
    assert out == [VcpuAffinity(0, None, frozenset({3}))]


def test_pcpus_beyond_the_host_are_dropped_and_none_left_is_refused() -> None:
    assert vcpu_affinities(cfg('cpus="1,7"\n'), 1, 2) == [VcpuAffinity(0, frozenset({1}),
                                                                      None)]
    with pytest.raises(XentoolError, match="cpus selects no pcpu of this host for vcpu 0"):
        vcpu_affinities(cfg('cpus="5"\n'), 1, 2)


@pytest.mark.parametrize("extra, sched_id, expect", [
    ("", 5, None), ("", 9, None),
    ("cpu_weight=512\n", 5, "credit"), ("cap=30\n", 6, "credit2"),
    ("cpu_weight=512\ncap=0\n", 6, "credit2"),
])
def test_weight_and_cap_go_to_the_pools_scheduler(extra: str, sched_id: int,
                                                  expect: str | None) -> None:
    assert sched_scheduler(cfg(extra), sched_id) == expect


@pytest.mark.parametrize("sched_id, name", [(8, "rtds"), (9, "null"), (7, "arinc653")])
def test_weight_under_another_scheduler_is_refused(sched_id: int, name: str) -> None:
    with pytest.raises(XentoolError, match=f"need the credit or credit2 scheduler.*{name}"):
        sched_scheduler(cfg("cpu_weight=512\n"), sched_id)
