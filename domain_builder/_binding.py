"""The compiled libxenctrl/libxenstore binding, or why it is missing.

The extension exists only where libxen-dev was available at build time; the modules that
use it import ``ffi``/``lib`` from here and report ``IMPORT_ERROR`` when they are None.
cffi's objects are untyped, hence ``Any``.
"""

from __future__ import annotations

import importlib

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
