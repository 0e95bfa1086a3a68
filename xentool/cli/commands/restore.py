"""``restore``: a guest from an ``xl save`` file, with xl's options, argument order and
messages (``xl restore [options] [<ConfigFile>] <CheckpointFile>``)."""

from __future__ import annotations

import argparse
import sys

from xentool.errors import UsageError


def configure_restore(p: argparse.ArgumentParser) -> None:
    from xentool.cli.commands.create import add_start_options

    p.usage = ("xentool restore [-p] [-e] [-d] [-F] [-V] [-A] [-c] [<ConfigFile>] "
               "<CheckpointFile>")
    add_start_options(p, "restored", "restoring")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="[<ConfigFile>] <CheckpointFile>: as with xl, a configuration "
                        "file first replaces the one saved in the checkpoint file")


def cmd_restore(args: argparse.Namespace) -> int:
    import logging

    from xentool.cli.commands.create import _global_config
    from xentool.errors import translating
    from xentool.migration.restore import restore

    log = logging.getLogger(__name__)
    if len(args.files) == 1:
        config_file, path = None, args.files[0]
    elif len(args.files) == 2:
        config_file, path = args.files
    else:
        raise UsageError("restore takes [<ConfigFile>] <CheckpointFile>")
    gconf = _global_config()
    if gconf is None:
        return 1
    if args.vncviewer or args.vncviewer_autopass:
        log.warning("-V/-A: PV guests restored by xentool have no VNC display; ignored")
    from xentool.console import console_before_start, require_client

    if args.console:
        require_client()  # a missing client is reported before any domain exists
    # As create: without -e a monitor applies the on_* actions (started before the guest
    # runs again), or this process does with -F.
    background = not args.no_monitor and not args.foreground
    with translating():
        domid = restore(path, config_file=config_file, handle_signals=True, gconf=gconf,
                        paused=args.paused or args.console or background,
                        record=not args.no_monitor, debug=args.debug)
    from xentool import Host

    with Host(handle_signals=True) as host:
        dom = host.domain(domid)
        if background:
            dom.watch(background=True)
        if args.console:
            console_before_start(domid, unpause=not args.paused)
        elif background and not args.paused:
            dom.unpause()
        if args.foreground and not args.no_monitor:
            dom.watch(background=False)
    sys.stderr.flush()
    return 0
