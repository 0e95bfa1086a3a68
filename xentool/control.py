"""Operations on a running domain that need the guest's cooperation or its limits:
shutdown/reboot, rename, memory target and maximum, vCPU count and affinity.

Semantics are xl 4.17's (``tools/xl/xl_vmcontrol.c``, ``xl_mem.c``, ``xl_vcpu.c`` over
``libxl_domain.c``, ``libxl_mem.c``):

* shutdown/reboot write ``poweroff``/``reboot`` to the guest's ``control/shutdown`` and
  wait (60 s) for the guest to acknowledge by clearing the node; with ``fallback`` the
  ``SCHEDOP_remote_shutdown`` hypercall is used when the guest never advertised
  ``control/feature-<poweroff|reboot>`` or did not acknowledge in time (xl sends an ACPI
  event instead, which only HVM guests have).
* the memory target moves the balloon: ``memory/target`` (kB, minus videoram) checked
  against ``memory/static-max``, the hypervisor's max raised or lowered to target +
  videoram + 1 MiB slack (libxl's ``enforce``), ``/vm/<uuid>/memory`` in MiB, all in one
  XenStore transaction.  The maximum changes the hypervisor limit (plus the slack) and
  ``memory/static-max`` and refuses a value below the current target.
* the vCPU count writes ``cpu/<i>/availability`` = ``online`` for i < N and ``offline``
  for the rest; the guest hot-plugs accordingly.
* rename changes ``/local/domain/<id>/name`` and ``/vm/<uuid>/name`` together, refusing a
  name another domain has (under the create lock, so parallel creates and renames cannot
  collide).

Progress that xl prints (``Shutting down domain 5``) is passed to a ``progress`` callback;
the library itself prints nothing.
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xenstore.paths import domain_path
from xentool.errors import DomainNotFound, UsageError, XentoolError
from xentool.locks import create_lock, domain_lock
from xentool.logs import get_logger
from xentool.session import Session, is_domid, name_to_domid

if TYPE_CHECKING:
    from domain_builder.xenctrl import DomainInfo
    from xenstore.client import Transaction

log = get_logger(__name__)

#: Where progress goes when the caller gives no callback.
Progress = Callable[[str], None]


def _log_progress(msg: str) -> None:
    log.info("%s", msg)


#: How long libxl waits for a guest to acknowledge a control/shutdown request.
ACK_TIMEOUT = 60.0
#: LIBXL_MAXMEM_CONSTANT: slack libxl adds to every max-memory it gives the hypervisor.
MAXMEM_SLACK_KB = 1024
#: LIBXL_MIN_DOM0_MEM
MIN_DOM0_MEM_KB = 128 * 1024
#: How often the waits re-check the hypervisor even without a XenStore event.
POLL_S = 1.0


REASON_CODES = {"poweroff": 0, "reboot": 1}


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


def vcpu_availability(domid: int, n: int, max_vcpu_id: int) -> dict[str, str]:
    """``cpu/<i>/availability`` for every vcpu, as libxl__set_vcpuonline_xenstore writes."""
    if n == 0:
        raise XentoolError("requested 0 vcpus: a domain needs at least one")
    if n > max_vcpu_id + 1:
        raise XentoolError(f"requested {n} vcpus, but domain {domid} has at most "
                           f"{max_vcpu_id + 1} (maxvcpus)")
    return {f"{domain_path(domid)}/cpu/{i}/availability": "online" if i < n else "offline"
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


def death_events(waiting: Iterable[int], infos: Mapping[int, DomainInfo | None]
                 ) -> list[DeathEvent]:
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


def _wait_until(s: Session, watch_path: str, done: Callable[[], bool],
                timeout: float | None) -> bool:
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
    return not s.xs.get(f"{domain_path(domid)}/control/shutdown")


def _hypercall(s: Session, domid: int, action: str) -> None:
    from domain_builder.xenctrl import ShutdownReason

    s.xs.rm(f"{domain_path(domid)}/control/shutdown", missing_ok=True)
    s.xc.shutdown(domid, ShutdownReason.REBOOT if action == "reboot" else
                  ShutdownReason.POWEROFF)


def request(s: Session, domid: int, action: str, fallback: bool,
            timeout: float | None = None, progress: Progress = _log_progress) -> None:
    """Ask domain ``domid`` to ``poweroff``/``reboot`` (see the module docstring)."""
    what = "shutdown" if action == "poweroff" else "reboot"
    progress(f"{'Shutting down' if action == 'poweroff' else 'Rebooting'} domain {domid}")
    control = f"{domain_path(domid)}/control"
    if fallback and s.xs.get(f"{control}/feature-{action}") != "1":
        progress(f"PV control interface not available: using the {what} hypercall.")
        _hypercall(s, domid, action)
        return
    s.xs.write(f"{control}/shutdown", action)
    limit = ACK_TIMEOUT if timeout is None else timeout
    if _wait_until(s, f"{control}/shutdown", lambda: _acked(s, domid), limit):
        return
    if fallback:
        progress(f"guest did not acknowledge the {what} request: using the {what} hypercall.")
        _hypercall(s, domid, action)
        return
    raise XentoolError(f"{what} failed: domain {domid} did not acknowledge the {what} "
                       f"request within {limit:g}s (no PV control support? use -F to force)")


def wait_for_deaths(s: Session, domids: Sequence[int],
                    progress: Progress = _log_progress) -> None:
    progress(f"Waiting for {len(domids)} domains")
    pending = set(domids)

    def check() -> bool:
        infos = {d: s.xc.domain_info(d) for d in pending}
        for ev in death_events(pending, infos):
            progress(ev.message())
            pending.discard(ev.domid)
        return not pending

    _wait_until(s, "@releaseDomain", check, None)


def rename_domain(s: Session, domid: int, new_name: str, old_name: str | None = None,
                  *, lock: bool = True) -> None:
    """Rename ``domid`` (checking it is still called ``old_name`` if given).

    Takes the create lock, then the domain lock (the global lock order); a caller that
    already holds the domain lock passes ``lock=False`` and must make sure the name is
    unique by other means (the monitor's time-stamped rename-restart names are).
    """
    check_new_name(new_name)
    with contextlib.ExitStack() as held:
        if lock:
            held.enter_context(create_lock())
            held.enter_context(domain_lock(domid))
        other = name_to_domid(s.xc, s.xs, new_name)
        if other is not None and other != domid:
            raise XentoolError(f'domain with name "{new_name}" already exists')
        _rename_steps(s, domid, new_name, old_name)


def _rename_steps(s: Session, domid: int, new_name: str, old_name: str | None) -> None:
    """The two name nodes, each a journal step whose undo writes the old name back.
    ``/vm`` goes first: names are looked up under ``/local/domain``, so a rename killed
    half-way is still found by its old name, and running it again completes it."""
    from xentool.journal import Journal

    dom = domain_path(domid)
    current = s.xs.get(f"{dom}/name")
    if old_name is not None and current != old_name:
        raise XentoolError(f"domain {domid} is now named '{current}', not "
                           f"'{old_name}': renamed meanwhile?")
    vm = s.xs.get(f"{dom}/vm")

    def set_node(path: str, value: str | None) -> None:
        if value is None:
            s.xs.rm(path, missing_ok=True)
        else:
            s.xs.write(path, value)

    with Journal("rename") as j:
        if vm:
            vm_name = s.xs.get(f"{vm}/name")
            j.do("vm name", lambda: set_node(f"{vm}/name", new_name),
                 undo=lambda _: set_node(f"{vm}/name", vm_name))
        j.do("domain name", lambda: set_node(f"{dom}/name", new_name),
             undo=lambda _: set_node(f"{dom}/name", current))


def _read_kb(t: Transaction, path: str) -> int:
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
    assert info is not None, "dom0 always exists"
    dom = domain_path(0)

    def fill(t: Transaction) -> None:
        if t.get(f"{dom}/memory/target") is None:
            t.write(f"{dom}/memory/target", str(info.current_memkb))
        if t.get(f"{dom}/memory/static-max") is None:
            t.write(f"{dom}/memory/static-max", str(info.max_memkb))

    s.xs.transact(fill)


def set_memory_target(s: Session, domid: int, request_kb: int) -> MemTarget:
    """mem-set: two journal steps, the hypervisor's maximum then the XenStore target;
    a failure between them puts the old maximum back."""
    from xentool.journal import Journal

    info = s.xc.domain_info(domid)
    if info is None:
        raise XentoolError(f"domain {domid} does not exist")
    if domid == 0:
        _fill_dom0_memory(s)
    dom = domain_path(domid)
    target_path, vm_path = f"{dom}/memory/target", f"/vm/{info.uuid}/memory"

    def read(t: Transaction) -> tuple[MemTarget, str, str | None]:
        old_target = _read_kb(t, target_path)
        static_max = _read_kb(t, f"{dom}/memory/static-max")
        videoram = int(t.get(f"{dom}/memory/videoram") or 0)
        return (plan_mem_set(request_kb, static_max, videoram, domid), str(old_target),
                t.get(vm_path))

    def write(target: str, vm_mib: str | None) -> None:
        def apply(t: Transaction) -> None:
            t.write(target_path, target)
            if vm_mib is None:
                t.rm(vm_path, missing_ok=True)
            else:
                t.write(vm_path, vm_mib)
        s.xs.transact(apply)

    with domain_lock(domid):
        plan, old_target, old_vm = s.xs.transact(read)
        fresh = s.xc.domain_info(domid)
        if fresh is None:
            raise XentoolError(f"domain {domid} does not exist")
        old_max = fresh.max_memkb
        with Journal("mem-set") as j:
            j.do("hypervisor max memory",
                 lambda: s.xc.set_max_mem(domid, plan.hypervisor_max_kb),
                 undo=lambda _: s.xc.set_max_mem(domid, old_max))
            if fresh.hvm:
                # A PVH guest's populate-on-demand cache follows the target (libxl does
                # this for every HVM container; Xen ignores it for one without PoD).
                def pod(kb: int) -> None:
                    s.xc.set_pod_target(domid, (kb + MAXMEM_SLACK_KB) // 4)

                j.do("pod target", lambda: pod(plan.target_kb),
                     undo=lambda _: pod(int(old_target)))
            j.do("memory target", lambda: write(str(plan.target_kb), str(plan.vm_memory_mib)),
                 undo=lambda _: write(old_target, old_vm))
        return plan


def set_memory_max(s: Session, domid: int, max_kb: int) -> None:
    """Hypervisor limit and ``memory/static-max``, both moved as libxl does."""
    dom = domain_path(domid)

    def apply(t: Transaction) -> None:
        target = _read_kb(t, f"{dom}/memory/target")
        s.xc.set_max_mem(domid, plan_mem_max(max_kb, target))
        t.write(f"{dom}/memory/static-max", str(max_kb))

    with domain_lock(domid):
        s.xs.transact(apply)


def set_vcpus(s: Session, domid: int, n: int, check_host: bool = True) -> None:
    info = s.xc.domain_info(domid)
    if info is None:
        raise XentoolError(f"domain {domid} does not exist")
    if check_host:
        check_overcommit(n, info.nr_online_vcpus, s.xc.max_cpus())
    nodes = vcpu_availability(domid, n, info.max_vcpu_id)

    def write(t: Transaction) -> None:
        for path, value in nodes.items():
            t.write(path, value)

    with domain_lock(domid):
        s.xs.transact(write)


def parse_cpu_list(text: str, max_cpus: int) -> frozenset[int]:
    """xl's cpu list syntax for vcpu-pin: ``all``, ``3``, ``2-5``, ``^3``, comma lists.

    Raises ValueError naming the bad element.  NUMA ``nodes:`` ranges are not supported.
    """
    cpus: set[int] = set()
    for elem in text.split(","):
        if elem == "":
            continue  # strtok skips empty fields
        item = elem
        neg = item.startswith("^")
        if neg:
            item = item[1:]
        if item.startswith(("node:", "nodes:")):
            raise ValueError(f"NUMA node ranges are not supported: {elem}")
        if item == "all":
            if neg:
                raise ValueError('can\'t combine "^" and "all"')
            cpus.update(range(max_cpus))
            continue
        lo_s, sep, hi_s = item.partition("-")
        if not lo_s.isdigit() or (sep and not hi_s.isdigit()):
            raise ValueError(f"invalid pcpu range: {elem}")
        lo, hi = int(lo_s), int(hi_s) if sep else int(lo_s)
        if lo > hi:
            raise ValueError(f"invalid pcpu range: {elem}")
        if hi >= max_cpus:
            raise ValueError(f"pcpu {hi} is out of range (0-{max_cpus - 1}): {elem}")
        rng = range(lo, hi + 1)
        if neg:
            cpus.difference_update(rng)
        else:
            cpus.update(rng)
    return frozenset(cpus)


def set_vcpu_affinity(s: Session, domid: int, vcpu: int | None, hard: str | None,
                      soft: str | None, force: bool = False
                      ) -> list[tuple[int, frozenset[int]]]:
    """Pin vCPU ``vcpu`` (every vCPU if None) to the cpus of ``hard``/``soft`` in xl's cpu
    list syntax (None leaves that affinity alone).  Returns, for each vCPU whose effective
    hard affinity differs from the one asked for, the affinity Xen applied (restricted to
    the domain's cpupool, as libxl allows).  ``force`` (``vcpu-pin -f``) also overrides
    a temporary pinning the guest made (XEN_VCPUAFFINITY_FORCE)."""
    max_cpus = s.xc.max_cpus()
    try:
        hard_set = None if hard is None else parse_cpu_list(hard, max_cpus)
        soft_set = None if soft is None else parse_cpu_list(soft, max_cpus)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if hard_set is not None and not hard_set:
        raise UsageError(f"hard affinity '{hard}' selects no cpu")
    info = s.xc.domain_info(domid)
    if info is None:
        raise DomainNotFound(str(domid))
    if vcpu is not None and vcpu > info.max_vcpu_id:
        raise XentoolError(f"domain {domid} has no vcpu {vcpu} (vcpus 0-{info.max_vcpu_id})")
    restricted = []
    with domain_lock(domid):
        for v in range(info.max_vcpu_id + 1) if vcpu is None else [vcpu]:
            eff_hard, _ = s.xc.set_vcpu_affinity(domid, v, hard_set, soft_set, force=force)
            if hard_set is not None and eff_hard != hard_set:
                restricted.append((v, frozenset(eff_hard)))
    return restricted
