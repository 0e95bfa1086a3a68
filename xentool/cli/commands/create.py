"""``create`` and ``config-check``: read xl.cfg files like xl does.

``xentool create [-n] CFG [KEY=VALUE...]`` accepts xl's options and argument order (the
config file may come first, after ``-f``, or among the trailing arguments; every argument
containing ``=`` is a config override).  With ``-n`` it prints the libxl JSON xl would and
never touches Xen.  ``config-check`` validates many files and reports every bad one.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from xentool import DomainConfig, Host
from xentool.config import ConfigError
from xentool.config.xlconf import GlobalConfig, apply_global_defaults
from xentool.errors import UsageError

log = logging.getLogger(__name__)


def add_start_options(p: argparse.ArgumentParser, done: str, doing: str) -> None:
    """The options xl's create and restore share (how the new domain starts and is
    watched): -p -c -e -F -V -A -d.  ``done``/``doing``: the verb's words in the help."""
    p.add_argument("-p", dest="paused", action="store_true",
                   help=f"leave the domain paused after it is {done}")
    p.add_argument("-c", dest="console", action="store_true",
                   help=f"connect to the console after the domain is {done}")
    p.add_argument("-e", dest="no_monitor", action="store_true",
                   help="do not wait in the background for the death of the domain")
    p.add_argument("-F", dest="foreground", action="store_true",
                   help="run in the foreground until the death of the domain")
    p.add_argument("-V", "--vncviewer", dest="vncviewer", action="store_true",
                   help="connect to the VNC display (accepted for xl compatibility)")
    p.add_argument("-A", "--vncviewer-autopass", dest="vncviewer_autopass",
                   action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-d", dest="debug", action="store_true",
                   help=f"print the resolved configuration as JSON on stderr while {doing}")


def configure_create(p: argparse.ArgumentParser) -> None:
    p.usage = "xentool create [-n] [-p] [-c] [-q] [-e] [-F] [-V] [--plan] " \
              "[-f] <ConfigFile> [KEY=VALUE ...]"
    p.add_argument("-f", "--defconfig", dest="config_file", metavar="FILE",
                   help="use the given configuration file")
    p.add_argument("-n", "--dryrun", dest="dryrun", action="store_true",
                   help="dry run: print the resolved configuration as JSON (does not "
                        "touch Xen)")
    add_start_options(p, "created", "creating")
    p.add_argument("-q", "--quiet", dest="quiet", action="store_true",
                   help="quiet: do not print 'Parsing config from ...'")
    p.add_argument("-i", "--ignore-global-affinity-masks", dest="ignore_masks",
                   action="store_true",
                   help="ignore the global affinity masks of xl.conf (vm.cpumask, "
                        "vm.pv.cpumask)")
    p.add_argument("--plan", dest="plan", action="store_true",
                   help="print the domain build plan instead of building")
    p.add_argument("args", nargs="*", metavar="CONFIG|KEY=VALUE",
                   help="the configuration file, then KEY=VALUE settings that override it")
    # xl takes options between the config file and the overrides (`create g.cfg -p a=1`);
    # plain parse_args stops collecting positionals at the first option.
    p.parse_args = p.parse_intermixed_args  # type: ignore[method-assign]  # xl's order, see above


def split_create_args(config_file: str | None, args: Sequence[str]) -> tuple[str, list[str]]:
    """xl's rule: arguments with '=' are overrides; one other argument is the config file."""
    overrides: list[str] = []
    for a in args:
        if "=" in a:
            overrides.append(a)
        elif config_file is None:
            config_file = a
        else:
            raise UsageError(f"more than one config file given ('{config_file}', '{a}')")
    if config_file is None:
        raise UsageError("no config file given (use /dev/null to take everything from "
                         "KEY=VALUE arguments)")
    return config_file, overrides


def _report(exc: ConfigError) -> None:
    print(f"xentool: {exc}", file=sys.stderr)
    if exc.excerpt:
        print(exc.excerpt, file=sys.stderr)


def _load(path: str, overrides: Sequence[str], quiet: bool) -> DomainConfig | None:
    if not quiet:
        print(f"Parsing config from {path}", file=sys.stderr)
    try:
        cfg = Host.load_config(path, overrides, cached=True)
    except ConfigError as exc:
        _report(exc)
        return None
    for w in cfg.warnings:
        print(f"xentool: {w}", file=sys.stderr)
    return cfg


def _json(cfg: DomainConfig) -> str:
    import uuid

    from xentool.config.libxl_json import dumps, to_libxl

    # Like xl, a config without uuid shows the random one drawn for this run.
    return dumps(to_libxl(cfg, uuid=None if cfg.uuid else uuid.uuid4()))


def _global_config() -> GlobalConfig | None:
    """xl.conf, its warnings printed; None (reported) if it is bad or asks for what
    xentool cannot do."""
    try:
        gconf = Host.global_config()
        gconf.check_applicable()
    except ConfigError as exc:
        _report(exc)
        return None
    for w in gconf.warnings:
        print(f"xentool: {w}", file=sys.stderr)
    return gconf


def cmd_create(args: argparse.Namespace) -> int:
    path, overrides = split_create_args(args.config_file, args.args)
    gconf = _global_config()
    if gconf is None:
        return 1
    cfg = _load(path, overrides, args.quiet)
    if cfg is None:
        return 1
    dryrun = args.dryrun or getattr(args, "dryrun_only", False)  # create -n, or xl -N
    if (dryrun or args.debug) and gconf.output_format != "json":
        print(f"xentool: {gconf.source}: output_format = \"{gconf.output_format}\" is not "
              "supported by create's dry run and -d yet", file=sys.stderr)
        return 1
    if dryrun:
        sys.stdout.write(_json(apply_global_defaults(cfg, gconf)))
        return 0
    if args.debug:
        sys.stderr.write(_json(apply_global_defaults(cfg, gconf)))
    if args.vncviewer or args.vncviewer_autopass:
        log.warning("-V/-A: PV guests built by xentool have no VNC display; ignored")
    if args.plan:
        import json

        sys.stdout.write(json.dumps(Host.plan(cfg), indent=2) + "\n")
        return 0
    from xentool.console import console_before_start, require_client

    if args.console:
        require_client()  # a missing client is reported before any domain exists
    # Without -e the domain's on_* actions happen as with xl: a monitor in the background
    # (started unless one runs, ready before the guest runs, so a guest that dies at once is
    # handled at once), or this process with -F.  -e: nobody applies them, as with xl, so
    # the domain gets no record.
    background = not args.no_monitor and not args.foreground
    with Host(handle_signals=True) as host:
        # With a console the guest starts only once the client is attached.
        dom = host.create(path, overrides, paused=args.paused or args.console or background,
                          cached=True, record=not args.no_monitor,
                          ignore_global_masks=args.ignore_masks, xl_conf=gconf)
        if not args.quiet:
            log.info("created domain %s with id %d", cfg.name, dom.domid)
        if background:
            dom.watch(background=True)
        if args.console:
            console_before_start(dom.domid, unpause=not args.paused)
        elif background and not args.paused:
            dom.unpause()
        if args.foreground and not args.no_monitor:
            dom.watch(background=False)
    return 0


def configure_config_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    p.add_argument("-W", "--no-warnings", dest="no_warnings", action="store_true",
                   help="do not print warnings")
    p.add_argument("files", nargs="+", metavar="CFG", help="xl.cfg files to check")


def cmd_config_check(args: argparse.Namespace) -> int:
    bad = 0
    for path in args.files:
        try:
            cfg = Host.load_config(path)
        except ConfigError as exc:
            bad += 1
            _report(exc)
            continue
        if not args.no_warnings:
            for w in cfg.warnings:
                print(f"xentool: {w}", file=sys.stderr)
        if cfg.refusals:
            bad += 1
            for refusal in cfg.refusals:
                print(f"xentool: {refusal}", file=sys.stderr)
            continue
        if not args.quiet:
            print(f"{path}: ok ({cfg.name})")
    if len(args.files) > 1 and not args.quiet:
        print(f"{len(args.files) - bad} of {len(args.files)} config files ok")
    return 1 if bad else 0
