"""Cache of built configs, for ``create``.

Under emulation, or on a small dom0, importing the parser and building its grammar costs
more than the rest of a create; a config is usually created again and again unchanged
(restarts, provisioning loops).  So the validated :class:`DomainConfig` is kept, keyed by
everything it is a function of: the parser's own code, the file's path and text, and the
command-line overrides.  Only successful builds are kept, so every error and warning still
comes from a real parse (warnings are part of the kept value and are printed again).

Entries are pickles, so the directory must be private to the user (root on dom0); one that
is not is ignored.  Any problem with an entry means a normal parse.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from xentool.config.model import DomainConfig

MAX_ENTRIES = 256
MAX_ENTRY_BYTES = 1 << 20


def _code_fingerprint(h: hashlib._Hash) -> None:
    """A changed parser (upgrade, edit) must never see entries built by the old one."""
    h.update(f"python {sys.version_info[:2]}\n".encode())
    for f in sorted(Path(__file__).parent.glob("*.py")):
        st = f.stat()
        h.update(f"{f.name} {st.st_size} {st.st_mtime_ns}\n".encode())


def entry_key(path: str, text: str, overrides: Sequence[str]) -> str:
    h = hashlib.sha256()
    _code_fingerprint(h)
    for part in (path, text, *overrides):
        data = part.encode("utf-8", "surrogateescape")
        h.update(b"%d:" % len(data) + data)
    return h.hexdigest()


def _private(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _read(directory: Path, entry: Path) -> DomainConfig | None:
    try:
        if not _private(directory.stat()):
            return None
        with entry.open("rb") as f:
            st = os.fstat(f.fileno())
            if not _private(st) or st.st_size > MAX_ENTRY_BYTES:
                return None
            data = f.read(MAX_ENTRY_BYTES)
    except OSError:
        return None
    try:
        cfg = pickle.loads(data)
    except Exception:  # a damaged or stale entry of any kind: parse instead
        return None
    return cfg if isinstance(cfg, DomainConfig) else None


def _write(directory: Path, entry: Path, cfg: DomainConfig) -> None:
    tmp = directory / f".{entry.name}.{os.getpid()}"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(tmp, entry)
        _prune(directory)
    except OSError:
        tmp.unlink(missing_ok=True)


def _prune(directory: Path) -> None:
    entries = [e for e in os.scandir(directory) if not e.name.startswith(".")]
    if len(entries) <= MAX_ENTRIES:
        return
    entries.sort(key=lambda e: e.stat().st_mtime_ns)
    for e in entries[:len(entries) - MAX_ENTRIES]:
        Path(e.path).unlink(missing_ok=True)


def cached_build(cache_dir: str | Path, path: str, text: str, overrides: Sequence[str],
                 build: Callable[[], DomainConfig]) -> DomainConfig:
    """``build()``, or what it returned last time for the same inputs."""
    directory = Path(cache_dir)
    entry = directory / entry_key(path, text, overrides)
    cfg = _read(directory, entry)
    if cfg is None:
        cfg = build()
        _write(directory, entry, cfg)
    return cfg
