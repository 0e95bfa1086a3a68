"""Disk specs as xl-disk-configuration(5) and libxlu's scanner define them."""

from __future__ import annotations

import pytest

from xentool.config.disk import DiskSpecError, parse_disk_spec
from xentool.config.model import DiskBackend, DiskFormat, DiskSpecification


def fields(spec: str) -> tuple:
    d = parse_disk_spec(spec)
    return (d.target, d.format.value, d.vdev, d.readwrite, d.is_cdrom, d.removable)


# The examples of xl-disk-configuration(5): each group means the same disk.
@pytest.mark.parametrize("spec", [
    "/dev/vg/guest-volume,,hda",
    "/dev/vg/guest-volume,raw,hda,rw",
    "format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume",
    "raw:/dev/vg/guest-volume,hda,w",
])
def test_doc_examples_guest_volume(spec: str) -> None:
    assert fields(spec) == ("/dev/vg/guest-volume", "raw", "hda", True, False, False)


@pytest.mark.parametrize("spec", [
    "/root/image.iso,,hdc,cdrom",
    "/root/image.iso,,hdc,,cdrom",
    "/root/image.iso,raw,hdc,devtype=cdrom",
    "format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/root/image.iso",
    "raw:/root/image.iso,hdc:cdrom,ro",
])
def test_doc_examples_cdrom(spec: str) -> None:
    assert fields(spec) == ("/root/image.iso", "raw", "hdc", False, True, True)


def test_target_swallows_the_rest_including_commas() -> None:
    d = parse_disk_spec("vdev=xvda, target=/a,b,c=d,")
    assert (d.vdev, d.target) == ("xvda", "/a,b,c=d")


@pytest.mark.parametrize("prefix,fmt,script", [
    ("phy:", "raw", None), ("file:", "raw", None), ("tap:aio:", "raw", None),
    ("tap2:aio:", "raw", None), ("aio:", "raw", None), ("ioemu:", "raw", None),
    ("tapdisk:aio:", "raw", None),
    ("qcow:", "qcow", None), ("qcow2:", "qcow2", None), ("vhd:", "vhd", None),
    ("raw:", "raw", None),
    ("nbd:", "raw", "block-nbd"), ("enbd:", "raw", "block-enbd"),
    ("iscsi:", "raw", "block-iscsi"), ("drbd:", "raw", "block-drbd"),
])
def test_legacy_prefixes_skip_the_format_position(prefix: str, fmt: str, script) -> None:
    d = parse_disk_spec(f"{prefix}/dev/x,xvda,r")
    assert (d.target, d.format.value, d.vdev, d.readwrite, d.script) == \
        ("/dev/x", fmt, "xvda", False, script)


def test_prefix_is_not_a_vdev_devtype() -> None:
    # "hdc:cdrom" is positional (longest match); "phy:/dev" is a prefix.
    d = parse_disk_spec(",hdc:cdrom,r")
    assert (d.target, d.vdev, d.is_cdrom, d.format) == ("", "hdc", True, DiskFormat.EMPTY)


def test_empty_cdrom_without_target() -> None:
    d = parse_disk_spec("vdev=hdd, devtype=cdrom")
    assert (d.target, d.format, d.readwrite, d.removable) == (None, DiskFormat.EMPTY,
                                                                 False, True)


def test_key_value_options() -> None:
    d = parse_disk_spec("vdev=xvda,backendtype=qdisk,backend=dd,script=block-x,"
                        "specification=virtio,discard,direct-io-safe,colo,"
                        "colo-host=h,colo-port=77,colo-export=e,active-disk=a,"
                        "hidden-disk=hd,format=qed,target=/t")
    assert d.backend is DiskBackend.QDISK and d.backend_domname == "dd"
    assert d.script == "block-x" and d.specification is DiskSpecification.VIRTIO
    assert d.discard_enable is True and d.direct_io_safe
    assert (d.colo_enable, d.colo_host, d.colo_port, d.colo_export) == (True, "h", 77, "e")
    assert (d.active_disk, d.hidden_disk, d.format) == ("a", "hd", DiskFormat.QED)
    d = parse_disk_spec("vdev=xvda,no-discard,no-colo,target=/t")
    assert (d.discard_enable, d.colo_enable) == (False, False)


def test_trusted_is_positional_in_the_scanner_xen_4_17_ships() -> None:
    d = parse_disk_spec("trusted,raw,xvda")
    assert (d.target, d.vdev, d.trusted) == ("trusted", "xvda", None)
    with pytest.raises(DiskSpecError) as ei:
        parse_disk_spec("vdev=xvdh, no-discard, trusted, target=/dev/vg/slow")
    assert ei.value.message == ("target respecified (Xen 4.17's xl reads 'trusted' as the "
                                "target: remove it)")


def test_whitespace_before_parameters_is_ignored_but_not_inside() -> None:
    d = parse_disk_spec("  /dev/x , raw, xvda")
    assert (d.target, d.format, d.vdev) == ("/dev/x ", DiskFormat.RAW, "xvda")
    with pytest.raises(DiskSpecError, match="'raw '"):
        parse_disk_spec("/dev/x,raw ,xvda")


@pytest.mark.parametrize("spec,message,offset", [
    ("/dev/x,xvda,w", "unknown value for format (the positional form is "
                      "target,format,vdev,access; give vdev= or a prefix such as phy:): "
                      "'xvda'", 7),
    ("foo=bar,xvda", "unknown parameter 'foo'", 0),
    ("vdev=xvda,format=zip,target=/x", "unknown value for format: 'zip'", 10),
    ("vdev=xvda,access=rx,target=/x", "unknown value for access: 'rx'", 10),
    ("vdev=xvda,devtype=floppy,target=/x", "unknown value for type: 'devtype=floppy,'", 10),
    ("vdev=xvda,backendtype=nfs,target=/x", "unknown value for backendtype: 'nfs'", 10),
    ("vdev=xvda,vdev=xvdb,target=/x", "vdev respecified: 'xvdb'", 10),
    ("qcow2:/x,xvda,w,format=raw", "format respecified: 'raw'", 16),
    ("/x,raw,xvda,w,more", "too many positional parameters: 'more'", 14),
    ("blah:/x,xvda", "unknown deprecated disk prefix: 'blah:/x,xvda'", 0),
    ("/x,,xvda:floppy", "unknown deprecated type: 'floppy'", 4),
    ("target=/x", "no vdev specified", 9),
    ("vdev=xvda", "no target specified (and device not removable)", 9),
    ("vdev=xvda,colo-port=x,target=/y", "unknown value for colo_port: 'x'", 10),
    ("=x", "bad disk syntax: '=x'", 0),
])
def test_errors(spec: str, message: str, offset: int) -> None:
    with pytest.raises(DiskSpecError) as ei:
        parse_disk_spec(spec)
    assert str(ei.value) == f"{message} in disk spec '{spec}'"
    assert ei.value.offset == offset


@pytest.mark.parametrize("script", ["../../tmp/x", "a/../../b", ".."])
def test_a_relative_script_may_not_leave_the_script_directory(script: str) -> None:
    with pytest.raises(DiskSpecError) as ei:
        parse_disk_spec(f"vdev=xvda, script={script}, target=/img")
    assert "leaves the script directory" in str(ei.value) and script in str(ei.value)


@pytest.mark.parametrize("script", ["block-iscsi", "sub/block", "/opt/x/../block", "a..b"])
def test_scripts_inside_the_directory_or_absolute_are_kept(script: str) -> None:
    assert parse_disk_spec(f"vdev=xvda, script={script}, target=/img").script == script
