"""Guest-cooperative control verbs: shutdown, reboot, rename, mem-set, mem-max, vcpu-set.

Semantics are xl 4.17's (``tools/xl/xl_vmcontrol.c``, ``xl_mem.c``, ``xl_vcpu.c`` over
``libxl_domain.c``, ``libxl_mem.c``):

* ``shutdown``/``reboot`` write ``poweroff``/``reboot`` to the guest's
  ``/local/domain/<id>/control/shutdown`` and wait (60 s) for the guest to acknowledge by
  clearing the node.  ``-F`` falls back to the ``SCHEDOP_remote_shutdown`` hypercall when
  the guest never advertised ``control/feature-<poweroff|reboot>`` or did not acknowledge
  in time (xl sends an ACPI event instead, which only HVM guests have).  ``-w`` waits
  until every target has shut down or gone, printing xl's lines; ``-a`` targets every
  domain but dom0.  Progress goes to stderr like xl's.
* ``mem-set`` moves the balloon target: ``memory/target`` (kB, minus videoram) checked
  against ``memory/static-max``, the hypervisor's max raised or lowered to target +
  videoram + 1 MiB slack (libxl's ``enforce``), ``/vm/<uuid>/memory`` in MiB, all in one
  XenStore transaction.  ``mem-max`` only changes the hypervisor limit (plus the slack)
  and refuses a value below the current target; like libxl it leaves static-max alone.
* ``vcpu-set N`` writes ``cpu/<i>/availability`` = ``online`` for i < N and ``offline``
  for the rest, for every vcpu the domain has; the guest hot-plugs accordingly.
* ``rename`` changes ``/local/domain/<id>/name`` and ``/vm/<uuid>/name`` together,
  refusing a name another domain has (under the create lock, so parallel creates and
  renames cannot collide).
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from xentool.domains import Session, is_domid
from xentool.errors import UsageError, XentoolError

log = logging.getLogger(__name__)

#: How long libxl waits for a guest to acknowledge a control/shutdown request.
ACK_TIMEOUT = 60.0
#: LIBXL_MAXMEM_CONSTANT: slack libxl adds to every max-memory it gives the hypervisor.
MAXMEM_SLACK_KB = 1024
#: LIBXL_MIN_DOM0_MEM
MIN_DOM0_MEM_KB = 128 * 1024
#: How often the waits re-check the hypervisor even without a XenStore event.
POLL_S = 1.0

REASON_CODES = {"poweroff": 0, "reboot": 1}


def err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- pure helpers --------------------------------------------------------------------------


def parse_mem_size_kb(text: str) -> int | None:
    """xl's ``parse_mem_size_kb``: a number with an optional b/k/m/g/t suffix, MiB if none.

    None for anything else (xl also accepts an empty or negative string; we do not).
    """
    t = text.strip()
    digits = t.rstrip("bBkKmMgGtT")
    suffix = t[len(digits):].lower()
    if not digits or not digits.isascii() or not digits.isdigit() or len(suffix) > 1:
        return None
    n = int(digits)
    shift = {"": 10, "m": 10, "k": 0, "g": 20, "t": 30}.get(suffix)
    if suffix == "b":
        return n >> 10
    assert shift is not None
    return n << shift


@dataclass(frozen=True)
class MemTarget:
    """What ``mem-set`` writes: the balloon target and the hypervisor's max (both kB)."""

    target_kb: int
    hypervisor_max_kb: int
    vm_memory_mib: int


def plan_mem_set(request_kb: int, static_max_kb: int, videoram_kb: int, domid: int
                 ) -> MemTarget:
    """libxl_set_memory_target(relative=0, enforce=1) as arithmetic and its two checks."""
    target = request_kb - videoram_kb
    if target < 0:
        raise XentoolError(f"memory target {request_kb} kB is below the video RAM "
                           f"({videoram_kb} kB)")
    if target > static_max_kb:
        raise XentoolError(f"memory_dynamic_max must be less than or equal to "
                           f"memory_static_max ({target} kB > {static_max_kb} kB)")
    if domid == 0 and target < MIN_DOM0_MEM_KB:
        raise XentoolError(f"new target {target} kB for dom0 is below the minimum threshold "
                           f"({MIN_DOM0_MEM_KB} kB)")
    return MemTarget(target, target + videoram_kb + MAXMEM_SLACK_KB, target // 1024)


def plan_mem_max(max_kb: int, target_kb: int) -> int:
    """libxl_domain_setmaxmem: the value for xc_domain_setmaxmem, after its check."""
    if max_kb < target_kb:
        raise XentoolError(f"memory_static_max must be greater than or equal to "
                           f"memory_dynamic_max ({max_kb} kB < target {target_kb} kB)")
    return max_kb + MAXMEM_SLACK_KB


def parse_vcpu_count(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise UsageError(f"invalid number of vcpus '{text}'")
    return int(text)


def vcpu_availability(domid: int, n: int, max_vcpu_id: int) -> dict[str, str]:
    """``cpu/<i>/availability`` for every vcpu, as libxl__set_vcpuonline_xenstore writes."""
    if n == 0:
        raise XentoolError("requested 0 vcpus: a domain needs at least one")
    if n > max_vcpu_id + 1:
        raise XentoolError(f"requested {n} vcpus, but domain {domid} has at most "
                           f"{max_vcpu_id + 1} (maxvcpus)")
    return {f"/local/domain/{domid}/cpu/{i}/availability": "online" if i < n else "offline"
            for i in range(max_vcpu_id + 1)}


def check_overcommit(n: int, online: int, host_cpus: int) -> None:
    """xl refuses more vcpus than host cpus (unless -i) when the count grows."""
    if n > online and n > host_cpus:
        raise XentoolError(f"you are overcommitting! You have {host_cpus} physical CPUs and "
                           f"want {n} vCPUs; use --ignore-host to continue")


def check_new_name(new: str) -> None:
    if not new:
        raise UsageError("the new domain name is empty")
    if is_domid(new):
        raise UsageError(f"invalid domain name '{new}': a name of digits only would be "
                         f"taken for a domain id")


@dataclass(frozen=True)
class DeathEvent:
    domid: int
    reason: int | None  # None: destroyed (gone or dying)

    def message(self) -> str:
        if self.reason is None:
            return f"Domain {self.domid} has been destroyed"
        return f"Domain {self.domid} has been shut down, reason code {self.reason}"


def death_events(waiting: Iterable[int], infos: Mapping[int, Any]) -> list[DeathEvent]:
    """Which of ``waiting`` have shut down or gone, given current domain infos by domid.

    Like libxl's domain-death watch: gone or dying -> destroyed; shut down -> its reason.
    """
    out = []
    for domid in sorted(waiting):
        info = infos.get(domid)
        if info is None or info.dying:
            out.append(DeathEvent(domid, None))
        elif info.shutdown:
            out.append(DeathEvent(domid, info.shutdown_reason))
    return out


# -- XenStore/hypervisor side effects --------------------------------------------------------


def _dompath(domid: int) -> str:
    return f"/local/domain/{domid}"


def _wait_until(s: Session, watch_path: str, done, timeout: float | None) -> bool:
    """Re-evaluate ``done()`` on every event of ``watch_path`` (and every POLL_S)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with s.xs.watch(watch_path) as w:
        while True:
            if done():
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            w.get(timeout=POLL_S if left is None else min(POLL_S, left))


def _acked(s: Session, domid: int) -> bool:
    """The guest took the request: node cleared, or the domain already went down."""
    info = s.xc.domain_info(domid)
    if info is None or info.dying or info.shutdown:
        return True
    return not s.xs.get(f"{_dompath(domid)}/control/shutdown")


def _hypercall(s: Session, domid: int, action: str) -> None:
    from domain_builder.xenctrl import ShutdownReason

    s.xs.rm(f"{_dompath(domid)}/control/shutdown", missing_ok=True)
    s.xc.shutdown(domid, ShutdownReason.REBOOT if action == "reboot" else
                  ShutdownReason.POWEROFF)


def request(s: Session, domid: int, action: str, fallback: bool,
            timeout: float | None = None) -> None:
    """Ask domain ``domid`` to ``poweroff``/``reboot`` (see the module docstring)."""
    what = "shutdown" if action == "poweroff" else "reboot"
    err(f"{'Shutting down' if action == 'poweroff' else 'Rebooting'} domain {domid}")
    control = f"{_dompath(domid)}/control"
    if fallback and s.xs.get(f"{control}/feature-{action}") != "1":
        err(f"PV control interface not available: using the {what} hypercall.")
        _hypercall(s, domid, action)
        return
    s.xs.write(f"{control}/shutdown", action)
    limit = ACK_TIMEOUT if timeout is None else timeout
    if _wait_until(s, f"{control}/shutdown", lambda: _acked(s, domid), limit):
        return
    if fallback:
        err(f"guest did not acknowledge the {what} request: using the {what} hypercall.")
        _hypercall(s, domid, action)
        return
    raise XentoolError(f"{what} failed: domain {domid} did not acknowledge the {what} "
                       f"request within {limit:g}s (no PV control support? use -F to force)")


def wait_for_deaths(s: Session, domids: Sequence[int]) -> None:
    err(f"Waiting for {len(domids)} domains")
    pending = set(domids)

    def check() -> bool:
        infos = {d: s.xc.domain_info(d) for d in pending}
        for ev in death_events(pending, infos):
            err(ev.message())
            pending.discard(ev.domid)
        return not pending

    _wait_until(s, "@releaseDomain", check, None)


# -- shutdown / reboot ------------------------------------------------------------------------


def _configure_shutdown_like(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument("-a", "--all", dest="all", action="store_true",
                   help=f"{verb} all guest domains (not dom0)")
    p.add_argument("-w", "--wait", dest="wait", action="store_true",
                   help=f"wait for the guest(s) to complete the {verb}")
    p.add_argument("-F", dest="fallback", action="store_true",
                   help="use the shutdown hypercall if the guest has no PV control support "
                        "or does not acknowledge the request")
    p.add_argument("domain", metavar="DOMAIN", nargs="?", help="domain name or id")


def configure_shutdown(p: argparse.ArgumentParser) -> None:
    _configure_shutdown_like(p, "shutdown")


def configure_reboot(p: argparse.ArgumentParser) -> None:
    _configure_shutdown_like(p, "reboot")


def _shutdown_or_reboot(args: argparse.Namespace, action: str) -> int:
    if args.domain is None and not args.all:
        raise UsageError("you must specify -a or a domain id")
    if args.domain is not None and args.all:
        raise UsageError("give either -a or a domain, not both")
    with Session() as s:
        if args.all:
            targets = [d.domid for d in s.xc.domains()
                       if d.domid != 0 and not d.dying and not d.shutdown]
        else:
            targets = [s.resolve(args.domain)]
        for domid in targets:
            request(s, domid, action, args.fallback)
        if args.wait:
            wait_for_deaths(s, targets)
    return 0


def cmd_shutdown(args: argparse.Namespace) -> int:
    return _shutdown_or_reboot(args, "poweroff")


def cmd_reboot(args: argparse.Namespace) -> int:
    return _shutdown_or_reboot(args, "reboot")


# -- rename ---------------------------------------------------------------------------------


def configure_rename(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", metavar="DOMAIN", help="domain name or id")
    p.add_argument("new_name", metavar="NEWNAME", help="the new name")


def rename_domain(s: Session, domid: int, new_name: str, old_name: str | None = None,
                  *, lock: bool = True) -> None:
    """Rename ``domid`` (checking it is still called ``old_name`` if given).

    Takes the create lock, then the domain lock (the global lock order); a caller that
    already holds the domain lock passes ``lock=False`` and must make sure the name is
    unique by other means (the monitor's time-stamped rename-restart names are).
    """
    import contextlib

    from xentool.domains import name_to_domid
    from xentool.locks import create_lock, domain_lock

    check_new_name(new_name)
    with contextlib.ExitStack() as held:
        if lock:
            held.enter_context(create_lock())
            held.enter_context(domain_lock(domid))
        other = name_to_domid(s.xc, s.xs, new_name)
        if other is not None and other != domid:
            raise XentoolError(f'domain with name "{new_name}" already exists')

        def write(t) -> None:
            dom = _dompath(domid)
            current = t.get(f"{dom}/name")
            if old_name is not None and current != old_name:
                raise XentoolError(f"domain {domid} is now named '{current}', not "
                                   f"'{old_name}': renamed meanwhile?")
            t.write(f"{dom}/name", new_name)
            vm = t.get(f"{dom}/vm")
            if vm:
                t.write(f"{vm}/name", new_name)

        s.xs.transact(write)


def cmd_rename(args: argparse.Namespace) -> int:
    check_new_name(args.new_name)
    with Session() as s:
        domid = s.resolve(args.domain)
        try:
            rename_domain(s, domid, args.new_name)
        except XentoolError as e:
            raise XentoolError(f"can't rename domain '{args.domain}': {e}") from None
    return 0


# -- memory ---------------------------------------------------------------------------------


def configure_mem_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", metavar="DOMAIN", help="domain name or id")
    p.add_argument("mem", metavar="MEM", help="new target, e.g. 512m, 1g, 262144k (MiB if "
                                              "no suffix)")


def configure_mem_max(p: argparse.ArgumentParser) -> None:
    configure_mem_set(p)


def _mem_kb(text: str) -> int:
    kb = parse_mem_size_kb(text)
    if kb is None:
        raise UsageError(f"invalid memory size: {text}")
    return kb


def _read_kb(t, path: str) -> int:
    from xenstore.errors import XenStoreError

    try:
        return t.read_int(path, 0, 2**63 - 1)
    except XenStoreError as e:
        if e.errno == errno.ENOENT:
            raise XentoolError(f"cannot get memory info from {path}") from None
        raise XentoolError(f"invalid memory value in {path}: {e}") from None


def _fill_dom0_memory(s: Session) -> None:
    """libxl writes dom0's target/static-max on first use, from what Xen reports."""
    info = s.xc.domain_info(0)
    dom = _dompath(0)

    def fill(t) -> None:
        if t.get(f"{dom}/memory/target") is None:
            t.write(f"{dom}/memory/target", str(info.current_memkb))
        if t.get(f"{dom}/memory/static-max") is None:
            t.write(f"{dom}/memory/static-max", str(info.max_memkb))

    s.xs.transact(fill)


def set_memory_target(s: Session, domid: int, request_kb: int) -> MemTarget:
    from xentool.locks import domain_lock

    info = s.xc.domain_info(domid)
    if info is None:
        raise XentoolError(f"domain {domid} does not exist")
    if domid == 0:
        _fill_dom0_memory(s)
    dom = _dompath(domid)

    def apply(t) -> MemTarget:
        _read_kb(t, f"{dom}/memory/target")
        static_max = _read_kb(t, f"{dom}/memory/static-max")
        videoram = int(t.get(f"{dom}/memory/videoram") or 0)
        plan = plan_mem_set(request_kb, static_max, videoram, domid)
        s.xc.set_max_mem(domid, plan.hypervisor_max_kb)
        t.write(f"{dom}/memory/target", str(plan.target_kb))
        t.write(f"/vm/{info.uuid}/memory", str(plan.vm_memory_mib))
        return plan

    with domain_lock(domid):
        return s.xs.transact(apply)


def set_memory_max(s: Session, domid: int, max_kb: int) -> None:
    """Hypervisor limit and ``memory/static-max``, both moved as libxl does."""
    from xentool.locks import domain_lock

    dom = _dompath(domid)

    def apply(t) -> None:
        target = _read_kb(t, f"{dom}/memory/target")
        s.xc.set_max_mem(domid, plan_mem_max(max_kb, target))
        t.write(f"{dom}/memory/static-max", str(max_kb))

    with domain_lock(domid):
        s.xs.transact(apply)


def _set_memory(args: argparse.Namespace, setter, what: str) -> int:
    kb = _mem_kb(args.mem)
    with Session() as s:
        domid = s.resolve(args.domain)
        try:
            setter(s, domid, kb)
        except (XentoolError, OSError) as e:
            raise XentoolError(f"cannot set domid {domid} {what} to {args.mem}: "
                               f"{e}") from None
    return 0


def cmd_mem_set(args: argparse.Namespace) -> int:
    return _set_memory(args, set_memory_target, "dynamic max memory")


def cmd_mem_max(args: argparse.Namespace) -> int:
    return _set_memory(args, set_memory_max, "static max memory")


# -- vcpu-set -------------------------------------------------------------------------------


def configure_vcpu_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--ignore-host", dest="ignore_host", action="store_true",
                   help="allow more vcpus than the host has physical cpus")
    p.add_argument("domain", metavar="DOMAIN", help="domain name or id")
    p.add_argument("vcpus", metavar="N", help="number of vcpus to have online")


def set_vcpus(s: Session, domid: int, n: int, check_host: bool = True) -> None:
    from xentool.locks import domain_lock

    info = s.xc.domain_info(domid)
    if info is None:
        raise XentoolError(f"domain {domid} does not exist")
    if check_host:
        check_overcommit(n, info.nr_online_vcpus, s.xc.max_cpus())
    nodes = vcpu_availability(domid, n, info.max_vcpu_id)

    def write(t) -> None:
        for path, value in nodes.items():
            t.write(path, value)

    with domain_lock(domid):
        s.xs.transact(write)


def cmd_vcpu_set(args: argparse.Namespace) -> int:
    n = parse_vcpu_count(args.vcpus)
    with Session() as s:
        set_vcpus(s, s.resolve(args.domain), n, check_host=not args.ignore_host)
    return 0
