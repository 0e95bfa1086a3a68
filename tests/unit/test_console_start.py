"""`create -c`: the guest is unpaused only after the console client reports it is attached.

xenconsole is replaced by a small script speaking its ``--start-notify-fd`` protocol; the
hypervisor side by a recorder.  The integration test (test_pv_builder) does it for real.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pytest

import domain_builder.xenctrl
from xentool import console


class Recorder:
    def __init__(self, attached: Path) -> None:
        self.attached = attached
        self.unpaused: list[tuple[int, bool]] = []

    def __call__(self) -> Recorder:
        return self

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def unpause(self, domid: int) -> None:
        # Records whether the client had attached when the guest was let go.
        self.unpaused.append((domid, self.attached.exists()))


def fake_client(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "xenconsole"
    script.write_text(f"#!{sys.executable}\nimport os, sys, time\n"
                      "args = sys.argv[1:]\n"
                      "fd = int(args[args.index('--start-notify-fd') + 1])\n" + body)
    script.chmod(0o755)
    return script


@pytest.fixture
def attached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Recorder]:
    flag = tmp_path / "attached"
    rec = Recorder(flag)
    monkeypatch.setattr(domain_builder.xenctrl, "XenCtrl", rec)
    return flag, rec


def test_unpauses_after_the_client_is_attached(tmp_path, monkeypatch, attached) -> None:
    flag, rec = attached
    # Attach slowly: an unpause that does not wait for the byte would come first.
    client = fake_client(tmp_path, f"time.sleep(0.5)\nopen({str(flag)!r}, 'w').close()\n"
                                   "os.write(fd, b'\\0')\nsys.exit(3)\n")
    monkeypatch.setattr(console, "XENCONSOLE", str(client))
    assert console.console_before_start(7, unpause=True) == 3
    assert rec.unpaused == [(7, True)]


def test_paused_create_stays_paused(tmp_path, monkeypatch, attached) -> None:
    _flag, rec = attached
    client = fake_client(tmp_path, "os.write(fd, b'\\0')\n")
    monkeypatch.setattr(console, "XENCONSOLE", str(client))
    assert console.console_before_start(7, unpause=False) == 0
    assert rec.unpaused == []


def test_a_client_that_never_attaches_does_not_hold_the_guest(tmp_path, monkeypatch,
                                                               attached) -> None:
    _, rec = attached
    client = fake_client(tmp_path, "os.close(fd)\ntime.sleep(0.2)\nsys.exit(1)\n")
    monkeypatch.setattr(console, "XENCONSOLE", str(client))
    t0 = time.monotonic()
    assert console.console_before_start(7, unpause=True, timeout=30) == 1
    assert rec.unpaused == [(7, False)] and time.monotonic() - t0 < 10


def test_missing_client_is_a_clear_error(tmp_path, monkeypatch, attached) -> None:
    monkeypatch.setattr(console, "XENCONSOLE", str(tmp_path / "absent"))
    with pytest.raises(console.XentoolError, match=r"xenconsole|absent"):
        console.console_before_start(7, unpause=True)
    assert attached[1].unpaused == []


def test_create_with_console_checks_the_client_before_making_a_domain(
        tmp_path, monkeypatch) -> None:
    from test_image_kit import make_elf

    from xentool.cli.commands import create

    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(make_elf())
    cfg = tmp_path / "g.cfg"
    cfg.write_text(f'name = "g"\ntype = "pv"\nkernel = "{kernel}"\nmemory = 64\n')
    monkeypatch.setenv("XENTOOL_KERNEL_CACHE", "")

    def no_xen(*a: object, **k: object) -> None:
        raise AssertionError("a domain was being created")

    monkeypatch.setattr(domain_builder.xenctrl, "XenCtrl", no_xen)
    monkeypatch.setattr(console, "XENCONSOLE", str(tmp_path / "absent"))
    p = argparse.ArgumentParser()
    create.configure_create(p)
    with pytest.raises(console.XentoolError, match="absent is missing"):
        create.cmd_create(p.parse_args(["-q", "-c", str(cfg)]))
