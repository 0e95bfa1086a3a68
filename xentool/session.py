"""Domain name <-> id resolution, the way xl does it.

xl's rule (``libxl_domain_qualifier_to_domid``): a qualifier made only of digits is a domid;
anything else is a name, looked up by reading ``/local/domain/<id>/name`` of every domain
the hypervisor lists (XenStore may hold stale entries, the hypervisor is the truth).
Unlike xl we also check that a numeric domid exists, so every verb fails the same way:
``DomainNotFound`` -> "domain 'x' does not exist".

The functions take small protocols instead of concrete classes so the logic is tested with
fakes; in production ``xc`` is a ``domain_builder.xenctrl.XenCtrl`` and ``xs`` a
``xenstore.client.Store``.
"""

from __future__ import annotations

from xenstore.paths import domain_path
from xentool.errors import DomainNotFound, XentoolError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Protocol

    from domain_builder.xenctrl import DomainInfo, XenCtrl
    from domain_builder.xsread import XenStoreReader
    from xenstore.client import Store

    class _Lister(Protocol):
        def domains(self) -> list[DomainInfo]: ...

        def domain_info(self, domid: int) -> DomainInfo | None: ...

    class _Reader(Protocol):
        def get(self, path: str, default: str | None = None) -> str | None: ...


def name_path(domid: int) -> str:
    return f"{domain_path(domid)}/name"


def is_domid(qualifier: str) -> bool:
    """xl treats a non-empty all-ASCII-digit string as a domid."""
    return qualifier != "" and all("0" <= c <= "9" for c in qualifier)


def parse_domid(text: str) -> int:
    """A domid given where only an id makes sense (``domname``)."""
    if not is_domid(text) or int(text) >= 0x7FF0:  # DOMID_FIRST_RESERVED
        raise XentoolError(f"invalid domain id '{text}'")
    return int(text)


def domid_to_name(xs: _Reader, domid: int) -> str | None:
    return xs.get(name_path(domid))


def names_of(xs: _Reader, domids: Iterable[int]) -> dict[int, str | None]:
    return {d: xs.get(name_path(d)) for d in domids}


def name_to_domid(xc: _Lister, xs: _Reader, name: str) -> int | None:
    """The first (lowest) live domid whose XenStore name is ``name``."""
    for info in xc.domains():
        if xs.get(name_path(info.domid)) == name:
            return info.domid
    return None


def resolve(xc: _Lister, xs: _Reader, qualifier: str) -> int:
    """A domain name or id to a live domid; ``DomainNotFound`` otherwise."""
    if is_domid(qualifier):
        domid = int(qualifier)
        if domid < 0x7FF0 and xc.domain_info(domid) is not None:
            return domid
        raise DomainNotFound(qualifier)
    found = name_to_domid(xc, xs, qualifier)
    if found is None:
        raise DomainNotFound(qualifier)
    return found


class Session:
    """The handles a verb needs, opened on first use and closed together.

    ``with Session() as s: s.xc.pause(s.resolve("guest"))``
    """

    def __init__(self, *, one_thread: bool = False) -> None:
        #: Used by one thread of a process that forks (xentoold's monitor): see XenCtrl.
        self.one_thread = one_thread
        self._xc: XenCtrl | None = None
        self._xs: Store | None = None
        self._reader: XenStoreReader | None = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        xc, self._xc = self._xc, None
        xs, self._xs = self._xs, None
        reader, self._reader = self._reader, None
        try:
            if xs is not None:
                xs.close()
        finally:
            try:
                if reader is not None:
                    reader.close()
            finally:
                if xc is not None:
                    xc.close()

    @property
    def xc(self) -> XenCtrl:  # imported lazily to keep start-up cheap
        if self._xc is None:
            from domain_builder.xenctrl import XenCtrl

            xc = XenCtrl(one_thread=True) if self.one_thread else XenCtrl()
            xc.open()
            self._xc = xc
        return self._xc

    @property
    def reader(self) -> XenStoreReader:  # cheap reads only
        if self._reader is None:
            from domain_builder.xsread import XenStoreReader

            reader = XenStoreReader()
            reader.open()
            self._reader = reader
        return self._reader

    @property
    def xs(self) -> Store:  # writes, transactions, watches
        if self._xs is None:
            from xenstore.client import Store

            self._xs = Store.connect()
        return self._xs

    def reopen_xs(self) -> Store:
        """Close the XenStore connection (if one is open) and open a new one: after
        xenstored restarted or the connection broke (the monitor's reconnect)."""
        xs, self._xs = self._xs, None
        if xs is not None:
            try:
                xs.close()
            except Exception:  # a broken connection may fail to close: it is dropped anyway
                pass
        return self.xs

    def resolve(self, qualifier: str) -> int:
        return resolve(self.xc, self.reader, qualifier)

    def name(self, domid: int) -> str | None:
        return domid_to_name(self.reader, domid)

    def names(self, domids: Iterable[int]) -> dict[int, str | None]:
        return names_of(self.reader, domids)
