"""xl-identical text output from fixed data.

Expected lines are built with xl's own C format strings (copied format specifiers, applied
with Python's printf-style ``%``), so the oracle is independent of xentool.cli.format's code.
"""

# ruff: noqa: UP031 - the oracle is xl's printf format strings, applied with %

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain_builder.xenctrl import (
    Credit2Params,
    CreditParams,
    DomainInfo,
    PhysInfo,
    VcpuInfo,
    VersionInfo,
)
from xentool.cli import format as output
from xentool.control import parse_cpu_list

LIST_FMT = "%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f"
RUNNING, BLOCKED, PAUSED, SHUTDOWN, DYING = 1 << 5, 1 << 4, 1 << 3, 1 << 2, 1 << 0


def dom(domid: int = 0, flags: int = 0, tot_pages: int = 262144, cpu_ns: int = 0,
        vcpus: int = 2, outstanding: int = 0, max_vcpu_id: int = 1) -> DomainInfo:
    return DomainInfo(domid=domid, flags=flags, tot_pages=tot_pages, max_pages=tot_pages,
                      outstanding_pages=outstanding, shr_pages=0, paged_pages=0,
                      shared_info_frame=0, cpu_time_ns=cpu_ns, nr_online_vcpus=vcpus,
                      max_vcpu_id=max_vcpu_id, ssidref=0,
                      handle=bytes.fromhex("0123456789abcdef0011223344556677"), cpupool=0)


def f32(n: int) -> float:
    return struct.unpack("f", struct.pack("f", float(n)))[0]


def test_list_header_and_rows() -> None:
    d0 = dom(0, RUNNING, 262144, 12_345_678_901, 2)
    g = dom(7, BLOCKED | PAUSED, 25600, 987_654_321, 1, outstanding=256)
    text = output.format_list([("Domain-0", d0), ("guest-1", g)])
    lines = text.split("\n")
    assert lines[0] == "Name                                        ID   Mem VCPUs\tState\tTime(s)"
    assert lines[1] == LIST_FMT % ("Domain-0", 0, 1024, 2, "r", "-", "-", "-", "-", "-",
                                   f32(12_345_678_901) / 1e9)
    assert lines[2] == LIST_FMT % ("guest-1", 7, 101, 1, "-", "b", "p", "-", "-", "-",
                                   f32(987_654_321) / 1e9)
    assert lines[3] == "" and len(lines) == 4


@pytest.mark.parametrize("reason,letter", [(0, "-"), (1, "r"), (2, "s"), (3, "c"),
                                           (4, "w"), (5, "S"), (6, "?"), (255, "?")])
def test_state_column_shutdown_reasons(reason: int, letter: str) -> None:
    d = dom(3, SHUTDOWN | DYING | (reason << 16))
    assert output.state_flags(d) == f"---s{letter}d"


def test_reason_bits_ignored_unless_shut_down() -> None:
    assert output.state_flags(dom(3, RUNNING | (3 << 16))) == "r-----"


def test_missing_name_prints_like_glibc_null() -> None:
    line = output.format_list([(None, dom(4))]).split("\n")[1]
    assert line.startswith("(null)" + " " * 34 + "     4")


def test_list_verbose() -> None:
    d = dom(9, SHUTDOWN | (3 << 16))
    lines = output.format_list([("g", d), ("h", dom(10, RUNNING))], verbose=True).split("\n")
    assert lines[0].endswith("Time(s)   UUID                            "
                             "Reason-Code\tSecurity Label")
    base = LIST_FMT % ("g", 9, 1024, 2, "-", "-", "-", "s", "c", "-", 0.0)
    assert lines[1] == base + " 01234567-89ab-cdef-0011-223344556677" + " %8x" % 3 + " %16s" % "-"
    assert lines[2].endswith(" %8s" % "-" + " %16s" % "-")


@settings(max_examples=300)
@given(st.integers(0, 2**53))
def test_c_float_matches_ieee_single(n: int) -> None:
    # Below 2**53 the double conversion is exact, so packing to 'f' is an independent oracle.
    assert output.c_float(n) == f32(n)


def test_c_float_rounds_half_to_even_beyond_double_precision() -> None:
    big = (1 << 60) + (1 << 36)  # exactly half-way between two float32 values, even below
    assert output.c_float(big) == float(1 << 60)
    assert output.c_float(big + 1) == float((1 << 60) + (1 << 37))


def _c_print_bitmap(cpus: set[int], maplen: int) -> str:
    """Straight transliteration of xl_utils.c print_bitmap's state machine (the oracle)."""
    out = []
    state = firstset = 0
    i = 0
    for i in range(maplen):
        bit = i in cpus
        if state in (0, 2):
            if bit:
                firstset = i
                state += 1
        elif not bit:
            out.append(("," if state > 1 else "") + str(firstset))
            if i - 1 > firstset:
                out.append(f"-{i - 1}")
            state = 2
    i = maplen
    if state == 0:
        out.append("none")
    elif state == 1 and firstset == 0:
        out.append("all")
    elif state in (1, 3):
        out.append(("," if state > 1 else "") + str(firstset))
        if i - 1 > firstset:
            out.append(f"-{i - 1}")
    return "".join(out)


@settings(max_examples=400)
@given(st.integers(1, 40).flatmap(
    lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1)))))
def test_print_bitmap_matches_xl(case: tuple[int, set[int]]) -> None:
    n, cpus = case
    assert output.print_bitmap(cpus, n) == _c_print_bitmap(cpus, n)


def test_print_bitmap_examples() -> None:
    assert output.print_bitmap([], 4) == "none"
    assert output.print_bitmap(range(4), 4) == "all"
    assert output.print_bitmap([0, 2, 3], 4) == "0,2-3"
    assert output.print_bitmap([1, 2, 3], 4) == "1-3"
    assert output.print_bitmap([5], 4) == "none"  # beyond maplen: not shown, like xl


@pytest.mark.parametrize("secs,long,short", [
    (0, " 0:00:00", " 0:00"),
    (59, " 0:00:59", " 0:00"),
    (3661, " 1:01:01", " 1:01"),
    (86400 + 3661, "1 day,  1:01:01", "1 day,  1:01"),
    (3 * 86400 + 36000, "3 days, 10:00:00", "3 days, 10:00"),
])
def test_uptime_strings(secs: int, long: str, short: str) -> None:
    assert output.uptime_to_string(secs, False) == long
    assert output.uptime_to_string(secs, True) == short


def test_uptime_table() -> None:
    text = output.format_uptime([(0, "Domain-0", 3700), (5, "g", 61)], short=False)
    assert text == ("%-33s %4s %s\n" % ("Name", "ID", "Uptime")
                    + "%-33s %4d %s\n" % ("Domain-0", 0, " 1:01:40")
                    + "%-33s %4d %s\n" % ("g", 5, " 0:01:01"))


def test_uptime_short_uses_local_clock() -> None:
    import time

    now = 1_700_000_000.0
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    text = output.format_uptime([(3, "g", 90061)], short=True, now=now)
    assert text == f" {clock} up 1 day,  1:01, g (3)\n"


def _vcpu(vcpu: int, online: bool, running: bool, blocked: bool, cpu: int, ns: int) -> VcpuInfo:
    return VcpuInfo(vcpu, online, blocked, running, ns, cpu)


def test_vcpu_list() -> None:
    rows = [
        output.VcpuRow(0, "Domain-0", _vcpu(0, True, True, False, 1, 5_000_000_000),
                       frozenset({0, 1}), frozenset({0, 1})),
        output.VcpuRow(4, "g", _vcpu(1, True, False, True, 0, 123), frozenset({1}),
                       frozenset({0, 1})),
        output.VcpuRow(4, "g", _vcpu(2, False, False, False, 0, 0), frozenset(),
                       frozenset({0})),
    ]
    text = output.format_vcpu_list(rows, nr_cpus=2)
    lines = text.split("\n")
    assert lines[0] == "%-32s %5s %5s %5s %5s %9s %s" % (
        "Name", "ID", "VCPU", "CPU", "State", "Time(s)", "Affinity (Hard / Soft)")
    assert lines[1] == ("%-32s %5u %5u" % ("Domain-0", 0, 0) + "%5u %3c%c- " % (1, "r", "-")
                        + "%9.1f  " % (f32(5_000_000_000) / 1e9) + "all / all")
    assert lines[2] == ("%-32s %5u %5u" % ("g", 4, 1) + "%5u %3c%c- " % (0, "-", "b")
                        + "%9.1f  " % (f32(123) / 1e9) + "1 / all")
    assert lines[3] == ("%-32s %5u %5u" % ("g", 4, 2) + "%5c %3c%cp " % ("-", "-", "-")
                        + "%9.1f  " % 0.0 + "none / 0")
    data = output.vcpu_list_json(rows)
    assert data[2]["cpu"] is None and data[1]["hard_affinity"] == [1]


def _phys(caps: int) -> PhysInfo:
    return PhysInfo(threads_per_core=1, cores_per_socket=2, nr_cpus=2, max_cpu_id=1,
                    nr_nodes=1, max_node_id=0, cpu_khz=2399998, capabilities=caps,
                    total_pages=524160, free_pages=200000, scrub_pages=0,
                    outstanding_pages=512, max_mfn=0x7ffff,
                    hw_cap=(0x1f8bfbff, 0xf6fa3203, 0x2c100800, 0x00000121, 0xf, 0x219c07ab,
                            0, 0x100))


VER = VersionInfo(major=4, minor=17, extra=".5-pre", capabilities="xen-3.0-x86_64 hvm-3.0-x86_32",
                  changeset="", commandline="dom0_mem=1024M console=com1",
                  compiler="gcc (Debian 12.2.0-14) 12.2.0",
                  compile_by="pkg-xen-devel", compile_domain="lists.alioth.debian.org",
                  compile_date="Tue Jan 1 00:00:00 UTC 2026", pagesize=4096,
                  virt_start=0xffff800000000000, build_id="abcdef")
UNAME = output.Uname("dom0", "6.1.0-40-amd64", "#1 SMP Debian", "x86_64")


def test_info_lines_in_xl_order_and_format() -> None:
    items = output.info_items(UNAME, _phys(0b1100010010), VER, 6, 0)
    text = output.format_info(items)
    expected = "".join([
        "host                   : %s\n" % "dom0",
        "release                : %s\n" % "6.1.0-40-amd64",
        "version                : %s\n" % "#1 SMP Debian",
        "machine                : %s\n" % "x86_64",
        "nr_cpus                : %d\n" % 2,
        "max_cpu_id             : %d\n" % 1,
        "nr_nodes               : %d\n" % 1,
        "cores_per_socket       : %d\n" % 2,
        "threads_per_core       : %d\n" % 1,
        "cpu_mhz                : %d.%03d\n" % (2399, 998),
        "hw_caps                : %08x:%08x:%08x:%08x:%08x:%08x:%08x:%08x\n" % _phys(0).hw_cap,
        # 0b1100010010: bit 1 pv, bit 4 shadow, bit 8 gnttab-v1, bit 9 gnttab-v2
        "virt_caps              :%s%s%s%s\n" % (" pv", " shadow", " gnttab-v1", " gnttab-v2"),
        "total_memory           : %d\n" % (524160 // 256),
        "free_memory            : %d\n" % ((200000 - 512) // 256),
        "sharing_freed_memory   : %d\n" % 0,
        "sharing_used_memory    : %d\n" % 0,
        "outstanding_claims     : %d\n" % 2,
        "free_cpus              : %d\n" % 0,
        "xen_major              : %d\n" % 4,
        "xen_minor              : %d\n" % 17,
        "xen_extra              : %s\n" % ".5-pre",
        "xen_version            : %d.%d%s\n" % (4, 17, ".5-pre"),
        "xen_caps               : %s\n" % "xen-3.0-x86_64 hvm-3.0-x86_32",
        "xen_scheduler          : %s\n" % "credit2",
        "xen_pagesize           : %u\n" % 4096,
        "platform_params        : virt_start=0x%x\n" % 0xffff800000000000,
        "xen_changeset          : %s\n" % "",
        "xen_commandline        : %s\n" % "dom0_mem=1024M console=com1",
        "cc_compiler            : %s\n" % "gcc (Debian 12.2.0-14) 12.2.0",
        "cc_compile_by          : %s\n" % "pkg-xen-devel",
        "cc_compile_domain      : %s\n" % "lists.alioth.debian.org",
        "cc_compile_date        : %s\n" % "Tue Jan 1 00:00:00 UTC 2026",
        "build_id               : %s\n" % "abcdef",
        "xend_config_format     : 4\n",
    ])
    assert text == expected


def test_info_select_prints_values_of_matching_keys() -> None:
    items = output.info_items(UNAME, _phys(0b10), VER, 5, 2)
    assert output.format_info(items, "xen_m") == "4\n17\n"
    assert output.format_info(items, "xen_scheduler") == "credit\n"
    assert output.format_info(items, "virt_caps") == "pv\n"
    assert output.format_info(items, "nope") == ""
    # No capability at all: "virt_caps :" has no space after the colon, so xl prints nothing.
    assert output.format_info(output.info_items(UNAME, _phys(0), VER, 5, 2), "virt") == ""


def test_info_json_types() -> None:
    doc = output.info_json(output.info_items(UNAME, _phys(0b1010), VER, 6, 1))
    assert doc["nr_cpus"] == 2 and doc["xen_version"] == "4.17.5-pre"
    assert doc["virt_caps"] == ["pv", "hap"] and len(doc["hw_caps"]) == 8
    assert doc["xend_config_format"] == 4 and doc["free_cpus"] == 1
    json.dumps(doc)


def test_sched_lines() -> None:
    assert output.SCHED_HEADER == "%-33s %4s %6s %4s\n" % ("Name", "ID", "Weight", "Cap")
    assert output.format_sched_row("g1", 3, 512, 0) == "%-33s %4d %6d %4d\n" % ("g1", 3, 512, 0)
    assert (output.format_credit_pool("Pool-0", CreditParams(30, 1000, 0))
            == "Cpupool Pool-0: tslice=30ms ratelimit=1000us migration-delay=0us\n")
    assert (output.format_credit2_pool("Pool-0", Credit2Params(1000))
            == "Cpupool Pool-0: ratelimit=1000us\n")
    assert (output.format_credit2_pool("p", None) == "Cpupool p: [sched params unavailable]\n")


@pytest.mark.parametrize("text,cpus", [
    ("all", set(range(8))), ("3", {3}), ("2-5", {2, 3, 4, 5}), ("0-7,^3", set(range(8)) - {3}),
    ("1,3,5", {1, 3, 5}), ("all,^0-1", set(range(2, 8))), ("1,,2", {1, 2}),
])
def test_parse_cpu_list(text: str, cpus: set[int]) -> None:
    assert parse_cpu_list(text, 8) == cpus


@pytest.mark.parametrize("text,msg", [
    ("x", "invalid pcpu range: x"), ("5-2", "invalid pcpu range: 5-2"),
    ("^all", "can't combine"), ("9", "pcpu 9 is out of range"),
    ("nodes:0", "NUMA node ranges are not supported"), ("1-", "invalid pcpu range: 1-"),
])
def test_parse_cpu_list_errors(text: str, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        parse_cpu_list(text, 8)


def test_list_json_schema() -> None:
    d = dom(5, SHUTDOWN | (1 << 16), tot_pages=256, cpu_ns=42, outstanding=2)
    (doc,) = output.list_json([("g", d)])
    assert doc == {
        "domid": 5, "name": "g", "uuid": "01234567-89ab-cdef-0011-223344556677",
        "memory_kb": 1032, "current_memory_kb": 1024, "outstanding_memory_kb": 8,
        "max_memory_kb": 1024, "vcpus_online": 2, "max_vcpu_id": 1, "cpupool": 0,
        "state": "---sr-", "running": False, "blocked": False, "paused": False,
        "shutdown": True, "dying": False, "shutdown_reason": 1, "cpu_time_ns": 42,
        "type": "pv",
    }
    assert output.to_json([doc]).endswith("\n")
