"""xentool: a Xen toolstack in Python, a drop-in replacement for ``xl``.

The public API (everything in ``__all__``)::

    import xentool

    with xentool.Host() as host:
        dom = host.create("/etc/xen/guest.cfg", paused=True)
        dom.set_sched(weight=512)
        dom.unpause()

* :class:`Host` and :class:`Domain` (:mod:`xentool.host`): create, find, inspect and
  control domains, their devices, scheduler parameters and consoles;
* :class:`DomainConfig` and :func:`load_config` (:mod:`xentool.config`): xl.cfg files read
  exactly as xl reads them;
* the error tree (:mod:`xentool.errors`), rooted at :class:`XentoolError`.

Names are imported on first use (PEP 562), so ``import xentool`` costs nothing until a
name is used; the ``xentool`` command starts as fast as before.
"""

from __future__ import annotations

__version__ = "0.3.0"

__all__ = [
    "BuildError", "BusyError", "ConfigError", "DeviceError", "Domain", "DomainConfig",
    "DomainNotFound", "Host", "HostError", "NotFoundError", "UsageError", "XentoolError",
    "__version__", "load_config",
]

# name -> module that defines it
_EXPORTS = {
    "Host": "xentool.host", "Domain": "xentool.host",
    "DomainConfig": "xentool.config.model", "ConfigError": "xentool.config.errors",
    "load_config": "xentool.config",
    **dict.fromkeys((
        "XentoolError", "UsageError", "NotFoundError", "DomainNotFound", "BuildError",
        "DeviceError", "BusyError", "HostError"), "xentool.errors"),
}

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from xentool.config import load as load_config
    from xentool.config.errors import ConfigError
    from xentool.config.model import DomainConfig
    from xentool.errors import (
        BuildError,
        BusyError,
        DeviceError,
        DomainNotFound,
        HostError,
        NotFoundError,
        UsageError,
        XentoolError,
    )
    from xentool.host import Domain, Host


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), "load" if name == "load_config" else name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
