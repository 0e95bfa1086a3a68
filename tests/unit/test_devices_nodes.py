"""Node sets against what libxl 4.17 writes (values and permissions), and writing them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_xenstore_fake import Server, fake_xenstored  # noqa: F401 - fixture

from xenstore.client import Perms, Store
from xenstore.devices.common import add_nodes, destroy_nodes
from xenstore.devices.console import console_nodes
from xenstore.devices.vbd import Vbd, vbd_nodes
from xenstore.devices.vif import Vif, parse_mac, random_mac, vif_nodes
from xenstore.errors import XenStoreError


def flat(dev) -> dict[str, tuple[str, str]]:
    return {p: (v, str(perms)) for p, (v, perms) in dev.nodes.items()}


FE = "/local/domain/5/device/vbd/51712"
BE = "/local/domain/0/backend/vbd/5/51712"
LX = "/libxl/5/device/vbd/51712"


def test_vbd_phy_rw_matches_libxl() -> None:
    dev = vbd_nodes(5, Vbd(vdev="xvda", target="/dev/vg0/guest"))
    be = {
        "params": "/dev/vg0/guest", "script": "/etc/xen/scripts/block", "frontend-id": "5",
        "online": "1", "removable": "0", "bootable": "1", "state": "1", "dev": "xvda",
        "type": "phy", "mode": "w", "device-type": "disk", "discard-enable": "1",
        "specification": "xen",
    }
    expected = {LX: ("", "n0"), f"{LX}/frontend": (FE, "n0"), f"{LX}/backend": (BE, "n0")}
    expected |= {f"{LX}/{k}": (v, "n0") for k, v in be.items()}
    expected |= {FE: ("", "n5,r0"), f"{FE}/backend": (BE, "n5,r0")}
    expected |= {f"{FE}/{k}": (v, "n5,r0") for k, v in {
        "backend-id": "0", "state": "1", "virtual-device": "51712", "device-type": "disk",
        "trusted": "1", "protocol": "x86_64-abi"}.items()}
    expected |= {BE: ("", "n0,r5"), f"{BE}/frontend": (FE, "n0,r5")}
    expected |= {f"{BE}/{k}": (v, "n0,r5") for k, v in be.items()}
    assert flat(dev) == expected
    assert (dev.frontend, dev.backend, dev.libxl, dev.devid) == (FE, BE, LX, 51712)


def test_vbd_file_ro_cdrom_and_options() -> None:
    dev = vbd_nodes(7, Vbd(vdev="hdc", target="/srv/boot.iso", readwrite=False, cdrom=True,
                           script="my-block"), protocol=None)
    be = "/local/domain/0/backend/vbd/7/5632"
    fe = "/local/domain/7/device/vbd/5632"
    n = flat(dev)
    assert n[f"{be}/params"] == ("/srv/boot.iso", "n0,r7")
    assert n[f"{be}/mode"] == ("r", "n0,r7")
    assert n[f"{be}/removable"] == ("1", "n0,r7")
    assert n[f"{be}/discard-enable"] == ("0", "n0,r7")
    assert n[f"{be}/device-type"] == ("cdrom", "n0,r7")
    assert n[f"{be}/script"] == ("/etc/xen/scripts/my-block", "n0,r7")
    assert n[f"{fe}/device-type"] == ("cdrom", "n7,r0")
    assert f"{fe}/protocol" not in n


def test_vbd_bad_vdev() -> None:
    with pytest.raises(ValueError):
        vbd_nodes(5, Vbd(vdev="vda", target="/dev/x"))


def test_vif_matches_libxl() -> None:
    dev = vif_nodes(5, Vif(devid=0, mac="00:16:3E:0A:0b:c"))
    fe, be, lx = "/local/domain/5/device/vif/0", "/local/domain/0/backend/vif/5/0", \
        "/libxl/5/device/vif/0"
    back = {"frontend-id": "5", "online": "1", "state": "1",
            "script": "/etc/xen/scripts/vif-bridge", "mac": "00:16:3e:0a:0b:0c",
            "bridge": "xenbr0", "handle": "0", "type": "vif", "hotplug-status": ""}
    expected = {lx: ("", "n0"), f"{lx}/frontend": (fe, "n0"), f"{lx}/backend": (be, "n0")}
    expected |= {f"{lx}/{k}": (v, "n0") for k, v in back.items()}
    expected |= {fe: ("", "n5,r0"), f"{fe}/backend": (be, "n5,r0")}
    expected |= {f"{fe}/{k}": (v, "n5,r0") for k, v in {
        "backend-id": "0", "state": "1", "handle": "0", "mac": "00:16:3e:0a:0b:0c",
        "trusted": "1"}.items()}
    expected[f"{fe}/mtu"] = ("1500", "n0,r5")  # read-only for the guest
    expected |= {be: ("", "n0,r5"), f"{be}/frontend": (fe, "n0,r5")}
    expected |= {f"{be}/{k}": (v, "n0,r5") for k, v in back.items()}
    assert flat(dev) == expected


def test_vif_optional_nodes() -> None:
    n = flat(vif_nodes(3, Vif(devid=2, mac="00:16:3e:00:00:01", bridge="br1", ip="10.0.0.2",
                              vifname="web0", rate=(1250000, 50000), mtu=9000,
                              script="/usr/local/vif-x", gatewaydev="eth1")))
    be = "/local/domain/0/backend/vif/3/2"
    assert n[f"{be}/ip"] == ("10.0.0.2", "n0,r3")
    assert n[f"{be}/vifname"] == ("web0", "n0,r3")
    assert n[f"{be}/rate"] == ("1250000,50000", "n0,r3")
    assert n[f"{be}/mtu"] == ("9000", "n0,r3")
    assert n[f"{be}/bridge"] == ("br1", "n0,r3")
    assert n[f"{be}/gatewaydev"] == ("eth1", "n0,r3")
    assert n[f"{be}/script"] == ("/usr/local/vif-x", "n0,r3")
    assert n["/local/domain/3/device/vif/2/mtu"] == ("9000", "n0,r3")


def test_mac_helpers() -> None:
    for _ in range(50):
        mac = random_mac()
        octets = [int(x, 16) for x in mac.split(":")]
        assert octets[:3] == [0x00, 0x16, 0x3E] and octets[3] < 0x80
        assert parse_mac(mac) == mac
    for bad in ("00:16:3e:00:00", "00:16:3e:00:00:100", "00-16-3e-00-00-01", "zz:16:3e:0:0:1",
                "00:16:3e:00:00:01\n"):
        with pytest.raises(ValueError):
            parse_mac(bad)


def test_console_matches_libxl() -> None:
    dev = console_nodes(5, port=3, ring_ref=0x12345)
    fe, be, lx = "/local/domain/5/console", "/local/domain/0/backend/console/5/0", \
        "/libxl/5/device/console/0"
    back = {"frontend-id": "5", "online": "1", "state": "1", "protocol": "vt100"}
    expected = {lx: ("", "n0"), f"{lx}/frontend": (fe, "n0"), f"{lx}/backend": (be, "n0")}
    expected |= {f"{lx}/{k}": (v, "n0") for k, v in back.items()}
    # Primary console: the directory is read-only for the guest, except backend-id.
    expected |= {fe: ("", "n0,r5"), f"{fe}/backend": (be, "n0,r5"),
                 f"{fe}/backend-id": ("0", "n5,r0")}
    expected |= {f"{fe}/{k}": (v, "n0,r5") for k, v in {
        "limit": "1048576", "type": "xenconsoled", "output": "pty", "tty": "",
        "port": "3", "ring-ref": str(0x12345)}.items()}
    expected |= {be: ("", "n0,r5"), f"{be}/frontend": (fe, "n0,r5")}
    expected |= {f"{be}/{k}": (v, "n0,r5") for k, v in back.items()}
    assert flat(dev) == expected


# -- writing them ----------------------------------------------------------------------------


@pytest.fixture
def xs(fake_xenstored: tuple[Server, str]) -> Iterator[Store]:  # noqa: F811
    with Store.connect(fake_xenstored[1], timeout=5) as store:
        yield store


def test_add_writes_exactly_the_node_set(xs: Store, fake_xenstored) -> None:  # noqa: F811
    fake = fake_xenstored[0].fake
    xs.mkdir("/local/domain/5/device")
    xs.set_perms("/local/domain/5/device", Perms.private(5, 0))
    dev = vbd_nodes(5, Vbd(vdev="xvdb", target="/img"))
    add_nodes(xs, dev)
    got = {}
    for top in (dev.frontend, dev.backend, dev.libxl):
        for p, (v, perms) in fake.tree(top).items():
            got[p] = (v.decode(), ",".join(x.decode() for x in perms))
    assert got == flat(dev)


def test_add_refuses_existing_device(xs: Store) -> None:
    dev = vif_nodes(5, Vif(devid=0, mac=random_mac()))
    add_nodes(xs, dev)
    with pytest.raises(XenStoreError) as ei:
        add_nodes(xs, dev)
    assert "already exists" in str(ei.value)


def test_destroy_leaves_nothing(xs: Store, fake_xenstored) -> None:  # noqa: F811
    fake = fake_xenstored[0].fake
    xs.write("/local/domain/5/name", "guest")
    xs.write("/libxl/5/type", "pv")
    before = set(fake.tree("/"))
    devs = [vbd_nodes(5, Vbd(vdev=f"xvd{c}", target=f"/img{c}")) for c in "abc"]
    devs.append(vif_nodes(5, Vif(devid=0, mac=random_mac())))
    for d in devs:
        add_nodes(xs, d)
    for d in devs:
        destroy_nodes(xs, d.frontend, d.backend, d.libxl)
    assert set(fake.tree("/")) == before
