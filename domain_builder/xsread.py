"""Cheap XenStore reads through libxenstore, over the same cffi binding as ``xenctrl``.

Why this module exists: the hot query verbs (``xentool list``, ``domname``) only read a
few nodes, and answering them through ``xenstore.client`` would cost its imports and the
start-up of its router thread, most of what such a verb costs next to ``xl list``.  The
compiled extension ``domain_builder._xenctrl`` already links libxenstore for these reads,
so this module uses it directly and imports nothing else of the domain builder: reading a
name needs neither ``XenCtrl`` nor its result types.  Writes, transactions and watches
belong to ``xenstore.client.Store``.
"""

from __future__ import annotations

from domain_builder._binding import IMPORT_ERROR as _IMPORT_ERROR
from domain_builder._binding import ffi as _ffi
from domain_builder._binding import lib as _lib
from domain_builder.errors import XenError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from typing import Any



class XenStoreReader:
    """Read-only XenStore access through libxenstore, for the hot query verbs.

    ``xentool list`` reads one name per domain; see the module docstring for why this is
    not ``xenstore.client.Store``.  Same reading contract as ``Store.get``/``Store.ls``.
    Use as ``with XenStoreReader() as xs: ...``.
    """

    def __init__(self) -> None:
        self._h: Any = None

    def __enter__(self) -> XenStoreReader:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        if self._h is None:
            if _lib is None:
                raise XenError("xs_open", 38, f"libxenstore binding is not built "
                                              f"({_IMPORT_ERROR})")
            h = _lib.xs_open(0)
            if h == _ffi.NULL:
                raise XenError("xs_open", _ffi.errno or 111, "cannot reach xenstored")
            self._h = h

    def close(self) -> None:
        h, self._h = self._h, None
        if h is not None:
            _lib.xs_close(h)

    def get(self, path: str, default: str | None = None) -> str | None:
        """The value at ``path``, or ``default`` if there is no such node."""
        if self._h is None:
            raise XenError("xs_read", 9, "reader is not open")
        n = _ffi.new("unsigned int *")
        raw = _lib.xs_read(self._h, 0, path.encode(), n)
        if raw == _ffi.NULL:
            err = _ffi.errno
            if err in (2, 0):  # ENOENT
                return default
            raise XenError("xs_read", err, path)
        try:
            return bytes(_ffi.buffer(raw, n[0])).decode("utf-8", "replace")
        finally:
            _lib.free(raw)

    def ls(self, path: str) -> list[str]:
        if self._h is None:
            raise XenError("xs_directory", 9, "reader is not open")
        n = _ffi.new("unsigned int *")
        arr = _lib.xs_directory(self._h, 0, path.encode(), n)
        if arr == _ffi.NULL:
            raise XenError("xs_directory", _ffi.errno or 2, path)
        try:  # one allocation holds the array and the strings
            return [_ffi.string(arr[i]).decode("utf-8", "replace") for i in range(n[0])]
        finally:
            _lib.free(arr)
