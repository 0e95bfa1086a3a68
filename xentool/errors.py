"""The one error tree of xentool's library.

Every failure the library reports is a :class:`XentoolError`; its ``str()`` is one line for
the operator (the CLI prints it as ``xentool: <message>`` without a traceback) and
``exit_code`` is what the CLI exits with.  Errors of the layers below (``domain_builder``,
``xenstore``, the OS) are translated at the library's boundary by :func:`translated`, with
the original kept as ``__cause__``.

Subclasses also derive from the builtin error a caller would expect (``LookupError`` for a
missing domain, ``ValueError`` for bad input, ``OSError``-like ``errno`` on
:class:`HostError`), so ``except ValueError`` keeps working for scripts that do not know
xentool's tree.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Literal


class XentoolError(Exception):
    """Root of every error the xentool library raises."""

    exit_code = 1


class UsageError(XentoolError, ValueError):
    """An argument that makes no sense (exit status 2, like argparse)."""

    exit_code = 2


class NotFoundError(XentoolError, LookupError):
    """Something named does not exist (a domain, a cpupool, a device)."""


class DomainNotFound(NotFoundError):
    """A domain name or id that does not resolve to a live domain."""

    def __init__(self, domain: str) -> None:
        super().__init__(f"domain '{domain}' does not exist")
        self.domain = domain


class BuildError(XentoolError):
    """A kernel image or memory layout the domain builder cannot use."""


class DeviceError(XentoolError):
    """A device (disk, vif, console) that cannot be attached, detached or found."""


class BusyError(XentoolError):
    """Another process holds what this operation needs (a lock) for too long."""


class HostError(XentoolError):
    """A failed call to the hypervisor, xenstored or the host's OS.

    ``errno`` is the C errno (0 if none); ``op`` names what was attempted.
    """

    def __init__(self, message: str, errno: int = 0, op: str = "") -> None:
        super().__init__(message)
        self.errno = errno
        self.op = op


def translated(exc: BaseException) -> XentoolError | None:
    """The library's error for an exception of a lower layer, or None if it has none.

    ``domain_builder`` build errors become :class:`BuildError`; any ``OSError`` (libxenctrl
    calls, XenStore requests, files) becomes :class:`HostError` with its errno.
    """
    if isinstance(exc, XentoolError):
        return exc
    import domain_builder.errors as db

    if isinstance(exc, db.BuildError):
        return BuildError(str(exc))
    if isinstance(exc, OSError):
        err = exc.errno or 0
        text = str(exc)
        if exc.filename is not None and str(exc.filename) not in text:
            text = f"{exc.filename}: {exc.strerror or text}"
        return HostError(text, err, getattr(exc, "op", ""))
    return None


class _Translating:
    """``with translating():`` re-raises lower-layer errors as the library's (see
    :func:`translated`); a plain class, not contextlib, to keep import cost nil."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        if exc is None or isinstance(exc, XentoolError):
            return False
        mine = translated(exc)
        if mine is None:
            return False
        raise mine from exc


def translating() -> _Translating:
    """Context manager translating lower-layer errors at the library boundary."""
    return _Translating()
