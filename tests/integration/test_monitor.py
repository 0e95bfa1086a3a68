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
import re
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
            stderr=open(self.log, "ab"))  # noqa: SIM115 - the child holds it; closed on exit

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
                "from xentool.records import save_domain_config\n"
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
        for name in list(domains()):
            if any(name.startswith(c) for c in created):
                xl("destroy", name, check=False, timeout=600)
        print(mon.text())  # shown by pytest only when the test failed


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
    monitor.created.extend(names.values())  # type: ignore[attr-defined]
    for k, (action, wait) in specs.items():
        cfg = tmp_path / f"{k}.cfg"
        cfg.write_text(kit.tiny_cfg(names[k], wait=wait, more=action))
        # paused until registered: the halting guest must not shut down before that
        xl("create", "-e", "-p", str(cfg), timeout=600)
        monitor.save(cfg, names[k])
    first = {k: domains()[n] for k, n in names.items()}
    monitor.start()
    for n in names.values():
        xl("unpause", n)
    try:
        # on_poweroff=destroy: the guest halts itself; without a monitor it would stay 's'
        wait_for(lambda: names["p"] not in domains(), "halted guest destroyed", timeout=600)
        # on_reboot=restart: same name and uuid, new domid
        xentool("reboot", "-F", names["r"])
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


def test_busybox_round_trip_with_the_monitor(kit: GuestKit, tmp_path: Path,
                                             monitor: MonitorProc, guest_name: str) -> None:
    """The busybox guest that reboots by itself is restarted; the one that powers off is
    destroyed (slow under TCG: a few minutes)."""
    names = {m: f"{guest_name}-{m[0]}" for m in ("poweroff", "reboot")}
    monitor.created.extend(names.values())  # type: ignore[attr-defined]
    for mode, name in names.items():
        cfg = tmp_path / f"{name}.cfg"
        cfg.write_text(kit.busybox_cfg(name, mode=mode, memory=112))
        xl("create", "-e", "-p", str(cfg), timeout=600)
        monitor.save(cfg, name)
    first = {mode: domains()[name]["domid"] for mode, name in names.items()}
    monitor.start()
    for name in names.values():
        xl("unpause", name)
    try:
        wait_for(lambda: names["poweroff"] not in domains(), "poweroff guest destroyed",
                 timeout=1200)
        wait_for(lambda: domains().get(names["reboot"], {}).get("domid", first["reboot"])
                 != first["reboot"], "reboot guest restarted", timeout=1200)
    finally:
        monitor.stop()


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
            xl("create", "-e", str(cfg), timeout=600)
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
