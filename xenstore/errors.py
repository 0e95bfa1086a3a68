"""XenStore exceptions."""

from __future__ import annotations

import errno as _errno
import os


class XenStoreError(OSError):
    """A XenStore request that failed; carries errno and the path it concerned."""

    def __init__(self, err: int, path: str = "", detail: str = "") -> None:
        name = _errno.errorcode.get(err, f"errno {err}")
        msg = f"xenstore {path or '<no path>'}: {name} ({os.strerror(err)})"
        if detail:
            msg += f": {detail}"
        super().__init__(err, msg)
        self.path = path

    def __str__(self) -> str:
        return self.strerror or ""
