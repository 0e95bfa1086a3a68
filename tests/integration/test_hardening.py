"""Hardening on the real host: an unprivileged user cannot block or poison xentool, and a
device verb racing ``destroy`` leaves nothing behind.

The unprivileged user is ``nobody`` (a child process that drops to uid/gid 65534); the
paths are xentool's real ones (``/run/xentool``, ``/var/cache/xentool/kernels``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import time
from pathlib import Path

import pytest

from .helpers import XENTOOL, GuestKit, run, xentool, xl

pytestmark = pytest.mark.xen

NOBODY = 65534
RUN_DIR = Path("/run/xentool")
KERNEL_CACHE = Path("/var/cache/xentool/kernels")
# Attach-vs-destroy rounds: a few in CI, more with XENTOOL_RACE_ROUNDS.
RACE_ROUNDS = int(os.environ.get("XENTOOL_RACE_ROUNDS", "1"))


def as_nobody(fn) -> int:
    """Run ``fn`` in a child as user nobody: 0 if it returned, else the errno it failed
    with."""
    pid = os.fork()
    if pid == 0:
        code = 100
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            fn()
            code = 0
        except OSError as e:
            code = e.errno or 101
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_nobody_cannot_touch_the_locks_and_create_is_not_blocked(
        kit: GuestKit, tmp_path: Path, guest_name: str) -> None:
    cfg = tmp_path / "g.cfg"
    cfg.write_text(kit.tiny_cfg(guest_name, wait=True))
    xentool("create", "-e", "-p", str(cfg))  # makes the run directory and its locks
    try:
        assert RUN_DIR.stat().st_mode & 0o777 == 0o700
        locks = sorted(RUN_DIR.glob("*.lock"))
        assert locks, "no lock file in /run/xentool after a create"
        for lock in locks:
            assert lock.stat().st_mode & 0o777 == 0o600, lock

            def grab(path: Path = lock) -> None:
                fcntl.flock(os.open(path, os.O_RDONLY), fcntl.LOCK_EX | fcntl.LOCK_NB)

            assert as_nobody(grab) == errno.EACCES, lock
        # nobody cannot plant a file (a lock of their own making) either
        assert as_nobody(lambda: os.open(RUN_DIR / "create.lock.x",
                                         os.O_CREAT | os.O_WRONLY, 0o644)) == errno.EACCES
        t0 = time.monotonic()
        xentool("destroy", guest_name)
        assert time.monotonic() - t0 < 60
    finally:
        xentool("destroy", guest_name, check=False)


def test_nobody_cannot_plant_a_kernel_in_the_cache(kit: GuestKit, tmp_path: Path,
                                                   guest_name: str) -> None:
    cfg = tmp_path / "g.cfg"
    # the busybox kit's kernel is compressed: its decompressed ELF goes into the cache
    cfg.write_text(kit.busybox_cfg(guest_name))
    xentool("create", "-e", "-p", str(cfg), timeout=600)
    try:
        st = KERNEL_CACHE.stat()
        assert st.st_uid == 0 and st.st_mode & 0o777 == 0o700
        entries = [p for p in KERNEL_CACHE.iterdir() if not p.name.startswith(".")]
        assert entries, "the compressed kernel left no cache entry"
        for entry in entries:
            assert entry.stat().st_uid == 0 and not entry.stat().st_mode & 0o022
            assert as_nobody(lambda e=entry: os.open(e, os.O_WRONLY)) == errno.EACCES
        assert as_nobody(lambda: os.open(KERNEL_CACHE / "planted",
                                         os.O_CREAT | os.O_WRONLY, 0o644)) == errno.EACCES
    finally:
        xentool("destroy", guest_name, check=False)


def _backends(domid: int) -> list[str]:
    out = []
    for kind in ("vbd", "vif"):
        r = run("xenstore-list", f"/local/domain/0/backend/{kind}", check=False)
        if str(domid) in r.stdout.split():
            out.append(f"{kind}/{domid}")
    return out


def test_attach_racing_destroy_leaves_no_device_of_a_dead_domain(
        kit: GuestKit, tmp_path: Path, guest_name: str) -> None:
    """A block-attach and a network-attach started together with a destroy: whoever wins,
    no backend of the dead domain stays, no loop device stays, no vif stays."""
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(4 << 20)
    cfg = tmp_path / "g.cfg"
    cfg.write_text(kit.tiny_cfg(guest_name, wait=True))
    loops_before = run("losetup", "-a").stdout
    outcomes: dict[str, int] = {}
    for attempt in range(RACE_ROUNDS):
        xentool("create", "-e", "-p", str(cfg))
        domid = int(xl("domid", guest_name).stdout)
        procs = [subprocess.Popen([*XENTOOL, *argv],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for argv in (["block-attach", guest_name, f"format=raw,vdev=xvdb,target={img}"],
                              ["network-attach", guest_name, "bridge=xenbr0"])]
        time.sleep(0.1 * attempt)  # vary who wins
        xentool("destroy", guest_name, check=False, timeout=300)
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert "Traceback" not in err, err
            key = "attached" if p.returncode == 0 else "refused"
            outcomes[key] = outcomes.get(key, 0) + 1
        deadline = time.monotonic() + 30
        while _backends(domid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _backends(domid), f"round {attempt}: {_backends(domid)} left behind"
        assert not run("ls", "/sys/class/net").stdout.count(f"vif{domid}."), attempt
    assert run("losetup", "-a").stdout == loops_before
    print(f"attach vs destroy over {RACE_ROUNDS} rounds: {outcomes}")
