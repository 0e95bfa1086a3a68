"""The compiled libxenctrl/libxenstore binding, or why it is missing.

The extension exists only where libxen-dev was available at build time; the modules that
use it import ``ffi``/``lib`` from here and report ``IMPORT_ERROR`` when they are None.
cffi's objects are untyped, hence ``Any``.
"""

from __future__ import annotations

import importlib
import re

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from typing import Any

ffi: Any = None
lib: Any = None
IMPORT_ERROR: ImportError | None = None
try:
    _ext = importlib.import_module("domain_builder._xenctrl")
except ImportError as _exc:  # pragma: no cover - exercised only on broken installs
    IMPORT_ERROR = _exc
else:
    ffi, lib = _ext.ffi, _ext.lib

_SONAME = re.compile(r"libxenctrl\.so\.(\d+)\.(\d+)")


def missing_library(error: ImportError) -> str:
    """One line for an extension that cannot load: a libxen library of another Xen
    release than this host's (libxenctrl.so.4.17 on a 4.18 host) says which release the
    binding was built for."""
    m = re.search(r"(libxen\w*\.so\.(\d+\.\d+))", str(error))
    if m is None:
        return f"xentool's libxenctrl binding is not built ({error})"
    return (f"xentool's libxenctrl binding was built for Xen {m.group(2)}, but {m.group(1)} "
            "is not installed: rebuild xentool against this host's libxen-dev")


def linked_release(maps: str | None = None) -> tuple[int, int] | None:
    """The Xen release (major, minor) of the libxenctrl the binding loaded, from its
    versioned file name in ``/proc/self/maps`` (``maps``: that text, for tests)."""
    if maps is None:
        try:
            with open("/proc/self/maps", encoding="ascii", errors="replace") as f:
                maps = f.read()
        except OSError:
            return None
    m = _SONAME.search(maps)
    return (int(m.group(1)), int(m.group(2))) if m else None


def release_mismatch(major: int, minor: int, linked: tuple[int, int] | None) -> str | None:
    """One line if the hypervisor (``xc_version`` major.minor) is another release than the
    libxenctrl the binding uses (its domctl/sysctl interface versions would not match), or
    None."""
    if linked is None or linked == (major, minor):
        return None
    return (f"xentool's libxenctrl binding is for Xen {linked[0]}.{linked[1]}, but this "
            f"hypervisor is Xen {major}.{minor}: rebuild xentool against Xen "
            f"{major}.{minor}'s libxen-dev")
