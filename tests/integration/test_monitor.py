"""The xentool monitor against the hypervisor: on_poweroff/on_reboot/on_crash actions, and
``xentool destroy`` racing an on_reboot restart.

Guests are created with ``xl create -e`` (no xl daemon, so only our monitor reacts) and
registered with ``save_domain_config`` the way the create path does; the monitor re-creates
them with ``--create-cmd 'xl create -e'`` so these tests judge the monitor, not the builder.
The monitor runs with its own state and run directories, and is stopped before any clean-up
so it cannot restart what a test destroys.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import GuestKit, xentool, xl

pytestmark = pytest.mark.xen

ROOT = Path(__file__).resolve().parents[2]


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
        self.env = {**os.environ, "XENTOOL_STATE_DIR": str(tmp / "state"),
                    "XENTOOL_RUN_DIR": str(tmp / "run"), "PYTHONPATH": str(ROOT)}
        self.log = tmp / "monitor.log"
        self.proc: subprocess.Popen | None = None
        self.extra = extra

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xentool", "-v", "monitor", "--create-cmd", "xl create -e",
             *self.extra], env=self.env, stdout=subprocess.DEVNULL,
            stderr=open(self.log, "ab"))

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

    def save(self, cfg: Path, name: str) -> None:
        """What the create path does: record the domain's config for the monitor."""
        code = ("import sys\nfrom xentool.config import load\n"
                "from xentool.monitor import save_domain_config\n"
                "save_domain_config(load(sys.argv[1]), sys.argv[2], sys.argv[1])\n")
        subprocess.run([sys.executable, "-c", code, str(cfg), uuid_of(name)], env=self.env,
                       check=True, timeout=60)


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[MonitorProc]:
    mon = MonitorProc(tmp_path, "--stable-after", "5", "--max-delay", "4")
    created: list[str] = []
    mon.created = created  # type: ignore[attr-defined]
    try:
        yield mon
    finally:
        mon.stop()
        for name in created:
            for _ in range(3):
                xl("destroy", name, check=False)
        for name in list(domains()):
            if any(name.startswith(c) for c in created):
                xl("destroy", name, check=False)
        print(mon.text())  # shown by pytest only when the test failed


def test_monitor_applies_on_poweroff_on_reboot_on_crash(kit: GuestKit, tmp_path: Path,
                                                        monitor: MonitorProc,
                                                        guest_name: str) -> None:
    names = {m: f"{guest_name}-{m[0]}" for m in ("poweroff", "reboot", "crash")}
    actions = {"poweroff": 'on_poweroff = "destroy"\n',
               "reboot": 'on_reboot = "restart"\n',
               "crash": 'on_crash = "preserve"\n'}
    monitor.created.extend(names.values())  # type: ignore[attr-defined]
    cfgs = {}
    for mode, name in names.items():
        cfg = tmp_path / f"{name}.cfg"
        # Guests start paused so each is registered before it can shut down.
        cfg.write_text(kit.busybox_cfg(name, mode=mode, memory=112, more=actions[mode]))
        cfgs[mode] = cfg
        xl("create", "-e", "-p", str(cfg))
        monitor.save(cfg, name)
    first = {mode: domains()[name]["domid"] for mode, name in names.items()}
    monitor.start()
    for name in names.values():
        xl("unpause", name)
    try:
        # on_poweroff=destroy: the domain goes away (xl -e alone would leave it in 's')
        wait_for(lambda: names["poweroff"] not in domains(), "poweroff guest destroyed",
                 timeout=400)
        # on_reboot=restart: same name and uuid, new domid, boots again
        wait_for(lambda: domains().get(names["reboot"], {}).get("domid", first["reboot"])
                 != first["reboot"], "reboot guest restarted", timeout=400)
        new = domains()[names["reboot"]]
        assert new["uuid"] == json.loads(Path(monitor.env["XENTOOL_STATE_DIR"], "domains",
                                              f"{new['uuid']}.json").read_text())["uuid"]
        # on_crash=preserve: left shut down with reason crash
        crashed = wait_for(lambda: (d := domains().get(names["crash"])) and d["shutdown"]
                           and d, "crash guest shut down", timeout=400)
        assert crashed["shutdown_reason"] == 3
        time.sleep(3)
        still = domains()[names["crash"]]
        assert still["domid"] == first["crash"] and still["shutdown_reason"] == 3
    finally:
        monitor.stop()
    log = monitor.text()
    assert "shut down (poweroff): action destroy" in log
    assert "shut down (reboot): action restart" in log
    assert "shut down (crash): action preserve" in log
    assert "Traceback" not in log


def test_destroy_racing_an_on_reboot_restart_ends_clean(kit: GuestKit, tmp_path: Path,
                                                        monitor: MonitorProc,
                                                        guest_name: str) -> None:
    """20 times: reboot (hypercall) the guest and destroy it at once, while the monitor
    destroys and re-creates it.  Afterwards: no '(null)' domain, no shut-down leftover, at
    most one domain of that name, no XenStore directory of a vanished domain."""
    name = guest_name
    monitor.created.append(name)  # type: ignore[attr-defined]
    cfg = tmp_path / "race.cfg"
    cfg.write_text(kit.tiny_cfg(name, wait=True, more='on_reboot = "restart"\n'))
    monitor.extra = ("--stable-after", "0")  # restart at once, every time: most races
    monitor.start()
    outcomes = {"destroyed": 0, "restarted": 0}
    for attempt in range(20):
        if name not in domains():
            xl("create", "-e", str(cfg))
            monitor.save(cfg, name)
        old = domains()[name]["domid"]
        reboot = subprocess.Popen([sys.executable, "-m", "xentool", "reboot", "-F", name],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env=monitor.env)
        time.sleep(0.05 * (attempt % 5))  # vary who wins
        xentool("destroy", name, check=False)
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
    print(f"race outcomes over 20 tries: {outcomes}")
    monitor.stop()
    assert "Traceback" not in monitor.text()
