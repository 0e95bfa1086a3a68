"""The pure parts of ``xentool migrate``: xl's receiver command, the log-dirty bitmap,
the fixed handshake messages."""

from __future__ import annotations

import io

import pytest

from xentool.migration.libxl_stream import MIGRATE_RECEIVER_BANNER, MIGRATE_RECEIVER_READY
from xentool.migration.migrate import MigrateError, bitmap_pfns, read_fixed, rune


def test_rune_as_xl_builds_it() -> None:
    assert rune("ssh", "host2") == "exec ssh host2 xentool migrate-receive"
    assert (rune("ssh -p 2222", "h", tty=True, timestamps=True, verbose=2, daemonize=False,
                 debug=True, pause_after=True)
            == "exec ssh -p 2222 h xentool -t -T -vv migrate-receive -e -d -p")


def test_an_empty_ssh_command_makes_host_the_command() -> None:
    assert rune("", "xentool migrate-receive -e", debug=True) == "xentool migrate-receive -e"


def test_bitmap_pfns() -> None:
    bitmap = bytearray(16)
    for pfn in (0, 7, 8, 63, 64, 100, 127):
        bitmap[pfn // 8] |= 1 << (pfn % 8)
    assert bitmap_pfns(bytes(bitmap), 128) == [0, 7, 8, 63, 64, 100, 127]
    assert bitmap_pfns(bytes(bitmap), 100) == [0, 7, 8, 63, 64]
    assert bitmap_pfns(bytes(16), 128) == []
    assert bitmap_pfns(b"\xff" * 8, 64) == list(range(64))


class Trickle(io.RawIOBase):
    """A pipe that hands out one byte per read."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        out, self.data = self.data[:1], self.data[1:]
        return out


def test_read_fixed_assembles_short_reads() -> None:
    read_fixed(Trickle(MIGRATE_RECEIVER_BANNER), MIGRATE_RECEIVER_BANNER, "banner")  # type: ignore[arg-type]


def test_read_fixed_names_what_was_expected() -> None:
    with pytest.raises(MigrateError, match="unexpected data instead of ready message"):
        read_fixed(io.BytesIO(b"x" * len(MIGRATE_RECEIVER_READY)), MIGRATE_RECEIVER_READY,
                   "ready message")
    with pytest.raises(MigrateError, match=r"end of stream before the banner \(command run "
                                           r"was: ssh h xentool migrate-receive \)"):
        read_fixed(io.BytesIO(b"xl mig"), MIGRATE_RECEIVER_BANNER, "banner",
                   "ssh h xentool migrate-receive")
