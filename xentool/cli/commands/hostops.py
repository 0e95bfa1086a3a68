"""xl's host and misc verbs: dmesg, debug-keys, set-parameters, claims, sharing, vm-list,
trigger, sysrq, channel-list, dump-core; and the ``info -n`` sections (output as xl 4.17).
"""

from __future__ import annotations

import argparse
import os
import sys

from xentool import Host
from xentool.cli import format as output
from xentool.errors import HostError, UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Sequence

    from domain_builder.xenctrl import DomainInfo

#: libxl's ERROR_FAIL, which xl prints for a failed core dump.
_ERROR_FAIL = -3


def _say(*lines: str) -> None:
    for line in lines:
        print(line, file=sys.stderr)


def _c_int(n: int) -> int:
    """A uint32 printed with ``%d``."""
    n &= 0xFFFFFFFF
    return n - (1 << 32) if n >= 1 << 31 else n


# -- info -n ---------------------------------------------------------------------------------


def numa_items(cpus: Sequence[tuple[int, int, int] | None],
               devices: Sequence[tuple[int, int, int, int | None]],
               numa: tuple[Sequence[tuple[int, int]], Sequence[Sequence[int]]]
               ) -> list[tuple[str, object, str]]:
    """The ``cpu_topology``, ``device topology`` and ``numa_info`` sections of ``xl info
    -n`` as (json key, json value, text) items (see ``format.info_items``)."""
    text = "cpu_topology           :\ncpu:    core    socket     node\n"
    for i, cpu in enumerate(cpus):
        if cpu is not None:
            core, socket, node = (_c_int(x) for x in cpu)
            text += f"{i:3d}:    {core:4d}     {socket:4d}     {node:4d}\n"
    items: list[tuple[str, object, str]] = [(
        "cpu_topology",
        [{"cpu": i, "core": c[0], "socket": c[1], "node": c[2]}
         for i, c in enumerate(cpus) if c is not None], text)]
    text = "device topology        :\ndevice           node\n"
    known = [d for d in devices if d[3] is not None]
    for seg, bus, devfn, dev_node in known:
        text += (f"{seg:04x}:{bus:02x}:{(devfn >> 3) & 0x1F:02x}.{devfn & 7:01x}      "
                 f"{dev_node}\n")
    if not known:
        text += "No device topology data available\n"
    items.append(("device_topology",
                  [{"device": f"{s:04x}:{b:02x}:{(f >> 3) & 0x1F:02x}.{f & 7:01x}",
                    "node": n} for s, b, f, n in known], text))
    mem, dists = numa
    text = "numa_info              :\nnode:    memsize    memfree    distances\n"
    nodes = []
    for i, (size, free) in enumerate(mem):
        if size == (1 << 64) - 1:  # XEN_INVALID_MEM_SZ: no such node
            continue
        row = ",".join(str(_c_int(d)) for d in dists[i])
        text += f"{i:4d}:    {size >> 20:6d}     {free >> 20:6d}      {row}\n"
        nodes.append({"node": i, "memsize": size, "memfree": free,
                      "distances": [_c_int(d) for d in dists[i]]})
    items.append(("numa_info", nodes, text))
    return items


# -- dmesg, debug-keys, set-parameters --------------------------------------------------------


def configure_dmesg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--clear", action="store_true",
                   help="clear Xen's message buffer after reading it")


def cmd_dmesg(args: argparse.Namespace) -> int:
    with Host() as host:
        ring = host.console_ring(clear=args.clear)
    sys.stdout.flush()
    sys.stdout.buffer.write(ring)
    sys.stdout.buffer.flush()
    return 0


def configure_debug_keys(p: argparse.ArgumentParser) -> None:
    p.add_argument("keys", metavar="KEYS", help="the keys to press ('h' lists them)")


def cmd_debug_keys(args: argparse.Namespace) -> int:
    try:
        with Host() as host:
            host.send_debug_keys(args.keys)
    except HostError as e:
        _say(f"xentool: sending debug keys: {os.strerror(e.errno) if e.errno else e}",
             f"cannot send debug keys: {args.keys}")
        return 1
    return 0


def configure_set_parameters(p: argparse.ArgumentParser) -> None:
    p.add_argument("params", metavar="PARAMS",
                   help="'name=value noname ...' (Xen's runtime parameters)")


def cmd_set_parameters(args: argparse.Namespace) -> int:
    try:
        with Host() as host:
            host.set_parameters(args.params)
    except (HostError, UsageError) as e:
        _say(f"xentool: {e}", f"cannot set parameters: {args.params}")
        return 1
    return 0


# -- claims, sharing, vm-list ------------------------------------------------------------------


def configure_claims(p: argparse.ArgumentParser) -> None:
    del p  # no options


def cmd_claims(args: argparse.Namespace) -> int:
    if not Host.global_config().claim_mode:
        _say("claim_mode not enabled (see man xl.conf).")
    with Host() as host:
        entries = host.domain_infos()
    sys.stdout.write(output.format_list(entries, claim=True))
    return 0


def format_sharing(entries: Sequence[tuple[str | None, DomainInfo]]) -> str:
    """``xl sharing``: memory and shared memory (MiB) of each domain."""
    out = "Name                                        ID   Mem Shared\n"
    for name, d in entries:
        mem = (d.current_memkb + d.outstanding_memkb) // 1024
        shared = d.shr_pages * 4 // 1024
        out += f"{output.c_str(name):<40} {d.domid:5d} {mem:5d}  {shared:5d}\n"
    return out


def configure_sharing(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", metavar="DOMAIN", nargs="?", help="name or id (default: all)")


def cmd_sharing(args: argparse.Namespace) -> int:
    with Host() as host:
        entries = host.domain_infos([args.domain] if args.domain else [])
    sys.stdout.write(format_sharing(entries))
    return 0


def format_vm_list(vms: Sequence[tuple[str, int, str | None]]) -> str:
    """``xl vm-list``."""
    out = "UUID                                  ID    name\n"
    for uuid, domid, name in vms:
        out += f"{uuid}  {domid}    {output.c_str(name):<30}\n"
    return out


def configure_vm_list(p: argparse.ArgumentParser) -> None:
    del p  # no options


def cmd_vm_list(args: argparse.Namespace) -> int:
    with Host() as host:
        vms = host.vms()
    sys.stdout.write(format_vm_list(vms))
    return 0


# -- trigger, sysrq ------------------------------------------------------------------------


def configure_trigger(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", metavar="DOMAIN", help="domain name or id")
    p.add_argument("trigger", metavar="TRIGGER",
                   help="nmi, reset, init, power, sleep or s3resume")
    p.add_argument("vcpu", metavar="VCPU", nargs="?", help="vcpu number (default 0)")


def cmd_trigger(args: argparse.Namespace) -> int:
    from xentool.hostops import c_strtol, parse_trigger

    with Host() as host:
        dom = host.domain(args.domain)
        if parse_trigger(args.trigger) is None:
            _say(f'Invalid trigger "{args.trigger}"')
            return 1
        vcpu = 0
        if args.vcpu is not None:
            vcpu, ok = c_strtol(args.vcpu)
            if not ok:
                _say("Invalid vcpuid, using default vcpuid=0.\n")
        dom.send_trigger(args.trigger, vcpu)
    return 0


def configure_sysrq(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", metavar="DOMAIN", help="domain name or id")
    p.add_argument("letter", metavar="LETTER", help="the SysRq key, e.g. 's' to sync")


def cmd_sysrq(args: argparse.Namespace) -> int:
    with Host() as host:
        dom = host.domain(args.domain)
        if len(args.letter) != 1:
            _say("Invalid sysrq.\n")
            return 1
        dom.send_sysrq(args.letter)
    return 0


# -- channel-list ----------------------------------------------------------------------------

CHANNEL_HEADER = (f"{'Idx':<3} {'BE':<2} {'state':<5} {'evt-ch':<6} {'ring-ref':>8} "
                  f"{'connection':<10} {'':<30}\n")


def configure_channel_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("domains", metavar="DOMAIN", nargs="+", help="domain name or id")


def cmd_channel_list(args: argparse.Namespace) -> int:
    sys.stdout.write(CHANNEL_HEADER)
    sys.stdout.flush()
    with Host() as host:
        for q in args.domains:
            dom = host.domain(q)
            if dom.channels():
                raise UsageError(f"domain {q} has channels: xentool cannot describe "
                                 "channels yet (use xl channel-list)")
    return 0


# -- dump-core -------------------------------------------------------------------------------


def configure_dump_core(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", metavar="DOMAIN", help="domain name or id")
    p.add_argument("filename", metavar="FILENAME", help="where to write the ELF core")


def cmd_dump_core(args: argparse.Namespace) -> int:
    with Host() as host:
        dom = host.domain(args.domain)
        try:
            dom.dump_core(args.filename)
        except HostError as e:
            _say(f"xentool: {e}", f"core dump failed (rc={_ERROR_FAIL})")
            return 1
    return 0

