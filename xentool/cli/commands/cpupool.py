"""Cpupool verbs: cpupool-create, -list, -destroy, -rename, -cpu-add, -cpu-remove, -migrate
and -numa-split, with xl 4.17's options, output, messages and exit codes
(``tools/xl/xl_cpupool.c``).

Where libxl would log a reason before xl's own line (a pCPU that would not move, say), the
reason comes first as a ``xentool:`` line, then xl's line exactly as xl prints it.
"""

from __future__ import annotations

import argparse
import os
import sys

from xentool import Host
from xentool.config.errors import ConfigError
from xentool.cpupool import (
    CpupoolError,
    CpuRangeError,
    dry_run_text,
    format_pool_list,
    read_pool_config,
)
from xentool.errors import DomainNotFound, NotFoundError, XentoolError


def _say(*lines: str) -> int:
    """Print xl's error lines; xl's exit status for them is 1."""
    for line in lines:
        print(line, file=sys.stderr)
    return 1


def _reason(exc: BaseException) -> str:
    errno = getattr(exc, "errno", None)
    strerror = getattr(exc, "strerror", None)
    if strerror:
        return str(strerror)
    if errno:
        return os.strerror(errno)
    return str(exc)


def _pool(host: Host, qualifier: str) -> int | None:
    try:
        return host.cpupool_id(qualifier)
    except NotFoundError:
        return None


# -- cpupool-create -------------------------------------------------------------------------


def configure_cpupool_create(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--defconfig", metavar="FILE", help="the pool's config file")
    p.add_argument("-n", "--dryrun", action="store_true",
                   help="print the pool that would be made, make nothing")
    p.add_argument("args", nargs="*", metavar="CFG|VAR=VALUE",
                   help="config file (default: none, all keys given as VAR=VALUE), then "
                        "settings that override it (keys: name, sched, cpus, nodes)")


def cmd_cpupool_create(args: argparse.Namespace) -> int:
    filename: str | None = args.defconfig
    overrides: list[str] = []
    for a in args.args:
        if "=" in a:
            overrides.append(a)
        elif filename is None:
            filename = a
        else:
            return _say(f"xentool: cpupool-create takes one config file, not '{filename}' "
                        f"and '{a}'")
    text = ""
    if filename is not None:
        try:
            with open(filename, "rb") as f:
                text = f.read().decode("utf-8", errors="surrogateescape")
        except OSError as e:
            return _say(f"Failed to read config file: {filename}: {_reason(e)}")
    source = filename if filename is not None else "command line"
    try:
        cfg = read_pool_config(text, source, overrides)
    except ConfigError as e:
        return _say(str(e), "Failed to parse config file: Invalid argument")
    for w in cfg.warnings:
        print(w, file=sys.stderr)
    with Host() as host:
        try:
            plan = host.plan_cpupool(cfg, filename)
        except CpupoolError as e:
            return _say(str(e))
        sys.stdout.write(dry_run_text(source, plan))
        sys.stdout.flush()
        if args.dryrun:
            return 0
        try:
            host.create_cpupool(plan.name, plan.sched_id, plan.cpus)
        except XentoolError as e:
            return _say(f"xentool: could not create cpupool: {_reason(e)}",
                        "error on creating cpupool")
    return 0


# -- cpupool-list ---------------------------------------------------------------------------


def configure_cpupool_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--cpus", action="store_true", help="list the pCPUs of each pool")
    p.add_argument("pool", nargs="?", metavar="POOL", help="only this pool (by name)")


def cmd_cpupool_list(args: argparse.Namespace) -> int:
    with Host() as host:
        only = None
        if args.pool is not None:
            only = host.cpupool_by_name(args.pool)
            if only is None:
                return _say(f"Pool '{args.pool}' does not exist")
        pools = [(n, p) for n, p in host.cpupools() if only is None or p.poolid == only]
    sys.stdout.write(format_pool_list(pools, args.cpus))
    sys.stdout.flush()
    return 0


# -- cpupool-destroy / cpupool-rename -------------------------------------------------------


def configure_cpupool_destroy(p: argparse.ArgumentParser) -> None:
    p.add_argument("pool", metavar="POOL", help="name or id of an empty pool")


def cmd_cpupool_destroy(args: argparse.Namespace) -> int:
    with Host() as host:
        poolid = _pool(host, args.pool)
        if poolid is None:
            return _say(f"unknown cpupool '{args.pool}'")
        try:
            host.destroy_cpupool(poolid)
        except XentoolError:
            return _say(f"Can't destroy cpupool '{args.pool}'")
    return 0


def configure_cpupool_rename(p: argparse.ArgumentParser) -> None:
    p.add_argument("pool", metavar="POOL", help="name or id")
    p.add_argument("new_name", metavar="NEWNAME")


def cmd_cpupool_rename(args: argparse.Namespace) -> int:
    with Host() as host:
        poolid = _pool(host, args.pool)
        if poolid is None:
            return _say(f"unknown cpupool '{args.pool}'")
        try:
            host.rename_cpupool(poolid, args.new_name)
        except XentoolError:
            return _say(f"Can't rename cpupool '{args.pool}'")
    return 0


# -- cpupool-cpu-add / cpupool-cpu-remove ---------------------------------------------------


def _configure_cpus(p: argparse.ArgumentParser) -> None:
    p.add_argument("pool", metavar="POOL", help="name or id")
    p.add_argument("cpus", metavar="CPUS|node:NODES",
                   help="pCPUs in xl's syntax: 3, 0-3, ^2, all, node:0, comma lists")


def configure_cpupool_cpu_add(p: argparse.ArgumentParser) -> None:
    _configure_cpus(p)


def configure_cpupool_cpu_remove(p: argparse.ArgumentParser) -> None:
    _configure_cpus(p)


def _cpus_and_pool(host: Host, args: argparse.Namespace) -> tuple[frozenset[int], int] | int:
    """The pCPUs and pool id, or xl's exit status after its message (xl parses the
    pCPUs before it looks the pool up)."""
    try:
        cpus = host.parse_cpus(args.cpus)
    except CpuRangeError as e:
        return _say(str(e))
    poolid = _pool(host, args.pool)
    if poolid is None:
        return _say(f"unknown cpupool '{args.pool}'")
    return cpus, poolid


def cmd_cpupool_cpu_add(args: argparse.Namespace) -> int:
    with Host() as host:
        got = _cpus_and_pool(host, args)
        if isinstance(got, int):
            return got
        failed = host.cpupool_add_cpus(got[1], got[0])
    if failed:
        for cpu, e in failed:
            print(f"xentool: error moving cpu {cpu} to cpupool: {_reason(e)}", file=sys.stderr)
        print(f"some cpus may not have been added to {args.pool}", file=sys.stderr)
    return 0


def cmd_cpupool_cpu_remove(args: argparse.Namespace) -> int:
    with Host() as host:
        got = _cpus_and_pool(host, args)
        if isinstance(got, int):
            return got
        failed = host.cpupool_remove_cpus(got[1], got[0])
    if failed:
        for cpu, e in failed:
            print(f"xentool: error removing cpu {cpu} from cpupool: {_reason(e)}",
                  file=sys.stderr)
        print(f"Some cpus may have not or only partially been removed from '{args.pool}'.",
              file=sys.stderr)
        print(f"If a cpu can't be added to another cpupool, add it to '{args.pool}' again "
              "and retry.", file=sys.stderr)
    return 0


# -- cpupool-migrate / cpupool-numa-split ---------------------------------------------------


def configure_cpupool_migrate(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", metavar="DOMAIN", help="name or id")
    p.add_argument("pool", metavar="POOL", help="name or id")


def cmd_cpupool_migrate(args: argparse.Namespace) -> int:
    with Host() as host:
        try:
            dom = host.domain(args.domain)
            if dom.name is None:  # xl wants a name for the domain
                raise DomainNotFound(args.domain)
        except DomainNotFound:
            return _say(f"unknown domain '{args.domain}'")
        poolid = _pool(host, args.pool)
        if poolid is None:
            return _say(f"unknown cpupool '{args.pool}'")
        try:
            dom.move_to_cpupool(poolid)
        except XentoolError as e:
            return _say(f"xentool: error moving domain {dom.domid} to cpupool: {_reason(e)}")
    return 0


def configure_cpupool_numa_split(p: argparse.ArgumentParser) -> None:
    del p  # no options, as in xl


def cmd_cpupool_numa_split(args: argparse.Namespace) -> int:
    with Host() as host:
        try:
            host.cpupool_numa_split()
        except CpupoolError as e:
            return _say(str(e))
    return 0
