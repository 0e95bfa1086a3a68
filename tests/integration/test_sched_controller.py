"""sched-controller against the real hypervisor: dry run, --once, and reaction time to a new
domain (the bar: weight in force within 100 ms of @introduceDomain; printed)."""

# How the test times introduction (polling, see `introduction`) makes the figure slightly
# pessimistic: it includes up to one polling step and one xenstore round trip.

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from .helpers import XENTOOL, GuestKit, xentool, xl

pytestmark = pytest.mark.xen


def _weight(name: str) -> tuple[int, int]:
    row = xl("sched-credit2", "-d", name).stdout.splitlines()[1].split()
    return int(row[2]), int(row[3])


def test_dry_run_and_once(kit: GuestKit, tmp_path: Path, guest_name: str) -> None:
    cfg = tmp_path / "g.cfg"
    cfg.write_text(kit.tiny_cfg(guest_name, wait=True, more="cpu_weight = 300\n"))
    pol = tmp_path / "p.toml"
    pol.write_text(f'[[rule]]\nmatch = "{guest_name}"\ncap = 40\n')
    xl("create", "-p", str(cfg))
    try:
        assert _weight(guest_name) == (300, 0)
        out = xentool("sched-controller", "-f", str(pol), "--dry-run", "--once").stdout
        assert re.search(rf"would set domain \d+ \({re.escape(guest_name)}\) \[credit2\]: "
                         rf"cap 0 -> 40 \(rule 1 \({re.escape(guest_name)}\) \+ xl.cfg\)", out), out
        assert _weight(guest_name) == (300, 0)  # nothing changed
        r = xentool("sched-controller", "-f", str(pol), "--once")
        assert f"({guest_name}) [credit2]: cap 0 -> 40" in r.stderr
        assert _weight(guest_name) == (300, 40)  # weight kept from xl.cfg, cap from the rule
        # A second pass has nothing to do and says nothing about this guest.
        r = xentool("sched-controller", "-f", str(pol), "--once")
        assert guest_name not in r.stderr
    finally:
        xl("destroy", guest_name, check=False)


def test_bad_policy_is_one_line(tmp_path: Path) -> None:
    pol = tmp_path / "p.toml"
    pol.write_text("[[rule]]\nmatch = 'x'\nweight = 0\n")
    r = xentool("sched-controller", "-f", str(pol), "--once", check=False)
    assert r.returncode == 1
    assert r.stderr == f"xentool: {pol}: [[rule]] #1 (match x): weight 0 is out of range 1-65535\n"


def introduction(xc, xs, known: set[int], timeout: float = 120) -> tuple[int, float]:
    """(domid, time) of the next domain's introduction to xenstored, found by polling:
    the moment @introduceDomain fires, without needing a watch (which the xenbus device
    connection cannot do)."""
    deadline = time.monotonic() + timeout
    new: list[int] = []
    while not new:
        assert time.monotonic() < deadline, "no new domain"
        new = [d.domid for d in xc.domains() if d.domid not in known]
        time.sleep(0.001)
    while not xs.is_domain_introduced(new[0]):
        assert time.monotonic() < deadline, "domain never introduced"
        time.sleep(0.0005)
    return new[0], time.monotonic()


def test_new_domain_gets_its_weight_fast(kit: GuestKit, tmp_path: Path,
                                         guest_name: str) -> None:
    from domain_builder.xenctrl import XenCtrl
    from xenstore.client import Store

    pol = tmp_path / "p.toml"
    pol.write_text(f'[[rule]]\nmatch = "{guest_name}-*"\nweight = 777\n')
    log = (tmp_path / "ctl.log").open("wb")
    ctl = subprocess.Popen([*XENTOOL, "sched-controller", "-f", str(pol)],
                           stdout=log, stderr=subprocess.STDOUT)
    names = [f"{guest_name}-{i}" for i in range(5)]
    latencies = []
    try:
        time.sleep(3)  # let it connect and do its first pass
        assert ctl.poll() is None, (tmp_path / "ctl.log").read_text()
        with XenCtrl() as xc, Store.connect() as xs:
            for name in names:
                cfg = tmp_path / f"{name}.cfg"
                cfg.write_text(kit.tiny_cfg(name, wait=True))
                known = {d.domid for d in xc.domains()}
                create = subprocess.Popen(["xl", "create", "-p", str(cfg)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                domid, t_intro = introduction(xc, xs, known)
                while xc.sched_credit2(domid).weight != 777:
                    assert time.monotonic() - t_intro < 10, (tmp_path / "ctl.log").read_text()
                    time.sleep(0.001)
                latencies.append((time.monotonic() - t_intro) * 1000)
                assert create.wait(120) == 0, create.stderr.read()
        ms = sorted(latencies)
        print(f"\ncontroller reaction after @introduceDomain (ms): "
              f"{', '.join(f'{x:.1f}' for x in latencies)}; median {ms[len(ms) // 2]:.1f}")
        log.flush()
        print((tmp_path / "ctl.log").read_text())
        for n in names:
            assert _weight(n) == (777, 0)
        assert ms[len(ms) // 2] < 100, latencies
    finally:
        ctl.terminate()
        ctl.wait(10)
        log.close()
        for n in names:
            xl("destroy", n, check=False)
