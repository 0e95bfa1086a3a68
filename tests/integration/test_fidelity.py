"""Accepted means applied: the same xl.cfg given to xl and to xentool gives the same guest.

Each config is created paused once by ``xl create`` and once by ``xentool create``; what
the hypervisor then reports for the two domains is read back with xl (the oracle) and
compared: scheduler weight and cap, vCPU hard and soft affinity, cpupool.  And on_* actions
happen with nothing but ``xentool create`` run, as they do with nothing but ``xl create``.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .helpers import XENTOOL, GuestKit, domain_names, private_cpupool, wait_for_console, xentool, xl

pytestmark = pytest.mark.xen


def _sched(name: str) -> tuple[str, str]:
    """(weight, cap) of ``xl sched-credit2 -d NAME`` (the testbed's default scheduler)."""
    row = xl("sched-credit2", "-d", name).stdout.splitlines()[1].split()
    return row[2], row[3]


def _affinity(name: str) -> list[str]:
    """The 'Affinity (Hard / Soft)' column of every vCPU in ``xl vcpu-list NAME``."""
    rows = xl("vcpu-list", name).stdout.splitlines()[1:]
    return [row.split(None, 6)[6] for row in rows]


def _pool(name: str) -> str:
    """The cpupool column of ``xl list -c NAME``."""
    return xl("list", "-c", name).stdout.splitlines()[1].split()[-1]


def _both(kit: GuestKit, tmp: Path, base: str, more: str,
          read: Callable[[str], object]) -> tuple[object, object]:
    """Create the config with each tool (paused), read it back with ``read``, destroy."""
    seen = {}
    for tool in ("xl", "xentool"):
        name = f"{base}-{tool}"
        cfg = tmp / f"{name}.cfg"
        cfg.write_text(kit.tiny_cfg(name, wait=True, more=more))
        try:
            (xl if tool == "xl" else xentool)("create", "-p", "-e", str(cfg))
            seen[tool] = read(name)
        finally:
            xl("destroy", name, check=False)
    return seen["xl"], seen["xentool"]


@pytest.mark.parametrize("more", [
    "cpu_weight = 512\n",
    "cap = 30\n",
    "cpu_weight = 100\ncap = 150\nvcpus = 2\n",
])
def test_weight_and_cap_like_xl(kit: GuestKit, tmp_path: Path, guest_name: str,
                                more: str) -> None:
    by_xl, by_xentool = _both(kit, tmp_path, guest_name, more, _sched)
    assert by_xentool == by_xl
    assert by_xl != ("256", "0")  # the key did something


@pytest.mark.parametrize("more", [
    'cpus = "1"\nvcpus = 1\n',
    'cpus = "0-1,^0"\nvcpus = 2\n',
    'cpus = ["1", "0"]\nvcpus = 3\n',
    'cpus = "all"\ncpus_soft = "0"\nvcpus = 2\n',
    'cpus_soft = ["1"]\nvcpus = 2\n',
])
def test_vcpu_affinity_like_xl(kit: GuestKit, tmp_path: Path, guest_name: str,
                               more: str) -> None:
    by_xl, by_xentool = _both(kit, tmp_path, guest_name, more, _affinity)
    assert by_xentool == by_xl
    assert by_xl != ["all / all"] * len(by_xl)  # the key did something


def _tsc_mode(name: str) -> int:
    from domain_builder.xenctrl import XenCtrl

    domid = int(xl("domid", name).stdout)
    with XenCtrl() as xc:
        return xc.tsc_mode(domid)


@pytest.mark.parametrize("more, mode", [('tsc_mode = "always_emulate"\n', 1),
                                        ('tsc_mode = "native"\n', 2),
                                        ("tsc_mode = 1\n", 1)])
def test_tsc_mode_like_xl(kit: GuestKit, tmp_path: Path, guest_name: str, more: str,
                          mode: int) -> None:
    by_xl, by_xentool = _both(kit, tmp_path, guest_name, more, _tsc_mode)
    assert by_xentool == by_xl == mode


def test_cpus_without_vcpus_is_ignored_like_xl(kit: GuestKit, tmp_path: Path,
                                                guest_name: str) -> None:
    # xl sizes the affinity by vcpus/maxvcpus as parsed so far: without them, none is set.
    by_xl, by_xentool = _both(kit, tmp_path, guest_name, 'cpus = "1"\n', _affinity)
    assert by_xentool == by_xl == ["all / all"]


def test_pool_like_xl(kit: GuestKit, tmp_path: Path, guest_name: str) -> None:
    pool = f"fid{guest_name[-6:]}"
    with private_cpupool(pool, "credit", tmp_path):
        def read(name: str) -> tuple[str, list[str], str]:
            row = xl("sched-credit", "-d", name).stdout.splitlines()[1].split()
            return _pool(name), _affinity(name), row[2]

        by_xl, by_xentool = _both(kit, tmp_path, guest_name,
                                  f'pool = "{pool}"\ncpu_weight = 300\n', read)
    assert by_xentool == by_xl
    assert by_xl[0] == pool and by_xl[2] == "300"


def test_an_unknown_pool_is_refused_before_anything_exists(kit: GuestKit, cfg_file,
                                                            guest_name: str) -> None:
    cfg = cfg_file(kit.tiny_cfg(guest_name, wait=True, more='pool = "no-such-pool"\n'))
    r = xentool("create", "-p", str(cfg), check=False)
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1] == "xentool: Illegal pool specified: no-such-pool"
    assert guest_name not in domain_names()


def _gone_within(name: str, seconds: float, limit: float = 120.0) -> float:
    """Wait until ``name`` has shut down, then return how long it took to disappear after."""
    deadline = time.monotonic() + limit
    shut_at = None
    while time.monotonic() < deadline:
        rows = xl("list", check=False).stdout.splitlines()[1:]
        row = next((r.split() for r in rows if r.split()[0] == name), None)
        now = time.monotonic()
        if row is None:
            return 0.0 if shut_at is None else now - shut_at
        if shut_at is None and "s" in row[4]:
            shut_at = now
        if shut_at is not None and now - shut_at > seconds:
            break
        time.sleep(0.1)
    raise AssertionError(f"{name} still there: {xl('list').stdout}")


def test_on_poweroff_destroy_with_nothing_but_create(kit: GuestKit, cfg_file,
                                                     guest_name: str) -> None:
    # The tiny guest prints its marker and halts (SCHEDOP_shutdown poweroff).
    cfg = cfg_file(kit.tiny_cfg(guest_name, more='on_poweroff = "destroy"\n'))
    xentool("create", "-q", str(cfg))
    took = _gone_within(guest_name, 5.0)
    print(f"halted guest gone {took:.2f}s after it shut down")
    assert took <= 5.0


def test_create_e_leaves_the_halted_guest_alone(kit: GuestKit, cfg_file,
                                               guest_name: str) -> None:
    cfg = cfg_file(kit.tiny_cfg(guest_name, more='on_poweroff = "destroy"\n'))
    xentool("create", "-q", "-e", str(cfg))
    try:
        wait_for_console(guest_name, "XENTOOL-TINY-UP", timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            row = xl("list", guest_name).stdout.splitlines()[1].split()
            if "s" in row[4]:
                break
            time.sleep(0.2)
        time.sleep(6)  # longer than any monitor would take
        assert "s" in xl("list", guest_name).stdout.splitlines()[1].split()[4]
    finally:
        xl("destroy", guest_name, check=False)


def test_create_F_stays_until_the_domain_is_gone(kit: GuestKit, cfg_file,
                                                 guest_name: str) -> None:
    cfg = cfg_file(kit.tiny_cfg(guest_name, more='on_poweroff = "destroy"\n'))
    t0 = time.monotonic()
    r = subprocess.run([*XENTOOL, "create", "-q", "-F", str(cfg)],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "XENTOOL-TINY-UP" in wait_for_console(guest_name, "XENTOOL-TINY-UP", timeout=5)
    assert guest_name not in domain_names()
    print(f"create -F returned after {time.monotonic() - t0:.1f}s, the guest gone")


def _monitors() -> list[str]:
    r = subprocess.run(["pgrep", "-f", "xentool -v monitor --transient"], capture_output=True,
                       text=True, check=False)
    return r.stdout.split()


def test_the_monitor_create_started_goes_away_with_the_last_domain(
        kit: GuestKit, cfg_file, guest_name: str) -> None:
    names = [f"{guest_name}-{i}" for i in range(2)]
    for n in names:
        xentool("create", "-q", "-p", str(cfg_file(kit.tiny_cfg(n, wait=True),
                                                   name=f"{n}.cfg")))
    try:
        time.sleep(1)
        assert len(_monitors()) == 1  # one for both, like a service, not one per domain
        xentool("destroy", names[0])
        time.sleep(6)
        assert len(_monitors()) == 1  # the other domain still has its record
    finally:
        for n in names:
            xentool("destroy", n, check=False)
    deadline = time.monotonic() + 15
    while _monitors() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _monitors() == []


def _flat(obj: object, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, dict):
        out: dict[str, object] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    if isinstance(obj, list):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flat(v, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): obj}


# What `xl list -l` shows of a guest that both tools must agree on (the rest, e.g. device
# defaults libxl fills in during its own create, is listed in the module docstring).
LIST_L_KEYS = ("c_info.type", "c_info.name", "b_info.max_vcpus", "b_info.max_memkb",
               "b_info.target_memkb", "b_info.sched_params.weight", "b_info.sched_params.cap",
               "b_info.kernel", "b_info.cmdline", "on_poweroff", "on_reboot", "on_crash")


def test_xl_list_l_knows_a_xentool_guest_like_its_own(kit: GuestKit, cfg_file,
                                                      guest_name: str) -> None:
    import json

    text = kit.tiny_cfg(guest_name, wait=True, more="vcpus = 2\ncpu_weight = 384\ncap = 50\n"
                        'on_reboot = "destroy"\n')
    cfg = cfg_file(text)
    docs = {}
    for tool in ("xl", "xentool"):
        (xl if tool == "xl" else xentool)("create", "-p", "-e", str(cfg))
        try:
            r = xl("list", "-l", guest_name)
            assert xentool("list", "-l", guest_name).stdout == r.stdout  # one view
            (entry,) = json.loads(r.stdout)
            docs[tool] = _flat(entry["config"])
        finally:
            xl("destroy", guest_name, check=False)
    for key in LIST_L_KEYS:
        assert docs["xentool"].get(key) == docs["xl"].get(key), key
    assert docs["xentool"]["b_info.sched_params.weight"] == 384
