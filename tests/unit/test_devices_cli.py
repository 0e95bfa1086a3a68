"""The device verbs' pure parts: xl disk/vif spec parsing and xl's list tables."""

from __future__ import annotations

import pytest

from xenstore.devices.attach import DeviceInfo
from xenstore.devices.vbd import Vbd
from xentool.cli.commands.devices import (
    block_list_header,
    block_list_row,
    network_list_header,
    network_list_row,
)
from xentool.devices import timeouts
from xentool.devices.vbd import parse_disk_args
from xentool.devices.vif import next_devid, parse_vif_args
from xentool.errors import XentoolError


@pytest.mark.parametrize("spec", [
    "/dev/vg/guest-volume,,hda",
    "/dev/vg/guest-volume,raw,hda,rw",
    "format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume",
    "raw:/dev/vg/guest-volume,hda,w",
    "phy:/dev/vg/guest-volume,hda,w",
])
def test_equivalent_disk_specs(spec: str) -> None:
    assert parse_disk_args([spec]) == Vbd(vdev="hda", target="/dev/vg/guest-volume",
                                          removable=False)


@pytest.mark.parametrize("spec", [
    "/root/image.iso,,hdc,cdrom",
    "/root/image.iso,,hdc,,cdrom",
    "/root/image.iso,raw,hdc,devtype=cdrom",
    "format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/root/image.iso",
    "raw:/root/image.iso,hdc:cdrom,ro",
])
def test_equivalent_cdrom_specs(spec: str) -> None:
    assert parse_disk_args([spec]) == Vbd(vdev="hdc", target="/root/image.iso", readwrite=False,
                                        cdrom=True, removable=True)


def test_disk_spec_details() -> None:
    d = parse_disk_args(["file:/srv/img", "xvdb", "r"])
    assert (d.target, d.vdev, d.readwrite, d.devid) == ("/srv/img", "xvdb", False, 51728)
    d = parse_disk_args(["vdev=xvdc,direct-io-safe,no-discard,script=block-x,target=/a,b"])
    assert (d.target, d.direct_io_safe, d.discard, d.script) == ("/a,b", True, False, "block-x")


@pytest.mark.parametrize("spec,msg", [
    ("/img", "no vdev specified"),
    ("vdev=xvda", "no target specified"),
    ("/img,qcow2,xvda", "needs qemu"),
    ("/img,,xvda,rx", "unknown value for access"),
    ("/img,,xvda,w,extra", "too many positional parameters"),
    ("/img,,vda", "invalid or unsupported virtual disk identifier"),
    ("/img,,xvda,bogus=1", "unknown parameter 'bogus'"),
    ("/img,,xvda,devtype=floppy", "unknown value for type"),
])
def test_bad_disk_specs_name_the_problem(spec: str, msg: str) -> None:
    with pytest.raises(XentoolError) as ei:
        parse_disk_args([spec])
    assert msg in str(ei.value) and spec in str(ei.value)


def test_vif_args() -> None:
    v = parse_vif_args(["mac=00:16:3E:01:02:03", "bridge=br1", "ip=10.0.0.9", "rate=10Mb/s",
                        "mtu=9000", "model=e1000", "vifname=web"], devid=3)
    assert parse_vif_args([], devid=0).mac != parse_vif_args([], devid=0).mac  # random
    assert (v.devid, v.mac, v.bridge, v.ip, v.rate, v.mtu, v.vifname) == \
        (3, "00:16:3e:01:02:03", "br1", "10.0.0.9", (62500, 50000), 9000, "web")
    assert parse_vif_args([], devid=0).mac.startswith("00:16:3e:")
    for bad in (["mac=00:16"], ["mtu=x"], ["type=ioemu"], ["colour=red"], ["bridge"],
                ["rate=10Mb"], ["backend=drv"], ["ip=1,mac=00:16:3e:00:00:01"]):
        with pytest.raises(XentoolError):
            parse_vif_args(bad, devid=0)


def test_next_devid() -> None:
    assert next_devid([]) == 0
    assert next_devid([0, 1, 4]) == 5


def test_tables_match_xl_format() -> None:
    assert block_list_header() == \
        "Vdev  BE  handle state evt-ch ring-ref BE-path                       "
    info = DeviceInfo("vbd", 5, 51712, 0, "/local/domain/0/backend/vbd/5/51712",
                      "/local/domain/5/device/vbd/51712", 4, 12, (8,))
    assert block_list_row(info) == \
        "51712 0   5      4     12     8        /local/domain/0/backend/vbd/5/51712"
    assert network_list_header() == ("Idx BE Mac Addr.         handle state evt-ch   "
                                     "tx-/rx-ring-ref BE-path                       ")
    nic = DeviceInfo("vif", 5, 0, 0, "/local/domain/0/backend/vif/5/0",
                     "/local/domain/5/device/vif/0", 4, 13, (1280, 1281), "00:16:3e:5a:01:02")
    assert network_list_row(nic) == \
        "0   0  00:16:3e:5a:01:02     0     4     13  1280/1281        " \
        "/local/domain/0/backend/vif/5/0"


@pytest.mark.parametrize("timeout, expected", [
    (None, (10.0, 10.0, 40.0)),    # libxl's
    (5.0, (5.0, 5.0, 40.0)),       # a short wait never cuts a hotplug script below libxl's
    (120.0, (120.0, 120.0, 120.0)),
])
def test_timeout_option_covers_backend_and_hotplug_script(timeout, expected) -> None:
    t = timeouts(timeout)
    assert (t.init, t.destroy, t.hotplug) == expected


def test_timeout_option_must_be_positive() -> None:
    with pytest.raises(XentoolError, match="positive"):
        timeouts(0.0)
