"""xl.conf and xl's global options, against xl in the testbed.

Each test writes one xl.conf and gives it to both tools: xl reads /etc/xen/xl.conf (backed
up and restored around the test), xentool the same text through ``XENTOOL_XL_CONF``.  Then:
the vif defaults reach the backend nodes as with xl, ``vm.cpumask`` gives the vCPUs xl's
affinity, a create waits for xl's global lock, ``-N create`` creates nothing, verb
prefixes resolve as xl's.

Not shown here: autoballoon actually lowering dom0's target.  The testbed boots Xen with
``dom0_mem=1024M,max:1024M`` and has GiBs free, so no tiny guest makes dom0 short
(the freemem steps are unit-tested with a fake hypervisor in tests/unit/test_xlconf.py).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import XENTOOL, GuestKit, domain_names, run, xentool, xl

pytestmark = pytest.mark.xen

XL_CONF = Path("/etc/xen/xl.conf")


@pytest.fixture
def xl_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Write-once xl.conf for both tools: returns the file xentool reads; writing it
    (``.write_text``) must be followed by ``_install`` to give xl the same text."""
    backup = tmp_path / "xl.conf.orig"
    had = XL_CONF.exists()
    if had:
        shutil.copy2(XL_CONF, backup)
    mine = tmp_path / "xl.conf"
    mine.write_text("")
    monkeypatch.setenv("XENTOOL_XL_CONF", str(mine))
    try:
        yield mine
    finally:
        if had:
            shutil.copy2(backup, XL_CONF)
        else:
            XL_CONF.unlink(missing_ok=True)


def _install(conf: Path, text: str) -> None:
    conf.write_text(text)
    XL_CONF.write_text(text)


def _domid(name: str) -> str:
    return xl("domid", name).stdout.strip()


def _vif_backend(name: str) -> dict[str, str]:
    """bridge and script of the domain's vif 0 backend, as xenstore has them."""
    path = f"/local/domain/0/backend/vif/{_domid(name)}/0"
    return {k: run("xenstore-read", f"{path}/{k}").stdout.strip() for k in ("bridge", "script")}


def _affinity(name: str) -> list[str]:
    rows = xl("vcpu-list", name).stdout.splitlines()[1:]
    return [row.split(None, 6)[6] for row in rows]


def _create_both(kit: GuestKit, tmp: Path, base: str, more: str,
                 read: Callable[[str], object], *args: str) -> tuple[object, object]:
    seen = {}
    for tool in ("xl", "xentool"):
        name = f"{base}-{tool[:2]}"
        cfg = tmp / f"{name}.cfg"
        cfg.write_text(kit.tiny_cfg(name, wait=True, more=more))
        try:
            (xl if tool == "xl" else xentool)("create", "-p", "-e", *args, str(cfg))
            seen[tool] = read(name)
        finally:
            xl("destroy", name, check=False)
    return seen["xl"], seen["xentool"]


@pytest.fixture
def bridge() -> Iterator[str]:
    """A bridge of its own in dom0, so the default bridge differs from xenbr0."""
    name = "xtconfbr0"
    run("ip", "link", "add", "name", name, "type", "bridge")
    try:
        run("ip", "link", "set", name, "up")
        yield name
    finally:
        run("ip", "link", "del", name, check=False)


@pytest.mark.parametrize("key", ["vif.default.bridge", "defaultbridge"])
def test_default_bridge_like_xl(kit: GuestKit, tmp_path: Path, guest_name: str,
                                xl_conf: Path, bridge: str, key: str) -> None:
    _install(xl_conf, f'{key} = "{bridge}"\n')
    by_xl, by_xentool = _create_both(kit, tmp_path, guest_name, "vif = [ '' ]\n",
                                     _vif_backend)
    assert by_xentool == by_xl
    assert by_xl["bridge"] == bridge
    # A vif that names its bridge keeps it.
    by_xl, by_xentool = _create_both(kit, tmp_path, guest_name,
                                     "vif = [ 'bridge=xenbr0' ]\n", _vif_backend)
    assert by_xentool == by_xl
    assert by_xl["bridge"] == "xenbr0"


def test_vm_cpumask_like_xl(kit: GuestKit, tmp_path: Path, guest_name: str,
                            xl_conf: Path) -> None:
    _install(xl_conf, 'vm.cpumask = "1"\n')
    by_xl, by_xentool = _create_both(kit, tmp_path, guest_name, "vcpus = 2\n", _affinity)
    assert by_xentool == by_xl
    assert by_xl == ["1 / all"] * 2
    # -i ignores the mask, as with xl.
    by_xl, by_xentool = _create_both(kit, tmp_path, guest_name, "vcpus = 2\n", _affinity,
                                     "-i")
    assert by_xentool == by_xl == ["all / all"] * 2


def test_global_lock_makes_xl_and_xentool_take_turns(kit: GuestKit, tmp_path: Path,
                                                     guest_name: str, xl_conf: Path) -> None:
    lock = tmp_path / "xl.lock"
    _install(xl_conf, f'autoballoon = "on"\nlockfile = "{lock}"\n')
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.lockf(fd, fcntl.LOCK_EX)  # as a running xl create holds it
    procs = {}
    try:
        for tool in ("xl", "xentool"):
            name = f"{guest_name}-{tool[:2]}"
            cfg = tmp_path / f"{name}.cfg"
            cfg.write_text(kit.tiny_cfg(name, wait=True))
            argv = (["xl"] if tool == "xl" else [*XENTOOL])
            procs[name] = subprocess.Popen([*argv, "create", "-p", "-e", str(cfg)],
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True)
        time.sleep(4)
        # Both wait for the lock: neither has exited nor created its domain.
        assert all(p.poll() is None for p in procs.values())
        assert not set(procs) & domain_names()
    finally:
        os.close(fd)  # releases the lock
    try:
        for p in procs.values():
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
        assert set(procs) <= domain_names()
    finally:
        for name in procs:
            xl("destroy", name, check=False)


def test_dry_run_creates_nothing(kit: GuestKit, tmp_path: Path, guest_name: str,
                                 xl_conf: Path) -> None:
    _install(xl_conf, 'vif.default.bridge = "xenbr0"\n')
    cfg = tmp_path / "g.cfg"
    cfg.write_text(kit.tiny_cfg(guest_name, more="vif = [ 'mac=00:16:3e:00:00:01' ]\n"))
    r_xl = xl("-N", "create", str(cfg))
    r_xt = xentool("-N", "create", str(cfg))
    assert guest_name not in domain_names()
    assert r_xt.stderr == r_xl.stderr == f"Parsing config from {cfg}\n"
    j_xl, j_xt = json.loads(r_xl.stdout), json.loads(r_xt.stdout)
    assert j_xt["c_info"]["name"] == j_xl["c_info"]["name"] == guest_name
    # The default bridge of xl.conf shows in the printed vif, as in xl's.
    assert j_xt["nics"][0]["bridge"] == j_xl["nics"][0]["bridge"] == "xenbr0"
    # A verb without a dry run refuses -N with xl's message and status.
    r_xl = xl("-N", "list", check=False)
    r_xt = xentool("-N", "list", check=False)
    assert (r_xt.returncode, r_xt.stderr) == (r_xl.returncode, r_xl.stderr) == (
        1, "command does not implement -N (dryrun) option\n")
    assert r_xt.stdout == r_xl.stdout == ""


def test_verb_prefixes_like_xl(xl_conf: Path) -> None:
    def names(out: str) -> list[str]:
        return [line.split()[0] for line in out.splitlines()[1:]]

    assert names(xentool("li").stdout) == names(xl("li").stdout) == names(xl("list").stdout)
    assert xentool("domn", "0").stdout == xl("domn", "0").stdout == "Domain-0\n"
    for word in ("c", "vcpu-"):  # ambiguous for xl: the same failure
        r_xl, r_xt = xl(word, check=False), xentool(word, check=False)
        assert (r_xt.returncode, r_xt.stderr) == (r_xl.returncode, r_xl.stderr) == (
            1, "command not implemented\n")
