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
in the value forms xl documents (``xentool/config/keys.py`` APPLIED), several per config;
the PVH rows those of a PVH guest (APPLIED_PVH), and what only a PVH guest has: HVM
parameters, paging pool, boot vCPU state and the boot structures in guest memory.
"""

from __future__ import annotations

import hashlib
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
    """``text`` with the domid as ``<D>``: a word that is the domid, or letters and the
    domid (``r5`` in permissions, ``vif5``), not digits inside a hex string (a hash)."""
    if not domid:
        return text

    def word(m: re.Match[str]) -> str:
        w = re.fullmatch(r"([A-Za-z]*)([0-9]+)", m.group())
        return f"{w.group(1)}<D>" if w and int(w.group(2)) == domid else m.group()

    return re.sub(r"[0-9A-Za-z]+", word, text)


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
    if info.hvm:
        rec["pvh"] = pvh_state(domid)
    return rec


def pvh_state(domid: int) -> dict[str, object]:
    """What a PVH guest starts from: HVM parameters, paging pool, the boot vCPU and every
    vCPU's MTRRs, and the guest memory the builder wrote besides RAM contents -- the start
    info page, the ACPI pages and the special pages.  The DSDT's creator (the AML writer)
    and its checksum are left out: xentool writes its own."""
    from domain_builder import pvh
    from domain_builder._binding import ffi
    from domain_builder.xenctrl import XenCtrl

    out: dict[str, object] = {}
    with XenCtrl() as xc:
        params = {}
        for p in range(39):
            try:
                params[p] = xc.hvm_param(domid, p)
            except OSError as e:
                params[p] = e.errno
        out["params"] = params
        out["paging_pool"] = xc.paging_mempool_size(domid)
        records = pvh.parse_records(xc.hvm_context(domid))
        cpu = next(bytearray(p) for c, i, p in records if (c, i) == (pvh.HVM_CODE_CPU, 0))
        tsc = ffi.offsetof("struct hvm_hw_cpu", "tsc")
        cpu[tsc:tsc + 8] = bytes(8)  # the guest's TSC: time passes
        out["cpu0"] = cpu.hex()
        out["mtrr"] = [p.hex() for c, _, p in records if c == pvh.HVM_CODE_MTRR]
        rbx = int.from_bytes(cpu[ffi.offsetof("struct hvm_hw_cpu", "rbx"):][:8], "little")
        pages = {"start_info": [rbx >> 12]}
        pages["acpi"] = list(range(0xFC000, 0xFC000 + 17))
        pages["special"] = list(range(pvh.SPECIAL_BASE_PFN, pvh.SPECIAL_END_PFN))
        for what, pfns in pages.items():
            data = bytearray()
            for pfn in pfns:
                try:
                    with xc.map_foreign(domid, [pfn], writable=False) as v:
                        data += bytes(v)
                except OSError:
                    data += b"-"  # not populated
            if what == "acpi":
                dsdt = data.find(b"DSDT", 0x1000)
                if dsdt >= 0:
                    data[dsdt + 9] = 0
                    data[dsdt + 28:dsdt + 36] = bytes(8)
            out[what] = hashlib.sha256(bytes(data)).hexdigest()
    return out


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
    pvh_xl, pvh_xt = by_xl.get("pvh", {}), by_xt.get("pvh", {})
    assert isinstance(pvh_xl, dict) and isinstance(pvh_xt, dict)
    for key in sorted(set(pvh_xl) | set(pvh_xt)):
        if pvh_xl.get(key) != pvh_xt.get(key):
            diffs.append(f"pvh {key}: xl {pvh_xl.get(key)}\n   xentool {pvh_xt.get(key)}")
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


# PVH guests: the guest kit's kernel and initrd (never booted here: created paused).  One
# config with every PVH key, one populate-on-demand: each xl create of the Debian kernel is
# half a minute under TCG.
PVH_CONFIGS = {
    "pvh": ('vcpus = 2\nmaxvcpus = 3\nmemory = 128\ncpuid = "host,rdtscp=0,avx512f=0"\n'
            'tsc_mode = "native"\ntimer_mode = "one_missed_tick_pending"\nnestedhvm = 0\n'
            "shadow_memory = 4\nnomigrate = 1\nhap = 1\noos = 1\npvshim = 0\n"
            'cpus = "1"\ncpu_weight = 300\nmax_grant_frames = 16\n'
            "DISK"
            "vif = [ 'mac=00:16:3e:01:02:05, bridge=xenbr0' ]\n"),
    # memory below maxmem: populate-on-demand.
    "pvh-pod": 'memory = 96\nmaxmem = 160\ncpuid = "host,rdtscp=0"\n',
}


def _pvh(kit: GuestKit, name: str, more: str) -> str:
    return (f'name = "{name}"\ntype = "pvh"\nkernel = "{kit.kernel}"\n'
            f'ramdisk = "{kit.initrd}"\nextra = "console=hvc0"\n{more}')


@pytest.mark.parametrize("key", list(CONFIGS) + list(PVH_CONFIGS))
def test_same_state_as_xl(kit: GuestKit, tmp_path: Path, guest_name: str, key: str) -> None:
    more = {**CONFIGS, **PVH_CONFIGS}[key].replace("DISK", _disk(tmp_path))
    dom_uuid = str(uuidlib.uuid4())
    cfg = tmp_path / "g.cfg"
    if key in PVH_CONFIGS:
        cfg.write_text(_pvh(kit, guest_name, f'uuid = "{dom_uuid}"\n{more}'))
    else:
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
