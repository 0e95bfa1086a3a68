"""vif specs as xl-network-configuration(5) defines them."""

from __future__ import annotations

import re

import pytest

from xentool.config.model import NicType
from xentool.config.vif import VifSpecError, VifWarning, generated_mac, parse_rate, parse_vif_spec


@pytest.mark.parametrize("rate,expected", [
    # The examples of xl-network-configuration(5) (default interval 50 ms).
    ("10Mb/s", (10_000_000 // 8 * 50_000 // 10**6, 50_000)),
    ("250KB/s", (250_000 * 50_000 // 10**6, 50_000)),
    ("1MB/s@20ms", (20_000, 20_000)),      # "20,000 bytes in every 20 millisecond period"
    ("100Mb/s@50ms", (625_000, 50_000)),
    ("1GB/s@1s", (10**9, 10**6)),
    ("5Kb/s@100us", (0, 100)),              # 625 B/s * 100 us rounds down to 0
    ("40Kb/s@1ms", (5, 1_000)),
    ("64b/s@2", (16, 2_000_000)),          # a bare interval is in seconds
    ("010KB/s", (400, 50_000)),            # strtoull base 0: 010 is octal 8 -> 8 KB/s
])
def test_rates(rate: str, expected: tuple[int, int]) -> None:
    assert parse_rate(rate) == expected


@pytest.mark.parametrize("rate,message", [
    ("", "no rate specified in rate ''"),
    ("@20ms", "no rate specified in rate '@20ms'"),
    ("10Mbit", "invalid rate '10Mbit' (expected e.g. 10Mb/s or 1GB/s)"),
    ("0Mb/s", "rate overflow in '0Mb/s'"),
    ("08Mb/s", "rate overflow in '08Mb/s'"),    # octal "0" then "8": zero, as in xl
    ("5000000000B/s", "rate overflow in '5000000000B/s'"),
    ("1MB/s@20h", "invalid replenishment interval '20h' (expected e.g. 50ms, 1s or 100us)"),
    ("1MB/s@0ms", "replenishment interval overflow in '0ms'"),
    ("1MB/s@5000s", "replenishment interval overflow in '5000s'"),
])
def test_rate_errors(rate: str, message: str) -> None:
    with pytest.raises(ValueError) as ei:
        parse_rate(rate)
    assert str(ei.value) == message


def test_doc_example_vif() -> None:
    v = parse_vif_spec("mac=00:16:3E:74:3d:76,model=rtl8139,bridge=xenbr0", 0, "seed")
    assert (v.devid, v.mac, v.mac_generated, v.model, v.bridge) == \
        (0, "00:16:3e:74:3d:76", False, "rtl8139", "xenbr0")


def test_all_keys() -> None:
    v = parse_vif_spec(" type=ioemu, ip=192.0.2.1 192.0.2.2,script=vif-route,backend=dd,"
                       "vifname=v0,gatewaydev=eth1,rate=1MB/s@20ms,devid=7,mtu=9000,trusted",
                       3, "seed")
    assert v.nictype is NicType.VIF_IOEMU and v.ip == "192.0.2.1 192.0.2.2"
    assert (v.script, v.backend_domname, v.vifname, v.gatewaydev) == \
        ("vif-route", "dd", "v0", "eth1")
    assert (v.rate_bytes_per_interval, v.rate_interval_usecs) == (20_000, 20_000)
    assert (v.devid, v.mtu, v.trusted) == (7, 9000, True)


def test_empty_items_are_skipped_like_strtok() -> None:
    v = parse_vif_spec(",,bridge=xenbr0,,", 1, "s")
    assert (v.bridge, v.devid) == ("xenbr0", 1)


def test_generated_mac_is_stable_xen_prefixed_and_unicast() -> None:
    a = parse_vif_spec("bridge=xenbr0", 0, "guest-a")
    assert a.mac_generated
    assert a.mac == parse_vif_spec("bridge=xenbr1", 0, "guest-a").mac
    assert re.fullmatch(r"00:16:3e:[0-7][0-9a-f](:[0-9a-f]{2}){2}", a.mac)
    macs = {generated_mac("guest-a", i) for i in range(64)}
    macs |= {generated_mac("guest-b", i) for i in range(64)}
    assert len(macs) == 128


def test_warnings() -> None:
    warns: list[VifWarning] = []
    parse_vif_spec("bridge=b,netdev=eth0,accel=x,mac=01:00:5e:00:00:01", 0, "s", warns)
    assert [w.message for w in warns] == [
        "'netdev' is deprecated, use 'gatewaydev'",
        "'accel' is not supported (ignored, as by xl)",
        "mac='01:00:5e:00:00:01' is a multicast address",
    ]
    assert [w.offset for w in warns] == [9, 21, 29]


@pytest.mark.parametrize("spec,message,offset", [
    ("bridge=b,colour=blue", "unknown vif setting 'colour'", 9),
    ("bridge=b, foo", "unknown vif setting 'foo' (expected key=value)", 10),
    ("mac=00:16:3e:zz:00:01", "mac='00:16:3e:zz:00:01' is not a MAC address "
                              "(expected xx:xx:xx:xx:xx:xx)", 0),
    ("mac=00:16:3e:00:01", "mac='00:16:3e:00:01' is not a MAC address "
                           "(expected xx:xx:xx:xx:xx:xx)", 0),
    ("type=tap", "type='tap' is not 'vif' or 'ioemu'", 0),
    ("rate=fast", "invalid rate 'fast' (expected e.g. 10Mb/s or 1GB/s)", 0),
    ("mtu=big", "mtu='big' is not a number", 0),
    ("bridge=b,devid=-1", "devid='-1' is not a number", 9),
])
def test_errors(spec: str, message: str, offset: int) -> None:
    with pytest.raises(VifSpecError) as ei:
        parse_vif_spec(spec, 0, "s")
    assert str(ei.value) == f"{message} in vif spec '{spec}'"
    assert ei.value.offset == offset


def test_a_relative_vif_script_may_not_leave_the_script_directory() -> None:
    with pytest.raises(VifSpecError) as ei:
        parse_vif_spec("bridge=xenbr0,script=../../tmp/x", 0, "seed")
    assert "script='../../tmp/x' leaves the script directory" in str(ei.value)
    assert ei.value.offset == len("bridge=xenbr0,")
    assert parse_vif_spec("script=/usr/local/vif-x", 0, "seed").script == "/usr/local/vif-x"
