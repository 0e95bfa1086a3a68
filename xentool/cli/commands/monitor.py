"""``xentool monitor``: the one process that applies every domain's on_* actions.

xentoold runs the same monitor as a thread (``contrib/systemd/xentoold.service``); this verb
runs it on its own, in the foreground.  See ``xentool.monitor``.
"""

from __future__ import annotations

import argparse
import shlex

from xentool.errors import XentoolError


def configure_monitor(p: argparse.ArgumentParser) -> None:
    p.add_argument("--once", action="store_true",
                   help="handle what is due now, then exit (instead of running forever)")
    p.add_argument("--create-cmd", metavar="CMD", default=None,
                   help="command that re-creates a domain from a config file (default: "
                        "this xentool's 'create -q'); the file, the overrides and uuid=... "
                        "are appended")
    p.add_argument("--stable-after", metavar="S", type=float, default=60.0,
                   help="a domain that ran this long before dying restarts at once "
                        "(default 60)")
    p.add_argument("--max-delay", metavar="S", type=float, default=300.0,
                   help="longest back-off before restarting a crash-looping domain "
                        "(default 300)")
    p.add_argument("--max-fast-restarts", metavar="N", type=int, default=10,
                   help="give up after N quick deaths in a row (default 10)")
    p.add_argument("--domain", metavar="UUID", default=None,
                   help="watch only this domain and exit once it is gone for good "
                        "(what 'create -F' does)")
    p.add_argument("--transient", action="store_true",
                   help="exit quietly if a monitor runs, and once no domain with a record "
                        "is left (what 'create' starts when no monitor runs)")


def cmd_monitor(args: argparse.Namespace) -> int:
    import logging

    from xentool import service
    from xentool.monitor import Backoff, serve

    service.journal_priorities()
    if service.stderr_is_journal():
        # Under systemd every action it carries out is logged (at notice), whatever -v says.
        mlog = logging.getLogger("xentool.monitor")
        if mlog.getEffectiveLevel() > logging.INFO:
            mlog.setLevel(logging.INFO)

    if args.stable_after < 0 or args.max_delay < 0 or args.max_fast_restarts < 0:
        raise XentoolError("--stable-after, --max-delay and --max-fast-restarts must not be "
                           "negative")
    create_cmd = shlex.split(args.create_cmd) if args.create_cmd else None
    if create_cmd == []:
        raise XentoolError("--create-cmd is empty")
    backoff = Backoff(stable_after=args.stable_after, max_delay=args.max_delay,
                      max_fast_restarts=args.max_fast_restarts)
    if args.domain is not None and args.transient:
        raise XentoolError("--domain and --transient exclude each other")
    serve(backoff=backoff, create_cmd=create_cmd, once=args.once, domain=args.domain,
          transient=args.transient)
    return 0
