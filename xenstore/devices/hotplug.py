"""Running /etc/xen/scripts/* the way libxl does (libxl_linux.c, libxl_device.c).

Arguments: block scripts get ``add``/``remove``; vif scripts get ``online``/``offline``
and ``type_if=vif``. Environment: the caller's, plus ``script``, ``XENBUS_TYPE``,
``XENBUS_PATH`` (relative to /local/domain/0, which is how the scripts' xenstore-read
resolves it), ``XENBUS_BASE_PATH`` and, for vifs, ``netdev`` and ``vif``. stdin is
/dev/null. libxl gives a script 40 s; we kill its whole process group after the timeout
(scripts fork losetup, brctl, ip) and report what it printed and what it wrote to
``hotplug-error``.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import signal
import subprocess
from dataclasses import dataclass

from xenstore import paths

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import IO

log = logging.getLogger(__name__)

HOTPLUG_TIMEOUT = 40.0  # LIBXL_HOTPLUG_TIMEOUT
OUTPUT_LIMIT = 4000     # characters of script output kept for an error message


class Action(enum.Enum):
    ADD = "add"
    REMOVE = "remove"


class HotplugError(OSError):
    """A hotplug script that failed or hung; the message carries its output."""

    def __init__(self, err: int, msg: str) -> None:
        super().__init__(err, msg)

    def __str__(self) -> str:
        return self.strerror or ""


@dataclass(frozen=True)
class Invocation:
    """What to run: pure data, so it can be checked without running anything."""

    argv: tuple[str, ...]
    env: Mapping[str, str]


def invocation(kind: str, domid: int, devid: int, script: str, action: Action,
               gatewaydev: str = "") -> Invocation | None:
    """argv and extra environment for ``kind``'s script, or None when it has none."""
    env = {
        "script": script,
        "XENBUS_TYPE": kind,
        "XENBUS_PATH": f"backend/{kind}/{domid}/{devid}",
        "XENBUS_BASE_PATH": "backend",
    }
    if kind == paths.VBD:
        return Invocation((script, action.value), env)
    if kind == paths.VIF:
        env["netdev"] = gatewaydev
        env["vif"] = f"vif{domid}.{devid}"
        verb = "online" if action is Action.ADD else "offline"
        return Invocation((script, verb, "type_if=vif"), env)
    return None


def run(inv: Invocation, backend: str, timeout: float = HOTPLUG_TIMEOUT,
        read_error: Callable[[], str | None] = lambda: None) -> str:
    """Run a script; return its output, raise HotplugError with it on failure.

    ``read_error`` fetches what the script left in the backend's ``hotplug-error`` node;
    it is only called after a failure.
    """
    import tempfile  # with shutil and random: only for running a script (start-up cost)

    what = " ".join(inv.argv)
    log.info("hotplug: %s (%s)", what, inv.env.get("XENBUS_PATH", ""))
    # Output goes to a file, not a pipe: like libxl we wait for the script to exit, not for
    # every process it forked to close its stdout.
    with tempfile.TemporaryFile() as out_f:
        try:
            proc = subprocess.Popen(
                list(inv.argv), env={**os.environ, **inv.env}, stdin=subprocess.DEVNULL,
                stdout=out_f, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            raise HotplugError(e.errno or errno.EIO,
                               f"{backend}: cannot run hotplug script {inv.argv[0]}: "
                               f"{e.strerror}") from None
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
            raise HotplugError(errno.ETIMEDOUT, failure_message(
                what, backend, f"timed out after {timeout:g}s", _read(out_f),
                read_error())) from None
        out = _read(out_f)
    if out:
        log.debug("hotplug %s said: %s", what, out.strip())
    if proc.returncode != 0:
        raise HotplugError(errno.EIO, failure_message(
            what, backend, f"exit status {proc.returncode}", out, read_error()))
    return out


def _read(f: IO[bytes]) -> str:
    f.seek(0)
    return f.read(1 << 20).decode("utf-8", "replace")


def failure_message(what: str, backend: str, why: str, output: str,
                    hotplug_error: str | None) -> str:
    msg = f"{backend}: hotplug script '{what}' failed ({why})"
    if hotplug_error:
        msg += f": {hotplug_error.strip()}"
    tail = output.strip()[-OUTPUT_LIMIT:]
    if tail:
        msg += f"\n--- script output ---\n{tail}"
    return msg


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(proc.pid, signal.SIGKILL)
