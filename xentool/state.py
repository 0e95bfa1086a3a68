"""Where xentool keeps its run state, records and caches.

One module, so that the CLI, the daemons and tests agree on every path, and the libxl
files shared with ``xl`` are named in one place.  Each directory can be moved with an
environment variable (tests, unusual hosts).  Nothing here creates a directory on its
own: the callers do, with the mode their contents need (:func:`private_dir` for the run
directory, whose locks only root may touch).

=========================  ===========================  =====================================
what                       default                      variable
=========================  ===========================  =====================================
locks, journal records     ``/run/xentool``             ``XENTOOL_RUN_DIR``
domain records (on_*)      ``/var/lib/xentool``         ``XENTOOL_STATE_DIR``
decompressed kernels       ``/var/cache/xentool/...``   ``XENTOOL_KERNEL_CACHE`` (empty: off)
built configs              ``/var/cache/xentool/...``   ``XENTOOL_CONFIG_CACHE`` (empty: off)
libxl's domain userdata    ``/var/lib/xen``             (fixed: xl reads it there)
xl's global config         ``/etc/xen/xl.conf``         ``XENTOOL_XL_CONF``
=========================  ===========================  =====================================

Both caches must be private to the user (root on dom0), or they are not used.  The kernel
cache is kept under ``XENTOOL_KERNEL_CACHE_MAX_BYTES`` bytes (default 1 GiB; least recently
used kernels are evicted first): :mod:`domain_builder.image` reads that variable itself.
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
#: xl's global configuration (xl.conf(5)), shared with xl.
XL_CONF = "/etc/xen/xl.conf"
XL_CONF_ENV = "XENTOOL_XL_CONF"
#: The lock xl takes around a create when it may balloon dom0 (xl.conf ``lockfile``).
XL_LOCK_FILE = "/var/lock/xl"
#: Where libxl keeps per-domain files (``userdata-d.<domid>.<uuid>.<key>``).
LIBXL_USERDATA_DIR = "/var/lib/xen"


def run_dir() -> Path:
    """Locks and crash records: gone at reboot, like the domains they concern."""
    from pathlib import Path

    return Path(os.environ.get(RUN_DIR_ENV) or RUN_DIR)


def private_dir(path: Path) -> Path:
    """Make ``path`` a directory only we can enter, and return it.

    A missing one is created mode 0700 (with any missing parent, also 0700); an existing one
    of ours is set to 0700 if its mode is anything else.  One that is a symbolic link, not
    a directory, or owned by another user is refused with a ``XentoolError`` naming it:
    whoever owns it could replace or ``flock`` what we keep there.
    """
    import stat

    from xentool.errors import XentoolError

    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        _mkdirs_private(path)
        fd = os.open(path, flags)
    except OSError as e:
        try:
            st = os.lstat(path)
        except OSError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise XentoolError(f"{path} is a symbolic link: refusing to keep xentool's "
                               f"locks and records there") from None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise XentoolError(f"{path} is not a directory") from None
        raise XentoolError(f"{path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise XentoolError(f"{path} is owned by uid {st.st_uid}, not by uid "
                               f"{os.geteuid()}: refusing to keep xentool's locks and "
                               f"records there")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


def _mkdirs_private(path: Path) -> None:
    """``mkdir -p -m 0700``: every directory it creates is 0700, not just the last."""
    if not os.path.lexists(path.parent) and path.parent != path:
        _mkdirs_private(path.parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass  # made meanwhile by a parallel xentool: private_dir checks what it is


def journal_dir() -> Path:
    """Where journaled operations keep their crash records."""
    return run_dir() / "journal"


def journal_dir_name() -> str:
    """:func:`journal_dir` as a string, for the read verbs that must not import pathlib."""
    return os.path.join(os.environ.get(RUN_DIR_ENV) or RUN_DIR, "journal")


def shell_dir_name() -> str:
    """Where the domain shells' files are (:mod:`xentool.shells`; a string: ``list`` must
    not import pathlib for it)."""
    return os.path.join(os.environ.get(RUN_DIR_ENV) or RUN_DIR, "shells")


def shell_domids() -> frozenset[int]:
    """The domids of the domain shells ready now: what ``list`` leaves out."""
    return frozenset(int(stem) for stem in _shell_files("json")
                     if stem.isascii() and stem.isdigit())


def shells_making() -> frozenset[str]:
    """The handles (hex) of the domain shells being made: their domains exist but have no
    record yet, and ``list`` leaves them out too."""
    return _shell_files("making")


def _shell_files(ext: str) -> frozenset[str]:
    try:
        names = os.listdir(shell_dir_name())
    except OSError:
        return frozenset()
    return frozenset(stem for stem, _, e in (n.partition(".") for n in names) if e == ext)


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


def xl_conf_path() -> str:
    """xl.conf: ``/etc/xen/xl.conf`` unless ``XENTOOL_XL_CONF`` names another file."""
    return os.environ.get(XL_CONF_ENV) or XL_CONF


def libxl_userdata_path(domid: int, uuid: str, key: str,
                        root: str = LIBXL_USERDATA_DIR) -> str:
    """libxl's ``userdata-d.<domid>.<uuid>.<key>`` (libxl_internal.c, userdata_path)."""
    return os.path.join(root, f"userdata-d.{domid}.{uuid}.{key}")


def libxl_userdata_pattern(domid: int, uuid: str, root: str = LIBXL_USERDATA_DIR) -> str:
    """A glob matching every userdata file of one domain."""
    return libxl_userdata_path(domid, uuid, "*", root)
