"""Making room for a new guest by ballooning dom0 down, as xl 4.17's ``freemem`` does
with ``autoballoon`` on, and the global lock xl holds meanwhile (xl.conf ``lockfile``).

xl (tools/xl/xl_vmcontrol.c) takes an fcntl write lock on the lock file before it balloons
and releases it once the domain is created; it computes the memory the guest needs as
libxl does (target + 1 MiB for a PV guest, rounded up to 2 MiB), and while the host's free
memory (free + scrub pages) is short it lowers dom0's ``memory/target`` by the shortfall
and waits (at most 10 s without progress) for dom0's balloon driver to get there, giving up
after 30 s in all.  The same lock and the same steps here make xl and xentool take turns.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from xentool.errors import XentoolError
from xentool.logs import get_logger

if TYPE_CHECKING:
    from domain_builder.xenctrl import XenCtrl
    from xenstore.client import Store

log = get_logger(__name__)

PV_EXTRA_MEMORY_KIB = 1024  # LIBXL_PV_EXTRA_MEMORY
HVM_EXTRA_MEMORY_KIB = 2048  # LIBXL_HVM_EXTRA_MEMORY
MIN_DOM0_MEM_KIB = 128 * 1024  # LIBXL_MIN_DOM0_MEM
CREDIT_SECONDS = 30.0  # freemem's overall budget
WAIT_SECONDS = 10  # per libxl_wait_for_memory_target call
_DOM0_UUID = "00000000-0000-0000-0000-000000000000"


class MemoryShortage(XentoolError):
    """The host could not be given enough free memory (xl: ERROR_FAIL, exit 3)."""

    exit_code = 3


def need_memkb(target_memkb: int, *, hvm_pool_kb: int | None = None) -> int:
    """What libxl reserves for a PV guest of ``target_memkb``: 1 MiB more, in 2 MiB steps.
    ``hvm_pool_kb``: a PVH guest with that paging pool, which libxl counts with 2 MiB
    more (LIBXL_HVM_EXTRA_MEMORY)."""
    if hvm_pool_kb is None:
        need = target_memkb + PV_EXTRA_MEMORY_KIB
    else:
        need = target_memkb + hvm_pool_kb + HVM_EXTRA_MEMORY_KIB
    return -(-need // 2048) * 2048


def free_memkb(xc: XenCtrl) -> int:
    """libxl_get_free_memory: free and still-to-be-scrubbed pages."""
    p = xc.physinfo()
    return (p.free_pages + p.scrub_pages) * 4


def lower_dom0_target(xc: XenCtrl, xs: Store, delta_kib: int) -> int:
    """libxl_set_memory_target(0, delta, relative, no enforce): dom0's new target."""
    with xs.transaction() as t:
        cur = t.get("/local/domain/0/memory/target")
        static_max = t.get("/local/domain/0/memory/static-max")
        if cur is None or static_max is None:
            raise MemoryShortage("cannot read dom0's memory target from xenstore")
        new = max(0, int(cur) + delta_kib)
        if new > int(static_max):
            raise MemoryShortage("memory_dynamic_max must be less than or equal to "
                                 "memory_static_max")
        if new < MIN_DOM0_MEM_KIB:
            raise MemoryShortage(f"New target {new} for dom0 is below the minimum threshold")
        t.write("/local/domain/0/memory/target", str(new))
        t.write(f"/vm/{_DOM0_UUID}/memory", str(new // 1024))
    return new


def wait_for_dom0_target(xc: XenCtrl, target_kib: int, wait_secs: int,
                         sleep: Callable[[float], None] = time.sleep) -> bool:
    """libxl_wait_for_memory_target: True once dom0 is at or under its target; gives up
    after ``wait_secs`` without progress, or at once if dom0 grows."""
    prev = None
    while True:
        sleep(2)
        info = xc.domain_info(0)
        if info is None:
            return False
        cur = info.current_memkb + info.outstanding_memkb
        if prev is not None and cur > prev:
            return False
        if prev is not None and cur == prev:
            wait_secs -= 2
        prev = cur
        if cur <= target_kib:
            return True
        if wait_secs <= 0:
            return False


def freemem(xc: XenCtrl, xs: Store, need_kib: int, *,
            sleep: Callable[[float], None] = time.sleep,
            clock: Callable[[], float] = time.monotonic) -> None:
    """Balloon dom0 down until the host has ``need_kib`` free; MemoryShortage if it cannot
    (with xl's message)."""
    credit = CREDIT_SECONDS
    while True:
        free = free_memkb(xc)
        if free >= need_kib:
            return
        if credit <= 0:
            break
        try:
            target = lower_dom0_target(xc, xs, free - need_kib)
        except MemoryShortage as e:
            log.error("%s", e)
            break
        log.info("ballooning dom0 to %d KiB to free %d KiB", target, need_kib - free)
        start = clock()
        if not wait_for_dom0_target(xc, target, WAIT_SECONDS, sleep):
            break
        credit -= clock() - start
    raise MemoryShortage("failed to free memory for the domain")


@contextmanager
def global_lock(path: str) -> Iterator[None]:
    """xl's ``acquire_lock``/``release_lock``: an fcntl write lock on the whole of ``path``
    (created write-only for its owner), waited for as long as it takes."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o200)
    except OSError as e:
        raise XentoolError(f"cannot open the lockfile {path} errno={e.errno}") from None
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)  # F_SETLKW, retried on EINTR by Python
        except OSError as e:
            raise XentoolError(f"cannot acquire lock {path} errno={e.errno}") from None
        yield
    finally:
        os.close(fd)  # closing drops the fcntl lock
