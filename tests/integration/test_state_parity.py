"""State parity: the same xl.cfg created by xl and by xentool leaves the same state behind.

Each config is created paused (``-p -e``) by xl, everything Xen and xenstored report about
the domain is recorded, the domain is destroyed; then the same with xentool.  Name and uuid
are fixed in the config, so the two records are directly comparable once the domid is
replaced by ``<D>``.  Recorded: the hypervisor's domain info, every vCPU's hard and soft
affinity, credit2 weight and cap, TSC mode; every xenstore node (value and permissions)
under ``/local/domain/<D>``, ``/vm/<uuid>``, ``/libxl/<D>`` and the backends
``/local/domain/0/backend/<kind>/<D>``; the stored libxl configuration.

What may differ is listed in ``DELIBERATE``, one place, each with its reason; anything else
that differs fails the test.  The configs cover every applied key of xl.cfg for a PV guest
in the value forms xl documents (``xentool/config/keys.py`` APPLIED), several per config.
"""

from __future__ import annotations

import re
import subprocess
import uuid as uuidlib
from pathlib import Path

import pytest

from .helpers import GuestKit, xentool, xl

pytestmark = pytest.mark.xen

# (xenstore path pattern after normalisation, reason) — the only differences allowed.
DELIBERATE: list[tuple[str, str]] = [
    # Values Xen or the kernel hand out afresh for every domain: the grant reference and
    # event channel of the store and console rings, the machine frame of the store page.
    (r"/local/domain/<D>/(store|console)/(ring-ref|port)", "per-domain event channel / frame"),
    # When the domain was built: seconds since the epoch, never the same twice.
    (r"/vm/[0-9a-f-]+/start_time", "the domain's creation time"),
    # A file disk gets whichever loop device is free (the block script's choice).
    (r"/local/domain/0/backend/vbd/<D>/\d+/(physical-device|physical-device-path)",
     "loop device picked by the block script"),
]


def _xs_tree(path: str) -> dict[str, tuple[str, str]]:
    """path -> (value, perms) for ``path`` and everything below it (empty if absent)."""
    r = subprocess.run(["xenstore-ls", "-f", "-p", path], capture_output=True, text=True)
    if r.returncode != 0:
        return {}
    out = {}
    for line in r.stdout.splitlines():
        m = re.fullmatch(r'(\S+) = "(.*)"\s+\((.*)\)', line)
        assert m, f"unparsed xenstore-ls line: {line!r}"
        out[m.group(1)] = (m.group(2), m.group(3))
    return out


def _normalise(text: str, domid: int) -> str:
    text = re.sub(rf"(?<![0-9]){domid}(?![0-9])", "<D>", text) if domid else text
    return text


def record(name: str, dom_uuid: str) -> dict[str, object]:
    """Everything about domain ``name`` that the two tools must agree on."""
    from domain_builder.xenctrl import XenCtrl

    domid = int(xl("domid", name).stdout)
    rec: dict[str, object] = {}
    with XenCtrl() as xc:
        info = xc.domain_info(domid)
        assert info is not None
        rec["hypervisor"] = {
            "flags": info.flags, "max_pages": info.max_pages, "tot_pages": info.tot_pages,
            "max_vcpu_id": info.max_vcpu_id, "nr_online_vcpus": info.nr_online_vcpus,
            "ssidref": info.ssidref, "cpupool": info.cpupool, "uuid": info.uuid,
            "tsc_mode": xc.tsc_mode(domid),
            "sched": (xc.sched_credit2(domid).weight, xc.sched_credit2(domid).cap),
            "affinity": [tuple(sorted(s) for s in xc.vcpu_affinity(domid, v))
                         for v in range(info.max_vcpu_id + 1)],
        }
    nodes: dict[str, tuple[str, str]] = {}
    roots = [f"/local/domain/{domid}", f"/vm/{dom_uuid}", f"/libxl/{domid}"]
    roots += [f"/local/domain/0/backend/{k}/{domid}" for k in ("vbd", "vif", "console")]
    for root in roots:
        for path, (value, perms) in _xs_tree(root).items():
            nodes[_normalise(path, domid)] = (_normalise(value, domid),
                                              _normalise(perms, domid))
    rec["xenstore"] = nodes
    stored = Path("/var/lib/xen").glob(f"userdata-d.{domid}.{dom_uuid}.libxl-json")
    # The file as libxl writes it (yajl's layout, then a NUL), byte for byte but the domid.
    rec["stored"] = [_normalise(p.read_text(), domid) for p in stored]
    return rec


def _deliberate(path: str) -> str | None:
    for pattern, why in DELIBERATE:
        if re.fullmatch(pattern, path):
            return why
    return None


def compare(by_xl: dict[str, object], by_xt: dict[str, object]) -> list[str]:
    diffs = []
    if by_xl["hypervisor"] != by_xt["hypervisor"]:
        diffs.append(f"hypervisor: xl {by_xl['hypervisor']}\n   xentool {by_xt['hypervisor']}")
    xs_xl, xs_xt = by_xl["xenstore"], by_xt["xenstore"]
    assert isinstance(xs_xl, dict) and isinstance(xs_xt, dict)
    for path in sorted(set(xs_xl) | set(xs_xt)):
        a, b = xs_xl.get(path), xs_xt.get(path)
        if a == b:
            continue
        why = _deliberate(path)
        if why and a is not None and b is not None and a[1] == b[1]:
            print(f"  deliberate: {path}: {why}")
            continue
        diffs.append(f"{path}: xl {a} / xentool {b}")
    if by_xl["stored"] != by_xt["stored"]:
        diffs.append(f"stored config: xl {by_xl['stored']}\n   xentool {by_xt['stored']}")
    return diffs


def _disk(tmp: Path) -> str:
    img = tmp / "disk.img"
    with open(img, "wb") as f:
        f.truncate(4 << 20)
    return f"disk = [ 'format=raw, vdev=xvda, access=rw, target={img}' ]\n"


# Several keys per config: each pair of creates is seconds under emulation.
CONFIGS = {
    "memory-limits": ('memory = 32\nmaxmem = 48\nvcpus = 1\nmaxvcpus = 2\n'
                      'tsc_mode = "native"\nmax_grant_frames = 16\n'
                      "max_maptrack_frames = 512\nmax_event_channels = 2047\n"),
    "sched-actions": ('vcpus = 2\ncpus = "1"\ncpus_soft = "0-1,^1"\ncpu_weight = 512\n'
                      'cap = 30\non_poweroff = "preserve"\non_reboot = "destroy"\n'
                      'on_crash = "restart"\non_watchdog = "destroy"\n'
                      'extra = "console=hvc0 quiet"\ne820_host = 0\nnomigrate = 0\n'
                      "vfb = []\n"),
    "cpus-list": 'vcpus = 2\ncpus = ["1", "0"]\ncpus_soft = "all"\n',
    "devices": ("DISK"
                "vif = [ 'mac=00:16:3e:01:02:03, bridge=xenbr0',"
                " 'mac=00:16:3e:01:02:04, bridge=xenbr0, mtu=1400' ]\n"),
}


@pytest.mark.parametrize("key", list(CONFIGS))
def test_same_state_as_xl(kit: GuestKit, tmp_path: Path, guest_name: str, key: str) -> None:
    more = CONFIGS[key].replace("DISK", _disk(tmp_path))
    dom_uuid = str(uuidlib.uuid4())
    cfg = tmp_path / "g.cfg"
    cfg.write_text(kit.tiny_cfg(guest_name, wait=True,
                                more=f'uuid = "{dom_uuid}"\n{more}'))
    seen = {}
    for tool, run in (("xl", xl), ("xentool", xentool)):
        run("create", "-p", "-e", str(cfg))
        try:
            seen[tool] = record(guest_name, dom_uuid)
        finally:
            run("destroy", guest_name, check=False)
    diffs = compare(seen["xl"], seen["xentool"])
    assert not diffs, f"[{key}] differs from xl:\n" + "\n".join(diffs)
