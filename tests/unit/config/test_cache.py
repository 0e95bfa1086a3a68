"""The config cache of ``create``: same inputs -> same config without parsing; anything else
(another text, path, override, a damaged or foreign entry) -> a real parse."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xentool import state
from xentool.config import ConfigError, load
from xentool.config import cache as cfgcache

TEXT = 'name = "g"\nkernel = "/k"\nmemory = 64\nbogus_key = 1\n'


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    p = tmp_path / "g.cfg"
    p.write_text(TEXT)
    return p


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if not p.name.startswith("."))


def test_hit_gives_the_same_config_with_its_warnings(cfg: Path, cache: Path) -> None:
    first = load(str(cfg), cache_dir=cache)
    assert len(entries(cache)) == 1
    assert (cache.stat().st_mode & 0o777, entries(cache)[0].stat().st_mode & 0o777) == \
        (0o700, 0o600)
    second = load(str(cfg), cache_dir=cache)
    assert second == first == load(str(cfg))
    assert second.warnings == first.warnings and any("bogus_key" in w for w in first.warnings)
    assert len(entries(cache)) == 1


def test_a_hit_does_not_import_the_parser(cfg: Path, cache: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        from xentool.config import load
        load({str(cfg)!r}, cache_dir={str(cache)!r})
        print("pyparsing" in sys.modules)
    """)

    def run() -> str:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, timeout=60).stdout.strip()

    assert run() == "True"   # miss: parsed
    assert run() == "False"  # hit: the grammar was never needed


@pytest.mark.parametrize("change", ["text", "overrides", "path"])
def test_other_inputs_miss(cfg: Path, cache: Path, change: str) -> None:
    load(str(cfg), cache_dir=cache)
    if change == "text":
        cfg.write_text(TEXT.replace("64", "96"))
        assert load(str(cfg), cache_dir=cache).memory == 96
    elif change == "overrides":
        assert load(str(cfg), ["memory=80"], cache_dir=cache).memory == 80
    else:
        other = cfg.with_name("h.cfg")
        other.write_text(TEXT)
        got = load(str(other), cache_dir=cache)
        assert any(str(other) in w for w in got.warnings)
    assert len(entries(cache)) == 2


def test_errors_are_never_cached(cfg: Path, cache: Path) -> None:
    cfg.write_text('name = "g"\nmemory = [\n')
    for _ in range(2):
        with pytest.raises(ConfigError):
            load(str(cfg), cache_dir=cache)
    assert not cache.exists() or entries(cache) == []


def test_damaged_or_foreign_entries_are_not_trusted(cfg: Path, cache: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    good = load(str(cfg), cache_dir=cache)
    (entry,) = entries(cache)
    entry.write_bytes(b"\x80\x05garbage")
    assert load(str(cfg), cache_dir=cache) == good
    # A pickle of something else: refused, rebuilt.
    entry.write_bytes(pickle.dumps({"name": "evil"}))
    assert load(str(cfg), cache_dir=cache) == good
    # A directory others can write to: its entries could have been planted; none is read.
    os.chmod(cache, 0o777)
    unpickled: list[bytes] = []
    real = pickle.loads
    monkeypatch.setattr(cfgcache.pickle, "loads", lambda b: unpickled.append(b) or real(b))
    assert load(str(cfg), cache_dir=cache) == good
    assert unpickled == []


def test_at_most_max_entries_are_kept(cfg: Path, cache: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cfgcache, "MAX_ENTRIES", 3)
    for mem in range(64, 64 + 6):
        load(str(cfg), [f"memory={mem}"], cache_dir=cache)
    assert len(entries(cache)) == 3


def test_default_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(state.CONFIG_CACHE_ENV, "")
    assert state.config_cache_dir() is None
    monkeypatch.delenv(state.CONFIG_CACHE_ENV)
    assert state.config_cache_dir() == state.CONFIG_CACHE
