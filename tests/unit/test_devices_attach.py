"""Attach/detach sequencing against the fake xenstored and a fake backend driver.

The fake backend plays blkback/netback: Initialising -> InitWait when a device appears,
Closing -> Closed when asked (unless told to ignore it while the frontend exists, like a
guest that holds on to its disk). Hotplug scripts are real executables in tmp_path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_xenstore_fake import Server, fake_xenstored  # noqa: F401 - fixture

from xenstore.client import Store, Transaction
from xenstore.devices import hotplug
from xenstore.devices.attach import (
    Force,
    Timeouts,
    attach,
    destroy_all,
    detach,
    find_device,
    list_devices,
    ref_of,
)
from xenstore.devices.vbd import Vbd, vbd_nodes
from xenstore.devices.vif import Vif, vif_nodes
from xenstore.devices.xenbus import XenbusState, wait_for_state
from xenstore.errors import XenStoreError

FAST = Timeouts(init=2, destroy=1, hotplug=5)


class FakeBackend:
    def __init__(self, path: str) -> None:
        self.store = Store.connect(path, timeout=5)
        self.hold_while_frontend = False
        self.never_initwait = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        xs = self.store
        with xs.watch("/local/domain/0/backend") as w:
            while not self.stop.is_set():
                if w.get(timeout=0.1) is None:
                    continue
                with contextlib.suppress(XenStoreError):
                    self._step(xs)

    def _step(self, xs: Store) -> None:
        for kind in ("vbd", "vif"):
            base = f"/local/domain/0/backend/{kind}"
            for dom in (xs.get(base) is not None and xs.ls(base)) or []:
                for dev in xs.ls(f"{base}/{dom}"):
                    be = f"{base}/{dom}/{dev}"
                    state = xs.get(f"{be}/state")
                    if state == "1" and not self.never_initwait:
                        xs.write(f"{be}/state", "2")
                    elif state == "5" and xs.get(f"{be}/online") == "0":
                        fe = xs.get(f"{be}/frontend")
                        if self.hold_while_frontend and fe and xs.exists(fe):
                            continue
                        xs.write(f"{be}/state", "6")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.store.close()


@pytest.fixture
def env(fake_xenstored: tuple[Server, str]) -> Iterator[tuple[Store, FakeBackend, object]]:  # noqa: F811
    srv, path = fake_xenstored
    backend = FakeBackend(path)
    with Store.connect(path, timeout=5) as xs:
        yield xs, backend, srv.fake
    backend.close()


def script(tmp_path: Path, body: str) -> str:
    p = tmp_path / "hotplug.sh"
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return str(p)


def recording_script(tmp_path: Path) -> str:
    log = tmp_path / "calls"
    return script(tmp_path, f'echo "$* $XENBUS_TYPE $XENBUS_PATH $XENBUS_BASE_PATH '
                            f'$script vif=$vif" >> {log}\n')


def calls(tmp_path: Path) -> list[str]:
    p = tmp_path / "calls"
    return p.read_text().splitlines() if p.exists() else []


def test_attach_and_detach_vbd(env, tmp_path: Path) -> None:
    xs, _be, fake = env
    sc = recording_script(tmp_path)
    dev = vbd_nodes(5, Vbd(vdev="xvda", target="/img", script=sc))
    attach(xs, dev, FAST)
    assert xs.read(f"{dev.backend}/state") == "2"
    assert calls(tmp_path) == [f"add vbd backend/vbd/5/51712 backend {sc} vif="]
    ref = find_device(xs, 5, "vbd", 51712)
    assert ref == ref_of(dev)
    detach(xs, ref, Force.OFF, FAST)
    assert calls(tmp_path)[1] == f"remove vbd backend/vbd/5/51712 backend {sc} vif="
    assert fake.tree("/libxl") == {} or "/libxl/5" not in fake.tree("/libxl")
    assert not xs.exists(dev.frontend) and not xs.exists(dev.backend)


def test_vif_script_arguments(env, tmp_path: Path) -> None:
    xs, _be, _fake = env
    sc = recording_script(tmp_path)
    dev = vif_nodes(4, Vif(devid=1, mac="00:16:3e:00:00:01", script=sc))
    attach(xs, dev, FAST)
    detach(xs, ref_of(dev), Force.AUTO, FAST)
    assert calls(tmp_path) == [
        f"online type_if=vif vif backend/vif/4/1 backend {sc} vif=vif4.1",
        f"offline type_if=vif vif backend/vif/4/1 backend {sc} vif=vif4.1"]


def test_failing_script_reports_and_rolls_back(env, tmp_path: Path) -> None:
    xs, _be, _fake = env
    sc = script(tmp_path, 'xenstore_path_unused=1\necho "losetup: no free loop device"\n'
                          '[ "$1" = add ] && exit 3\nexit 0\n')
    dev = vbd_nodes(5, Vbd(vdev="xvdc", target="/img", script=sc))
    with pytest.raises(hotplug.HotplugError) as ei:
        attach(xs, dev, FAST)
    msg = str(ei.value)
    assert "exit status 3" in msg and "no free loop device" in msg and dev.backend in msg
    for p in (dev.frontend, dev.backend, dev.libxl):
        assert not xs.exists(p)


def test_hotplug_error_node_is_in_the_message(env, tmp_path: Path) -> None:
    xs, _be, _fake = env
    # The script cannot reach the fake store, so the test plays its xenstore_write.
    sc = script(tmp_path, f'touch {tmp_path}/ran\nsleep 0.3\nexit 1\n')
    dev = vbd_nodes(6, Vbd(vdev="xvdd", target="/img", script=sc))

    def write_error() -> None:
        while not (tmp_path / "ran").exists():
            pass
        xs.write(f"{dev.backend}/hotplug-error", "File /img is read-only")

    t = threading.Thread(target=write_error)
    t.start()
    with pytest.raises(hotplug.HotplugError) as ei:
        attach(xs, dev, FAST)
    t.join()
    assert "File /img is read-only" in str(ei.value)


def test_script_timeout_kills_it(env, tmp_path: Path) -> None:
    xs, _be, _fake = env
    sc = script(tmp_path, f'sleep 30 &\necho $! > {tmp_path}/child\nwait\n')
    dev = vbd_nodes(5, Vbd(vdev="xvde", target="/img", script=sc))
    with pytest.raises(hotplug.HotplugError) as ei:
        attach(xs, dev, Timeouts(init=2, destroy=1, hotplug=0.5))
    assert ei.value.errno == errno.ETIMEDOUT
    child = int((tmp_path / "child").read_text())
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(child, 0)
            threading.Event().wait(0.05)


def test_backend_that_never_initwaits_times_out(env, tmp_path: Path) -> None:
    xs, be, _fake = env
    be.never_initwait = True
    dev = vbd_nodes(5, Vbd(vdev="xvdf", target="/img", script=recording_script(tmp_path)))
    with pytest.raises(XenStoreError) as ei:
        attach(xs, dev, Timeouts(init=0.5, destroy=0.5, hotplug=5))
    assert ei.value.errno == errno.ETIMEDOUT and "INITIALISING" in str(ei.value)
    assert not xs.exists(dev.backend) and calls(tmp_path) == []


def test_detach_of_held_device(env, tmp_path: Path) -> None:
    xs, be, _fake = env
    be.hold_while_frontend = True
    dev = vbd_nodes(5, Vbd(vdev="xvdg", target="/img", script=recording_script(tmp_path)))
    attach(xs, dev, FAST)
    with pytest.raises(XenStoreError) as ei:
        detach(xs, ref_of(dev), Force.OFF, Timeouts(init=1, destroy=0.5, hotplug=5))
    assert ei.value.errno == errno.EBUSY and "--force" in str(ei.value)
    assert xs.exists(dev.frontend)
    detach(xs, ref_of(dev), Force.AUTO, Timeouts(init=1, destroy=0.5, hotplug=5))
    assert not xs.exists(dev.frontend) and not xs.exists(dev.backend)
    assert [c.split()[0] for c in calls(tmp_path)] == ["add", "remove"]


def test_forced_detach_of_a_guest_that_keeps_writing_its_frontend(env, tmp_path: Path,
                                                                  fake_xenstored) -> None:  # noqa: F811
    """A busy (or hostile) guest rewriting its frontend nodes cannot make a forced detach
    fail: its writes would conflict with any transaction that touched the frontend."""
    xs, be, _fake = env
    be.hold_while_frontend = True  # the backend never closes by itself: forced it is
    dev = vbd_nodes(5, Vbd(vdev="xvdh", target="/img", script=recording_script(tmp_path)))
    attach(xs, dev, FAST)
    stop = threading.Event()

    def guest() -> None:
        with Store.connect(fake_xenstored[1], timeout=5) as g:
            n = 0
            while not stop.is_set():
                n += 1
                with contextlib.suppress(XenStoreError):
                    g.write(f"{dev.frontend}/state", str(n % 7))

    writer = threading.Thread(target=guest, daemon=True)
    writer.start()
    try:
        detach(xs, ref_of(dev), Force.ON, Timeouts(init=1, destroy=0.5, hotplug=5))
    finally:
        stop.set()
        writer.join(5)
    assert not xs.exists(dev.backend)
    assert [c.split()[0] for c in calls(tmp_path)] == ["add", "remove"]


def test_close_request_survives_the_backend_changing_its_state(
        env, tmp_path: Path, fake_xenstored, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """netback moves its state on while a detach asks it to close: the request is made
    again from a fresh read instead of failing with EAGAIN."""
    from xenstore.devices.attach import _request_close

    xs, _be, _fake = env
    dev = vbd_nodes(5, Vbd(vdev="xvdj", target="/img", script=recording_script(tmp_path)))
    attach(xs, dev, FAST)
    state = f"{dev.backend}/state"
    original = Transaction.get
    moved: list[str] = []

    def get(self: Transaction, path: str) -> str | None:
        value = original(self, path)
        if path == state and not moved:
            with Store.connect(fake_xenstored[1], timeout=5) as backend:
                backend.write(state, "3")  # the backend's own move, after our read
            moved.append(value or "")
        return value

    monkeypatch.setattr(Transaction, "get", get)
    assert _request_close(xs, ref_of(dev), forced=False)
    assert moved and xs.get(f"{dev.backend}/online") == "0"
    # Closing, or already Closed by the fake backend that reacts to it
    assert xs.get(state) in (str(int(XenbusState.CLOSING)), str(int(XenbusState.CLOSED)))


def test_destroy_all_removes_every_device(env, tmp_path: Path, fake_xenstored) -> None:  # noqa: F811
    xs, _be, fake = env
    xs.write("/local/domain/0/name", "Domain-0")
    xs.write("/local/domain/5/name", "g")
    before = set(fake.tree("/"))
    sc = recording_script(tmp_path)
    for c in "abc":
        attach(xs, vbd_nodes(5, Vbd(vdev=f"xvd{c}", target="/img", script=sc)), FAST)
    attach(xs, vif_nodes(5, Vif(devid=0, mac="00:16:3e:00:00:02", script=sc)), FAST)
    assert [d.devid for d in list_devices(xs, 5, "vbd")] == [51712, 51728, 51744]
    assert destroy_all(xs, 5, FAST) == []
    assert set(fake.tree("/")) == before
    assert sorted(c.split()[0] for c in calls(tmp_path)) == ["add"] * 3 + ["offline", "online"] \
        + ["remove"] * 3


def test_concurrent_attaches_all_succeed(env, tmp_path: Path) -> None:
    xs, _be, _fake = env
    sc = recording_script(tmp_path)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            attach(xs, vbd_nodes(9, Vbd(vdev=f"xvd{chr(97 + i)}", target=f"/img{i}",
                                        script=sc)), FAST)
        except BaseException as e:  # collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(list_devices(xs, 9, "vbd")) == 8
    assert len(calls(tmp_path)) == 8
    for i in range(8):
        devid = 51712 + 16 * i
        assert xs.read(f"/local/domain/0/backend/vbd/9/{devid}/params") == f"/img{i}"


def test_guest_garbage_in_frontend_is_harmless(env, tmp_path: Path) -> None:
    xs, _be, _fake = env
    dev = vbd_nodes(5, Vbd(vdev="xvdh", target="/img", script=recording_script(tmp_path)))
    attach(xs, dev, FAST)
    fe = dev.frontend
    xs.write(f"{fe}/state", b"\xff\xfe4")
    xs.write(f"{fe}/event-channel", "-1" * 100)
    xs.write(f"{fe}/ring-ref", "99999999999999999999999")
    xs.write(f"{fe}/backend", "/local/domain/0/backend/vbd/0/768")  # points elsewhere
    [info] = list_devices(xs, 5, "vbd")
    assert (info.state, info.evtch, info.ring_refs) == (-1, -1, (-1,))
    assert info.backend == dev.backend  # taken from the toolstack's record, not the guest
    with pytest.raises(XenStoreError) as ei:
        wait_for_state(xs, f"{fe}/state", [XenbusState.CONNECTED], 0.3)
    assert ei.value.errno == errno.ETIMEDOUT and "garbage" in str(ei.value)
    detach(xs, ref_of(dev), Force.AUTO, FAST)
    assert not xs.exists(fe)


def test_create_and_destroy_helpers_for_a_domain_config(env, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from xentool.config.disk import parse_disk_spec
    from xentool.config.vif import parse_vif_spec
    from xentool.devices import config_devices, remove_all_devices

    xs, _be, fake = env
    xs.write("/local/domain/0/name", "Domain-0")
    before = set(fake.tree("/"))
    sc = recording_script(tmp_path)
    from xentool.config.model import DomainType

    config = SimpleNamespace(
        type=DomainType.PV,
        disks=(parse_disk_spec(f"/img,,xvda,w,script={sc}"),
               parse_disk_spec(f"/iso,,hdc,cdrom,script={sc}")),
        vifs=(parse_vif_spec(f"bridge=xenbr0,script={sc}", 0, mac_seed="g"),))
    for dev in config_devices(5, config):  # as create attaches them
        attach(xs, dev, FAST)
    assert xs.read("/local/domain/0/backend/vbd/5/5632/device-type") == "cdrom"
    assert xs.read("/local/domain/0/backend/vbd/5/5632/mode") == "r"
    assert xs.read("/local/domain/0/backend/vif/5/0/mac") == config.vifs[0].mac
    assert remove_all_devices(xs, 5, FAST) == []
    assert set(fake.tree("/")) == before
    assert sorted(c.split()[0] for c in calls(tmp_path)) == \
        ["add", "add", "offline", "online", "remove", "remove"]


def test_script_leaving_a_child_with_its_stdout_does_not_block(tmp_path: Path) -> None:
    # A script that forks a daemon keeping stdout open must count as done when it exits.
    sc = script(tmp_path, f'(sleep 5; echo late) &\necho $! > {tmp_path}/child\necho ok\nexit 0\n')
    inv = hotplug.invocation("vbd", 1, 51712, sc, hotplug.Action.ADD)
    start = time.monotonic()
    out = hotplug.run(inv, "/be", timeout=4)
    assert time.monotonic() - start < 3 and "ok" in out
    os.kill(int((tmp_path / "child").read_text()), 9)


def test_invocations_match_libxl() -> None:
    inv = hotplug.invocation("vif", 3, 1, "/etc/xen/scripts/vif-bridge", hotplug.Action.REMOVE,
                             gatewaydev="eth0")
    assert inv.argv == ("/etc/xen/scripts/vif-bridge", "offline", "type_if=vif")
    assert dict(inv.env) == {"script": "/etc/xen/scripts/vif-bridge", "XENBUS_TYPE": "vif",
                             "XENBUS_PATH": "backend/vif/3/1", "XENBUS_BASE_PATH": "backend",
                             "netdev": "eth0", "vif": "vif3.1"}
    inv = hotplug.invocation("vbd", 3, 51712, "/etc/xen/scripts/block", hotplug.Action.ADD)
    assert inv.argv == ("/etc/xen/scripts/block", "add")
    assert "vif" not in inv.env and inv.env["XENBUS_PATH"] == "backend/vbd/3/51712"
    assert hotplug.invocation("console", 3, 0, "/x", hotplug.Action.ADD) is None
