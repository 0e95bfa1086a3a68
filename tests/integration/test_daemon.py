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
        for name in names.values():
            for verb in (["list", name], ["list", "-l", name], ["list", "-l", "--json", name],
                         ["domid", name], ["vcpu-list", name]):
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
