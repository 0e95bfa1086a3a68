"""Where xentool keeps its run state, records and caches.

One module, so that the CLI, the daemons and tests agree on every path, and the libxl
files shared with ``xl`` are named in one place.  Each directory can be moved with an
environment variable (tests, unusual hosts).  Nothing here creates a directory: the
callers do, with the mode their contents need.

=========================  ===========================  =====================================
what                       default                      variable
=========================  ===========================  =====================================
locks, journal records     ``/run/xentool``             ``XENTOOL_RUN_DIR``
domain records (on_*)      ``/var/lib/xentool``         ``XENTOOL_STATE_DIR``
decompressed kernels       ``/var/cache/xentool/...``   ``XENTOOL_KERNEL_CACHE`` (empty: off)
built configs              ``/var/cache/xentool/...``   ``XENTOOL_CONFIG_CACHE`` (empty: off)
libxl's domain userdata    ``/var/lib/xen``             (fixed: xl reads it there)
=========================  ===========================  =====================================
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from pathlib import Path

RUN_DIR = "/run/xentool"
RUN_DIR_ENV = "XENTOOL_RUN_DIR"
STATE_DIR = "/var/lib/xentool"
STATE_DIR_ENV = "XENTOOL_STATE_DIR"
KERNEL_CACHE = "/var/cache/xentool/kernels"
KERNEL_CACHE_ENV = "XENTOOL_KERNEL_CACHE"
CONFIG_CACHE = "/var/cache/xentool/configs"
CONFIG_CACHE_ENV = "XENTOOL_CONFIG_CACHE"
#: Where libxl keeps per-domain files (``userdata-d.<domid>.<uuid>.<key>``).
LIBXL_USERDATA_DIR = "/var/lib/xen"


def run_dir() -> Path:
    """Locks and crash records: gone at reboot, like the domains they concern."""
    from pathlib import Path

    return Path(os.environ.get(RUN_DIR_ENV) or RUN_DIR)


def journal_dir() -> Path:
    """Where journaled operations keep their crash records."""
    return run_dir() / "journal"


def state_dir() -> Path:
    from pathlib import Path

    return Path(os.environ.get(STATE_DIR_ENV) or STATE_DIR)


def records_dir() -> Path:
    """Domain records (how a domain was created, its on_* actions)."""
    return state_dir() / "domains"


def kernel_cache_dir() -> str | None:
    """The decompressed-kernel cache, or None when turned off."""
    return os.environ.get(KERNEL_CACHE_ENV, KERNEL_CACHE) or None


def config_cache_dir() -> str | None:
    """The built-config cache, or None when turned off."""
    return os.environ.get(CONFIG_CACHE_ENV, CONFIG_CACHE) or None


def libxl_userdata_path(domid: int, uuid: str, key: str,
                        root: str = LIBXL_USERDATA_DIR) -> str:
    """libxl's ``userdata-d.<domid>.<uuid>.<key>`` (libxl_internal.c, userdata_path)."""
    return os.path.join(root, f"userdata-d.{domid}.{uuid}.{key}")


def libxl_userdata_pattern(domid: int, uuid: str, root: str = LIBXL_USERDATA_DIR) -> str:
    """A glob matching every userdata file of one domain."""
    return libxl_userdata_path(domid, uuid, "*", root)
