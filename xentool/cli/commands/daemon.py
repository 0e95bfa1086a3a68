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
    p.add_argument("--config", metavar="FILE", default=None,
                   help="the daemon's settings (TOML: [monitor] enabled, stable_after, "
                        "max_delay, max_fast_restarts; [sched] enabled, policy, resync; "
                        "[prebuild] shells, memory, vcpus; default /etc/xen/xentoold.toml "
                        "if it exists); the options below override it")
    p.add_argument("--monitor", dest="monitor", action="store_true", default=None,
                   help="apply every domain's on_poweroff/on_reboot/on_crash actions, as "
                        "'xentool monitor' does (the default)")
    p.add_argument("--no-monitor", dest="monitor", action="store_false",
                   help="leave them to 'xentool monitor'")
    p.add_argument("--sched", dest="sched", action="store_true", default=None,
                   help="keep CPU weights and caps as the sched policy says, as "
                        "'xentool sched-controller' does; SIGHUP reads it again (the "
                        "default)")
    p.add_argument("--no-sched", dest="sched", action="store_false",
                   help="leave them to 'xentool sched-controller'")
    p.add_argument("--sched-policy", dest="policy", metavar="FILE", default=None,
                   help="the sched policy (default /etc/xen/sched-policy.toml; while it "
                        "does not exist, weights are left alone)")
    p.add_argument("--prebuild", metavar="N", type=_count, default=None,
                   help="keep N paused domain shells ready, which a create of a PV guest "
                        "of their size takes instead of making a domain (the split "
                        "toolstack; their size: [prebuild] memory and vcpus, default 32 "
                        "MiB and 1); 0: none (the default)")


def _count(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"invalid count: '{text}'")
    return int(text)


def cmd_daemon(args: argparse.Namespace) -> int:
    import logging
    import os

    from xentool import daemon, resident, service
    from xentool.cli import main

    options = resident.with_overrides(resident.load_options(args.config),
                                      monitor=args.monitor, sched=args.sched,
                                      policy=args.policy, prebuild=args.prebuild)
    # The daemon works from / once in the background: a relative path would move.
    options = resident.with_overrides(options, policy=os.path.abspath(options.policy))
    service.journal_priorities()
    for name in ("xentool.daemon", "xentool.scheduler", "xentool.monitor"):
        # What the services do is logged whatever -v says, as by their own commands.
        if logging.getLogger(name).getEffectiveLevel() > logging.INFO:
            logging.getLogger(name).setLevel(logging.INFO)
    daemon.serve(main, path=args.socket, foreground=args.foreground, options=options)
    return 0


def xentoold(argv: Sequence[str] | None = None) -> int:
    """The ``xentoold`` entry point: ``xentool daemon`` under its own name."""
    from xentool.cli import main

    return main(["daemon", *(sys.argv[1:] if argv is None else argv)])
