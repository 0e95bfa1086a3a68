"""The decompressed-kernel cache of ``load_kernel(..., cache_dir=...)``: who may write it,
how its files are created, and how it is kept to a size."""

from __future__ import annotations

import logging
import mmap
import os
import stat
from pathlib import Path

import pytest
from test_image_kit import KSTART_PADDR, compress, make_bzimage, make_elf

from domain_builder import image as image_mod
from domain_builder.image import load_kernel

MAX_BYTES_ENV = "XENTOOL_KERNEL_CACHE_MAX_BYTES"


def _kernel(path: Path, marker: bytes = b"KERNEL") -> tuple[Path, bytes]:
    """A compressed (so cacheable) kernel whose ELF carries ``marker``."""
    elf = make_elf(segments=[(KSTART_PADDR, marker * 64, 0x3000)])
    path.write_bytes(make_bzimage(compress("gzip", elf)))
    return path, elf


def _entry_name(kernel: Path) -> str:
    st = kernel.stat()
    return f"{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"


def _plant(cache: Path, kernel: Path, elf: bytes, mode: int = 0o600) -> Path:
    """A well-formed cache entry for ``kernel`` holding ``elf`` (what an attacker would write)."""
    entry = cache / _entry_name(kernel)
    entry.write_bytes(b"XTKC2\nbzImage gzip\n".ljust(4096, b"\0") + elf)
    entry.chmod(mode)
    return entry


def _entries(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir()}


# --- 1. the directory and its entries must be private --------------------------------------

def test_group_or_other_writable_dir_is_not_used(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    k, elf = _kernel(tmp_path / "vmlinuz")
    _, evil = _kernel(tmp_path / "evil", b"EVIL!!")
    cache = tmp_path / "cache"
    cache.mkdir()
    planted = _plant(cache, k, evil)
    for mode in (0o777, 0o770, 0o702):
        cache.chmod(mode)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="domain_builder.image"):
            first = load_kernel(k, cache_dir=cache)
            second = load_kernel(k, cache_dir=cache)
        # The real kernel, decompressed: the planted entry is neither booted nor replaced.
        assert first.elf == second.elf == elf
        assert not isinstance(first.elf, mmap.mmap)
        assert planted.read_bytes().endswith(evil)
        assert _entries(cache) == {planted.name}
        # One warning per directory, not one per load.
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        if mode == 0o777:
            assert len(warnings) == 1 and str(cache) in warnings[0].getMessage()
        else:
            assert warnings == []  # the same directory: already warned about


def test_dir_of_another_user_is_not_used(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    k, elf = _kernel(tmp_path / "vmlinuz")
    _, evil = _kernel(tmp_path / "evil", b"EVIL!!")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    planted = _plant(cache, k, evil)
    # Everything here is owned by the test's user: be someone else.
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(cache).st_uid + 1)
    assert load_kernel(k, cache_dir=cache).elf == elf
    assert planted.read_bytes().endswith(evil)


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666], ids=oct)
def test_writable_entry_is_not_trusted_and_is_replaced(tmp_path: Path, mode: int) -> None:
    k, elf = _kernel(tmp_path / "vmlinuz")
    _, evil = _kernel(tmp_path / "evil", b"EVIL!!")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    planted = _plant(cache, k, evil, mode)
    assert load_kernel(k, cache_dir=cache).elf == elf
    # Rebuilt in its place, private this time, and then served from the cache.
    assert planted.read_bytes().endswith(elf)
    assert stat.S_IMODE(planted.stat().st_mode) == 0o600
    again = load_kernel(k, cache_dir=cache)
    assert isinstance(again.elf, mmap.mmap) and again.elf[:] == elf


def test_entry_of_another_user_is_not_trusted(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    k, elf = _kernel(tmp_path / "vmlinuz")
    _, evil = _kernel(tmp_path / "evil", b"EVIL!!")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    planted = _plant(cache, k, evil)
    uid = os.stat(cache).st_uid
    real_fstat = os.fstat

    def fstat(fd: int) -> os.stat_result:  # the entry (a regular file) belongs to someone else
        st = real_fstat(fd)
        if stat.S_ISREG(st.st_mode):
            fields = list(st)
            fields[stat.ST_UID] = uid + 1
            return os.stat_result(fields)
        return st

    monkeypatch.setattr(os, "fstat", fstat)
    assert load_kernel(k, cache_dir=cache).elf == elf
    assert planted.read_bytes().endswith(elf)  # replaced by the real one


def test_symlinked_entry_is_not_followed(tmp_path: Path) -> None:
    k, elf = _kernel(tmp_path / "vmlinuz")
    _, evil = _kernel(tmp_path / "evil", b"EVIL!!")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    outside = _plant(tmp_path, k, evil)  # a good-looking entry, outside the cache...
    (cache / outside.name).symlink_to(outside)  # ...reached through a symlink
    assert load_kernel(k, cache_dir=cache).elf == elf
    assert outside.read_bytes().endswith(evil)


def test_cache_dir_is_created_private(tmp_path: Path) -> None:
    k, elf = _kernel(tmp_path / "vmlinuz")
    cache = tmp_path / "var" / "cache" / "kernels"
    old = os.umask(0)
    try:
        assert load_kernel(k, cache_dir=cache).elf == elf
    finally:
        os.umask(old)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    for parent in (cache.parent, cache.parent.parent):  # nobody else can swap the directory
        assert not parent.stat().st_mode & 0o022
    (entry,) = cache.iterdir()
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert isinstance(load_kernel(k, cache_dir=cache).elf, mmap.mmap)


def test_unusable_cache_dir_never_fails_the_load(tmp_path: Path) -> None:
    k, elf = _kernel(tmp_path / "vmlinuz")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"x")
    assert load_kernel(k, cache_dir=not_a_dir).elf == elf
    assert load_kernel(k, cache_dir=not_a_dir / "below").elf == elf
    assert not_a_dir.read_bytes() == b"x"


# --- 2. the temporary file ------------------------------------------------------------------

def test_planted_symlink_at_the_temporary_name_is_not_followed(tmp_path: Path) -> None:
    k, elf = _kernel(tmp_path / "vmlinuz")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    victim = tmp_path / "shadow"
    victim.write_bytes(b"root:precious\n")
    name = _entry_name(k)
    # The name the old code wrote through: ".<entry>.<pid>".
    trap = cache / f".{name}.{os.getpid()}"
    trap.symlink_to(victim)
    img = load_kernel(k, cache_dir=cache)
    assert img.elf == elf
    assert victim.read_bytes() == b"root:precious\n"
    assert trap.is_symlink() and trap.resolve() == victim
    entry = cache / name
    assert not entry.is_symlink() and entry.read_bytes().endswith(elf)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert _entries(cache) == {name, trap.name}  # no temporary file left behind


def test_failed_write_leaves_no_temporary_file(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    k, elf = _kernel(tmp_path / "vmlinuz")
    cache = tmp_path / "cache"

    def replace(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", replace)
    assert load_kernel(k, cache_dir=cache).elf == elf
    assert _entries(cache) == set()


# --- 3. the size limit ----------------------------------------------------------------------

def _entry_size(tmp_path: Path) -> int:
    """What one entry of a ``_kernel`` costs (they are all the same size)."""
    _, elf = _kernel(tmp_path / "probe")
    return 4096 + len(elf)


def test_least_recently_used_entries_are_evicted(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    size = _entry_size(tmp_path)
    monkeypatch.setenv(MAX_BYTES_ENV, str(2 * size + size // 2))  # room for two entries
    cache = tmp_path / "cache"
    k1, elf1 = _kernel(tmp_path / "k1", b"ONE...")
    k2, _ = _kernel(tmp_path / "k2", b"TWO...")
    k3, elf3 = _kernel(tmp_path / "k3", b"THREE.")
    e1, e2, e3 = (cache / _entry_name(k) for k in (k1, k2, k3))
    # An unrelated file in the directory is neither counted nor deleted.
    cache.mkdir(mode=0o700)
    (cache / "README").write_bytes(b"x" * 10 * size)
    load_kernel(k1, cache_dir=cache)
    load_kernel(k2, cache_dir=cache)
    assert {e1.name, e2.name} <= _entries(cache)
    os.utime(e1, ns=(10**18, 10**18))  # k1 went in first (2001)...
    os.utime(e2, ns=(10**18 + 10**9, 10**18 + 10**9))
    hit = load_kernel(k1, cache_dir=cache)  # ...but was used last: the hit records it
    assert isinstance(hit.elf, mmap.mmap) and hit.elf[:] == elf1
    assert e1.stat().st_mtime_ns > e2.stat().st_mtime_ns
    assert load_kernel(k3, cache_dir=cache).elf == elf3
    assert _entries(cache) == {e1.name, e3.name, "README"}
    assert (cache / "README").stat().st_size == 10 * size


def test_entry_just_written_is_never_evicted(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MAX_BYTES_ENV, "1")  # smaller than any entry
    cache = tmp_path / "cache"
    k1, _ = _kernel(tmp_path / "k1", b"ONE...")
    k2, elf2 = _kernel(tmp_path / "k2", b"TWO...")
    load_kernel(k1, cache_dir=cache)
    assert _entries(cache) == {_entry_name(k1)}
    load_kernel(k2, cache_dir=cache)
    assert _entries(cache) == {_entry_name(k2)}
    hit = load_kernel(k2, cache_dir=cache)
    assert isinstance(hit.elf, mmap.mmap) and hit.elf[:] == elf2


def test_twenty_recopied_kernels_stay_under_the_limit(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    size = _entry_size(tmp_path)
    monkeypatch.setenv(MAX_BYTES_ENV, str(3 * size))
    cache = tmp_path / "cache"
    k, elf = _kernel(tmp_path / "vmlinuz")
    data = k.read_bytes()
    for i in range(20):  # a provisioning loop copying the kernel afresh (new inode, mtime)
        k.unlink()
        k.write_bytes(data)
        os.utime(k, ns=(i + 1, i + 1))
        assert load_kernel(k, cache_dir=cache).elf == elf
    assert len(_entries(cache)) == 3
    assert sum(p.stat().st_size for p in cache.iterdir()) <= 3 * size


def test_max_bytes_setting(monkeypatch: pytest.MonkeyPatch,
                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(MAX_BYTES_ENV, raising=False)
    assert image_mod.kernel_cache_max_bytes() == 1 << 30
    monkeypatch.setenv(MAX_BYTES_ENV, "")
    assert image_mod.kernel_cache_max_bytes() == 1 << 30
    monkeypatch.setenv(MAX_BYTES_ENV, "123456")
    assert image_mod.kernel_cache_max_bytes() == 123456
    monkeypatch.setenv(MAX_BYTES_ENV, "0")
    assert image_mod.kernel_cache_max_bytes() == 0
    for bad in ("lots", "-5", "1.5G"):
        monkeypatch.setenv(MAX_BYTES_ENV, bad)
        with caplog.at_level(logging.WARNING, logger="domain_builder.image"):
            assert image_mod.kernel_cache_max_bytes() == 1 << 30
        assert MAX_BYTES_ENV in caplog.text
