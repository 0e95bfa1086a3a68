"""``xentool migrate`` / ``migrate-receive`` in the testbed: localhost live migrations of the
stateful busybox guest (its counter goes on, its tmpfs checksum holds, no second boot),
interop with ``xl migrate`` / ``xl migrate-receive`` both ways, and failures that leave
the source guest running and nothing on the target.

Localhost as Xen's own tests do it, without ssh: ``-s ""`` makes the host argument the
whole command that runs the receiver (xl builds the same rune), here the receiver of this
host.  The receiving copy is created as ``NAME--incoming`` and renamed, so xenconsoled
writes its console to ``guest-NAME--incoming.log``.  XENTOOL_MIGRATE_ROUNDS migrations in
a row (1 in CI; the issue's bar is 10).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xentool.journal import traced_steps

from .helpers import FULL_FAULT_WALK, XENTOOL, GuestKit, TcpPeer, console_log, domid_of, xentool, xl
from .test_create_faults import settle, snapshot
from .test_save import assert_continues, counters, start_stateful

pytestmark = pytest.mark.xen

ROUNDS = int(os.environ.get("XENTOOL_MIGRATE_ROUNDS", "1"))
XENTOOL_RECEIVER = f"exec {sys.executable} -m xentool migrate-receive -e"
XL_RECEIVER = "exec xl migrate-receive -e"


def incoming(name: str) -> str:
    return f"{name}--incoming"


def size(name: str) -> int:
    try:
        return console_log(name).stat().st_size
    except FileNotFoundError:
        return 0


def last_counter(name: str) -> int:
    seen = []
    for log in (name, incoming(name)):
        try:
            seen += counters(console_log(log).read_text(errors="replace"))
        except FileNotFoundError:
            pass
    assert seen, f"no counter on the console of {name}"
    return max(seen)


def uuid_of(name: str) -> str:
    """The domain's handle in the hypervisor, as ``xl list -v`` shows it."""
    lines = xl("list", "-v", name).stdout.splitlines()
    return lines[1].split()[lines[0].split().index("UUID")]


def sizes(name: str) -> dict[str, int]:
    return {log: size(log) for log in (name, incoming(name))}


def target_log(name: str) -> str:
    """The console log the arrived guest writes to (xenconsoled names it when the guest
    arrives, as NAME--incoming)."""
    return incoming(name) if console_log(incoming(name)).exists() else name


def migrate_env(**kw: str) -> dict[str, str]:
    return {**os.environ, "XENTOOL_NO_DAEMON": "1", **kw}


def run_migrate(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*XENTOOL, "migrate", *args],
                          capture_output=True, text=True, timeout=900,
                          env=migrate_env(**env))


def check_moved(name: str, old_domid: int | None, uuid: str, offsets: dict[str, int],
                last: int, checksum: str) -> None:
    """The guest runs under its name in a new domain with its uuid; nothing of the old
    one is left; its state went with it."""
    new = domid_of(name)
    assert new is not None and new != old_domid, (old_domid, new)
    assert domid_of(f"{name}--migratedaway") is None
    assert domid_of(incoming(name)) is None
    assert uuid_of(name) == uuid
    log = target_log(name)
    assert_continues(log, offsets[log], last, checksum)


def test_localhost_live_migrations(kit: GuestKit, tmp_path: Path, guest_name: str,
                                   tcp_peer: TcpPeer) -> None:
    """XENTOOL_MIGRATE_ROUNDS (1; the issue's bar: 10) localhost migrations of the stateful
    guest: its counter, tmpfs file and TCP connection to dom0 go with it every time."""
    before = snapshot()
    checksum = start_stateful(kit, tmp_path, guest_name, tcp_peer)
    uuid = uuid_of(guest_name)
    try:
        for n in range(ROUNDS):
            old = domid_of(guest_name)
            tcp_sent = tcp_peer.last()
            last = last_counter(guest_name)
            offsets = sizes(guest_name)
            t0 = time.monotonic()
            r = run_migrate("--live", "-s", "", guest_name, XENTOOL_RECEIVER)
            took = time.monotonic() - t0
            assert r.returncode == 0, r.stderr
            assert "Traceback" not in r.stderr
            for line in ("migration target: Ready to receive domain.",
                         "migration sender: Target has acknowledged transfer.",
                         "migration sender: Giving target permission to start.",
                         "migration target: Got permission, starting domain.",
                         "migration sender: Target reports successful startup."):
                assert line in r.stderr, r.stderr
            summary = r.stderr.strip().splitlines()[-1]
            print(f"migration {n + 1}/{ROUNDS}: {took:.1f}s; {summary}")
            check_moved(guest_name, old, uuid, offsets, last, checksum)
            tcp_peer.assert_holds(tcp_sent)
    finally:
        xentool("destroy", guest_name, check=False)
    assert not settle(before), "migrations leaked"


def test_xl_migrate_to_xentool_and_back(kit: GuestKit, tmp_path: Path,
                                        guest_name: str) -> None:
    """``xentool migrate`` to ``xl migrate-receive``, then ``xl migrate`` to ``xentool
    migrate-receive``: the stream and the handshake are xl's both ways.  xl migrates only
    live and needs log-dirty mode, which a Xen without shadow paging (the testbed's) lacks
    for PV guests: that direction is then skipped, once the guest is seen running on."""
    checksum = start_stateful(kit, tmp_path, guest_name)
    uuid = uuid_of(guest_name)
    try:
        for sender, receiver in (("xentool", XL_RECEIVER), ("xl", XENTOOL_RECEIVER)):
            old = domid_of(guest_name)
            last = last_counter(guest_name)
            offsets = sizes(guest_name)
            t0 = time.monotonic()
            if sender == "xl":
                r = subprocess.run(["xl", "migrate", "-s", "", guest_name, receiver],
                                   capture_output=True, text=True, timeout=900)
            else:
                r = run_migrate("-s", "", guest_name, receiver)
            print(f"{sender} migrate -> {receiver.split()[1]}: "
                  f"{time.monotonic() - t0:.1f}s, exit {r.returncode}")
            if sender == "xl" and "Failed to enable logdirty: 95" in r.stderr:
                assert domid_of(guest_name) == old
                log = target_log(guest_name)
                assert_continues(log, offsets[log], last, checksum)
                pytest.skip("xl migrate: no log-dirty mode for PV guests on this Xen "
                            "(EOPNOTSUPP); xentool -> xl migrate-receive passed")
            assert r.returncode == 0, r.stderr
            assert "Migration successful." in r.stderr, r.stderr
            check_moved(guest_name, old, uuid, offsets, last, checksum)
    finally:
        xl("destroy", guest_name, check=False)


def test_a_failed_migration_leaves_the_source_running(kit: GuestKit, tmp_path: Path,
                                                      guest_name: str) -> None:
    """A receiver that is not there, failures injected at steps of the sender (before,
    while and after the guest is suspended, once the target holds a full copy) and a
    sender killed while the guest is suspended: each time the source guest runs on with
    its state, its name is its own, and nothing is left on the target side."""
    checksum = start_stateful(kit, tmp_path, guest_name)
    domid = domid_of(guest_name)
    try:
        before = snapshot()
        r = run_migrate("-s", "", guest_name, "echo no receiver here >&2; exit 3")
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert "Migration failed, resuming at sender." in r.stderr, r.stderr
        assert domid_of(guest_name) == domid
        assert not settle(before)

        trace = tmp_path / "trace"
        r = run_migrate("-s", "", guest_name, XENTOOL_RECEIVER, XENTOOL_FAULT_TRACE=str(trace))
        assert r.returncode == 0, r.stderr
        domid = domid_of(guest_name)
        steps = list(traced_steps(trace, op="migrate"))
        names = [n for _, _, n in steps]
        assert {"suspend", "ready", "rename away"} <= set(names), names
        # With log-dirty mode the final round is "stop and copy", without it "stream".
        final = "stop and copy" if "stop and copy" in names else "stream"
        assert final in names, names
        full = FULL_FAULT_WALK
        chosen = {"suspend", "ready", "rename away"}
        points = [("step", k, n) for _, k, n in steps if full or n in chosen]
        points += [("kill", k, n) for _, k, n in steps if n == final]
        failures = []
        before = snapshot()
        for mode, k, name in points:
            last = last_counter(guest_name)
            log = target_log(guest_name)
            offset = size(log)
            r = run_migrate("-s", "", guest_name, XENTOOL_RECEIVER,
                            XENTOOL_FAULT_INJECT=f"{mode}:{k}@migrate")
            if mode == "step":
                assert r.returncode != 0 and "Traceback" not in r.stderr, (name, r.stderr)
                assert "Migration failed, resuming at sender." in r.stderr, (name, r.stderr)
            else:
                assert r.returncode == -9, (name, r.returncode, r.stderr)
                # The next migrate finishes the rollback first (then finds no receiver).
                r = run_migrate("-s", "", guest_name, "exit 3")
                assert r.returncode != 0, (name, r.stderr)
            if domid_of(guest_name) != domid:
                failures.append(f"{mode}:{k} ({name}): the guest is not domain {domid}")
                break
            try:
                assert_continues(log, offset, last, checksum, timeout=120)
            except AssertionError as e:
                failures.append(f"{mode}:{k} ({name}): {e}")
            leaks = settle(before, timeout=60)
            if leaks:
                failures.append(f"{mode}:{k} ({name}): {'; '.join(leaks)}")
        print(f"migrate fault walk: {len(points)} points of {len(steps)} steps, "
              f"{len(failures)} failures")
        assert not failures, "\n".join(failures)
    finally:
        xentool("destroy", guest_name, check=False)
        xentool("destroy", incoming(guest_name), check=False)


def test_migrate_refuses_domain_0_and_unknown_domains() -> None:
    r = run_migrate("-s", "", "0", XENTOOL_RECEIVER)
    assert r.returncode != 0 and "domain 0" in r.stderr and "Traceback" not in r.stderr
    r = run_migrate("-s", "", "no-such-guest-xyz", XENTOOL_RECEIVER)
    assert r.returncode != 0 and "no-such-guest-xyz" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert re.search(r"\S", r.stderr)
