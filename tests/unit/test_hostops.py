"""The pure parts of the host verbs: libxl's parsing of set-parameters and triggers, and
xl's text for info -n, list -n/-Z, claims, sharing, vm-list and channel-list.

Expected text is built with xl's C format strings applied with Python's ``%``.
"""

# ruff: noqa: UP031 - the oracle is xl's printf format strings, applied with %

from __future__ import annotations

from pathlib import Path

import pytest
from test_output import PAUSED, RUNNING, dom

from xentool.cli import format as output
from xentool.cli.commands import hostops as cli
from xentool.errors import UsageError
from xentool.hostops import (
    c_strtol,
    core_dump_path,
    log_prefix,
    parse_parameters,
    parse_trigger,
    pci_devices,
)

# -- libxl's parsing --------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("loglvl=all", [("/params/loglvl", "all")]),
    ("  a=1 b=2  c=", [("/params/a", "1"), ("/params/b", "2"), ("/params/c", "")]),
    ("nosmt", [("/params/smt", "no")]),
    ("noreboot=1", [("/params/noreboot", "1")]),
    ("a=x=y", [("/params/a", "x=y")]),
    ("a=1\tb=2", [("/params/a", "1\tb=2")]),  # libxl splits at spaces only
    ("", []),
    ("   ", []),
])
def test_parse_parameters_as_libxl(text: str, expected: list[tuple[str, str]]) -> None:
    assert parse_parameters(text) == expected


def test_parse_parameters_refuses_an_item_without_value() -> None:
    with pytest.raises(UsageError, match="'foo'"):
        parse_parameters("a=1 foo b=2")


def test_triggers_match_libxl_names_in_any_case() -> None:
    assert parse_trigger("NMI") == "nmi"
    assert parse_trigger("S3Resume") == "s3resume"
    assert parse_trigger("unknown") == "unknown"
    assert parse_trigger("bogus") is None
    assert parse_trigger("") is None


@pytest.mark.parametrize("text, expected", [
    ("3", (3, True)), (" 12abc", (12, True)), ("-1", (-1, True)), ("+4", (4, True)),
    ("x", (0, False)), ("", (0, False)), ("-", (0, False)),
    ("4294967297", (1, True)),  # long to int keeps the low 32 bits
    ("99999999999999999999", (-1, True)),  # strtol clamps to LONG_MAX first
])
def test_c_strtol(text: str, expected: tuple[int, bool]) -> None:
    assert c_strtol(text) == expected


def test_claims_reads_claim_mode_from_xl_conf(tmp_path: Path) -> None:
    from xentool import Host

    conf = tmp_path / "xl.conf"
    assert Host.global_config(str(conf)).claim_mode  # no file: xl's default, on
    conf.write_text("# claim_mode=0\nautoballoon=\"off\"\n")
    assert Host.global_config(str(conf)).claim_mode
    conf.write_text("claim_mode = 0\n")
    assert not Host.global_config(str(conf)).claim_mode


def test_core_dump_path_and_log_prefix() -> None:
    assert core_dump_path("web", 5) == "/var/lib/xen/dump/web"
    assert log_prefix(5) == "Domain 5:"
    assert log_prefix(0) == ""


def test_pci_devices_in_directory_order(tmp_path: Path) -> None:
    for name in ("0000:00:1f.3", "0001:0a:00.0", ".hidden"):
        (tmp_path / name).mkdir()
    found = sorted(pci_devices(str(tmp_path)))
    assert found == [(0, 0, (0x1F << 3) | 3), (1, 0x0A, 0)]


# -- xl's text --------------------------------------------------------------------------------


def test_info_numa_sections() -> None:
    cpus = [(0, 0, 0), None, (1, 0, 0xFFFFFFFF)]
    devices = [(0, 0, (4 << 3) | 1, None), (0, 0x1A, 8, 1)]
    numa = ([(8 << 30, 5 << 30), ((1 << 64) - 1, 0), (2 << 30, 1 << 30)],
            [[10, 20, 20], [20, 10, 20], [20, 0xFFFFFFFF, 10]])
    text = "".join(t for _, _, t in cli.numa_items(cpus, devices, numa))
    expected = ("cpu_topology           :\n"
                "cpu:    core    socket     node\n"
                + "%3d:    %4d     %4d     %4d\n" % (0, 0, 0, 0)
                + "%3d:    %4d     %4d     %4d\n" % (2, 1, 0, -1)
                + "device topology        :\n"
                "device           node\n"
                + "%04x:%02x:%02x.%01x      %d\n" % (0, 0x1A, 1, 0, 1)
                + "numa_info              :\n"
                "node:    memsize    memfree    distances\n"
                + "%4d:    %6u     %6u      %d" % (0, 8192, 5120, 10) + ",20,20\n"
                + "%4d:    %6u     %6u      %d" % (2, 2048, 1024, 20) + ",-1,10\n")
    assert text == expected


def test_info_numa_without_device_nodes() -> None:
    text = "".join(t for _, _, t in cli.numa_items([], [(0, 0, 0, None)], ([], [])))
    assert "device           node\nNo device topology data available\n" in text


HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"


def test_list_context_numa_and_claims_columns() -> None:
    entries = [("Domain-0", dom(0, RUNNING)), ("g", dom(3, PAUSED, outstanding=512))]
    lines = output.format_list(entries, context=True).splitlines()
    assert lines[0] == HEADER + "   Security Label"
    assert lines[1].endswith(" %16s" % "-")
    lines = output.format_list(entries, verbose=True, context=True).splitlines()
    assert lines[0] == HEADER + "   UUID                            Reason-Code\tSecurity Label"
    assert lines[2].endswith(" %8s %16s" % ("-", "-"))  # one label only
    lines = output.format_list(entries, nodes=["all", "0-1"]).splitlines()
    assert lines[0] == HEADER + " NODE Affinity"
    assert lines[1].endswith(" all") and lines[2].endswith(" 0-1")
    lines = output.format_list(entries, claim=True).splitlines()
    assert lines[0] == HEADER + "  Claimed"
    assert lines[2].endswith(" %5lu" % 2)


def test_sharing_vm_list_channel_header() -> None:
    d = dom(3, PAUSED, tot_pages=8192)
    assert cli.format_sharing([("g", d)]) == (
        "Name                                        ID   Mem Shared\n"
        + "%-40s %5d %5lu  %5lu\n" % ("g", 3, 32, 0))
    assert cli.format_vm_list([(d.uuid, 3, None)]) == (
        "UUID                                  ID    name\n"
        + "%s  %d    %-30s\n" % (d.uuid, 3, "(null)"))
    assert cli.CHANNEL_HEADER == "%-3s %-2s %-5s %-6s %8s %-10s %-30s\n" % (
        "Idx", "BE", "state", "evt-ch", "ring-ref", "connection", "")
