"""xl.cfg files -> validated :class:`DomainConfig` (and back out as libxl JSON).

Public API::

    load(path, overrides=()) -> DomainConfig        # read, parse, validate
    loads(text, source, overrides=()) -> DomainConfig
    parse(text, source, extra=None) -> ParsedConfig  # syntax only
    ConfigError                                       # .file .line .column .excerpt

``overrides`` are xl's trailing ``KEY=VALUE`` arguments: appended to the file, so they win.

Where xentool and xl (4.17) differ, on purpose:

* xl prints a warning and carries on without the value for a list where a single value
  belongs (and the reverse), ``+=`` on a number, a number that does not parse, an unknown
  vif option or a bad vif MAC; xentool refuses the file, naming the key and its position.
* every key xl reads is applied, ignored for the guest's type (PV or PVH) as xl ignores
  it, or refused by name (:mod:`xentool.config.keys`): refused are ``type`` hvm,
  ``bootloader`` (no pygrub), a non-empty ``vfb``, NUMA ``node:`` cpu ranges, and the keys
  xentool cannot apply yet (``localtime``, ``pci``, ``cpuid`` of a PV guest, a PVH
  guest's ``pvshim``, ...); keys xl reads only for other guest types get a warning that
  they are ignored; unknown keys get a warning (xl is silent).
* also refused: memory > maxmem, a name that is empty or all digits, duplicate vdevs or
  vif devids, out-of-range cpu_weight (1..65535) or cap (>= 0).
* a vif without ``mac=`` gets a MAC derived from the domain's uuid (or name) and devid,
  stable across restarts; libxl draws a random one at every create.  ``create -n`` does
  not print it, as xl does not.
* files over 256 KiB, lists nested over 32 deep or over 8192 statements and list items
  are refused (xl has no limits); configs are read as UTF-8.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from xentool.config.errors import ConfigError
from xentool.config.limits import MAX_CONFIG_BYTES
from xentool.config.model import (
    CpuAffinity,
    CpuSet,
    DiskBackend,
    DiskFormat,
    DiskSpec,
    DomainConfig,
    DomainType,
    NicType,
    ShutdownAction,
    VifSpec,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from pathlib import Path

    from xentool.config.grammar import ParsedConfig, parse


def __getattr__(name: str) -> object:
    # The grammar (pyparsing) is imported on first use: a create served from the config
    # cache never needs it.
    if name in ("ParsedConfig", "parse"):
        from xentool.config import grammar

        return getattr(grammar, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ConfigError", "CpuAffinity", "CpuSet", "DiskBackend", "DiskFormat", "DiskSpec",
    "DomainConfig", "DomainType", "NicType", "ParsedConfig", "ShutdownAction", "VifSpec",
    "load", "loads", "parse", "read_config_text",
]


def read_config_text(path: str) -> str:
    """The text of config file ``path``; size-limited and strictly UTF-8.

    ``/dev/null`` is an empty config, as for xl (all settings then come from overrides).
    """
    if path == "/dev/null":
        return ""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_CONFIG_BYTES:
                raise ConfigError(f"config is {size} bytes, more than the limit of "
                                  f"{MAX_CONFIG_BYTES}", path)
            data = f.read(MAX_CONFIG_BYTES + 1)  # st_size lies for pipes and /proc
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", path) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config is more than the limit of {MAX_CONFIG_BYTES} bytes", path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(f"invalid UTF-8 byte 0x{data[exc.start]:02x}", path, line,
                          col) from None


def _extra(overrides: Sequence[str]) -> str | None:
    # xl appends each KEY=VALUE argument followed by a newline.
    return "".join(f"{o}\n" for o in overrides) if overrides else None


def loads(text: str, source: str = "<config>", overrides: Sequence[str] = ()) -> DomainConfig:
    from dataclasses import replace

    from xentool.config.grammar import parse
    from xentool.config.validate import build_domain_config

    extra = _extra(overrides)
    cfg = build_domain_config(parse(text, source, extra))
    return replace(cfg, text=text + (extra or ""))


def load(path: str, overrides: Sequence[str] = (), *,
         cache_dir: str | Path | None = None) -> DomainConfig:
    """Read, parse and validate config file ``path``; with ``cache_dir``, through the
    config cache (:mod:`xentool.config.cache`)."""
    text = read_config_text(path)
    if cache_dir is None:
        return loads(text, path, overrides)
    from xentool.config.cache import cached_build

    return cached_build(cache_dir, path, text, overrides, lambda: loads(text, path, overrides))
