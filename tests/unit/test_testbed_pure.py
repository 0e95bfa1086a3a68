"""Pure parts of the testbed driver (contrib/testbed/testbed.py); booting is tested in CI."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "contrib" / "testbed" / "testbed.py"
_spec = importlib.util.spec_from_file_location("testbed", _PATH)
assert _spec and _spec.loader
testbed = importlib.util.module_from_spec(_spec)
sys.modules["testbed"] = testbed
_spec.loader.exec_module(testbed)


def test_mirror_from_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n")
    assert testbed.debian_mirror(tmp_path) == "http://mirror.example/debian"


def test_mirror_from_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64] http://other.example/debian/ bookworm main\n")
    assert testbed.debian_mirror(tmp_path) == "http://other.example/debian"


def test_mirror_default_when_nothing_configured(tmp_path: Path) -> None:
    assert testbed.debian_mirror(tmp_path) == "http://deb.debian.org/debian"


def test_multiboot_modules_escape_commas() -> None:
    value = testbed.multiboot_modules("vmlinuz dom0_mem=1G,max:1G", "initrd.img")
    assert value == "vmlinuz dom0_mem=1G,,max:1G,initrd.img"


def test_module_deps_lists_dependencies_first(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(
        "kernel/drivers/block/xen-blkfront.ko: kernel/lib/a.ko kernel/lib/b.ko\n"
        "kernel/drivers/net/xen-netfront.ko:\n"
        "kernel/lib/a.ko:\nkernel/lib/b.ko: kernel/lib/a.ko\n")
    deps = testbed._module_deps(tmp_path)
    assert deps["xen-blkfront"] == ["kernel/lib/b.ko", "kernel/lib/a.ko",
                                    "kernel/drivers/block/xen-blkfront.ko"]
    assert deps["xen-netfront"] == ["kernel/drivers/net/xen-netfront.ko"]


def test_module_deps_missing_guest_module_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text("kernel/drivers/net/xen-netfront.ko:\n")
    with pytest.raises(testbed.TestbedError, match="xen-blkfront"):
        testbed._module_deps(tmp_path)


def test_kvm_refused_without_vmx_or_svm(monkeypatch: pytest.MonkeyPatch) -> None:
    if "vmx" in Path("/proc/cpuinfo").read_text() or "svm" in Path("/proc/cpuinfo").read_text():
        pytest.skip("this host has hardware virtualization")
    monkeypatch.setattr(testbed.os, "access", lambda *_: True)
    with pytest.raises(testbed.TestbedError, match="neither VMX nor SVM"):
        testbed.check_accel("kvm")


def test_staging_leaves_nothing_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "entry"
    with pytest.raises(OSError):
        with testbed.staging(final) as tmp:
            (tmp / "partial").write_bytes(b"x")
            raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_debug_keys_reach_xen_and_return_its_answer(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import threading

    monkeypatch.setattr(testbed, "DEBUG_KEY_QUIET", 0.3)
    monkeypatch.setattr(testbed.time, "sleep", lambda s: None)
    received = bytearray()

    def fake_qemu(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(64):
                received.extend(data)
                if b"q" in data:
                    conn.sendall(b"(XEN) 'q' pressed -> dumping domain info\r\n")

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(tmp_path / "serial.sock"))
        listener.listen(1)
        t = threading.Thread(target=fake_qemu, args=(listener,))
        t.start()
        answer = testbed.Testbed(tmp_path, pid=0, owned=False).xen_debug_keys("qr")
        t.join(5)
    assert bytes(received) == b"\x01\x01\x01qr\x01\x01\x01"
    assert answer == "(XEN) 'q' pressed -> dumping domain info\n"


def test_debug_keys_without_a_console_say_so(tmp_path: Path) -> None:
    answer = testbed.Testbed(tmp_path, pid=0, owned=False).xen_debug_keys()
    assert answer.startswith("(cannot reach the serial console:")


def test_a_silent_dom0_ends_the_job_with_xens_view(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    class FrozenTestbed:
        spool = tmp_path / "spool"
        serial = tmp_path / "serial.log"

        def alive(self) -> bool:
            return True

        def xen_debug_keys(self) -> str:
            return "(XEN) 'q' pressed -> dumping domain info\n"

    FrozenTestbed.spool.mkdir()
    FrozenTestbed.serial.write_text("[ 1.0] last dom0 line\n")
    (FrozenTestbed.spool / "beat").write_text("7\n")  # and never again
    monkeypatch.setattr(testbed, "DOM0_SILENT_AFTER", 0.3)
    rc = testbed.run_job(FrozenTestbed(), ["sleep", "inf"], tmp_path, {}, timeout=600)  # type: ignore[arg-type]
    assert rc == 124
    err = capsys.readouterr().err
    assert "dom0 has given no sign of life for" in err and "'sleep inf' abandoned" in err
    assert "last dom0 line" in err and "dumping domain info" in err
    assert list((FrozenTestbed.spool / "cancel").iterdir())  # the agent is told to kill it


# -- the production profile ---------------------------------------------------------------


def test_security_mirror_is_found_apart_from_the_main_one(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://sec.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://main.example/debian\nSuites: bookworm\n")
    assert testbed.debian_mirror(tmp_path) == "http://main.example/debian"
    assert testbed.debian_mirror(tmp_path, "debian-security") == \
        "http://sec.example/debian-security"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text(
        "deb http://sec.example/debian-security bookworm-security main\n")
    assert testbed.debian_mirror(tmp_path) == "http://deb.debian.org/debian"
    assert testbed.debian_mirror(tmp_path, "debian-security") == \
        "http://sec.example/debian-security"


def test_production_image_has_its_own_key(monkeypatch: pytest.MonkeyPatch) -> None:
    dev = testbed.dom0_recipe()
    prod = testbed.production_recipe("python3-pyxs, libxenmisc4.17 (>= 4.17.7)")
    assert prod != dev
    # the package's dependencies are part of it (a newer libxen on the build host rebuilds)
    assert testbed.production_recipe("python3-pyxs, libxenmisc4.17 (>= 4.17.8)") != prod
    # what only the production image has leaves the default image (and its cache) alone
    monkeypatch.setattr(testbed, "PRODUCTION_PACKAGES", (*testbed.PRODUCTION_PACKAGES, "x"))
    assert testbed.dom0_recipe() == dev
    assert testbed.production_recipe("python3-pyxs, libxenmisc4.17 (>= 4.17.7)") != prod


def test_build_deb_deps_are_those_build_deb_checks() -> None:
    deps = testbed.build_deb_deps()
    assert {"debhelper", "dh-python", "libxen-dev", "python3-argparse-manpage"} <= set(deps)
    assert all(d and " " not in d for d in deps)


def test_production_dom0_boots_debians_init(tmp_path: Path) -> None:
    dev = testbed.dom0_cmdline(testbed.Dom0Image(tmp_path))
    prod = testbed.dom0_cmdline(testbed.Dom0Image(tmp_path, production=True))
    assert "init=/sbin/xentool-init" in dev
    assert "init=" not in prod  # /sbin/init: systemd
    assert f"xentool.src={testbed.CHECKOUT}" in prod


def test_a_kept_production_vm_is_reused_only_with_the_same_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import subprocess
    import time

    monkeypatch.setenv("XENTOOL_TESTBED_CACHE", str(tmp_path))
    run_dir = tmp_path / "runs" / "tb-kept"
    (run_dir / "spool").mkdir(parents=True)
    (run_dir / "spool" / "ready").touch()
    image = testbed.Dom0Image(tmp_path / "dom0-abc", production=True)
    old = testbed.Package(tmp_path / "old.deb")
    old.path.write_bytes(b"old package")
    new = testbed.Package(tmp_path / "new.deb")
    new.path.write_bytes(b"new package")
    # a live process whose command line names the run directory stands for its QEMU
    vm = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(run_dir)])
    try:
        # /proc/PID/cmdline can still be empty just after the fork returns
        for _ in range(100):
            if testbed.Testbed(run_dir, vm.pid, owned=False).alive():
                break
            time.sleep(0.05)
        (run_dir / "state.json").write_text(json.dumps(
            {"pid": vm.pid, "image": image.key, "checkout": str(testbed.CHECKOUT),
             "keep": True, "package": old.digest}))
        assert testbed.find_kept(image, new) is None
        kept = testbed.find_kept(image, old)
        assert kept is not None and kept.run_dir == run_dir
        assert [t.run_dir for t in testbed.running_testbeds()] == [run_dir]
    finally:
        vm.kill()
        vm.wait()
