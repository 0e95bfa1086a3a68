"""What a hostile guest writes into the frontend directories it owns (the values the testbed's
``xentool.mode=hostile`` guest writes): the listings show -1, never the guest's bytes, a
detach still completes, and an attach the guest wrecks fails with its one error."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from test_devices_attach import (  # noqa: F401 - fixture
    FAST,
    FakeBackend,
    env,
    recording_script,
    script,
)
from test_xenstore_fake import Server, fake_xenstored  # noqa: F401 - fixture

from xenstore.client import Store
from xenstore.devices import hotplug
from xenstore.devices.attach import Force, attach, detach, list_devices, ref_of
from xenstore.devices.vbd import Vbd, vbd_nodes
from xenstore.devices.vif import Vif, vif_nodes
from xentool.cli.commands.devices import block_list_row, network_list_row

MAC = "00:16:3e:00:00:01"
HOSTILE = [b"x", b"-1", b"99999999999", b"4294967296", b"", b"4\n", b"\xd9\xa3",
           b"\x1b[2J\x1b]0;pwned\x07\x9b\xff\n\r%s\\x", b"Z" * 2000, b"Z" * 4000]
KEYS = ("state", "ring-ref", "tx-ring-ref", "rx-ring-ref", "event-channel")


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: repr(v[:12]) + f"*{len(v)}")
def test_hostile_frontend_values_list_as_unknown_and_detach_completes(
        env: tuple[Store, FakeBackend, object], tmp_path: Path, value: bytes) -> None:  # noqa: F811
    xs, _be, _fake = env
    sc = recording_script(tmp_path)
    disk = vbd_nodes(5, Vbd(vdev="xvda", target="/img", script=sc))
    nic = vif_nodes(5, Vif(devid=0, mac=MAC, script=sc))
    for dev in (disk, nic):
        attach(xs, dev, FAST)
        for key in KEYS:
            xs.write(f"{dev.frontend}/{key}", value)
    [d] = list_devices(xs, 5, "vbd")
    [n] = list_devices(xs, 5, "vif")
    assert (d.state, d.evtch, d.ring_refs) == (-1, -1, (-1,))
    assert (n.state, n.evtch, n.ring_refs, n.mac) == (-1, -1, (-1, -1), MAC)
    rows = block_list_row(d) + network_list_row(n)
    assert rows.isascii() and rows.isprintable() and len(rows) < 200, rows
    for dev in (disk, nic):
        detach(xs, ref_of(dev), Force.OFF, FAST)
        assert not xs.exists(dev.frontend) and not xs.exists(dev.backend)


def test_a_guest_that_removed_its_frontend_lists_as_unknown(
        env: tuple[Store, FakeBackend, object], tmp_path: Path) -> None:  # noqa: F811
    xs, _be, _fake = env
    disk = vbd_nodes(5, Vbd(vdev="xvda", target="/img", script=recording_script(tmp_path)))
    attach(xs, disk, FAST)
    xs.rm(disk.frontend)  # the guest owns the directory: it may remove it
    [d] = list_devices(xs, 5, "vbd")
    assert (d.state, d.evtch, d.ring_refs, d.backend) == (-1, -1, (-1,), disk.backend)
    detach(xs, ref_of(disk), Force.OFF, FAST)
    assert not xs.exists(disk.backend) and list_devices(xs, 5, "vbd") == []


def test_an_attach_whose_script_fails_reports_one_error(
        env: tuple[Store, FakeBackend, object], tmp_path: Path,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    """A hostile guest closes a hot-plugged disk's backend under the block script, which
    gives up before making a loop device; the remove of the rollback then fails as well
    (no ``node`` to free).  The add's failure is the error; the remove's is no warning."""
    xs, _be, _fake = env
    failing = tmp_path / "failing"
    failing.mkdir()
    log = failing / "calls"
    sc = script(failing, f'echo "$1" >> {log}\n'
                          '[ "$1" = add ] && echo "Path closed or removed during hotplug add"\n'
                          'exit 1\n')
    disk = vbd_nodes(5, Vbd(vdev="xvdb", target="/img", script=sc))
    with caplog.at_level(logging.INFO), pytest.raises(hotplug.HotplugError) as ei:
        attach(xs, disk, FAST)
    assert "Path closed or removed" in str(ei.value)
    assert log.read_text().split() == ["add", "remove"]  # the rollback still ran it
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any("remove' failed" in r.getMessage() for r in caplog.records)  # with -v
    assert not xs.exists(disk.backend) and not xs.exists(disk.frontend)

    # A detach of a device that was plugged in still warns when its remove fails.
    ok = vbd_nodes(5, Vbd(vdev="xvdc", target="/img", script=recording_script(tmp_path)))
    attach(xs, ok, FAST)
    xs.write(f"{ok.backend}/script", sc)
    caplog.clear()
    detach(xs, ref_of(ok), Force.ON, FAST)
    assert [r.levelno for r in caplog.records if "remove' failed" in r.getMessage()] == \
        [logging.WARNING]
