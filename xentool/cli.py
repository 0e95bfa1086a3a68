"""The ``xentool`` command line: one table of verbs, like xl's ``xl_cmdtable.c``.

Only the module of the verb being run is imported, so ``xentool list`` pays for nothing
it does not use (Python start-up is already most of the budget against ``xl``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from xentool import __version__


@dataclass(frozen=True)
class Verb:
    """One row of the verb table: name, implementing module (under xentool.commands), summary."""

    name: str
    module: str
    summary: str

    @property
    def _ident(self) -> str:
        return self.name.replace("-", "_")

    def configure(self) -> Callable[[argparse.ArgumentParser], None]:
        return getattr(self._load(), f"configure_{self._ident}")

    def handler(self) -> Callable[[argparse.Namespace], int]:
        return getattr(self._load(), f"cmd_{self._ident}")

    def _load(self):
        return importlib.import_module(f"xentool.commands.{self.module}")


# Keep sorted by group, then as `xl help` lists them.
VERBS: tuple[Verb, ...] = (
    Verb("create", "create", "Create a domain from config file <filename>"),
    Verb("config-check", "create", "Check xl.cfg files and report every error in them"),
    Verb("console", "console", "Attach to domain's console"),
    Verb("info", "query", "Get information about Xen host"),
    Verb("list", "query", "List information about all/some domains"),
    Verb("domid", "query", "Convert a domain name to domain id"),
    Verb("domname", "query", "Convert a domain id to domain name"),
    Verb("uptime", "query", "Print uptime for all/some domains"),
    Verb("vcpu-list", "query", "List the VCPUs for all/some domains"),
    Verb("pause", "control", "Pause execution of a domain"),
    Verb("unpause", "control", "Unpause a paused domain"),
    Verb("destroy", "control", "Terminate a domain immediately"),
    Verb("vcpu-pin", "control", "Set which CPUs a VCPU can use"),
    Verb("shutdown", "domain_ops", "Issue a shutdown signal to a domain"),
    Verb("reboot", "domain_ops", "Issue a reboot signal to a domain"),
    Verb("rename", "domain_ops", "Rename a domain"),
    Verb("mem-set", "domain_ops", "Set the current memory usage for a domain"),
    Verb("mem-max", "domain_ops", "Set the maximum amount reservation for a domain"),
    Verb("vcpu-set", "domain_ops", "Set the number of active VCPUs allowed for the domain"),
    Verb("monitor", "monitor", "Apply on_poweroff/on_reboot/on_crash actions for all domains"),
    Verb("sched-credit", "sched", "Get/set credit scheduler parameters"),
    Verb("sched-credit2", "sched", "Get/set credit2 scheduler parameters"),
    Verb("sched-controller", "schedctl", "Keep CPU weights/caps as a policy file says"),
    Verb("sched-stats", "schedctl", "Show CPU shares next to weights and expected shares"),
    Verb("image-info", "image", "Show what the PV builder finds in a kernel image"),
    Verb("network-attach", "devices", "Create a new virtual network device"),
    Verb("network-list", "devices", "List virtual network interfaces for a domain"),
    Verb("network-detach", "devices", "Destroy a domain's virtual network device"),
    Verb("block-attach", "devices", "Create a new virtual block device"),
    Verb("block-list", "devices", "List virtual block devices for a domain"),
    Verb("block-detach", "devices", "Destroy a domain's virtual block device"),
)

_BY_NAME = {v.name: v for v in VERBS}


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xentool",
        description="Xen toolstack, a drop-in replacement for xl.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="verbs:\n" + "\n".join(f"  {v.name:<20} {v.summary}" for v in VERBS),
        add_help=True,
    )
    p.add_argument("--version", action="version", version=f"xentool {__version__}")
    p.add_argument("-v", dest="verbose", action="count", default=0,
                   help="verbose: repeat for more detail (like xl -v)")
    p.add_argument("verb", nargs="?", help="the verb to run (see below)")
    p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def _verb_parser(verb: Verb) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"xentool {verb.name}", description=verb.summary)
    verb.configure()(p)
    return p


def _fail(msg: str, code: int = 1) -> int:
    print(f"xentool: {msg}", file=sys.stderr)
    return code


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is for the operator, not a bug report."""
    from domain_builder.errors import BuildError
    from xentool.errors import XentoolError

    return (XentoolError, BuildError, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    top = _top_parser()
    ns = top.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(ns.verbose, 2),
        format="xentool: %(message)s",
    )
    if ns.verb is None:
        top.print_help()
        return 2
    if ns.verb == "help":
        if ns.args and ns.args[0] in _BY_NAME:
            _verb_parser(_BY_NAME[ns.args[0]]).print_help()
            return 0
        top.print_help()
        return 0
    verb = _BY_NAME.get(ns.verb)
    if verb is None:
        return _fail(f"unknown verb '{ns.verb}' (see 'xentool help')", 2)
    args = _verb_parser(verb).parse_args(ns.args)
    args.verbose = ns.verbose
    try:
        return verb.handler()(args)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        # `xentool list | head` must not print a traceback.
        sys.stderr.close()
        return 1
    except Exception as exc:  # noqa: BLE001 - classified just below
        if not isinstance(exc, _user_errors()) or ns.verbose >= 2:
            raise
        return _fail(str(exc), getattr(exc, "exit_code", 1))
