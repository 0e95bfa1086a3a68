"""``config-update``: the configuration a domain is created from when it restarts, as xl 4.17.

``xentool config-update DOMAIN [CFG] [-f CFG] [-d] [KEY=VALUE...]`` keeps the file's text,
with the KEY=VALUE lines appended as xl appends them, where xl keeps it (the domain's
``xl`` userdata): a restart by xentool's monitor or by xl's own daemon then uses it.
"""

from __future__ import annotations

import argparse
import sys

from xentool import DomainConfig, Host
from xentool.config import ConfigError
from xentool.errors import UsageError

_WARNING = ("WARNING: xl now has better capability to manage domain configuration, avoid "
            "using this command when possible")
#: xl returns libxl's ERROR_FAIL (-3) from the verb when the file cannot be read.
_READ_FAILED = 253


def configure_config_update(p: argparse.ArgumentParser) -> None:
    p.usage = "xentool config-update <Domain> <ConfigFile> [options] [vars]"
    p.add_argument("-f", "--defconfig", metavar="FILE", help="use the given configuration file")
    p.add_argument("-d", dest="debug", action="store_true",
                   help="also print the parsed configuration (as xl's -d, libxl's JSON)")
    p.add_argument("-q", dest="quiet", action="store_true",
                   help="accepted as xl accepts it; it changes nothing there either")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("args", nargs="*", metavar="CFG|KEY=VALUE",
                   help="the configuration file (unless -f) and KEY=VALUE lines to append")


def split_update_args(defconfig: str | None, args: list[str]) -> tuple[str | None, list[str]]:
    """xl's reading of the arguments after the domain: (file, extra lines).  A file right
    after the domain comes first and ``-f`` overrides it; another file after that is a
    usage error, as in xl."""
    rest = list(args)
    filename = rest.pop(0) if rest and "=" not in rest[0] else None
    if defconfig is not None:
        filename = defconfig
    extra = []
    for a in rest:
        if "=" in a:
            extra.append(a)
        elif filename is None:
            filename = a
        else:
            raise UsageError(f"config-update: more than one configuration file ({filename}, "
                             f"{a})")
    return filename, extra


def updated_text(config: str, extra: list[str]) -> str:
    """The text xl stores: the file, then the KEY=VALUE lines between empty lines."""
    if not extra:
        return config
    return config + "\n" + "".join(f"{e}\n" for e in extra) + "\n"


def cmd_config_update(args: argparse.Namespace) -> int:
    print(_WARNING, file=sys.stderr)
    with Host() as host:
        dom = host.domain(args.domain)
        filename, extra = split_update_args(args.defconfig, args.args)
        if filename is None:
            print("Config file not specified", file=sys.stderr)
            return 1
        try:
            with open(filename, "rb") as f:
                raw = f.read()
        except OSError as e:
            print(f"Failed to read config file: {filename}: {e.strerror}", file=sys.stderr)
            return _READ_FAILED
        text = updated_text(raw.decode("utf-8", "surrogateescape"), extra)
        dryrun = getattr(args, "dryrun_only", False)
        try:
            cfg = Host.load_config(text, text=True, source=filename)
        except ConfigError as e:
            print(f"xentool: {e}", file=sys.stderr)
            print("Failed to parse config: Invalid argument", file=sys.stderr)
            return 1
        if args.debug or dryrun:
            _print_config(cfg)
        if not dryrun:
            print(f"setting dom{dom.domid} configuration", file=sys.stderr)
            dom.update_config(text, source=filename)
    return 0


def _print_config(cfg: DomainConfig) -> None:
    """What xl's -d prints: the parsed configuration, with no domid."""
    import uuid

    from xentool.cli.sxp import format_sxp
    from xentool.config.libxl_json import to_libxl, yajl_dumps
    from xentool.config.xlconf import apply_global_defaults

    gconf = Host.global_config()
    cfg = apply_global_defaults(cfg, gconf)
    doc = to_libxl(cfg, uuid=None if cfg.uuid else uuid.uuid4())
    if gconf.output_format == "sxp":
        sys.stdout.write(format_sxp(-1, doc, "<unknown>"))
    else:
        sys.stdout.write(yajl_dumps({"domid": None, "config": doc}))
