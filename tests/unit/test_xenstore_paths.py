"""Paths and the vdev <-> devid encoding against values libxl 4.17 computes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenstore import paths


@pytest.mark.parametrize("vdev,devid", [
    ("xvda", 51712), ("xvdb", 51728), ("xvda1", 51713), ("xvdp15", 51967),
    ("xvdq", (1 << 28) | (16 << 8)), ("xvda16", (1 << 28) | 16),
    ("xvdaa", (1 << 28) | (26 << 8)), ("d0p0", 51712), ("d16p2", (1 << 28) | (16 << 8) | 2),
    ("hda", 768), ("hdb", 832), ("hdc", 5632), ("hdd1", 5697),
    ("sda", 2048), ("sdb", 2064), ("sdp15", 2303),
    ("51712", 51712), ("0xca00", 51712), ("0", 0),
])
def test_vdev_to_devid(vdev: str, devid: int) -> None:
    assert paths.vdev_to_devid(vdev) == devid


@pytest.mark.parametrize("bad", [
    "", "xvd", "xvda0", "xvda01", "xvda256", "xvda+1", "xvda 1", "xvdA", "hde", "hda64",
    "sdq", "sda16", "vda", "d1p", "dp1", "d1p256", "-1", "0x80000000", "2147483648",
    "xvda\u0661",
])
def test_vdev_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        paths.vdev_to_devid(bad)


@pytest.mark.parametrize("devid,vdev", [
    (51712, "xvda"), (51713, "xvda1"), (51728, "xvdb"), (51967, "xvdp15"),
    ((1 << 28) | (16 << 8), "xvdq"), ((1 << 28) | (26 << 8) | 3, "xvdaa3"),
    ((1 << 28) | (701 << 8), "xvdzz"), ((1 << 28) | (702 << 8), "xvdaaa"),
])
def test_devid_to_vdev(devid: int, vdev: str) -> None:
    assert paths.devid_to_vdev(devid) == vdev


@settings(max_examples=300, deadline=None)
@given(disk=st.integers(0, (1 << 20) - 1), part=st.integers(0, 255))
def test_xvd_roundtrip(disk: int, part: int) -> None:
    vdev = paths.devid_to_vdev(paths.vdev_to_devid(f"d{disk}p{part}"))
    assert paths.vdev_to_devid(vdev) == paths.vdev_to_devid(f"d{disk}p{part}")


def test_paths() -> None:
    assert paths.frontend_path(5, "vbd", 51712) == "/local/domain/5/device/vbd/51712"
    assert paths.frontend_path(5, "console", 0) == "/local/domain/5/console"
    assert paths.frontend_path(5, "console", 1) == "/local/domain/5/device/console/1"
    assert paths.backend_path(0, "vif", 5, 0) == "/local/domain/0/backend/vif/5/0"
    assert paths.libxl_path(5, "vbd", 51712) == "/libxl/5/device/vbd/51712"


def test_parse_backend_path() -> None:
    ref = paths.parse_backend_path("/local/domain/0/backend/vbd/5/51712")
    assert ref == paths.BackendRef(0, "vbd", 5, 51712)
    for bad in ("/local/domain/0/backend/vbd/5", "/local/domain/0/backend/vbd/5/1/x",
                "/local/domain/x/backend/vbd/5/1", "/local/domain/0/backend/VBD/5/1",
                "/local/domain/0/backend/vbd/5/1\n", "x" * 5000):
        with pytest.raises(ValueError):
            paths.parse_backend_path(bad)
