"""Destroying a domain the way libxl does (``libxl_domain_destroy``).

Devices first (their hotplug scripts free loop devices and take vifs off the bridge), then
the domain, then its XenStore nodes, the parents its backends leave empty and libxl's
userdata files; last the domain's record and any crash record of a create killed half-way.
All under the domain's lock, so it never races the monitor's restart or a device verb.
"""

from __future__ import annotations

import glob
import os

from xenstore.devices.common import path_cleanup
from xenstore.errors import XenStoreError
from xenstore.paths import domain_path, libxl_domain_path
from xentool.devices import remove_all_devices
from xentool.errors import DomainNotFound
from xentool.journal import forget_record, half_built_domains
from xentool.locks import domain_lock
from xentool.logs import get_logger
from xentool.records import remove_domain_config
from xentool.session import Session
from xentool.state import LIBXL_USERDATA_DIR, libxl_userdata_pattern

log = get_logger(__name__)


def xenstore_paths_to_remove(domid: int, vm_path: str | None,
                             backends: list[str]) -> list[str]:
    """What libxl removes from XenStore when it destroys a domain, backends first."""
    paths = list(backends)
    if vm_path:
        paths.append(vm_path)
    paths += [domain_path(domid), libxl_domain_path(domid)]
    return paths


def _backend_paths(s: Session, domid: int) -> list[str]:
    """Backend directories libxl recorded under /libxl/<domid>/device/<kind>/<devid>."""
    out = []
    base = f"{libxl_domain_path(domid)}/device"
    for kind in _ls(s, base):
        for devid in _ls(s, f"{base}/{kind}"):
            be = s.xs.get(f"{base}/{kind}/{devid}/backend")
            if be:
                out.append(be)
    return out


def _ls(s: Session, path: str) -> list[str]:

    try:
        return s.xs.ls(path)
    except XenStoreError:
        return []


def destroy_domain(s: Session, domid: int, *, forget: bool = True) -> None:
    """Destroy ``domid`` the way libxl does: devices first (their hotplug scripts free
    loop devices and take vifs off the bridge), then the domain, then its XenStore nodes
    and files.  ``forget`` also drops the monitor's record (an explicit destroy means the
    operator wants it gone) and the crash record of a create killed half-way."""
    with domain_lock(domid):
        info = s.xc.domain_info(domid)
        if info is None:
            raise DomainNotFound(str(domid))
        # Stop the guest first so it cannot react to its devices going away; a domain that
        # is already dying may refuse, which is no reason not to finish it (libxl agrees).
        try:
            s.xc.pause(domid)
        except OSError as e:
            log.warning("could not pause domain %d before destroying it: %s", domid, e)
        for problem in remove_all_devices(s.xs, domid):
            log.warning("domain %d: %s", domid, problem)
        vm = s.xs.get(f"{domain_path(domid)}/vm")
        paths = xenstore_paths_to_remove(domid, vm, _backend_paths(s, domid))
        s.xc.destroy(domid)
        for path in paths:
            try:
                if "/backend/" in path:
                    path_cleanup(s.xs, path)  # and the parents left empty, like libxl
                else:
                    s.xs.rm(path, missing_ok=True)
            except OSError as e:  # a leftover node is not worth failing the destroy
                log.warning("could not remove %s: %s", path, e)
        for f in glob.glob(libxl_userdata_pattern(domid, str(info.uuid), LIBXL_USERDATA_DIR)):
            try:
                os.unlink(f)
            except OSError as e:
                log.warning("could not remove %s: %s", f, e)
        if forget:
            _forget(domid, str(info.uuid))


def _forget(domid: int, uuid: str) -> None:
    remove_domain_config(uuid)
    rec = half_built_domains().get(domid)
    if rec is not None and rec.notes.get("uuid") in (None, uuid):
        forget_record(rec)
