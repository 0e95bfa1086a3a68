"""The ``xentool`` command line: one table of verbs, like xl's ``xl_cmdtable.c``.

Only the module of the verb being run is imported, so ``xentool list`` pays for nothing
it does not use (Python start-up is already most of the budget against ``xl``).  For the
same reason this module imports neither ``logging`` (configured only once something
imports it, see ``_LoggingOnImport``), nor ``dataclasses`` nor ``typing``;
tests/unit/test_import_cost.py keeps it that way.
"""

from __future__ import annotations

import argparse
import os
import sys

from xentool import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Protocol

    from xentool.errors import XentoolError

    class _FormatterClass(Protocol):
        """What ``ArgumentParser(formatter_class=...)`` calls: argparse passes ``prog=``."""

        def __call__(self, *, prog: str) -> argparse.HelpFormatter: ...


class Verb:
    """One row of the verb table: name, implementing module (under xentool.cli.commands),
    summary."""

    __slots__ = ("module", "name", "summary")

    def __init__(self, name: str, module: str, summary: str) -> None:
        self.name = name
        self.module = module
        self.summary = summary

    def __repr__(self) -> str:
        return f"Verb(name={self.name!r}, module={self.module!r}, summary={self.summary!r})"

    @property
    def _ident(self) -> str:
        return self.name.replace("-", "_")

    def configure(self) -> Callable[[argparse.ArgumentParser], None]:
        configure: Callable[[argparse.ArgumentParser], None] = getattr(
            self._load(), f"configure_{self._ident}")
        return configure

    def handler(self) -> Callable[[argparse.Namespace], int]:
        handler: Callable[[argparse.Namespace], int] = getattr(self._load(),
                                                               f"cmd_{self._ident}")
        return handler

    def _load(self) -> ModuleType:
        import importlib

        return importlib.import_module(f"xentool.cli.commands.{self.module}")


# Keep sorted by group, then as `xl help` lists them.
VERBS: tuple[Verb, ...] = (
    Verb("create", "create", "Create a domain from config file <filename>"),
    Verb("restore", "restore", "Restore a domain from a saved state"),
    Verb("config-check", "create", "Check xl.cfg files and report every error in them"),
    Verb("console", "console", "Attach to domain's console"),
    Verb("info", "query", "Get information about Xen host"),
    Verb("list", "query", "List information about all/some domains"),
    Verb("domid", "query", "Convert a domain name to domain id"),
    Verb("domname", "query", "Convert a domain id to domain name"),
    Verb("uptime", "query", "Print uptime for all/some domains"),
    Verb("vcpu-list", "query", "List the VCPUs for all/some domains"),
    Verb("vm-list", "hostops", "List guest domains, excluding dom0, stubdoms, etc."),
    Verb("claims", "hostops", "List outstanding claim information about all domains"),
    Verb("sharing", "hostops", "Get information about page sharing"),
    Verb("dmesg", "hostops", "Read and/or clear dmesg buffer"),
    Verb("debug-keys", "hostops", "Send debug keys to Xen"),
    Verb("set-parameters", "hostops", "Set hypervisor parameters"),
    Verb("trigger", "hostops", "Send a trigger to a domain"),
    Verb("sysrq", "hostops", "Send a sysrq to a domain"),
    Verb("dump-core", "hostops", "Core dump a domain"),
    Verb("channel-list", "hostops", "List virtual channel devices for a domain"),
    Verb("pause", "control", "Pause execution of a domain"),
    Verb("unpause", "control", "Unpause a paused domain"),
    Verb("destroy", "control", "Terminate a domain immediately"),
    Verb("vcpu-pin", "control", "Set which CPUs a VCPU can use"),
    Verb("shutdown", "domain_ops", "Issue a shutdown signal to a domain"),
    Verb("reboot", "domain_ops", "Issue a reboot signal to a domain"),
    Verb("rename", "domain_ops", "Rename a domain"),
    Verb("save", "save", "Save a domain state to restore later"),
    Verb("migrate", "migrate", "Migrate a domain to another host"),
    Verb("migrate-receive", "migrate", "Restore a domain from a saved state"),
    Verb("config-update", "stored", "Update a running domain's saved configuration, used "
         "when rebuilding the domain after reboot"),
    Verb("mem-set", "domain_ops", "Set the current memory usage for a domain"),
    Verb("mem-max", "domain_ops", "Set the maximum amount reservation for a domain"),
    Verb("vcpu-set", "domain_ops", "Set the number of active VCPUs allowed for the domain"),
    Verb("monitor", "monitor", "Apply on_poweroff/on_reboot/on_crash actions for all domains"),
    Verb("daemon", "daemon", "Run xentoold, which runs xentool commands without start-up "
         "cost"),
    Verb("sched-credit", "sched", "Get/set credit scheduler parameters"),
    Verb("sched-credit2", "sched", "Get/set credit2 scheduler parameters"),
    Verb("sched-rtds", "sched", "Get/set rtds scheduler parameters"),
    Verb("sched-controller", "schedctl", "Keep CPU weights/caps as a policy file says"),
    Verb("sched-stats", "schedctl", "Show CPU shares next to weights and expected shares"),
    Verb("cpupool-create", "cpupool", "Create a new CPU pool"),
    Verb("cpupool-list", "cpupool", "List CPU pools on host"),
    Verb("cpupool-destroy", "cpupool", "Deactivates a CPU pool"),
    Verb("cpupool-rename", "cpupool", "Renames a CPU pool"),
    Verb("cpupool-cpu-add", "cpupool", "Adds a CPU to a CPU pool"),
    Verb("cpupool-cpu-remove", "cpupool", "Removes a CPU from a CPU pool"),
    Verb("cpupool-migrate", "cpupool", "Moves a domain into a CPU pool"),
    Verb("cpupool-numa-split", "cpupool", "Splits up the machine into one CPU pool per NUMA node"),
    Verb("image-info", "image", "Show what the PV builder finds in a kernel image"),
    Verb("network-attach", "devices", "Create a new virtual network device"),
    Verb("network-list", "devices", "List virtual network interfaces for a domain"),
    Verb("network-detach", "devices", "Destroy a domain's virtual network device"),
    Verb("block-attach", "devices", "Create a new virtual block device"),
    Verb("block-list", "devices", "List virtual block devices for a domain"),
    Verb("block-detach", "devices", "Destroy a domain's virtual block device"),
)

_BY_NAME = {v.name: v for v in VERBS}

#: xl 4.17's command table (xl_cmdtable.c), in its order: a verb prefix means what it
#: means to xl's ``cmdtable_lookup``, whatever verbs xentool adds.
XL_VERBS = (
    "create", "config-update", "list", "destroy", "shutdown", "reboot", "pci-attach",
    "pci-detach", "pci-list", "pci-assignable-add", "pci-assignable-remove",
    "pci-assignable-list", "pause", "unpause", "console", "vncviewer", "save", "migrate",
    "restore", "migrate-receive", "dump-core", "cd-insert", "cd-eject", "mem-max", "mem-set",
    "button-press", "vcpu-list", "vcpu-pin", "vcpu-set", "vm-list", "info", "sharing",
    "sched-credit", "sched-credit2", "sched-rtds", "domid", "domname", "rename", "trigger",
    "sysrq", "debug-keys", "set-parameters", "dmesg", "top", "network-attach", "network-list",
    "network-detach", "channel-list", "block-attach", "block-list", "block-detach",
    "vtpm-attach", "vtpm-list", "vtpm-detach", "vkb-attach", "vkb-list", "vkb-detach",
    "vdispl-attach", "vdispl-list", "vdispl-detach", "vsnd-attach", "vsnd-list", "vsnd-detach",
    "uptime", "claims", "cpupool-create", "cpupool-list", "cpupool-destroy", "cpupool-rename",
    "cpupool-cpu-add", "cpupool-cpu-remove", "cpupool-migrate", "cpupool-numa-split",
    "getenforce", "setenforce", "loadpolicy", "remus", "devd", "psr-hwinfo", "psr-cmt-attach",
    "psr-cmt-detach", "psr-cmt-show", "psr-cat-set", "psr-cat-show", "psr-mba-set",
    "psr-mba-show", "usbctrl-attach", "usbctrl-detach", "usbdev-attach", "usbdev-detach",
    "usb-list", "qemu-monitor-command",
)

#: The verbs of xl's table that implement the global -N (dry run) option ("can_dryrun").
XL_DRYRUN_VERBS = frozenset((
    "create", "config-update", "vcpu-pin", "cd-insert", "cd-eject", "network-attach",
    "block-attach", "vtpm-attach", "vkb-attach", "vdispl-attach", "vsnd-attach",
    "cpupool-create",
))


class AmbiguousVerb(Exception):
    """A verb prefix that matches more than one verb."""


def _prefix_lookup(word: str, names: Sequence[str]) -> str | None:
    """xl's cmdtable_lookup: an exact name, else the one name ``word`` is a prefix of.
    None if none; AmbiguousVerb if several."""
    found = [n for n in names if n.startswith(word)]
    if word in found:
        return word
    if len(found) > 1:
        raise AmbiguousVerb(word)
    return found[0] if found else None


def resolve_verb(word: str) -> str | None:
    """The verb ``word`` names, exactly or as an unambiguous prefix (``li`` is ``list``).

    xl's table decides first, so a prefix means the same verb as for xl (where xl knows
    the verb; xentool may lack it); xentool's own verbs are matched by prefix only where
    xl's table matches nothing.  None if nothing matches; AmbiguousVerb as for xl.
    """
    if word in _BY_NAME:
        return word
    if not word:
        return None
    name = _prefix_lookup(word, XL_VERBS)
    if name is not None:
        return name
    return _prefix_lookup(word, [v.name for v in VERBS if v.name not in XL_VERBS])


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``, computed the same way without shutil."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    stdout = sys.__stdout__
    if stdout is None:  # no stdout at all: as shutil, whose fileno() call fails
        return 80
    try:
        columns = os.get_terminal_size(stdout.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 80
    return columns or 80


def _formatter(cls: type[argparse.HelpFormatter]) -> _FormatterClass:
    """A ``formatter_class`` making ``cls`` as wide as argparse would, without shutil.

    argparse makes a formatter for every ``add_argument`` (to check the metavar) and the
    formatter sizes itself with ``shutil.get_terminal_size()``: importing shutil (and with
    it zlib, bz2, lzma) is about 3 ms, for a width computed from two environment lookups
    and an ioctl.
    """

    def make(prog: str) -> argparse.HelpFormatter:
        return cls(prog, width=_terminal_columns() - 2)

    return make


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xentool",
        description="Xen toolstack, a drop-in replacement for xl.",
        formatter_class=_formatter(argparse.RawDescriptionHelpFormatter),
        epilog="verbs:\n" + "\n".join(f"  {v.name:<20} {v.summary}" for v in VERBS),
        add_help=True,
    )
    p.add_argument("--version", action="version", version=f"xentool {__version__}")
    p.add_argument("-v", dest="verbose", action="count", default=0,
                   help="verbose: repeat for more detail (like xl -v)")
    p.add_argument("-N", dest="dryrun_only", action="store_true",
                   help="dry run: the verbs that can show what they would do, do only that")
    # xl 4.17 sets a flag for -f that no verb reads: accepted, with the same (no) effect.
    p.add_argument("-f", dest="force_execution", action="store_true",
                   help="force execution (as in xl 4.17, no verb is affected)")
    # -t: xl redraws progress lines with a carriage return; no xentool verb shows progress
    # (xl's progress comes from save/restore/migrate), so there is nothing to redraw.
    p.add_argument("-t", dest="progress_use_cr", action="store_true",
                   help="progress output with carriage returns (like xl -t)")
    p.add_argument("-T", dest="timestamps", action="store_true",
                   help="date and process id before each log line (like xl -T)")
    p.add_argument("verb", nargs="?", help="the verb to run (see below)")
    p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def _verb_parser(verb: Verb) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"xentool {verb.name}", description=verb.summary,
                                formatter_class=_formatter(argparse.HelpFormatter))
    verb.configure()(p)
    return p


def _nearest(word: str) -> str:
    """``; did you mean ...?`` naming the verbs closest to ``word``, or ''."""
    import difflib

    close = difflib.get_close_matches(word, _BY_NAME, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(v) for v in close)}?" if close else ""


def _fail(msg: str, code: int = 1) -> int:
    print(f"xentool: {msg}", file=sys.stderr)
    return code


def _user_error(exc: BaseException) -> XentoolError | None:
    """The library's error for ``exc`` if its message is for the operator (every error of
    the library's tree, and what the layers below it raise), None for a bug."""
    from xentool.errors import translated

    return translated(exc)


def _configure_logging(logging: ModuleType, verbose: int, timestamps: bool = False) -> None:
    # -T: xl's logger shows the local date, time zone and pid first.
    logging.basicConfig(
        level=logging.WARNING - 10 * min(verbose, 2),
        format=("%(asctime)s [%(process)d] " if timestamps else "") + "xentool: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S %Z",
    )


class _LoggingOnImport:
    """Configure ``logging`` the moment something imports it, and never import it ourselves.

    Importing ``logging`` (with traceback, threading, string, weakref) is several
    milliseconds of start-up, and the read verbs never log.  The verbs that do (and the
    libraries under them) just ``import logging`` and ``getLogger`` as usual, at import
    time or later: this meta path finder finds nothing itself, it only wraps the loader of
    ``logging`` so that ``basicConfig`` runs right after the module is executed, before
    anyone can log through it.
    """

    def __init__(self, verbose: int, timestamps: bool = False) -> None:
        self.verbose = verbose
        self.timestamps = timestamps

    def install(self) -> None:
        if "logging" in sys.modules:  # already imported (embedding program, tests)
            _configure_logging(sys.modules["logging"], self.verbose, self.timestamps)
        else:
            sys.meta_path.insert(0, self)

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if name != "logging":
            return None
        self.remove()
        import importlib.util

        spec = importlib.util.find_spec(name)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec  # not a normal module: let the import fail or succeed as it would
        exec_module = loader.exec_module

        def exec_and_configure(module: ModuleType) -> None:
            exec_module(module)
            _configure_logging(module, self.verbose, self.timestamps)

        loader.exec_module = exec_and_configure  # type: ignore[method-assign]  # wrapped on purpose
        return spec


def main(argv: Sequence[str] | None = None) -> int:
    top = _top_parser()
    ns = top.parse_args(argv)
    logging_hook = _LoggingOnImport(ns.verbose, ns.timestamps)
    logging_hook.install()
    try:
        if ns.verb is None:
            top.print_help()
            return 2
        if ns.verb == "help":
            if not ns.args:
                top.print_help()
                return 0
            try:
                name = resolve_verb(ns.args[0])
            except AmbiguousVerb:
                name = None
            if name in _BY_NAME:
                _verb_parser(_BY_NAME[name]).print_help()
                return 0
            return _fail(f"unknown verb '{ns.args[0]}'{_nearest(ns.args[0])}", 2)
        try:
            name = resolve_verb(ns.verb)
        except AmbiguousVerb:
            print("command not implemented", file=sys.stderr)  # xl's words and status
            return 1
        verb = _BY_NAME.get(name or ns.verb)
        if verb is None:
            return _fail(f"unknown verb '{name or ns.verb}'{_nearest(name or ns.verb)} "
                         "(see 'xentool help')", 2)
        if ns.dryrun_only and verb.name not in XL_DRYRUN_VERBS:
            print("command does not implement -N (dryrun) option", file=sys.stderr)
            return 1
        args = _verb_parser(verb).parse_args(ns.args)
        args.verbose = ns.verbose
        args.dryrun_only = ns.dryrun_only
        args.force_execution = ns.force_execution
        args.progress_use_cr = ns.progress_use_cr
        args.timestamps = ns.timestamps
        try:
            return verb.handler()(args)
        except KeyboardInterrupt:
            return _fail("interrupted", 130)
        except BrokenPipeError:
            # `xentool list | head` must not print a traceback.
            sys.stderr.close()
            return 1
        except Exception as exc:
            mine = _user_error(exc)
            if mine is None or ns.verbose >= 2:
                raise
            return _fail(str(mine), mine.exit_code)
    finally:
        logging_hook.remove()
