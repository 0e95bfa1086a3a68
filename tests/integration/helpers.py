"""Helpers for tests that run inside the testbed dom0 against the real hypervisor.

`xl` is the oracle: a test drives xentool and checks the result with xl (or the reverse).
Every domain a test creates is destroyed afterwards, even when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import pty
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

CONSOLE_LOG_DIR = Path("/var/log/xen/console")
ROOT = Path(__file__).resolve().parents[2]
#: How the tests run xentool: as the installed entry point does (bin/xentool: isolated and
#: without site until a command runs in-process), not ``python3 -m xentool``, whose runpy
#: and site cost most of a second per command under emulation.
XENTOOL = (sys.executable, "-IS", str(ROOT / "bin" / "xentool"))

# -- how much of a fault walk one run takes ------------------------------------------------

FULL_FAULT_WALK = os.environ.get("XENTOOL_FULL_FAULT_WALK", "") not in ("", "0")
FAULT_STRIDE = max(1, int(os.environ.get("XENTOOL_FAULT_STRIDE", "16")))
# Chosen per run so that successive CI runs walk every step between them; printed in the
# summary (conftest.py), and XENTOOL_FAULT_OFFSET=N takes the same points again.
FAULT_OFFSET = int(os.environ.get("XENTOOL_FAULT_OFFSET", str(random.randrange(FAULT_STRIDE))))

_T = TypeVar("_T")


def fault_sample(points: Sequence[_T]) -> list[_T]:
    """The points of a fault walk this run takes: all with ``XENTOOL_FULL_FAULT_WALK=1``;
    otherwise the first, the last, and every ``XENTOOL_FAULT_STRIDE``-th (16) from the
    run's offset.  One CI run costs a sixteenth of the walk, and the offset moves from run
    to run, so every step's rollback is still walked by CI, over sixteen runs rather than
    one."""
    if FULL_FAULT_WALK:
        return list(points)
    keep = {0, len(points) - 1} | set(range(FAULT_OFFSET % FAULT_STRIDE, len(points),
                                            FAULT_STRIDE))
    return [p for i, p in enumerate(points) if i in keep]


def run(*argv: str, check: bool = True, timeout: float = 120,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return r


def domid_of(name: str) -> int | None:
    """The id of the live (not dying) domain called ``name``, or None: ``xl domid`` without
    a process start, which costs most of a second under emulation."""
    from domain_builder.xenctrl import XenCtrl
    from xenstore.client import Store

    with XenCtrl() as xc, contextlib.closing(Store.connect()) as store:
        for d in xc.domains():
            if not d.dying and store.get(f"/local/domain/{d.domid}/name") == name:
                return d.domid
    return None


def xl(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run("xl", *args, check=check, timeout=timeout)


def xentool(*args: str, check: bool = True, timeout: float = 120,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run(*XENTOOL, *args, check=check, timeout=timeout, env=env)


@contextlib.contextmanager
def private_cpupool(name: str, sched: str, tmp: Path, cpu: int = 1) -> Iterator[str]:
    """A cpupool `name` under `sched` owning pCPU `cpu`, handed back to Pool-0 afterwards.
    Domains put into it must be destroyed before the block ends."""
    cfg = tmp / f"{name}.cfg"
    cfg.write_text(f'name = "{name}"\nsched = "{sched}"\ncpus = ["{cpu}"]\n')
    xl("cpupool-cpu-remove", "Pool-0", str(cpu))
    try:
        xl("cpupool-create", str(cfg))
        try:
            yield name
        finally:
            wait_cpupool_empty(name)
            xl("cpupool-destroy", name, check=False)
    finally:
        xl("cpupool-cpu-add", "Pool-0", str(cpu), check=False)


def wait_cpupool_empty(name: str, timeout: float = 60.0) -> None:
    """Wait until the domains destroyed in pool ``name`` are gone from it."""
    # A destroyed domain stays in its pool until Xen has freed it: destroying the pool
    # before that fails, and would leave its pCPU out of Pool-0 for every later test.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = xl("cpupool-list", name, check=False).stdout.splitlines()[1:]
        if not rows or rows[0].split()[-1] == "0":
            return
        time.sleep(0.2)
    print(f"cpupool {name} still has domains after {timeout:.0f}s:\n{xl('list').stdout}")


#: How ``xl list`` names a domain shell (xentool.shells.NAME_PREFIX).
SHELL_PREFIX = "xentool-shell-"


def domain_names() -> set[str]:
    """The names ``xl list`` shows, but the domain shells a xentoold keeps ready (which
    come and go as creates take them; test_shells.py checks that none is left)."""
    out = xl("list").stdout.splitlines()[1:]
    return {line.split()[0] for line in out
            if line.strip() and not line.startswith(SHELL_PREFIX)}


@dataclass(frozen=True)
class GuestKit:
    """The testbed's guest images (see contrib/testbed/guest/)."""

    dir: Path

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    @property
    def tiny(self) -> Path:
        return self.dir / "tiny.elf"

    @property
    def tiny_wait(self) -> Path:
        return self.dir / "tiny-wait.elf"

    def busybox_cfg(self, name: str, *, memory: int = 128, vcpus: int = 1,
                    mode: str = "wait", extra: str = "", more: str = "") -> str:
        """xl.cfg text of the busybox guest (Debian kernel + busybox initrd)."""
        cmdline = " ".join(filter(None, ("console=hvc0", f"xentool.mode={mode}", extra)))
        return (f'name = "{name}"\ntype = "pv"\nkernel = "{self.kernel}"\n'
                f'ramdisk = "{self.initrd}"\nextra = "{cmdline}"\n'
                f"memory = {memory}\nvcpus = {vcpus}\n{more}")

    def tiny_cfg(self, name: str, *, wait: bool = False, memory: int = 32, more: str = "") -> str:
        kernel = self.tiny_wait if wait else self.tiny
        return f'name = "{name}"\ntype = "pv"\nkernel = "{kernel}"\nmemory = {memory}\n{more}'


def console_log(name: str) -> Path:
    return CONSOLE_LOG_DIR / f"guest-{name}.log"


def wait_for_console(name: str, pattern: str, timeout: float = 120.0) -> str:
    """Wait until the guest's console log (written by xenconsoled) matches; return the log."""
    deadline = time.monotonic() + timeout
    rx = re.compile(pattern)
    text = ""
    while time.monotonic() < deadline:
        try:
            text = console_log(name).read_text(errors="replace")
        except FileNotFoundError:
            pass
        if rx.search(text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"no {pattern!r} on the console of {name} after {timeout}s; "
                         f"log so far:\n{text[-3000:]}")


def _status_of(pid: int, timeout: float = 5.0) -> str:
    """How child ``pid`` ended, for a message (it closed its terminal: it is ending)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return f"exit status {os.waitstatus_to_exitcode(status)}"
        time.sleep(0.05)
    return "still running"


def console_session(*args: str, pattern: str, timeout: float = 240.0,
                    program: Sequence[str] = XENTOOL,
                    ) -> tuple[str, int]:
    """Run ``xentool ARGS`` on a pseudo-terminal like an operator would (``console NAME``,
    ``create -c CFG``), read what it shows until ``pattern`` appears, then leave with ^] as
    a person would.  Returns the text seen and the exit status.  ``program`` is the
    xentool command (the installed one: ``("/usr/bin/xentool",)``)."""
    argv = [*program, *args]
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    what = f"`xentool {' '.join(args)}`"
    seen = b""

    def shown() -> str:
        return seen[-3000:].decode(errors="replace")

    rx = re.compile(pattern.encode())
    deadline = time.monotonic() + timeout
    try:
        while not rx.search(seen):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"no {pattern!r} through {what} after {timeout}s; "
                                     f"seen:\n{shown()}")
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the client closed the terminal (it exited)
                chunk = b""
            if not chunk:
                raise AssertionError(f"{what} ended ({_status_of(pid)}) before {pattern!r}; "
                                     f"seen:\n{shown()}")
            seen += chunk
        os.write(fd, b"\x1d")  # ^], xenconsole's escape
        end = time.monotonic() + 30
        while time.monotonic() < end:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return seen.decode(errors="replace"), os.waitstatus_to_exitcode(status)
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    os.read(fd, 65536)
                except OSError:
                    pass
        raise AssertionError(f"{what} did not end after ^]")
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


class Xentoold:
    """A xentoold on a private socket in a temporary directory (never the default one, so
    nothing outside the tests is routed through it); ``env(via=...)`` is the environment
    of a command that goes through it or runs in-process."""

    #: Without a monitor or sched-controller of its own: the suites that need one start
    #: it themselves (test_daemon.py's services tests start a daemon that runs them).
    ARGS: tuple[str, ...] = ("--no-monitor", "--no-sched")

    def __init__(self, *args: str, env: Mapping[str, str] | None = None) -> None:
        import tempfile

        self.dir = Path(tempfile.mkdtemp(prefix="xentoold-test-"))
        self.sock = str(self.dir / "xentoold.sock")
        self.log = self.dir / "daemon.log"
        self.args = args or self.ARGS
        self.daemon_env = {k: v for k, v in (os.environ if env is None else env).items()
                           if k != "XENTOOL_DAEMON_SOCKET"}
        self.start()

    def start(self) -> None:
        """Start it (again, after it was killed: same socket, same log)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock)  # a killed one's: wait for the new one's
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "xentool", "-v", "daemon", "--foreground",
                 "--socket", self.sock, *self.args], stdin=subprocess.DEVNULL, stdout=log,
                stderr=log, env=self.daemon_env)
        deadline = time.monotonic() + 120
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"xentoold did not start:\n{self.stop()}")
            time.sleep(0.1)

    def stop(self) -> str:
        """Stop it; its log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        text = self.log.read_text()
        for f in self.dir.iterdir():
            f.unlink()
        self.dir.rmdir()
        return text

    def env(self, via: bool, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("XENTOOL_DAEMON_SOCKET", "XENTOOL_NO_DAEMON")}
        env.update({"XENTOOL_DAEMON_SOCKET": self.sock} if via else {"XENTOOL_NO_DAEMON": "1"})
        return {**env, **extra}


class TcpPeer:
    """dom0's end of the stateful guest's TCP connection: an address on xenbr0 and a
    listener that accepts one connection and keeps every line the guest sends on it
    (``XENTOOL-TCP n``, one a second).  A guest that kept the connection across a save and
    restore or a migration goes on sending on the *same* connection, from where it was."""

    HOST, GUEST, PREFIX = "10.201.0.1", "10.201.0.2", 24
    LINE = re.compile(rb"XENTOOL-TCP (\d+)\n")

    def __init__(self) -> None:
        # check=False: the address may be left from an interrupted run.
        subprocess.run(["ip", "addr", "add", f"{self.HOST}/{self.PREFIX}", "dev", "xenbr0"],
                       capture_output=True, check=False)
        self.server = socket.create_server((self.HOST, 0))
        self.port = self.server.getsockname()[1]
        self.accepted = 0
        self.numbers: list[int] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
            buf = b""
            with conn:
                while chunk := conn.recv(4096):
                    buf += chunk
                    with self.lock:
                        self.numbers += [int(n) for n in self.LINE.findall(buf)]
                    buf = buf[buf.rfind(b"\n") + 1:]

    @property
    def cfg(self) -> tuple[str, str]:
        """(cmdline, xl.cfg lines) that give the guest a vif and this peer."""
        return (f"xentool.peer={self.HOST}:{self.port} "
                f"xentool.ip={self.GUEST}/{self.PREFIX}", "vif = [ 'bridge=xenbr0' ]\n")

    def last(self, timeout: float = 120) -> int:
        """The last number received, once there is one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.numbers:
                    return self.numbers[-1]
            time.sleep(0.5)
        raise AssertionError("the guest's TCP connection sent nothing")

    def assert_holds(self, after: int, timeout: float = 180) -> None:
        """Numbers past ``after`` arrive, in order and without a gap, on the connection
        accepted first (none other was opened)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.last() <= after + 2:
            time.sleep(1)
        with self.lock:
            numbers, accepted = list(self.numbers), self.accepted
        assert accepted == 1, f"the guest connected {accepted} times"
        assert numbers[-1] > after + 2, f"nothing on the connection past {after}"
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), \
            f"the connection's numbers jumped: {numbers}"

    def close(self) -> None:
        self.server.close()
        subprocess.run(["ip", "addr", "del", f"{self.HOST}/{self.PREFIX}", "dev", "xenbr0"],
                       capture_output=True, check=False)
