"""Exceptions of the domain builder; kept import-light so the CLI can catch them cheaply."""

from __future__ import annotations

import errno as _errno
import os


class XenError(OSError):
    """A failed libxenctrl call: carries the C errno, its symbolic name and the operation."""

    def __init__(self, op: str, err: int, detail: str = "") -> None:
        name = _errno.errorcode.get(err, f"errno {err}")
        msg = f"{op} failed: {name} ({os.strerror(err)})"
        if detail:
            msg += f": {detail}"
        super().__init__(err, msg)
        self.op = op
        self.errno_name = name

    def __str__(self) -> str:
        return self.strerror or ""


class BuildError(Exception):
    """Base of the builder's input errors (bad kernel image, impossible layout)."""


class ImageError(BuildError):
    """A kernel or ramdisk image that is malformed, hostile or unsupported."""


class LayoutError(BuildError):
    """A guest memory layout that cannot be built (too little memory, overlaps)."""
