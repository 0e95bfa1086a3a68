"""The xentool monitor against the hypervisor: on_poweroff/on_reboot/on_crash actions, a
busybox round trip, and ``xentool destroy`` racing an on_reboot restart.

Everything goes through xentool's own path: ``xentool create`` makes the guests and records
their configuration, the monitor re-creates them with xentool's create, ``xentool destroy``
ends them.  The monitor and every xentool command of a test share one state and one run
directory, so they read the same records and take the same locks.  A monitor that holds its
lock is already running when the guests are created, so create starts no monitor of its own;
the monitor is stopped before any clean-up so it cannot restart what a test destroys.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import XENTOOL, GuestKit, xentool

pytestmark = pytest.mark.xen

ROOT = Path(__file__).resolve().parents[2]
# Destroy-vs-restart rounds: one in CI, the full 20 with XENTOOL_RACE_ROUNDS=20.
RACE_ROUNDS = int(os.environ.get("XENTOOL_RACE_ROUNDS", "1"))


def domains() -> dict[str, dict]:
    """name -> xentool list --json row (names may be None: reported as '(null)')."""
    rows = json.loads(xentool("list", "--json").stdout)
    return {r["name"] if r["name"] is not None else "(null)": r for r in rows}


def uuid_of(name: str) -> str:
    return domains()[name]["uuid"]


def wait_for(pred, what: str, timeout: float = 240.0, step: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


class MonitorProc:
    def __init__(self, tmp: Path, *extra: str) -> None:
        self.state = tmp / "state"
        self.env = {**os.environ, "XENTOOL_STATE_DIR": str(self.state),
                    "XENTOOL_RUN_DIR": str(tmp / "run"), "PYTHONPATH": str(ROOT)}
        self.log = tmp / "monitor.log"
        self.proc: subprocess.Popen | None = None
        self.extra = extra
        self.created: list[str] = []

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*XENTOOL, "-v", "monitor", *self.extra], env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "ab"))  # noqa: SIM115 - the child holds it; closed on exit
        # create must find the monitor holding its lock, or it would start one of its own
        wait_for(lambda: "monitor: watching" in self.text() or self.proc.poll() is not None,
                 "the monitor to start", timeout=120, step=0.1)
        assert self.proc.poll() is None, self.text()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def xentool(self, *args: str, check: bool = True, timeout: float = 600
                ) -> subprocess.CompletedProcess[str]:
        return xentool(*args, check=check, timeout=timeout, env=self.env)

    def create(self, cfg: Path, *flags: str) -> None:
        self.xentool("create", "-q", *flags, str(cfg))

    def records(self) -> list[Path]:
        return sorted(self.state.rglob("*.json")) if self.state.exists() else []


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[MonitorProc]:
    mon = MonitorProc(tmp_path, "--stable-after", "5", "--max-delay", "4")
    try:
        yield mon
    finally:
        mon.stop()
        for name in list(domains()):
            if any(name.startswith(c) for c in mon.created):
                mon.xentool("destroy", name, check=False)
        print(mon.text())  # shown by pytest only when the test failed
    # xentool destroy removed what create recorded
    assert mon.records() == [], mon.records()


def crash(name: str) -> None:
    """SCHEDOP_remote_shutdown with reason crash: what a guest panic looks like to Xen."""
    code = ("import sys\nfrom domain_builder.xenctrl import XenCtrl, ShutdownReason\n"
            "with XenCtrl() as xc: xc.shutdown(int(sys.argv[1]), ShutdownReason.CRASH)\n")
    subprocess.run([sys.executable, "-c", code, str(domains()[name]["domid"])], check=True,
                   timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_monitor_applies_the_configured_actions(kit: GuestKit, tmp_path: Path,
                                                monitor: MonitorProc, guest_name: str) -> None:
    """Tiny guests (seconds to create under TCG): one halts by itself (on_poweroff=destroy),
    one is rebooted (on_reboot=restart), two crash (on_crash=preserve / rename-restart)."""
    specs = {"p": ('on_poweroff = "destroy"\n', False),
             "r": ('on_reboot = "restart"\n', True),
             "c": ('on_crash = "preserve"\n', True),
             "n": ('on_crash = "rename-restart"\n', True)}
    names = {k: f"{guest_name}-{k}" for k in specs}
    monitor.created.extend(names.values())
    monitor.start()
    for k, (action, wait) in specs.items():
        cfg = tmp_path / f"{k}.cfg"
        cfg.write_text(kit.tiny_cfg(names[k], wait=wait, more=action))
        # paused: the halting guest must not shut down before the first domid is known
        monitor.create(cfg, "-p")
    first = {k: domains()[n] for k, n in names.items()}
    for n in names.values():
        monitor.xentool("unpause", n)
    try:
        # on_poweroff=destroy: the guest halts itself; without a monitor it would stay 's'
        wait_for(lambda: names["p"] not in domains(), "halted guest destroyed", timeout=600)
        # on_reboot=restart: same name and uuid, new domid
        monitor.xentool("reboot", "-F", names["r"])
        new = wait_for(lambda: (d := domains().get(names["r"])) and
                       d["domid"] != first["r"]["domid"] and d, "guest restarted", timeout=600)
        assert new["uuid"] == first["r"]["uuid"] and not new["shutdown"]
        # on_crash=preserve: left as it is, reason crash
        crash(names["c"])
        time.sleep(8)
        kept = domains()[names["c"]]
        assert kept["domid"] == first["c"]["domid"] and kept["shutdown_reason"] == 3
        # on_crash=rename-restart: the crashed one kept as NAME-<UTC time>, a new NAME runs
        crash(names["n"])
        renamed = wait_for(lambda: [n for n in domains() if n.startswith(names["n"] + "-")],
                           "crashed guest preserved under a new name", timeout=600)
        assert re.fullmatch(re.escape(names["n"]) + r"-\d{8}T\d{4}Z", renamed[0])
        old = domains()[renamed[0]]
        assert old["domid"] == first["n"]["domid"] and old["shutdown_reason"] == 3
        assert old["uuid"] != first["n"]["uuid"]
        again = wait_for(lambda: domains().get(names["n"]), "rename-restart re-created",
                         timeout=600)
        assert again["uuid"] == first["n"]["uuid"] and again["domid"] != old["domid"]
    finally:
        monitor.stop()
    log = monitor.text()
    for what in ("shut down (poweroff): action destroy", "shut down (reboot): action restart",
                 "shut down (crash): action preserve",
                 "shut down (crash): action rename-restart"):
        assert what in log, log
    assert "Traceback" not in log


def test_busybox_reboot_round_trip_with_the_monitor(kit: GuestKit, tmp_path: Path,
                                                    monitor: MonitorProc,
                                                    guest_name: str) -> None:
    """A Linux guest that reboots by itself is restarted (a guest that halts by itself is
    the tiny one above: one busybox boot is minutes under emulation, two side by side
    more than twice that)."""
    monitor.created.append(guest_name)
    monitor.start()
    cfg = tmp_path / f"{guest_name}.cfg"
    cfg.write_text(kit.busybox_cfg(guest_name, mode="reboot", memory=112))
    monitor.create(cfg)
    first = domains()[guest_name]
    try:
        again = wait_for(lambda: (d := domains().get(guest_name)) and
                         d["domid"] != first["domid"] and d, "reboot guest restarted",
                         timeout=1200)
        assert again["uuid"] == first["uuid"]
    finally:
        monitor.stop()
    assert "shut down (reboot): action restart" in monitor.text(), monitor.text()


def test_destroy_racing_an_on_reboot_restart_ends_clean(kit: GuestKit, tmp_path: Path,
                                                        monitor: MonitorProc,
                                                        guest_name: str) -> None:
    """RACE_ROUNDS times: reboot (hypercall) the guest and destroy it at once, while the
    monitor destroys and re-creates it.  Afterwards: no '(null)' domain, no shut-down
    leftover, at most one domain of that name, no XenStore directory of a vanished domain."""
    name = guest_name
    monitor.created.append(name)
    cfg = tmp_path / "race.cfg"
    cfg.write_text(kit.tiny_cfg(name, wait=True, more='on_reboot = "restart"\n'))
    monitor.extra = ("--stable-after", "0")  # restart at once, every time: most races
    monitor.start()
    outcomes = {"destroyed": 0, "restarted": 0}
    for attempt in range(RACE_ROUNDS):
        if name not in domains():
            monitor.create(cfg)
        old = domains()[name]["domid"]
        reboot = subprocess.Popen([*XENTOOL, "reboot", "-F", name],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env=monitor.env)
        time.sleep(0.05 * (attempt % 5))  # vary who wins
        monitor.xentool("destroy", name, check=False)
        reboot.wait(60)

        def settled() -> bool:
            d = domains()
            mine = [r for n, r in d.items() if n == name]
            return (all(not r["shutdown"] and not r["dying"] for r in mine)
                    and "(null)" not in d)

        wait_for(settled, f"attempt {attempt}: a settled state", timeout=120)
        time.sleep(2)  # a restart may still be on its way: it must not leave debris either
        wait_for(settled, f"attempt {attempt}: a settled state", timeout=120)
        d = domains()
        assert "(null)" not in d, f"attempt {attempt}: {d}"
        assert sum(n == name for n in d) <= 1
        live = {str(r["domid"]) for r in d.values()}
        ls = subprocess.run(["xenstore-list", "/local/domain"], capture_output=True, text=True)
        assert str(old) not in ls.stdout.split() or str(old) in live, \
            f"attempt {attempt}: /local/domain/{old} left behind"
        outcomes["restarted" if name in d else "destroyed"] += 1
    print(f"race outcomes over {RACE_ROUNDS} tries: {outcomes}")
    monitor.stop()
    assert "Traceback" not in monitor.text()
