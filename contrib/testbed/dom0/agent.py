"""Job agent inside the testbed dom0 (stdlib only: it runs on Debian's python3).

The host and this agent share a spool directory over virtio-9p (mounted without caching, so
every write is visible on the other side at once). Protocol, one job at a time, in id order:

  host:  jobs/<id>.json        {"argv": [...], "cwd": "...", "env": {...}}  (written atomically)
  agent: out/<id>.stdout, out/<id>.stderr   the job's output, streamed
  host:  cancel/<id>           asks the agent to kill the job's process group
  host:  alive/<id>            touched every second while the host waits; a job whose host
                               went away (no touch for ORPHAN_AFTER s) is skipped or killed
  agent: done/<id>.rc          the exit status (written atomically, last)
  agent: beat                  rewritten every BEAT s by a thread of its own, so the host can
                               tell a frozen dom0 (or share) from a job that is merely slow

Serialising jobs keeps tests that compare xentool against xl from seeing each other's domains.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

POLL = 0.05
ORPHAN_AFTER = 30.0
BEAT = 2.0


class Heartbeat:
    """Tracks the host's alive/<id> file by its changes (host and dom0 clocks differ)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last = self._mtime()
        self.changed = time.monotonic()

    def _mtime(self) -> int | None:
        try:
            return self.path.stat().st_mtime_ns
        except OSError:
            return None

    def orphaned(self) -> bool:
        now = self._mtime()
        if now != self.last:
            self.last, self.changed = now, time.monotonic()
        return time.monotonic() - self.changed > ORPHAN_AFTER


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.rename(tmp, path)


def beat_forever(path: Path) -> None:
    n = 0
    while True:
        n += 1
        path.write_text(f"{n}\n")
        time.sleep(BEAT)


def run_job(spool: Path, job_file: Path) -> None:
    job_id = job_file.stem
    job = json.loads(job_file.read_text())
    job_file.unlink()
    env = dict(os.environ)
    env.update(job.get("env", {}))
    out = spool / "out"
    rc_file = spool / "done" / f"{job_id}.rc"
    if not (spool / "alive" / job_id).exists():
        return  # its host gave up while it was queued
    fresh_checkout()
    with open(out / f"{job_id}.stdout", "wb", buffering=0) as so, \
            open(out / f"{job_id}.stderr", "wb", buffering=0) as se:
        try:
            proc = subprocess.Popen(job["argv"], cwd=job.get("cwd") or "/", env=env,
                                    stdin=subprocess.DEVNULL, stdout=so, stderr=se,
                                    start_new_session=True)
        except OSError as exc:
            se.write(f"testbed: cannot run {job['argv'][0]!r}: {exc}\n".encode())
            write_atomic(rc_file, "127")
            return
        cancel = spool / "cancel" / job_id
        heartbeat = Heartbeat(spool / "alive" / job_id)
        while proc.poll() is None:
            if cancel.exists() or heartbeat.orphaned():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(POLL)
    # Leave no stray children of the job behind for the next one.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    rc = proc.returncode
    os.sync()  # what the job wrote to the cached checkout reaches the host before it reads
    write_atomic(rc_file, str(128 - rc if rc < 0 else rc))


def fresh_checkout() -> None:
    """Forget what the kernel cached of the checkout (mounted with cache=loose, which never
    revalidates): the host may have changed it since the last job."""
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        print(f"XENTOOL-TESTBED: cannot drop the caches: {exc}", flush=True)


def main() -> int:
    spool = Path(sys.argv[1])
    for sub in ("jobs", "out", "cancel", "done", "alive"):
        (spool / sub).mkdir(exist_ok=True)
    write_atomic(spool / "ready", json.dumps({"pid": os.getpid(), "time": time.time()}))
    threading.Thread(target=beat_forever, args=(spool / "beat",), daemon=True).start()
    print("XENTOOL-TESTBED: agent ready", flush=True)
    while True:
        jobs = sorted(p for p in (spool / "jobs").iterdir() if p.suffix == ".json")
        if not jobs:
            time.sleep(POLL)
            continue
        try:
            run_job(spool, jobs[0])
        except Exception as exc:
            print(f"XENTOOL-TESTBED: job {jobs[0].name} failed in the agent: {exc!r}", flush=True)
            write_atomic(spool / "done" / f"{jobs[0].stem}.rc", "125")
            jobs[0].unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
