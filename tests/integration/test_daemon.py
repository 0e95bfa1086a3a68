"""xentoold in the testbed: commands run through the daemon give what they give in-process.

The daemon listens on a private socket in a temporary directory, never on the default
``/run/xentool/xentoold.sock``: other test runs in the same dom0 would be routed through it.
It is stopped at the end whatever happens.  Each command is run twice with ``python3 -m
xentool``: once with ``XENTOOL_DAEMON_SOCKET`` naming the daemon, once with
``XENTOOL_NO_DAEMON=1``; stdout, stderr and exit status must be the same bytes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import GuestKit, Xentoold, domain_names, xl

pytestmark = pytest.mark.xen

Result = tuple[int, str, str]


class Daemon(Xentoold):
    """The daemon under test, with the two ways to run a command."""

    def run(self, *args: str, via: bool, timeout: float = 300, **extra: str) -> Result:
        r = subprocess.run([sys.executable, "-m", "xentool", *args], capture_output=True,
                           text=True, timeout=timeout, env=self.env(via, **extra))
        return r.returncode, r.stdout, r.stderr

    def both(self, *args: str) -> tuple[Result, Result]:
        return self.run(*args, via=True), self.run(*args, via=False)


@pytest.fixture(scope="module")
def xd() -> Iterator[Daemon]:
    try:
        d = Daemon()
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield d
    finally:
        print(f"xentoold log:\n{d.stop()}")


def _forwarded(xd: Daemon) -> bool:
    r = subprocess.run([sys.executable, "-c", "from xentool import client; "
                        "print(client.forward(['--version']))"],
                       capture_output=True, text=True, timeout=60, env=xd.env(True))
    return r.stdout.endswith("0\n")


def test_the_daemon_serves_its_private_socket_only(xd: Daemon) -> None:
    assert _forwarded(xd)
    assert oct(os.stat(xd.sock).st_mode & 0o777) == "0o600"
    assert oct(os.stat(xd.dir).st_mode & 0o777) == "0o700"


def _untimed(out: str) -> list[list[str]]:
    """`list` without its Time(s) column: dom0's cpu time moves between two runs."""
    return [line.split()[:-1] for line in out.splitlines()]


def test_list(xd: Daemon) -> None:
    via, here = xd.both("list")
    assert (via[0], via[2]) == (here[0], here[2]) == (0, "")
    assert _untimed(via[1]) == _untimed(here[1])


def test_create_list_destroy(xd: Daemon, kit: GuestKit, cfg_file: object,
                             guest_name: str) -> None:
    names = {True: f"{guest_name}-d", False: f"{guest_name}-p"}
    cfgs = {via: cfg_file(kit.tiny_cfg(name), f"{name}.cfg")  # type: ignore[operator]
            for via, name in names.items()}
    try:
        created = {via: xd.run("create", "-p", str(cfgs[via]), via=via) for via in names}
        for via in names:
            assert created[via] == (0, "", f"Parsing config from {cfgs[via]}\n")
        assert set(names.values()) <= domain_names()
        # Each tool's guest through both paths (every in-process run costs the interpreter's
        # start-up under emulation: a few verbs of each output kind).
        for verb in (["list", names[True]], ["list", "-l", names[False]],
                     ["list", "-l", "--json", names[True]], ["vcpu-list", names[False]]):
            fwd, local = xd.both(*verb)
            assert fwd == local, verb
            assert fwd[0] == 0, fwd
    finally:
        destroyed = {via: xd.run("destroy", name, via=via) for via, name in names.items()}
    assert destroyed[True] == destroyed[False] == (0, "", "")
    assert not set(names.values()) & domain_names()
    # A domain that is gone: the same error either way.
    gone_via, gone_here = xd.both("destroy", names[True])
    assert gone_via == gone_here
    assert gone_via[0] != 0 and gone_via[2].count("\n") == 1


def test_invalid_config(xd: Daemon, cfg_file: object, guest_name: str) -> None:
    bad = cfg_file(f'name = "{guest_name}"\nmemory = "lots"\nvcpus = 0\n'  # type: ignore[operator]
                   'kernel = "/nonexistent"\n', "bad.cfg")
    via, here = xd.both("create", "-p", str(bad))
    assert via == here
    assert via[0] != 0 and "Traceback" not in via[2]
    via, here = xd.both("config-check", str(bad))
    assert via == here and via[0] != 0
    via, here = xd.both("create", "-p", "/nonexistent.cfg")
    assert via == here and via[0] != 0


def test_usage_errors_and_help(xd: Daemon) -> None:
    for argv in (["frobnicate"], ["list", "--bogus"], ["help", "create"], ["--version"], []):
        via, here = xd.both(*argv)
        assert via == here, argv


def _interrupted_create(xd: Daemon, cfg: Path, trace: Path, via: bool) -> Result:
    """Start a create, SIGINT it once its journal has done a step, return its result."""
    proc = subprocess.Popen([sys.executable, "-m", "xentool", "create", "-p", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=xd.env(via, XENTOOL_FAULT_TRACE=str(trace)))
    deadline = time.monotonic() + 120
    while not (trace.exists() and trace.read_text().count("\n") >= 2):
        if proc.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def test_create_interrupted_by_sigint_rolls_back(xd: Daemon, kit: GuestKit, cfg_file: object,
                                                 guest_name: str, tmp_path: Path) -> None:
    results = {}
    for via in (True, False):
        name = f"{guest_name}-{'d' if via else 'p'}"
        cfg = cfg_file(kit.tiny_cfg(name), f"{name}.cfg")  # type: ignore[operator]
        trace = tmp_path / f"trace-{name}"
        try:
            results[via] = _interrupted_create(xd, cfg, trace, via)
        finally:
            left = name in domain_names()
            if left:
                xl("destroy", name, check=False)
        assert not left, f"the interrupted create left {name} behind: {results.get(via)}"
        code, _out, err = results[via]
        assert code == 130, (via, results[via], trace.read_text())
        assert "Traceback" not in err
        assert err.splitlines()[-1] == "xentool: interrupted"
    assert results[True][0] == results[False][0]


# -- the services: the monitor and the sched-controller inside xentoold ---------------------


class HostDaemon(Xentoold):
    """A xentoold that runs its monitor and sched-controller, with its own state and run
    directories (records, locks): nothing else in dom0 is handled by it, and it meets no
    other monitor.  Commands go through it with the same directories."""

    def __init__(self, tmp: Path) -> None:
        self.dirs = {"XENTOOL_STATE_DIR": str(tmp / "state"),
                     "XENTOOL_RUN_DIR": str(tmp / "run")}
        self.policy = tmp / "sched-policy.toml"
        config = tmp / "xentoold.toml"
        # Restarts at once (no crash-loop back-off for the test's quick reboots).
        config.write_text("[monitor]\nstable_after = 0\n\n[sched]\nresync = 600\n")
        super().__init__("--config", str(config), "--sched-policy", str(self.policy),
                         env={**os.environ, **self.dirs})
        try:
            self.wait_log("daemon: monitor: watching all domains")
        except BaseException:
            print(f"xentoold log:\n{self.stop()}")
            raise

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, line: str, count: int = 1, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.text().count(line) < count:
            assert self.proc.poll() is None, self.text()
            assert time.monotonic() < deadline, f"no {line!r} in:\n{self.text()}"
            time.sleep(0.2)

    def xentool(self, *args: str, via: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([sys.executable, "-m", "xentool", *args], capture_output=True,
                           text=True, timeout=300, env=self.env(via, **self.dirs))
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r


def _domain(name: str) -> tuple[int, str] | None:
    """(domid, xl's state column) of ``name``, or None."""
    for line in xl("list").stdout.splitlines()[1:]:
        cols = line.split()
        if cols and cols[0] == name:
            return int(cols[1]), cols[4]
    return None


def _restarted(name: str, old: int, timeout: float = 180) -> int:
    """The domid of ``name`` once it runs again under another domid than ``old``."""
    deadline = time.monotonic() + timeout
    while True:
        d = _domain(name)
        if d is not None and d[0] != old and "s" not in d[1]:
            return d[0]
        assert time.monotonic() < deadline, f"{name} not restarted: {xl('list').stdout}"
        time.sleep(0.3)


def _weight(name: str) -> int:
    return int(xl("sched-credit2", "-d", name).stdout.splitlines()[1].split()[2])


def test_daemon_monitor_restarts_across_a_sigkill_and_reloads_the_policy(
        kit: GuestKit, tmp_path: Path, guest_name: str) -> None:
    """A guest created through xentoold with on_reboot="restart" is restarted by the
    daemon's monitor; with the daemon killed (SIGKILL) the guest's next reboot waits, and
    the daemon started again restarts it; its sched-controller applies the policy at its
    start and again on SIGHUP (only then: the file's stamp is kept)."""
    cfg = tmp_path / "g.cfg"
    cfg.write_text(kit.tiny_cfg(guest_name, wait=True, more='on_reboot = "restart"\n'))
    tmp_path.joinpath("sched-policy.toml").write_text(
        f'[[rule]]\nmatch = "{guest_name}"\nweight = 777\n')
    d = HostDaemon(tmp_path)
    try:
        d.xentool("create", "-q", str(cfg))
        first = _domain(guest_name)
        assert first is not None
        # A second monitor on the same directories is refused: the daemon's holds the lock.
        r = subprocess.run([sys.executable, "-m", "xentool", "monitor", "--once"],
                           capture_output=True, text=True, timeout=120,
                           env=d.env(False, **d.dirs))
        assert r.returncode != 0 and "another monitor is already running" in r.stderr, r

        d.xentool("reboot", "-F", guest_name)
        second = _restarted(guest_name, first[0])
        d.wait_log(f"restarted domain {guest_name}")  # the create is over

        d.proc.kill()
        d.proc.wait(30)
        d.xentool("reboot", "-F", guest_name, via=False)
        time.sleep(3)  # nobody handles it while the daemon is down
        now = _domain(guest_name)
        assert now is not None and now[0] == second and "s" in now[1], xl("list").stdout
        d.start()
        d.wait_log("daemon: monitor: watching all domains", 2)
        assert "1 with a xentool record, 1 shut down and waiting" in d.text(), d.text()
        _restarted(guest_name, second)
        d.wait_log(f"restarted domain {guest_name}", 2)

        deadline = time.monotonic() + 60
        while _weight(guest_name) != 777:
            assert time.monotonic() < deadline, d.text()
            time.sleep(0.3)
        # Same size and stamp: only SIGHUP makes the daemon read it again.
        st = d.policy.stat()
        with open(d.policy, "r+") as f:
            f.write(d.policy.read_text().replace("777", "555"))
        os.utime(d.policy, ns=(st.st_atime_ns, st.st_mtime_ns))
        time.sleep(3)
        assert _weight(guest_name) == 777
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while _weight(guest_name) != 555:
            assert time.monotonic() < deadline, d.text()
            time.sleep(0.3)
        assert "Traceback" not in d.text(), d.text()
    finally:
        log = d.text()
        if d.proc.poll() is None:
            d.proc.send_signal(signal.SIGTERM)
            d.proc.wait(60)
        subprocess.run([sys.executable, "-m", "xentool", "destroy", guest_name],
                       capture_output=True, text=True, timeout=120,
                       env=d.env(False, **d.dirs))
        d.stop()
        print(f"xentoold log:\n{log}")
    assert list((tmp_path / "state").rglob("*.json")) == []
