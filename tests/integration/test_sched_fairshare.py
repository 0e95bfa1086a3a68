"""Fair-share proof: the weights and caps the controller sets give the CPU shares they promise.

Three CPU-bound guests share one pCPU (a private cpupool on pCPU 1, so dom0 does not compete)
under credit and under credit2.  The guests are the kit's tiny kernel spinning in a GRUB
``sleep``: 100 % of a vCPU from its first second, where a busybox guest needs minutes to boot
under emulation.  ``xentool create`` makes them; the controller finds them and gives them
weights 256/512/1024 through its policy file; over 20 s (30 s with
``XENTOOL_FULL_WINDOWS=1``) the shares must be 1:2:4 within +-10 % (relative).  Then a
weight changes at runtime (policy edit + SIGHUP): the new weight must be in force and the
shares measured in the window ending 2 s after the change must follow it.  Then a cap of
25 % must hold within +-5 points.  Every measurement is printed (run pytest with -s).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import XENTOOL, GuestKit, private_cpupool, xentool, xl

pytestmark = pytest.mark.xen

# Seconds of the 1:2:4 measurement, of the look after a change and of the cap's: CI's
# windows; XENTOOL_FULL_WINDOWS=1 the (30 s, 10 s, 15 s).
FULL_WINDOWS = os.environ.get("XENTOOL_FULL_WINDOWS", "") not in ("", "0")
WINDOW = 30.0 if FULL_WINDOWS else 20.0
STEADY_WINDOW = 10.0 if FULL_WINDOWS else 6.0
CAP_WINDOW = 15.0 if FULL_WINDOWS else 10.0
# credit2 starts every new vCPU with the same credit: the first seconds after the creates
# are not yet the steady state the weights promise.
WARMUP = 5.0


@pytest.fixture(params=["credit", "credit2"])
def one_cpu_pool(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    sched = request.param
    with private_cpupool(f"xt-fair-{sched}", sched, tmp_path) as pool:
        yield pool, sched


class Controller:
    """``xentool sched-controller`` running on a policy file of the test."""

    def __init__(self, policy: Path, log: Path) -> None:
        self.policy, self.log = policy, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, text: str) -> None:
        self.policy.write_text(text)
        self._log = self.log.open("wb")
        self.proc = subprocess.Popen(
            [*XENTOOL, "sched-controller", "-f", str(self.policy)],
            stdout=self._log, stderr=subprocess.STDOUT)

    def update(self, text: str) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.text()
        self.policy.write_text(text)
        self.proc.send_signal(signal.SIGHUP)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self._log.close()


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    c = Controller(tmp_path / "policy.toml", tmp_path / "controller.log")
    try:
        yield c
    finally:
        c.stop()
        print(f"--- controller log ---\n{c.text()}")


def policy(rules: dict[str, tuple[int, int]]) -> str:
    return "".join(f'[[rule]]\nmatch = "{n}"\nweight = {w}\ncap = {c}\n\n'
                   for n, (w, c) in rules.items())


def cpu_times(xc, domids: dict[str, int]) -> tuple[float, dict[str, int]]:
    infos = {d.domid: d for d in xc.domains()}
    return time.monotonic(), {n: infos[d].cpu_time_ns for n, d in domids.items()}


def measure(xc, domids: dict[str, int],
            seconds: float) -> tuple[dict[str, float], dict[str, float]]:
    """(share of the three, percent of one pCPU) per guest over ``seconds``."""
    t0, a = cpu_times(xc, domids)
    time.sleep(seconds)
    t1, b = cpu_times(xc, domids)
    used = {n: b[n] - a[n] for n in domids}
    total = sum(used.values())
    return ({n: u / total for n, u in used.items()},
            {n: u / ((t1 - t0) * 1e9) * 100 for n, u in used.items()})


def sched_weight(sched: str, name: str) -> tuple[int, int]:
    row = xl(f"sched-{sched}", "-d", name).stdout.splitlines()[1].split()
    return int(row[2]), int(row[3])


def wait_weight(sched: str, name: str, want: tuple[int, int], timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if sched_weight(sched, name) == want:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"{name}: {sched_weight(sched, name)} != {want} after {timeout}s")


def report(title: str, shares: dict[str, float], pct: dict[str, float],
           expected: dict[str, float]) -> None:
    print(f"\n{title}")
    for n in shares:
        print(f"  {n:<28} share {shares[n] * 100:6.2f} %  expected {expected[n] * 100:6.2f} %"
              f"  deviation {(shares[n] / expected[n] - 1) * 100:+6.2f} %  "
              f"({pct[n]:6.2f} % of the pCPU)")


def test_fair_share_weights_runtime_change_and_cap(
        kit: GuestKit, tmp_path: Path, guest_name: str, one_cpu_pool: tuple[str, str],
        controller: Controller) -> None:
    from domain_builder.xenctrl import XenCtrl

    pool, sched = one_cpu_pool
    prefix = guest_name[:18]
    names = [f"{prefix}-a", f"{prefix}-b", f"{prefix}-c"]
    a, b, c = names
    weights = {a: (256, 0), b: (512, 0), c: (1024, 0)}
    controller.start(policy(weights))
    try:
        for n in names:
            cfg = tmp_path / f"{n}.cfg"
            cfg.write_text(kit.tiny_cfg(n, wait=True,
                                        more=f'pool = "{pool}"\ncpus = "1"\n'))
            xentool("create", "-e", str(cfg), timeout=300)
        # The controller set the weights on introduction (xl is the oracle).
        for n in names:
            wait_weight(sched, n, weights[n], timeout=10)
        domids = {n: int(xl("domid", n).stdout) for n in names}
        with XenCtrl() as xc:
            measure(xc, domids, WARMUP)
            # 1:2:4 over CI's window (the issue's: 30 s).
            shares, pct = measure(xc, domids, WINDOW)
            expected = {a: 1 / 7, b: 2 / 7, c: 4 / 7}
            report(f"[{sched}] weights 256/512/1024 over {WINDOW:.0f} s", shares, pct, expected)
            for n in names:
                assert abs(shares[n] / expected[n] - 1) <= 0.10, (n, shares)

            # Runtime change: a goes from 256 to 2048 -> 4:1:2.
            t_change = time.monotonic()
            controller.update(policy({a: (2048, 0), b: (512, 0), c: (1024, 0)}))
            while sched_weight(sched, a) != (2048, 0):
                assert time.monotonic() - t_change < 2.0, controller.text()
                time.sleep(0.02)
            applied = time.monotonic() - t_change
            left = 2.0 - (time.monotonic() - t_change)
            shares, pct = measure(xc, domids, left)
            expected = {a: 4 / 7, b: 1 / 7, c: 2 / 7}
            report(f"[{sched}] weight of a 256 -> 2048: applied {applied * 1000:.0f} ms after "
                   f"SIGHUP, shares over the following {left:.2f} s", shares, pct, expected)
            for n in names:
                assert abs(shares[n] / expected[n] - 1) <= 0.25, (n, shares)
            # A longer look confirms the new steady state at the tolerance.
            shares, pct = measure(xc, domids, STEADY_WINDOW)
            report(f"[{sched}] ... and over the next {STEADY_WINDOW:.0f} s", shares, pct,
                   expected)
            for n in names:
                assert abs(shares[n] / expected[n] - 1) <= 0.10, (n, shares)

            # A cap of 25 % on c (weight 1024, fair share 57 %): c gets 25 %, a:b share the
            # other 75 % by weight 256:512.
            controller.update(policy({a: (256, 0), b: (512, 0), c: (1024, 25)}))
            wait_weight(sched, c, (1024, 25), timeout=5)
            shares, pct = measure(xc, domids, CAP_WINDOW)
            expected = {a: 0.25, b: 0.50, c: 0.25}
            report(f"[{sched}] cap 25 on c over {CAP_WINDOW:.0f} s", shares, pct, expected)
            assert abs(pct[c] - 25.0) <= 5.0, pct
        # sched-stats reports the same picture.
        out = xentool("sched-stats", "-p", pool, "-i", "5", *names).stdout
        print(out)
        rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
        assert set(rows) == set(names)
        assert rows[c][4:6] == ["1024", "25"] and rows[c][3] == sched
        assert abs(float(rows[c][7]) - 25.0) <= 5.0
        assert float(rows[c][9]) == pytest.approx(25.0, abs=0.1)  # expected share
    finally:
        for n in names:
            xentool("destroy", n, check=False)
