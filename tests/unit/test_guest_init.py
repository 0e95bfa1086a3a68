"""The test guest's /init builds XenStore wire messages by hand (``xentool.mode=hostile``):
its ``xs_write``, run by busybox as in the guest, must produce well-formed XS_WRITE
messages, or the hostile loop would write nothing and the testbed suite prove nothing."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

INIT = Path(__file__).resolve().parents[2] / "contrib" / "testbed" / "guest" / "init"
BUSYBOX = shutil.which("busybox")
XS_WRITE = 11

pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="busybox is not installed")


def xs_write_output(*args: str, value_script: str = "") -> bytes:
    """What ``xs_write ARGS`` prints, run by busybox sh with an empty environment (as init
    runs); ``value_script`` sets shell variables first."""
    func = re.search(r"^xs_write\(\) \{\n.*?^\}\n", INIT.read_text(), re.M | re.S)
    assert func, "no xs_write() in the guest's init"
    script = f"{func.group(0)}{value_script}\nxs_write {' '.join(args)}\n"
    assert BUSYBOX is not None
    return subprocess.run([BUSYBOX, "sh", "-c", script], capture_output=True, check=True,
                          env={}).stdout


def parse(msg: bytes) -> tuple[int, int, bytes, bytes]:
    kind, _req, tx, length = struct.unpack("<4I", msg[:16])
    assert len(msg) == 16 + length, (len(msg), length)
    path, value = msg[16:].split(b"\0", 1)
    return kind, tx, path, value


def test_a_plain_write() -> None:
    assert parse(xs_write_output("device/vbd/51712/state", "4")) == \
        (XS_WRITE, 0, b"device/vbd/51712/state", b"4")


def test_an_empty_value() -> None:
    assert parse(xs_write_output("device/vif/0/state", '""')) == \
        (XS_WRITE, 0, b"device/vif/0/state", b"")


def test_binary_value_with_its_byte_count() -> None:
    setup = ("v=$(printf '\\033[2J\\233\\377\\n\\r%%s\\\\x')\n"
             "n=$(printf %s \"$v\" | wc -c)")
    kind, _tx, _path, value = parse(xs_write_output("p", '"$v"', '"$n"', value_script=setup))
    assert (kind, value) == (XS_WRITE, b"\x1b[2J\x9b\xff\n\r%s\\x")


def test_the_largest_message_the_xenbus_device_takes() -> None:
    # 4096 bytes with the header: the length needs both low bytes of the u32.
    path = "device/vbd/51712/feature-persistent"
    size = 4096 - 16 - len(path) - 1
    setup = f"big=$(head -c {size} /dev/zero | tr '\\000' Z)"
    msg = xs_write_output(path, '"$big"', value_script=setup)
    assert len(msg) == 4096
    assert parse(msg) == (XS_WRITE, 0, path.encode(), b"Z" * size)
