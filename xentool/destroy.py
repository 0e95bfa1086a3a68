"""Destroying a domain the way libxl does (``libxl_domain_destroy``).

Devices first (their hotplug scripts free loop devices and take vifs off the bridge), then
the domain, then its XenStore nodes, the parents its backends leave empty and libxl's
userdata files; last the domain's record and any crash record of a create killed half-way.
All under the domain's lock, so it never races the monitor's restart or a device verb.

Each of these is a step of a ``destroy`` journal (fault points, trace).  A destroy cannot
be rolled back, only finished: the journal keeps a crash record (domid, uuid, name, the
XenStore paths to remove) until the last step, also after a failure, and the next
``destroy`` of the same domain finishes the job from it, even when the domain itself is
already gone from the hypervisor (:func:`finish_destroy`).
"""

from __future__ import annotations

import glob
import os
from typing import TYPE_CHECKING

from xenstore.devices.common import path_cleanup
from xenstore.errors import XenStoreError
from xenstore.paths import domain_path, libxl_domain_path
from xentool.devices import remove_all_devices
from xentool.errors import DomainNotFound
from xentool.journal import OrphanRecord, forget_record, half_built_domains
from xentool.locks import domain_lock
from xentool.logs import get_logger
from xentool.records import remove_domain_config
from xentool.session import Session
from xentool.state import LIBXL_USERDATA_DIR, libxl_userdata_pattern

if TYPE_CHECKING:
    from xentool.journal import Journal

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
    from xentool.journal import Journal, default_record_dir

    with domain_lock(domid):
        info = s.xc.domain_info(domid)
        if info is None:
            raise DomainNotFound(str(domid))
        uuid = str(info.uuid)
        earlier = _interrupted(domid, uuid)  # a destroy of it that did not finish
        vm = s.xs.get(f"{domain_path(domid)}/vm")
        paths = xenstore_paths_to_remove(domid, vm, _backend_paths(s, domid))
        with Journal("destroy", record_dir=default_record_dir(), resume=True) as j:
            j.note("domid", domid)
            j.note("uuid", uuid)
            j.note("name", s.xs.get(f"{domain_path(domid)}/name"))
            j.note("paths", paths)
            j.note("forget", forget)
            j.do("pause", lambda: _pause(s, domid))
            j.do("unplug devices", lambda: _unplug(s, domid))
            j.do("destroy domain", lambda: s.xc.destroy(domid))
            _finish_steps(j, s, domid, uuid, paths, forget, domain_gone=True)
        for rec in earlier:
            forget_record(rec)


def _pause(s: Session, domid: int) -> None:
    # Stop the guest first so it cannot react to its devices going away; a domain that
    # is already dying may refuse, which is no reason not to finish it (libxl agrees).
    try:
        s.xc.pause(domid)
    except OSError as e:
        log.warning("could not pause domain %d before destroying it: %s", domid, e)


def _unplug(s: Session, domid: int) -> None:
    for problem in remove_all_devices(s.xs, domid):
        log.warning("domain %d: %s", domid, problem)


def _finish_steps(j: Journal, s: Session, domid: int, uuid: str, paths: list[str],
                  forget: bool, domain_gone: bool) -> None:
    """The steps after the hypervisor's destroy (``domain_gone``: the domid is no longer
    ours, so only the ``/vm`` and userdata of ``uuid`` may still be removed)."""
    mine = paths if domain_gone else [p for p in paths if p.startswith("/vm/")]
    j.do("remove xenstore nodes", lambda: _remove_paths(s, mine))
    j.do("remove userdata files", lambda: _remove_userdata(domid, uuid))
    if forget:
        j.do("forget records", lambda: _forget(domid, uuid))


def _remove_paths(s: Session, paths: list[str]) -> None:
    for path in paths:
        try:
            if "/backend/" in path:
                path_cleanup(s.xs, path)  # and the parents left empty, like libxl
            else:
                s.xs.rm(path, missing_ok=True)
        except OSError as e:  # a leftover node is not worth failing the destroy
            log.warning("could not remove %s: %s", path, e)


def _remove_userdata(domid: int, uuid: str) -> None:
    for f in glob.glob(libxl_userdata_pattern(domid, uuid, LIBXL_USERDATA_DIR)):
        try:
            os.unlink(f)
        except OSError as e:
            log.warning("could not remove %s: %s", f, e)


def _forget(domid: int, uuid: str) -> None:
    remove_domain_config(uuid)
    rec = half_built_domains().get(domid)
    if rec is not None and rec.notes.get("uuid") in (None, uuid):
        forget_record(rec)


def _interrupted(domid: int, uuid: str) -> list[OrphanRecord]:
    from xentool.journal import default_record_dir, orphan_records

    return [r for r in orphan_records(default_record_dir()) if r.op == "destroy"
            and r.notes.get("domid") == domid and r.notes.get("uuid") == uuid]


def finish_destroy(s: Session, qualifier: str) -> bool:
    """Finish the destroys of ``qualifier`` (a name, domid or uuid) that a killed or failed
    run left, when the domain itself is already gone; False if there were none.

    A domid that a new domain has taken meanwhile keeps its ``/local/domain`` nodes: only
    the old domain's ``/vm`` node, userdata files and records go."""
    from xentool.journal import Journal, default_record_dir, orphan_records

    done = False
    for rec in orphan_records(default_record_dir()):
        n = rec.notes
        domid, uuid, paths = n.get("domid"), n.get("uuid"), n.get("paths")
        if rec.op != "destroy" or not isinstance(domid, int) or not isinstance(uuid, str) \
                or not isinstance(paths, list):
            continue
        if qualifier not in (str(domid), n.get("name"), uuid):
            continue
        with domain_lock(domid):
            info = s.xc.domain_info(domid)
            if info is not None and str(info.uuid) == uuid:
                continue  # still alive: a plain destroy of it finishes the job
            with Journal("destroy") as j:  # rec stays until this run got through
                _finish_steps(j, s, domid, uuid, [str(p) for p in paths],
                              n.get("forget") is not False, domain_gone=info is None)
            forget_record(rec)
            done = True
    return done
