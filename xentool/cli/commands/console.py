"""``xentool console DOMAIN``: attach to a guest console through Xen's xenconsole client."""

from __future__ import annotations

import argparse
import os

from xentool import Host


def configure_console(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", dest="type", choices=("pv", "serial"), default=None,
                   help="console type: pv (default for PV guests) or serial (HVM)")
    p.add_argument("-n", dest="num", type=int, default=0, help="console number (default 0)")
    p.add_argument("domain", help="domain name or id")


def cmd_console(args: argparse.Namespace) -> int:
    with Host() as host:
        argv = host.domain(args.domain).console_argv(args.type, args.num)
    # Replace this process with xenconsole, like xl, so ^] and the tty behave the same.
    os.execv(argv[0], argv)
    return 1  # not reached: exec replaced us
