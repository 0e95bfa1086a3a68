"""``migrate`` and ``migrate-receive``: xl 4.17's ``migrate [options] <Domain> <host>`` and
its receiving end (:mod:`xentool.migration.migrate`), with xl's options and messages.

``--live`` is accepted and changes nothing, as in xl (whose migrations are always live);
``-s ""`` makes ``<host>`` the whole command that runs the receiver (``xentool migrate -s
"" guest "xentool migrate-receive"`` moves a guest on this host).
"""

from __future__ import annotations

import argparse
import os
import sys

from xentool.errors import XentoolError


def configure_migrate(p: argparse.ArgumentParser) -> None:
    p.usage = ("xentool migrate [-C <config>] [-s <sshcommand>] [-e] [-p] [-F] [--debug] "
               "[--live] <Domain> <host>")
    p.add_argument("-C", dest="config", metavar="CONFIG",
                   help="send <config> instead of the configuration the domain was "
                        "created with")
    p.add_argument("-s", dest="ssh", metavar="SSHCOMMAND", default="ssh",
                   help="use <sshcommand> instead of ssh; an empty string makes <host> "
                        "the whole command run for the receiver")
    p.add_argument("-e", dest="no_monitor", action="store_true",
                   help="do not wait in the background (on <host>) for the death of the "
                        "domain")
    p.add_argument("-F", dest="foreground", action="store_true",
                   help="run the receiver's monitor in the foreground")
    p.add_argument("-p", dest="pause_after", action="store_true",
                   help="do not unpause the domain after migrating it")
    p.add_argument("--debug", dest="debug", action="store_true",
                   help="ask the receiver to print the configuration it restores")
    p.add_argument("--live", dest="live", action="store_true",
                   help="accepted for compatibility: migrations are always live")
    p.add_argument("domain", metavar="DOMAIN", help="domain name or id")
    p.add_argument("host", metavar="HOST", help="the receiving host (or command, -s '')")


def cmd_migrate(args: argparse.Namespace) -> int:
    from xentool.migration.migrate import (
        MigrateError,
        migrate_domain,
        recover_killed_migrations,
        rune,
    )
    from xentool.session import Session

    command = rune(args.ssh, args.host,
                   tty=bool(args.progress_use_cr) or os.isatty(2),
                   timestamps=bool(args.timestamps), verbose=int(args.verbose),
                   daemonize=not (args.no_monitor or args.foreground), debug=args.debug,
                   pause_after=args.pause_after)
    # Stop-and-copy instead of pre-copy rounds: for comparisons, not an xl option.
    live = os.environ.get("XENTOOL_MIGRATE_LIVE", "1") != "0"
    with Session() as s:
        recover_killed_migrations(s)
        domid = s.resolve(args.domain)
        try:
            out = migrate_domain(s, domid, command, config_file=args.config, live=live)
        except MigrateError as e:
            raise XentoolError(str(e)) from None
    st = out.stats
    how = (f"pre-copy rounds {st.rounds}, final {st.final} pages" if st.live
           else "stop-and-copy")
    print(f"Migration successful. ({how}, downtime {st.downtime:.2f}s, total "
          f"{st.seconds:.2f}s)", file=sys.stderr)
    return 0


def configure_migrate_receive(p: argparse.ArgumentParser) -> None:
    p.usage = "xentool migrate-receive [-F] [-e] [-d] [-p]"
    p.add_argument("-F", dest="foreground", action="store_true",
                   help="watch the domain in the foreground once it runs")
    p.add_argument("-e", dest="no_monitor", action="store_true",
                   help="do not wait in the background for the death of the domain")
    p.add_argument("-d", dest="debug", action="store_true",
                   help="print the configuration as JSON on stderr")
    p.add_argument("-p", dest="pause_after", action="store_true",
                   help="do not unpause the domain once it has arrived")
    p.add_argument("-r", dest="remus", action="store_true", help=argparse.SUPPRESS)


def cmd_migrate_receive(args: argparse.Namespace) -> int:
    from xentool.cli.commands.create import _global_config
    from xentool.migration.migrate import migrate_receive

    if args.remus:
        raise XentoolError("migrate-receive -r: Remus checkpoint streams are not supported")
    gconf = _global_config()
    if gconf is None:
        return 1
    # The acks go on the real stdout; anything else printed goes to stderr, so nothing
    # stray can land in the protocol.
    sys.stdout.flush()
    proto_out = os.dup(1)
    os.dup2(2, 1)
    try:
        return migrate_receive(gconf, debug=args.debug, monitor=not args.no_monitor,
                               foreground=args.foreground, pause_after=args.pause_after,
                               proto_in=0, proto_out=proto_out)
    finally:
        os.close(proto_out)
