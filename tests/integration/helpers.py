"""Helpers for tests that run inside the testbed dom0 against the real hypervisor.

`xl` is the oracle: a test drives xentool and checks the result with xl (or the reverse).
Every domain a test creates is destroyed afterwards, even when the test fails.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CONSOLE_LOG_DIR = Path("/var/log/xen/console")


def run(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return r


def xl(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run("xl", *args, check=check, timeout=timeout)


def xentool(*args: str, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "xentool", *args, check=check, timeout=timeout)


def domain_names() -> set[str]:
    out = xl("list").stdout.splitlines()[1:]
    return {line.split()[0] for line in out if line.strip()}


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
