"""Domain control verbs: pause, unpause, destroy, vcpu-pin."""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys

from xentool.domains import Session
from xentool.errors import UsageError, XentoolError

log = logging.getLogger(__name__)

#: Where libxl keeps per-domain files (``userdata-d.<domid>.<uuid>.<key>``).
LIBXL_USERDATA_DIR = "/var/lib/xen"


def _domain_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", metavar="DOMAIN", help="domain name or id")


def configure_pause(p: argparse.ArgumentParser) -> None:
    _domain_arg(p)


def cmd_pause(args: argparse.Namespace) -> int:
    with Session() as s:
        s.xc.pause(s.resolve(args.domain))
    return 0


def configure_unpause(p: argparse.ArgumentParser) -> None:
    _domain_arg(p)


def cmd_unpause(args: argparse.Namespace) -> int:
    with Session() as s:
        s.xc.unpause(s.resolve(args.domain))
    return 0


# -- destroy -------------------------------------------------------------------------------


def configure_destroy(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", dest="force", action="store_true",
                   help="allow destroying domain 0 (refused without it, like xl)")
    _domain_arg(p)


def xenstore_paths_to_remove(domid: int, vm_path: str | None,
                             backends: list[str]) -> list[str]:
    """What libxl removes from XenStore when it destroys a domain, backends first."""
    paths = list(backends)
    if vm_path:
        paths.append(vm_path)
    paths += [f"/local/domain/{domid}", f"/libxl/{domid}"]
    return paths


def _backend_paths(s: Session, domid: int) -> list[str]:
    """Backend directories libxl recorded under /libxl/<domid>/device/<kind>/<devid>."""
    out = []
    base = f"/libxl/{domid}/device"
    for kind in _ls(s, base):
        for devid in _ls(s, f"{base}/{kind}"):
            be = s.xs.get(f"{base}/{kind}/{devid}/backend")
            if be:
                out.append(be)
    return out


def _ls(s: Session, path: str) -> list[str]:
    from xenstore.errors import XenStoreError

    try:
        return s.xs.ls(path)
    except XenStoreError:
        return []


def cmd_destroy(args: argparse.Namespace) -> int:
    with Session() as s:
        domid = s.resolve(args.domain)
        if domid == 0 and not args.force:
            raise XentoolError("cannot destroy privileged domain 0 (use -f to insist)")
        destroy_domain(s, domid)
    return 0


def destroy_domain(s: Session, domid: int, *, forget: bool = True) -> None:
    """Destroy ``domid`` the way libxl does: devices first (their hotplug scripts free
    loop devices and take vifs off the bridge), then the domain, then its XenStore nodes
    and files.  ``forget`` also drops the monitor's record (an explicit destroy means the
    operator wants it gone) and the crash record of a create killed half-way."""
    from xentool.commands.devices import remove_all_devices
    from xentool.locks import domain_lock

    with domain_lock(domid):
        info = s.xc.domain_info(domid)
        if info is None:
            from xentool.errors import DomainNotFound

            raise DomainNotFound(str(domid))
        # Stop the guest first so it cannot react to its devices going away; a domain that
        # is already dying may refuse, which is no reason not to finish it (libxl agrees).
        try:
            s.xc.pause(domid)
        except OSError as e:
            log.warning("could not pause domain %d before destroying it: %s", domid, e)
        for problem in remove_all_devices(s.xs, domid):
            log.warning("domain %d: %s", domid, problem)
        vm = s.xs.get(f"/local/domain/{domid}/vm")
        paths = xenstore_paths_to_remove(domid, vm, _backend_paths(s, domid))
        s.xc.destroy(domid)
        from xenstore.devices.common import path_cleanup

        for path in paths:
            try:
                if "/backend/" in path:
                    path_cleanup(s.xs, path)  # and the parents left empty, like libxl
                else:
                    s.xs.rm(path, missing_ok=True)
            except OSError as e:  # a leftover node is not worth failing the destroy
                log.warning("could not remove %s: %s", path, e)
        for f in glob.glob(os.path.join(LIBXL_USERDATA_DIR,
                                        f"userdata-d.{domid}.{info.uuid}.*")):
            try:
                os.unlink(f)
            except OSError as e:
                log.warning("could not remove %s: %s", f, e)
        if forget:
            _forget(domid, str(info.uuid))


def _forget(domid: int, uuid: str) -> None:
    from xentool.journal import forget_record, half_built_domains
    from xentool.monitor import remove_domain_config

    remove_domain_config(uuid)
    rec = half_built_domains().get(domid)
    if rec is not None and rec.notes.get("uuid") in (None, uuid):
        forget_record(rec)


# -- vcpu-pin ------------------------------------------------------------------------------


def configure_vcpu_pin(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true",
                   help="accepted for xl compatibility (affinity is always set directly)")
    p.add_argument("-i", "--ignore-global-affinity-masks", action="store_true",
                   help="accepted for xl compatibility (xentool has no global masks)")
    _domain_arg(p)
    p.add_argument("vcpu", metavar="VCPU", help="vcpu number or 'all'")
    p.add_argument("hard", metavar="CPUS", help="hard affinity: 'all', '0-3,^2', or '-'")
    p.add_argument("soft", metavar="CPUS_SOFT", nargs="?", default="-",
                   help="soft affinity (default '-': leave it alone)")


def _parse_vcpu(text: str) -> int | None:
    if text == "all":
        return None
    if not text.isdigit():
        raise UsageError(f"invalid vcpu '{text}': a number or 'all'")
    return int(text)


def cmd_vcpu_pin(args: argparse.Namespace) -> int:
    from xentool.output import parse_cpu_list

    vcpu = _parse_vcpu(args.vcpu)
    with Session() as s:
        domid = s.resolve(args.domain)
        max_cpus = s.xc.max_cpus()
        try:
            hard = None if args.hard == "-" else parse_cpu_list(args.hard, max_cpus)
            soft = None if args.soft == "-" else parse_cpu_list(args.soft, max_cpus)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if hard is not None and not hard:
            raise UsageError(f"hard affinity '{args.hard}' selects no cpu")
        info = s.xc.domain_info(domid)
        if info is None:
            from xentool.errors import DomainNotFound

            raise DomainNotFound(args.domain)
        if vcpu is not None and vcpu > info.max_vcpu_id:
            raise XentoolError(f"domain '{args.domain}' has no vcpu {vcpu} "
                               f"(vcpus 0-{info.max_vcpu_id})")
        vcpus = range(info.max_vcpu_id + 1) if vcpu is None else [vcpu]
        for v in vcpus:
            eff_hard, _ = s.xc.set_vcpu_affinity(domid, v, hard, soft)
            if hard is not None and eff_hard != hard:
                # Like libxl: the request succeeded, but Xen restricts it to the pool's cpus.
                print(f"xentool: vcpu {v}: effective hard affinity is "
                      f"{sorted(eff_hard)} (restricted by the cpupool)", file=sys.stderr)
    return 0
