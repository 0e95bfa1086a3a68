"""``xentool daemon`` (also installed as ``xentoold``): the resident process that runs
``xentool`` commands without paying for Python's start-up each time; see xentool.daemon."""

from __future__ import annotations

import argparse
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


def configure_daemon(p: argparse.ArgumentParser) -> None:
    p.add_argument("--foreground", action="store_true",
                   help="stay in the foreground, logging to stderr (under systemd); by "
                        "default the command returns once the daemon listens, and the "
                        "daemon logs to /var/log/xen/xentoold.log")
    p.add_argument("--socket", metavar="PATH", default=None,
                   help="listen on PATH (default: $XENTOOL_DAEMON_SOCKET, else xentoold.sock "
                        "in the run directory, /run/xentool)")


def cmd_daemon(args: argparse.Namespace) -> int:
    from xentool import daemon, service
    from xentool.cli import main

    service.journal_priorities()
    daemon.serve(main, path=args.socket, foreground=args.foreground)
    return 0


def xentoold(argv: Sequence[str] | None = None) -> int:
    """The ``xentoold`` entry point: ``xentool daemon`` under its own name."""
    from xentool.cli import main

    return main(["daemon", *(sys.argv[1:] if argv is None else argv)])
