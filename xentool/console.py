"""Guest consoles through Xen's ``xenconsole`` client, as xl runs it."""

from __future__ import annotations

import os
import select

from xentool.errors import XentoolError
from xentool.logs import get_logger

log = get_logger(__name__)

XENCONSOLE = "/usr/lib/xen-4.17/bin/xenconsole"


def console_argv(domid: int, ctype: str | None, num: int) -> list[str]:
    """The xenconsole command line xl uses; a PV console is the default for our guests."""
    return [XENCONSOLE, str(domid), "--num", str(num), "--type", ctype or "pv"]


def exec_console(domid: int, ctype: str | None = None, num: int = 0) -> None:
    """Replace this process with xenconsole (like xl, so ^] and the tty behave the same)."""
    require_client()
    argv = console_argv(domid, ctype, num)
    os.execv(argv[0], argv)


def require_client() -> None:
    if not os.access(XENCONSOLE, os.X_OK):
        raise XentoolError(f"console: {XENCONSOLE} is missing (install xen-utils-4.17)")


def console_before_start(domid: int, *, unpause: bool, timeout: float = 10.0) -> int:
    """``create -c``: run xenconsole as a child and let the paused guest go only once the
    client holds the console (its ``--start-notify-fd`` byte), as xl does, so no early boot
    output is lost.  Returns the client's exit status."""
    from domain_builder.xenctrl import XenCtrl

    require_client()
    ready_r, ready_w = os.pipe()
    os.set_inheritable(ready_w, True)
    pid = os.fork()
    if pid == 0:  # child: nothing but exec; the parent owns all Python state
        try:
            os.close(ready_r)
            argv = [*console_argv(domid, None, 0), "--start-notify-fd", str(ready_w)]
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    os.close(ready_w)
    try:
        # EOF (client died) or a timeout still lets the guest run: as with xl, the guest
        # matters more than the console.
        if not select.select([ready_r], [], [], timeout)[0]:
            log.warning("console: xenconsole not attached after %.0fs; starting the guest",
                        timeout)
    finally:
        os.close(ready_r)
    if unpause:
        with XenCtrl() as xc:
            xc.unpause(domid)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
