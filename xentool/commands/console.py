"""``xentool console DOMAIN``: attach to a guest console through Xen's xenconsole client."""

from __future__ import annotations

import argparse
import os

from xentool.errors import XentoolError

XENCONSOLE = "/usr/lib/xen-4.17/bin/xenconsole"


def configure_console(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", dest="type", choices=("pv", "serial"), default=None,
                   help="console type: pv (default for PV guests) or serial (HVM)")
    p.add_argument("-n", dest="num", type=int, default=0, help="console number (default 0)")
    p.add_argument("domain", help="domain name or id")


def console_argv(domid: int, ctype: str | None, num: int) -> list[str]:
    """The xenconsole command line xl uses; a PV console is the default for our guests."""
    return [XENCONSOLE, str(domid), "--num", str(num), "--type", ctype or "pv"]


def exec_console(domid: int, ctype: str | None = None, num: int = 0) -> None:
    """Replace this process with xenconsole (like xl, so ^] and the tty behave the same)."""
    argv = console_argv(domid, ctype, num)
    if not os.access(XENCONSOLE, os.X_OK):
        raise XentoolError(f"console: {XENCONSOLE} is missing (install xen-utils-4.17)")
    os.execv(argv[0], argv)


def cmd_console(args: argparse.Namespace) -> int:
    from xentool.domains import Session

    if args.num < 0:
        raise XentoolError(f"console: invalid console number {args.num}")
    with Session() as s:
        domid = s.resolve(args.domain)
    exec_console(domid, args.type, args.num)
    return 1  # not reached: exec replaced us
