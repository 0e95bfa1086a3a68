"""Helpers for the tests of the production profile (``contrib/testbed/run --production``).

There dom0 boots with systemd as PID 1 and Debian's own xen.service, and xentool is the
package installed with apt.  Every command here runs the installed ``/usr/bin/xentool`` with
``/`` as its working directory, so the checkout these tests are read from is never on its
import path; `xl` stays the oracle.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

CHECKOUT = Path(__file__).resolve().parents[2]
XENTOOL = "/usr/bin/xentool"
#: The host's one xentool daemon: commands, the monitor and the sched-controller.
DAEMON = "xentoold.service"
SOCKET = "xentoold.socket"
UNITS = (DAEMON, SOCKET)
POLICY = Path("/etc/xen/sched-policy.toml")

#: "systemd-analyze security" exposure per unit, printed at the end of the run (conftest).
SECURITY: dict[str, str] = {}


def run(*argv: str, check: bool = True, timeout: float = 120, cwd: str | Path = "/",
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout,
                       cwd=cwd, env=env, stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return r


def xentool(*args: str, check: bool = True, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
    return run(XENTOOL, *args, check=check, timeout=timeout)


def xl(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run("xl", *args, check=check, timeout=timeout)


def wait_for(pred: Callable[[], T], what: str, timeout: float = 120.0, step: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(step)


def show(unit: str, *props: str) -> dict[str, str]:
    """`systemctl show` of `props` (all of them if none)."""
    argv = ["systemctl", "show", unit] + ([f"--property={','.join(props)}"] if props else [])
    out = run(*argv).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def main_pid(unit: str) -> int:
    return int(show(unit, "MainPID")["MainPID"])


def journal_cursor() -> str:
    """The journal's current end (its last entry), for reading only what comes after it."""
    out = run("journalctl", "--show-cursor", "-n", "1", "-o", "cat").stdout
    for line in reversed(out.splitlines()):
        if line.startswith("-- cursor: "):
            return line.removeprefix("-- cursor: ").strip()
    raise AssertionError("journalctl printed no cursor")


def journal(unit: str, after: str | None = None, *, priority: str | None = None
            ) -> list[dict[str, str]]:
    """The unit's journal entries (this boot), those after the cursor `after` if given."""
    argv = ["journalctl", "-b", "-u", unit, "-o", "json", "--no-pager"]
    if after:
        argv.append(f"--after-cursor={after}")
    if priority:
        argv += ["-p", priority]
    entries = []
    for line in run(*argv).stdout.splitlines():
        e = json.loads(line)
        if isinstance(e.get("MESSAGE"), list):  # journald's form of a non-UTF-8 message
            e["MESSAGE"] = bytes(e["MESSAGE"]).decode(errors="replace")
        entries.append(e)
    return entries


def logged(unit: str, after: str | None, text: str) -> list[dict[str, str]]:
    return [e for e in journal(unit, after) if text in str(e.get("MESSAGE", ""))]


def domains() -> dict[str, dict]:
    """name -> `xentool list --json` row."""
    return {r["name"]: r for r in json.loads(xentool("list", "--json").stdout)}


def sched_params(name: str) -> tuple[int, int] | None:
    """(weight, cap) of a domain as xl reads them, under Pool-0's scheduler."""
    pools = xl("cpupool-list").stdout.splitlines()[1:]
    sched = next(row.split()[2] for row in pools if row.split()[0] == "Pool-0")
    r = xl(f"sched-{sched}", "-d", name, check=False)
    rows = r.stdout.splitlines()[1:] if r.returncode == 0 else []
    if not rows:
        return None
    cols = rows[0].split()
    return int(cols[2]), int(cols[3])


def processes_named(*words: str) -> list[int]:
    """Pids whose command line contains `words` as consecutive arguments."""
    want = "\0".join(words).encode()
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmdline = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if want in cmdline:
                pids.append(int(d.name))
    return pids
