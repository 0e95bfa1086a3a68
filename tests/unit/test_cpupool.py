"""The pure parts of the cpupool verbs and sched-rtds: xl's pCPU range syntax, the pool
config (keys, shapes, defaults, messages), the pool plan, the output formats, and the
argument rules checked before any hypervisor call."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from domain_builder.xenctrl import CpupoolInfo
from xentool.cli import main
from xentool.cli.commands import sched
from xentool.cpupool import (
    CpupoolError,
    CpuRangeError,
    PoolPlan,
    cpumap_bits,
    dry_run_text,
    format_pool_list,
    parse_cpurange,
    plan_pool,
    read_pool_config,
)

# Two nodes: cpus 0-1 on node 0, 2-3 on node 1 (a cpumap of 8 bits).
TOPO = [(0, 0, 0), (1, 0, 0), (0, 1, 1), (1, 1, 1)]


def _nodes(n: int) -> list[int]:
    return [c for c, t in enumerate(TOPO) if t[2] == n]


@pytest.mark.parametrize(("text", "want"), [
    ("1", {1}), ("0-3", {0, 1, 2, 3}), ("0-3,^2", {0, 1, 3}), ("all", set(range(8))),
    ("all,^0", set(range(1, 8))), ("node:1", {2, 3}), ("nodes:0-1,^1", {0, 2, 3}),
    ("^node:0,1", {1}), ("1,,2", {1, 2}), ("9", set()), ("6-12", {6, 7}), (" 2", {2}),
    ("+3", {3}),
])
def test_cpurange_as_xl(text: str, want: set[int]) -> None:
    assert parse_cpurange(text, 8, _nodes) == want


@pytest.mark.parametrize(("text", "msg"), [
    ("x", "Invalid pcpu range: x."), ("3-1", "Invalid pcpu range: 3-1."),
    ("1-", "Invalid pcpu range: 1-."), ("-1", "Invalid pcpu range: -1."),
    ("^all", 'Can\'t combine "^" and "all".'), ("node:x", "Invalid pcpu range: x."),
    ("2x", "Invalid pcpu range: 2x."),
])
def test_cpurange_refused_with_xls_message(text: str, msg: str) -> None:
    with pytest.raises(CpuRangeError) as e:
        parse_cpurange(text, 8, _nodes)
    assert str(e.value) == msg


def test_cpumap_is_whole_bytes() -> None:
    assert (cpumap_bits(1), cpumap_bits(2), cpumap_bits(8), cpumap_bits(9)) == (8, 8, 8, 16)


def _plan(text: str, overrides: tuple[str, ...] = (), filename: str | None = None,
          free: frozenset[int] = frozenset({2, 3}), existing: tuple[str, ...] = ("Pool-0",)
          ) -> PoolPlan:
    cfg = read_pool_config(text, filename or "command line", overrides)
    return plan_pool(cfg, filename=filename, existing=existing, default_sched=6, free=free,
                     nbits=8, topology=TOPO)


def test_pool_config_keys_and_defaults() -> None:
    p = _plan('name = "p1"\nsched = "credit"\ncpus = ["2", "3"]\n')
    assert p == PoolPlan("p1", 5, frozenset({2, 3}), 2)
    # name from the file's base name, scheduler from the host
    assert _plan("", filename="/etc/xen/pool.cfg") == PoolPlan("pool.cfg", 6, frozenset(), 0)
    # overrides are appended, the last assignment wins; numbers are strings too
    assert _plan('name="a"', ("name=3", 'cpus="2-3"')).name == "3"
    assert _plan('name="a"\ncpus="2-3"').cpus == {2, 3}
    assert _plan('name="a"\ncpus=[3]').cpus == {3}
    # libxl matches scheduler names in any case
    assert _plan('name="a"\nsched="RTDS"\ncpus="2"').sched_id == 8


def test_pool_nodes_take_the_free_cpus_of_each_node() -> None:
    p = _plan('name="a"\nnodes=[1]', free=frozenset({1, 2, 3}))
    assert (p.cpus, p.n_cpus) == ({2, 3}, 2)
    assert _plan('name="a"\nnodes=[0, 1]', free=frozenset({1, 3})).cpus == {1, 3}
    # nodes wins over cpus, and a node listed twice counts twice as in xl
    assert _plan('name="a"\nnodes=["1", "1"]\ncpus="0"').n_cpus == 4


@pytest.mark.parametrize(("text", "msg"), [
    ("", "Missing cpupool name!"),
    ('name="Pool-0"', 'Pool name "Pool-0" already exists'),
    ('name="p" sched="foo"', "Unknown scheduler"),
    ('name="p" cpus=["1"]', "cpu 1 illegal or not free"),
    ('name="p" cpus=["x"]', "cpu 0 illegal or not free"),
    ('name="p" cpus="all"', "cpu 0 illegal or not free"),
    ('name="p" cpus="9-10,1"', "cpu 1 illegal or not free"),
    ('name="p" nodes=[0]', "no free cpu found"),
])
def test_pool_plan_refusals(text: str, msg: str) -> None:
    with pytest.raises(CpupoolError) as e:
        _plan(text.replace(" ", "\n"))
    assert str(e.value) == msg


def test_pool_config_wrong_shapes_warn_and_count_as_absent() -> None:
    cfg = read_pool_config('name=["a"]\nnodes="1"\ncpus="2"\n', "p.cfg")
    assert cfg.name is None and cfg.nodes is None and cfg.cpus == "2"
    assert cfg.warnings == (
        "p.cfg:1: warning: parameter `name' is a list but should be a single value",
        "p.cfg:2: warning: parameter `nodes' is a single value but should be a list")


def test_dry_run_text_as_xl() -> None:
    assert dry_run_text("command line", PoolPlan("rt", 8, frozenset({1}), 1)) == (
        'Using config file "command line"\ncpupool name:   rt\nscheduler:      rtds\n'
        "number of cpus: 1\n")


def test_pool_list_formats() -> None:
    pools = [("Pool-0", CpupoolInfo(0, 6, 1, frozenset({0}))),
             ("p1", CpupoolInfo(3, 5, 0, frozenset({1, 2})))]
    assert format_pool_list(pools, cpus=False) == (
        "Name               CPUs   Sched     Active   Domain count\n"
        "Pool-0               1   credit2       y          1\n"
        "p1                   2    credit       y          0\n")
    assert format_pool_list(pools, cpus=True) == (
        "Name               CPU list\nPool-0             0\np1                 1,2\n")


# -- argument forms refused before anything touches Xen --------------------------------------


def test_cpupool_create_refuses_two_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cpupool-create", "a.cfg", "b.cfg"]) == 1
    assert "one config file" in capsys.readouterr().err


def test_cpupool_create_unreadable_file(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.cfg"
    assert main(["cpupool-create", "-n", str(missing)]) == 1
    assert capsys.readouterr().err == (f"Failed to read config file: {missing}: "
                                       "No such file or directory\n")


def test_cpupool_create_parse_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "p.cfg"
    cfg.write_text('sched="credit"\n')
    assert main(["cpupool-create", "-n", "-f", str(cfg), "name="]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == "Failed to parse config file: Invalid argument" and len(err) == 2


@pytest.mark.parametrize(("argv", "msg"), [
    (["-e", "2"], "Invalid extratime."),
    (["--cpupool=p", "-d", "0"], "Specifying a cpupool is not allowed with other options."),
    (["-p", "1"], "Missing parameters."),
    (["-v", "0"], "Missing parameters."),
    (["-d", "x", "-p", "1"], "Must specify VCPU."),
    (["-d", "x", "-v", "0", "-v", "all"], "Incorrect VCPU IDs."),
    (["-d", "x", "-v", "0", "-p", "100", "-b", "50"],
     "Incorrect number of period, budget and extratime"),
    (["-d", "x", "-v", "0", "-v", "1", "-p", "9", "-b", "5", "-e", "1"],
     "Incorrect number of period, budget and extratime"),
])
def test_sched_rtds_option_rules(argv: list[str], msg: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sched-rtds", *argv]) == 1
    assert capsys.readouterr().err == msg + "\n"


def test_sched_rtds_short_c_takes_no_pool_as_in_xl() -> None:
    p = argparse.ArgumentParser()
    sched.configure_sched_rtds(p)
    ns = p.parse_args(["-c", "rt", "-d", "0"])
    # getopt's "c" takes no argument and options end at "rt": -d is never seen.
    assert (ns.c_flag, ns.cpupool, ns.domain, ns.ignored) == (True, None, None,
                                                               ["rt", "-d", "0"])
    ns = p.parse_args(["--cpupool", "rt"])
    assert ns.cpupool == "rt"


def test_strtol_as_xl() -> None:
    assert [sched._strtol(t) for t in ("12", "12ab", "ab", " -3", "+4")] == [12, 12, 0, -3, 4]
