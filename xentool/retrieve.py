"""A domain's configuration as libxl 4.17 retrieves it (``xl list -l``, ``config-update``).

libxl keeps every domain's configuration as libxl-json userdata
(``/var/lib/xen/userdata-d.<domid>.<uuid>.libxl-json``; xentool's create writes it too,
and xen-init-dom0 writes dom0's) and brings it up to date with the domain's runtime state
when asked (libxl_retrieve_domain_configuration).  This module reads both; the merge is
:func:`xentool.config.libxl_json.merge_runtime`.  Also the ``xl`` userdata that
``config-update`` stores and a restart uses instead (xl's reload_domain_config).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from xenstore.paths import domain_path, libxl_domain_path
from xentool.config.libxl_json import RuntimeView, merge_runtime
from xentool.errors import DomainNotFound, XentoolError
from xentool.state import LIBXL_USERDATA_DIR, libxl_userdata_path

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from domain_builder.xenctrl import DomainInfo
    from xentool.session import Session


class RetrieveError(XentoolError):
    """libxl could not retrieve the configuration: ``xl list -l`` leaves the domain out."""


@dataclass(frozen=True)
class Retrieved:
    """One domain's retrieved configuration and what libxl said on the way."""

    domid: int
    config: dict[str, object]
    warnings: tuple[str, ...] = ()


def stored_config(domid: int, uuid: str, root: str = LIBXL_USERDATA_DIR
                  ) -> dict[str, object]:
    """The libxl-json userdata of the domain (libxl__get_domain_configuration)."""
    path = libxl_userdata_path(domid, uuid, "libxl-json", root)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raw = b""
    except OSError as e:
        raise RetrieveError(f"Domain {domid}:failed to retrieve domain configuration: "
                            f"{e.strerror}") from None
    # libxl stores the terminating NUL as well.
    text = raw.rstrip(b"\0").decode("utf-8", "replace")
    if not text.strip():
        raise RetrieveError(f"Domain {domid}:Fail to get domain configuration")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise RetrieveError(f"Domain {domid}:Fail to get domain configuration")
    return doc


def _sched_params(s: Session, info: DomainInfo) -> dict[str, object]:
    """libxl_domain_sched_params_get: the scheduler of the domain's cpupool and its
    parameters for the domain."""
    from xentool.scheduler import SCHEDULER_NAMES

    sched = SCHEDULER_NAMES.get(s.xc.cpupool_info(info.cpupool).sched_id, "unknown")
    if sched in ("credit", "credit2"):
        p = s.xc.sched_credit(info.domid) if sched == "credit" else \
            s.xc.sched_credit2(info.domid)
        return {"sched": sched, "weight": p.weight, "cap": p.cap}
    if sched == "rtds":
        r = s.xc.sched_rtds(info.domid)
        return {"sched": sched, "period": r.period, "budget": r.budget}
    if sched == "null":
        return {"sched": sched}
    raise RetrieveError(f"Domain {info.domid}:Fail to get scheduler parameters")


def _memory(s: Session, info: DomainInfo) -> tuple[int, int]:
    """libxl__get_memory_target: (target, static-max) in kB from XenStore; dom0's are
    filled in from the hypervisor (and written) when missing, as libxl does."""
    dom = domain_path(info.domid)
    values = []
    for node in ("target", "static-max"):
        raw = s.reader.get(f"{dom}/memory/{node}")
        if raw is None:
            if info.domid != 0:
                raise RetrieveError(f"Domain {info.domid}:Fail to get memory target")
            kb = (info.tot_pages if node == "target" else info.max_pages) * 4
            s.xs.write(f"{dom}/memory/{node}", str(kb))
            values.append(kb)
            continue
        try:
            values.append(int(raw))
        except ValueError:
            raise RetrieveError(f"Domain {info.domid}:Fail to get memory target") from None
    return values[0], values[1]


def _ls(s: Session, path: str) -> list[str]:
    try:
        return s.reader.ls(path)
    except OSError:
        return []


def _disks(s: Session, domid: int) -> dict[str, tuple[int, str]]:
    """vdev -> (backend domid, medium) of each vbd libxl knows (/libxl/<domid>/device)."""
    out: dict[str, tuple[int, str]] = {}
    base = f"{libxl_domain_path(domid)}/device/vbd"
    for devid in _ls(s, base):
        be = s.reader.get(f"{base}/{devid}/backend")
        if not be:
            continue
        vdev = s.reader.get(f"{be}/dev")
        if vdev is None:
            continue
        parts = be.split("/")  # /local/domain/<backend domid>/backend/vbd/<domid>/<devid>
        bdom = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0
        out[vdev] = (bdom, s.reader.get(f"{be}/params") or "")
    return out


def runtime_view(s: Session, info: DomainInfo, stored: dict[str, object]) -> RuntimeView:
    """What libxl reads of the live domain to update its stored configuration."""
    domid = info.domid
    name = s.name(domid)
    if name is None:
        raise RetrieveError(f"Domain {domid}:Fail to get domain name")
    b_info = stored.get("b_info")
    max_vcpus = b_info.get("max_vcpus", 0) if isinstance(b_info, dict) else 0
    online = frozenset(
        i for i in range(max_vcpus if isinstance(max_vcpus, int) else 0)
        if s.reader.get(f"{domain_path(domid)}/cpu/{i}/availability") == "online")
    target, static_max = _memory(s, info)
    nics = frozenset(int(d) for d in _ls(s, f"{libxl_domain_path(domid)}/device/vif")
                     if d.isdigit())
    return RuntimeView(name=name, uuid=info.uuid, vcpus_online=online, target_memkb=target,
                       max_memkb=static_max, sched_params=_sched_params(s, info),
                       disks=_disks(s, domid), nic_devids=nics)


def retrieve(s: Session, domid: int) -> Retrieved:
    """libxl_retrieve_domain_configuration of a PV domain (dom0 included):
    ``RetrieveError`` when libxl would fail (no stored configuration, ...)."""
    info = s.xc.domain_info(domid)
    if info is None:
        raise DomainNotFound(str(domid))
    stored = stored_config(domid, info.uuid)
    doc, warnings = merge_runtime(stored, runtime_view(s, info, stored))
    return Retrieved(domid, doc, tuple(f"Domain {domid}:{w}" for w in warnings))


# -- the "xl" userdata: a configuration stored by config-update --------------------------------


def store_userdata(domid: int, uuid: str, key: str, data: bytes,
                   root: str = LIBXL_USERDATA_DIR) -> str:
    """libxl__userdata_store: written under a temporary name, then renamed; no data
    removes the file."""
    path = libxl_userdata_path(domid, uuid, key, root)
    if not data:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return path
    os.makedirs(root, mode=0o755, exist_ok=True)
    tmp = os.path.join(root, f"userdata-n.{domid}.{uuid}.{key}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def updated_config_text(domid: int, uuid: str, root: str = LIBXL_USERDATA_DIR) -> str | None:
    """The xl.cfg text ``config-update`` stored for the domain's next start, if any."""
    try:
        with open(libxl_userdata_path(domid, uuid, "xl", root), "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    return raw.decode("utf-8", "replace") if raw else None
