"""xl and xentool share one view of every domain, whichever of them created it.

A guest created by xentool is driven by xl, and one created by xl by xentool: ``list -l``
prints the same bytes with both tools (for dom0 too), scheduler parameters and vCPU
affinity set by one are what the other reads, and a destroy by either leaves nothing of the
domain behind (hypervisor, XenStore, libxl's userdata, xentool's record).  ``config-update``
stores what xl stores, and xentool's restart uses it as xl's does.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import pytest

from .helpers import GuestKit, domain_names, run, xentool, xl

pytestmark = pytest.mark.xen

USERDATA = Path("/var/lib/xen")


def _same_list_l(*args: str) -> str:
    """``xl list -l ARGS`` and ``xentool list -l ARGS`` print the same bytes; returns them."""
    want = xl("list", "-l", *args).stdout
    got = xentool("list", "-l", *args).stdout
    assert got == want, f"list -l {' '.join(args)}"
    return want


def _ids(name: str) -> tuple[int, str]:
    (entry,) = json.loads(xl("list", "-l", name).stdout)
    return entry["domid"], entry["config"]["c_info"]["uuid"]


def _records_dir() -> Path:
    r = run(sys.executable, "-c", "from xentool.state import records_dir; print(records_dir())")
    return Path(r.stdout.strip())


def _leftovers(domid: int, uuid: str) -> list[str]:
    """What is left of a destroyed domain anywhere either toolstack keeps state."""
    left = []
    if str(domid) in {row.split()[1] for row in xl("list").stdout.splitlines()[1:]}:
        left.append(f"domain {domid}")
    for path in (f"/local/domain/{domid}", f"/vm/{uuid}", f"/libxl/{domid}"):
        if run("xenstore-exists", path, check=False).returncode == 0:
            left.append(path)
    left += [str(p) for p in USERDATA.glob(f"userdata-*.{domid}.{uuid}.*")]
    left += [str(p) for p in _records_dir().glob(f"{uuid}.*")]
    return left


def _nothing_left(domid: int, uuid: str, within: float = 20.0) -> None:
    # A record of a domain xl destroyed is dropped by xentool's monitor on its next scan.
    deadline = time.monotonic() + within
    while (left := _leftovers(domid, uuid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == []


def _sched(tool: str, name: str) -> str:
    return (xl if tool == "xl" else xentool)("sched-credit2", "-d", name).stdout


def _vcpus(tool: str, name: str) -> list[list[str]]:
    """Each vCPU's row of ``vcpu-list`` without its CPU time (it runs meanwhile)."""
    rows = (xl if tool == "xl" else xentool)("vcpu-list", name).stdout.splitlines()[1:]
    return [r.split()[:5] + r.split()[6:] for r in rows]


def test_a_xentool_guest_driven_by_xl(kit: GuestKit, cfg_file, guest_name: str) -> None:
    cfg = cfg_file(kit.tiny_cfg(guest_name, wait=True, more="vcpus = 2\n"))
    xentool("create", "-p", str(cfg))  # with its record, as a create without -e keeps
    domid, uuid = _ids(guest_name)
    try:
        _same_list_l(guest_name)
        _same_list_l("0")
        _same_list_l()
        assert (_records_dir() / f"{uuid}.json").exists()

        xl("sched-credit2", "-d", guest_name, "-w", "512", "-c", "20")
        assert _sched("xentool", guest_name) == _sched("xl", guest_name)
        doc = json.loads(_same_list_l(guest_name))
        assert doc[0]["config"]["b_info"]["sched_params"] == \
            {"sched": "credit2", "weight": 512, "cap": 20}

        xl("vcpu-pin", guest_name, "1", "0")
        assert _vcpus("xentool", guest_name) == _vcpus("xl", guest_name)

        xl("unpause", guest_name)
        xl("pause", guest_name)
        listed = xentool("list", guest_name).stdout
        assert listed.splitlines()[1].split()[4] == "--p---"
        assert listed == xl("list", guest_name).stdout
        _same_list_l(guest_name)
    finally:
        xl("destroy", guest_name, check=False)
    _nothing_left(domid, uuid)


def test_a_xl_guest_driven_by_xentool(kit: GuestKit, cfg_file, guest_name: str) -> None:
    cfg = cfg_file(kit.tiny_cfg(guest_name, wait=True, more="vcpus = 2\ncpu_weight = 384\n"))
    xl("create", "-p", str(cfg))
    domid, uuid = _ids(guest_name)
    try:
        _same_list_l(guest_name)
        _same_list_l("0")
        _same_list_l()

        xentool("sched-credit2", "-d", guest_name, "-w", "128", "-c", "10")
        assert _sched("xl", guest_name) == _sched("xentool", guest_name)
        doc = json.loads(_same_list_l(guest_name))
        assert doc[0]["config"]["b_info"]["sched_params"] == \
            {"sched": "credit2", "weight": 128, "cap": 10}

        xentool("vcpu-pin", guest_name, "0", "1")
        assert _vcpus("xl", guest_name) == _vcpus("xentool", guest_name)
        xl("vcpu-set", guest_name, "1")  # the vCPU map xl stores no longer says so
        doc = json.loads(_same_list_l(guest_name))
        assert doc[0]["config"]["b_info"]["avail_vcpus"] == [0]

        xentool("destroy", guest_name)
    finally:
        xl("destroy", guest_name, check=False)
    _nothing_left(domid, uuid)


def _userdata_xl(domid: int, uuid: str) -> bytes:
    return (USERDATA / f"userdata-d.{domid}.{uuid}.xl").read_bytes()


def test_config_update_stores_what_xl_stores(kit: GuestKit, cfg_file,
                                             guest_name: str) -> None:
    cfg = cfg_file(kit.tiny_cfg(guest_name, wait=True))
    new = cfg_file(kit.tiny_cfg(guest_name, wait=True, memory=48), "new.cfg")
    xentool("create", "-p", "-e", str(cfg))
    domid, uuid = _ids(guest_name)
    try:
        seen = {}
        for tool in ("xl", "xentool"):
            r = (xl if tool == "xl" else xentool)("config-update", guest_name, str(new),
                                                  "vcpus=2", 'extra="a b"')
            seen[tool] = (r.returncode, r.stdout, r.stderr, _userdata_xl(domid, uuid))
        assert seen["xentool"] == seen["xl"]
        assert seen["xl"][3] == new.read_bytes() + b'\nvcpus=2\nextra="a b"\n\n'
        for args in ((), ("/nonexistent.cfg",)):
            runs = [(r.returncode, r.stderr) for r in
                    (tool("config-update", guest_name, *args, check=False)
                     for tool in (xl, xentool))]
            assert runs[0] == runs[1], args
    finally:
        xl("destroy", guest_name, check=False)
    _nothing_left(domid, uuid)


def _reboot(domid: int) -> None:
    """Shut the guest down with reason reboot, as a guest that asks for a reboot does."""
    run(sys.executable, "-c", "from domain_builder.xenctrl import XenCtrl\n"
        f"with XenCtrl() as xc: xc.shutdown({domid}, 1)")


def test_a_restart_uses_the_updated_config(kit: GuestKit, cfg_file, guest_name: str) -> None:
    cfg = cfg_file(kit.tiny_cfg(guest_name, wait=True))
    xentool("create", "-p", str(cfg))  # on_reboot defaults to restart
    domid, uuid = _ids(guest_name)
    try:
        xentool("config-update", guest_name, str(cfg), "memory=48")
        _reboot(domid)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            # xl list -l knows the new domain only once its create stored its config
            with contextlib.suppress(ValueError, AssertionError):
                if guest_name in domain_names() and _ids(guest_name)[0] != domid:
                    break
            time.sleep(0.5)
        new_domid, new_uuid = _ids(guest_name)
        assert new_domid != domid
        assert new_uuid == uuid  # restarted as xl restarts: the same uuid
        (entry,) = json.loads(_same_list_l(guest_name))
        assert entry["config"]["b_info"]["target_memkb"] == 48 * 1024
        xentool("destroy", guest_name)
    finally:
        xl("destroy", guest_name, check=False)
    _nothing_left(domid, uuid)
    _nothing_left(new_domid, uuid)
