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
