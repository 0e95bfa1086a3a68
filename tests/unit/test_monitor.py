"""The domain monitor: records, action policy, back-off and the decision loop with fakes."""

from __future__ import annotations

import contextlib
import json
import sys
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from xentool import monitor as m
from xentool import records
from xentool.config import load
from xentool.errors import XentoolError
from xentool.state import STATE_DIR_ENV

U1 = "11111111-2222-3333-4444-555555555555"
U2 = "66666666-7777-8888-9999-aaaaaaaaaaaa"


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))
    return tmp_path / "state"


def rec(uuid: str = U1, name: str = "g", **kw) -> records.DomainRecord:
    return records.DomainRecord(uuid=uuid, name=name, config_path="/etc/xen/g.cfg",
                                config_text='name = "g"\n', **kw)


# -- records --------------------------------------------------------------------------------


def test_record_roundtrip_and_location(state: Path) -> None:
    r = rec(overrides=("memory=64",), on_crash="restart", restart_at=12.5, fast_restarts=2)
    path = records.write_record(r)
    assert path == state / "domains" / f"{U1}.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert records.load_domain_config(U1) == r
    assert records.load_domain_config(uuidlib.UUID(U1)) == r
    assert json.loads(path.read_text())["version"] == 1
    records.remove_domain_config(U1)
    assert records.load_domain_config(U1) is None
    records.remove_domain_config(U1)  # twice is fine


def test_record_validation() -> None:
    with pytest.raises(XentoolError, match="invalid uuid 'nope'"):
        rec(uuid="nope")
    with pytest.raises(XentoolError, match="invalid on_crash 'explode'"):
        rec(on_crash="explode")
    with pytest.raises(XentoolError, match=r"x\.json: not a valid domain record"):
        records.DomainRecord.from_json('{"version": 2}', "x.json")
    with pytest.raises(XentoolError, match="not a valid domain record"):
        records.DomainRecord.from_json("[1,", "x.json")


def test_save_domain_config_from_a_real_config(tmp_path: Path) -> None:
    cfg = tmp_path / "g.cfg"
    cfg.write_text('name = "web"\nkernel = "k"\nmemory = 64\non_crash = "rename-restart"\n'
                   'on_reboot = "preserve"\n')
    config = load(str(cfg), ["memory=96"])
    records.save_domain_config(config, U2, str(cfg), ["memory=96"], cwd="/srv")
    r = records.load_domain_config(U2)
    assert r is not None
    assert (r.name, r.config_path, r.overrides, r.cwd) == ("web", str(cfg), ("memory=96",),
                                                           "/srv")
    assert r.config_text == cfg.read_text()
    assert (r.on_poweroff, r.on_reboot, r.on_crash, r.on_watchdog) == \
        ("destroy", "preserve", "rename-restart", "destroy")
    assert r.saved_at == r.started_at > 0 and r.restart_at is None


def test_resave_keeps_the_crash_loop_count(tmp_path: Path) -> None:
    cfg = tmp_path / "g.cfg"
    cfg.write_text('name = "web"\nkernel = "k"\n')
    records.write_record(rec(uuid=U2, fast_restarts=3))
    records.save_domain_config(load(str(cfg)), U2, str(cfg))
    assert records.load_domain_config(U2).fast_restarts == 3


# -- policy -----------------------------------------------------------------------------------


def test_reason_to_action_like_xl() -> None:
    r = rec(on_poweroff="preserve", on_reboot="rename-restart", on_crash="coredump-restart",
            on_watchdog="restart", on_soft_reset="destroy")
    assert [r.action(x) for x in (0, 1, 2, 3, 4, 5, 9, None)] == [
        "preserve", "rename-restart", None, "coredump-restart", "restart", "destroy",
        "destroy", "destroy"]


@pytest.mark.parametrize("action, plan", [
    ("destroy", m.Plan(False, "destroy")), ("restart", m.Plan(False, "restart")),
    ("preserve", m.Plan(False, "preserve")), ("rename-restart", m.Plan(False, "rename-restart")),
    ("coredump-destroy", m.Plan(True, "destroy")), ("coredump-restart", m.Plan(True, "restart")),
    ("soft-reset", m.Plan(False, "destroy")),  # xl: libxl refuses PV, then destroys
])
def test_plan_for(action: str, plan: m.Plan) -> None:
    assert m.plan_for(action) == plan


def test_backoff_doubles_caps_gives_up_and_resets() -> None:
    b = m.Backoff(stable_after=60, base=1, factor=2, max_delay=5, max_fast_restarts=5)
    fast, delays = 0, []
    for _ in range(5):
        d, fast = b.next(uptime=3, fast_before=fast)
        delays.append(d)
    assert delays == [1, 2, 4, 5, 5]
    assert b.next(uptime=3, fast_before=fast) == (None, 6)
    assert b.next(uptime=61, fast_before=fast) == (0.0, 0)


def test_preserved_name_is_xls_utc_suffix() -> None:
    assert m.preserved_name("web", 1700000000) == "web-20231114T2213Z"


def test_restart_argv() -> None:
    r = rec(overrides=("memory=64", "vcpus=2"))
    assert m.restart_argv(r, "/x/g.cfg", ["xentool", "create", "-q"]) == [
        "xentool", "create", "-q", "/x/g.cfg", "memory=64", "vcpus=2", f'uuid="{U1}"']


# -- the loop -------------------------------------------------------------------------------------


@dataclass
class Dom:
    domid: int
    uuid: str
    shutdown: bool = False
    dying: bool = False
    shutdown_reason: int | None = None


class FakeOps:
    def __init__(self) -> None:
        self.doms: dict[int, Dom] = {0: Dom(0, "00000000-0000-0000-0000-000000000000")}
        self.calls: list[tuple] = []
        self.next_domid = 10
        self.gone_before_destroy: set[int] = set()
        self.locked: list[int] = []
        self.dump_fails = False

    def add(self, uuid: str, reason: int | None = None) -> Dom:
        d = Dom(self.next_domid, uuid, reason is not None, False, reason)
        self.next_domid += 1
        self.doms[d.domid] = d
        return d

    def domains(self) -> list[Dom]:
        return [self.doms[k] for k in sorted(self.doms)]

    @contextlib.contextmanager
    def lock(self, domid: int) -> Iterator[None]:
        self.locked.append(domid)
        yield

    def destroy(self, domid: int) -> bool:
        self.calls.append(("destroy", domid))
        if domid in self.gone_before_destroy:
            return False
        del self.doms[domid]
        return True

    def core_dump(self, domid: int, path: str) -> None:
        self.calls.append(("core_dump", domid, path))
        if self.dump_fails:
            raise OSError(28, "No space left on device")

    def preserve(self, domid: int, new_name: str, new_uuid: str) -> None:
        self.calls.append(("preserve", domid, new_name))
        self.doms[domid].uuid = new_uuid

    def create(self, r: records.DomainRecord) -> None:
        self.calls.append(("create", r.name))
        self.add(r.uuid)


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def world() -> tuple[FakeOps, Clock, m.Monitor]:
    ops, clock = FakeOps(), Clock()
    return ops, clock, m.Monitor(ops, backoff=m.Backoff(stable_after=60, max_delay=8,
                                                        max_fast_restarts=3), clock=clock)


def test_poweroff_destroys(world) -> None:
    ops, clock, mon = world
    records.write_record(rec(started_at=clock.t - 1000))
    d = ops.add(U1, reason=0)
    mon.scan()
    assert ops.calls == [("destroy", d.domid)]
    assert ops.locked == [d.domid]
    # destroyed for good by the monitor: its record goes at once, not after a grace time
    assert records.load_domain_config(U1) is None
    mon.scan()
    assert ops.calls == [("destroy", d.domid)]


def test_reboot_restarts_with_the_saved_record(world) -> None:
    ops, clock, mon = world
    records.write_record(rec(started_at=clock.t - 1000))
    d = ops.add(U1, reason=1)
    mon.scan()
    assert ops.calls == [("destroy", d.domid), ("create", "g")]
    new = [x for x in ops.domains() if x.uuid == U1]
    assert len(new) == 1 and new[0].domid != d.domid and not new[0].shutdown
    r = records.load_domain_config(U1)
    assert r.restart_at is None and r.started_at == clock.t and r.fast_restarts == 0


def test_crash_loop_backs_off_then_gives_up(world) -> None:
    ops, clock, mon = world
    records.write_record(rec(on_crash="restart", started_at=clock.t))
    creates = []
    for expected_delay in (1, 2, 4):
        clock.t += 5  # dies 5 s after each start
        crashed = [x for x in ops.domains() if x.uuid == U1]
        if crashed:
            crashed[0].shutdown, crashed[0].shutdown_reason = True, 3
        else:
            ops.add(U1, reason=3)
        mon.scan()
        n = sum(c[0] == "create" for c in ops.calls)
        assert records.load_domain_config(U1).restart_at == clock.t + expected_delay
        clock.t += expected_delay - 0.5
        mon.scan()
        assert sum(c[0] == "create" for c in ops.calls) == n  # not yet
        assert 0 < mon.next_wakeup() <= 0.5
        clock.t += 0.5
        mon.scan()
        creates.append(sum(c[0] == "create" for c in ops.calls))
    assert creates == [1, 2, 3]
    clock.t += 5
    next(x for x in ops.domains() if x.uuid == U1).shutdown = True
    next(x for x in ops.domains() if x.uuid == U1).shutdown_reason = 3
    mon.scan()
    r = records.load_domain_config(U1)
    assert r.restart_at is None and r.fast_restarts == 4
    clock.t += 1000
    mon.scan()
    assert sum(c[0] == "create" for c in ops.calls) == 3
    assert not [x for x in ops.domains() if x.uuid == U1]


def test_stable_domain_restarts_at_once_and_resets_the_count(world) -> None:
    ops, clock, mon = world
    records.write_record(rec(started_at=clock.t - 100, fast_restarts=2))
    ops.add(U1, reason=1)
    mon.scan()
    assert [c[0] for c in ops.calls] == ["destroy", "create"]
    assert records.load_domain_config(U1).fast_restarts == 0


def test_preserve_leaves_the_domain_alone(world) -> None:
    ops, _clock, mon = world
    records.write_record(rec(on_poweroff="preserve"))
    ops.add(U1, reason=0)
    mon.scan()
    mon.scan()
    assert ops.calls == [] and ops.locked == []


def test_rename_restart_keeps_the_old_one_and_starts_a_new_one(world) -> None:
    ops, clock, mon = world
    records.write_record(rec(on_crash="rename-restart", started_at=clock.t - 1000))
    d = ops.add(U1, reason=3)
    mon.scan()
    assert ops.calls == [("preserve", d.domid, m.preserved_name("g", clock.t)),
                         ("create", "g")]
    assert ops.doms[d.domid].uuid != U1  # the kept one has a uuid of its own
    mon.scan()
    assert len(ops.calls) == 2  # the preserved domain has no record: left alone


def test_coredump_restart_destroys_and_restarts(world) -> None:
    ops, clock, mon = world
    records.write_record(rec(on_crash="coredump-restart", started_at=clock.t - 1000))
    ops.add(U1, reason=3)
    mon.scan()
    assert [c[0] for c in ops.calls] == ["core_dump", "destroy", "create"]
    assert ops.calls[0][2] == "/var/lib/xen/dump/g"  # libxl's name for the core


def test_coredump_destroy_goes_on_when_the_dump_fails(world) -> None:
    ops, _clock, mon = world
    records.write_record(rec(on_crash="coredump-destroy"))
    d = ops.add(U1, reason=3)
    ops.dump_fails = True
    mon.scan()
    assert ops.calls == [("core_dump", d.domid, "/var/lib/xen/dump/g"),
                         ("destroy", d.domid)]


def test_domain_destroyed_by_someone_else_is_not_restarted(world) -> None:
    ops, clock, mon = world
    records.write_record(rec(started_at=clock.t - 1000))
    d = ops.add(U1, reason=1)
    ops.gone_before_destroy.add(d.domid)
    mon.scan()
    assert ops.calls == [("destroy", d.domid)]
    assert records.load_domain_config(U1).restart_at is None


def test_xentool_destroy_racing_a_restart_leaves_no_record(world, monkeypatch) -> None:
    """`xentool destroy` holds the domain's lock, destroys it and removes its record while
    the monitor waits for that lock to restart it: the monitor must not write it back."""
    ops, clock, mon = world
    records.write_record(rec(started_at=clock.t - 1000))
    ops.add(U1, reason=1)
    real_lock = ops.lock

    @contextlib.contextmanager
    def lock_after_a_destroy(domid: int) -> Iterator[None]:
        ops.gone_before_destroy.add(domid)
        records.remove_domain_config(U1)
        with real_lock(domid):
            yield

    monkeypatch.setattr(ops, "lock", lock_after_a_destroy)
    mon.scan()
    assert records.load_domain_config(U1) is None
    assert not [c for c in ops.calls if c[0] != "destroy"], ops.calls


def test_foreign_suspended_and_running_domains_are_ignored(world) -> None:
    ops, _clock, mon = world
    ops.add(U2, reason=0)  # no record: xl's
    records.write_record(rec())
    ops.add(U1, reason=2)  # suspended
    ops.add("aaaaaaaa-0000-0000-0000-000000000000")  # running
    mon.scan()
    assert ops.calls == []


def test_a_failing_action_does_not_stop_the_others(world) -> None:
    ops, clock, mon = world
    records.write_record(rec(started_at=clock.t - 1000))
    records.write_record(rec(uuid=U2, name="h", started_at=clock.t - 1000))
    bad = ops.add(U1, reason=0)
    good = ops.add(U2, reason=0)
    real_destroy = ops.destroy

    def destroy(domid: int) -> bool:
        if domid == bad.domid:
            raise OSError(16, "busy")
        return real_destroy(domid)

    ops.destroy = destroy  # type: ignore[method-assign]
    mon.scan()
    assert good.domid not in ops.doms and bad.domid in ops.doms


def test_pending_restart_survives_a_monitor_restart(world) -> None:
    ops, clock, mon = world
    records.write_record(rec(started_at=clock.t))
    clock.t += 5
    ops.add(U1, reason=1)
    mon.scan()  # quick death: restart in 1 s
    assert [c[0] for c in ops.calls] == ["destroy"]
    clock.t += 2
    fresh = m.Monitor(ops, clock=clock)
    fresh.scan()
    assert [c[0] for c in ops.calls] == ["destroy", "create"]


def test_records_of_vanished_domains_are_collected(world) -> None:
    ops, clock, mon = world
    records.write_record(rec(saved_at=clock.t - m.RECORD_GRACE - 1, started_at=clock.t - 99999))
    records.write_record(rec(uuid=U2, saved_at=clock.t - 10, started_at=clock.t - 10))
    live = "aaaaaaaa-0000-0000-0000-000000000000"
    records.write_record(rec(uuid=live, saved_at=0, started_at=0))
    ops.add(live)
    mon.scan()
    assert records.load_domain_config(U1) is None
    assert records.load_domain_config(U2) is not None
    assert records.load_domain_config(live) is not None


def test_xenops_create_runs_the_command_in_the_saved_cwd(tmp_path: Path) -> None:
    out = tmp_path / "argv"
    script = tmp_path / "fake_create.py"
    script.write_text("import json, os, sys\n"
                      f"open({str(out)!r}, 'w').write(json.dumps([os.getcwd(), sys.argv[1:],"
                      " open(sys.argv[1]).read()]))\n")
    r = rec(overrides=("memory=64",), cwd=str(tmp_path))
    m.XenOps(None, [sys.executable, str(script)]).create(r)
    cwd, argv, text = json.loads(out.read_text())
    assert cwd == str(tmp_path)
    assert argv[1:] == ["memory=64", f'uuid="{U1}"']
    assert text == r.config_text
    failing = tmp_path / "fail.py"
    failing.write_text("import sys; print('xentool: no such kernel', file=sys.stderr); "
                       "sys.exit(1)\n")
    with pytest.raises(XentoolError, match="no such kernel"):
        m.XenOps(None, [sys.executable, str(failing)]).create(replace(r, cwd="/nonexistent"))


def test_monitor_verb_refuses_a_second_instance(tmp_path: Path) -> None:
    import os
    import subprocess

    from xentool.locks import FileLock
    from xentool.state import RUN_DIR_ENV

    env = {**os.environ, RUN_DIR_ENV: str(tmp_path / "run"),
           STATE_DIR_ENV: str(tmp_path / "state")}
    with FileLock(tmp_path / "run" / "monitor.lock", what="monitor"):
        r = subprocess.run([sys.executable, "-m", "xentool", "monitor", "--once"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.startswith("xentool: another monitor is already running (pid ")
    assert r.stderr.count("\n") == 1
    r = subprocess.run([sys.executable, "-m", "xentool", "monitor", "--max-delay", "-1"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr.count("\n")) == (1, 1) and "must not be negative" in r.stderr


# -- per-domain watchers (what `xentool create` leaves behind, like xl) ----------------------


def test_a_watcher_handles_only_its_domain_and_finishes_when_it_is_gone(world) -> None:
    ops, clock, _ = world
    mon = m.Monitor(ops, clock=clock, only=U1)
    records.write_record(rec(started_at=clock.t - 1000))
    records.write_record(rec(U2, name="other", started_at=clock.t - 1000))
    mine, other = ops.add(U1, reason=0), ops.add(U2, reason=0)
    assert not mon.finished()
    mon.scan()
    assert ops.calls == [("destroy", mine.domid)]  # the other domain is not its business
    assert other.domid in ops.doms
    assert mon.finished()


def test_a_watcher_follows_its_domain_through_a_reboot(world) -> None:
    ops, clock, _ = world
    mon = m.Monitor(ops, clock=clock, only=U1)
    records.write_record(rec(started_at=clock.t - 1000))
    ops.add(U1, reason=1)
    mon.scan()
    assert [c[0] for c in ops.calls] == ["destroy", "create"]
    assert not mon.finished()  # the restarted domain has the same uuid


def test_a_pending_restart_keeps_the_watcher_going(world) -> None:
    ops, clock, _ = world
    mon = m.Monitor(ops, clock=clock, only=U1, backoff=m.Backoff(stable_after=60))
    records.write_record(rec(started_at=clock.t - 1))  # dies at once: restart is delayed
    ops.add(U1, reason=1)
    mon.scan()
    assert ops.calls[0][0] == "destroy" and len(ops.calls) == 1
    assert not mon.finished()
    clock.t += 5
    mon.scan()
    assert ops.calls[-1] == ("create", "g")


def test_the_host_monitor_leaves_watched_domains_alone(world) -> None:
    ops, clock, _ = world
    mon = m.Monitor(ops, clock=clock, skip=lambda uuid: uuid == U1)
    records.write_record(rec(started_at=clock.t - 1000))
    records.write_record(rec(U2, name="other", started_at=clock.t - 1000))
    ops.add(U1, reason=0)
    theirs = ops.add(U2, reason=0)
    mon.scan()
    assert ops.calls == [("destroy", theirs.domid)]
    assert not mon.finished()  # the host monitor never finishes


def test_a_transient_monitor_finishes_when_no_recorded_domain_is_left(world) -> None:
    ops, clock, _ = world
    mon = m.Monitor(ops, clock=clock, transient=True)
    assert mon.finished()  # nothing to do at all
    records.write_record(rec(started_at=clock.t - 1000))
    records.write_record(rec(U2, name="other", started_at=clock.t - 1000))
    a, b = ops.add(U1, reason=0), ops.add(U2)
    assert not mon.finished()
    mon.scan()
    assert ops.calls == [("destroy", a.domid)]
    assert not mon.finished()  # U2 still runs
    del ops.doms[b.domid]
    assert mon.finished()


def test_restarts_keep_the_record_and_start_no_second_monitor() -> None:
    # Not -e: the restarted domain keeps its record; the restarting monitor holds the
    # monitor lock, so that create starts no monitor of its own.
    assert m.default_create_cmd()[-2:] == ["create", "-q"]


def test_watchers_and_the_host_monitor_see_each_others_locks(tmp_path: Path,
                                                              monkeypatch) -> None:
    from xentool.locks import FileLock
    from xentool.state import RUN_DIR_ENV

    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "run"))
    assert not m.host_monitor_running()
    assert not m._watched(U1)
    code = ("import sys, time\nfrom xentool import monitor as m\n"
            f"lk = m._watch_lock({U1!r}); lk.acquire()\n"
            "from xentool.locks import FileLock\nfrom xentool.state import run_dir\n"
            "FileLock(run_dir() / 'monitor.lock', what='monitor', timeout=0).acquire()\n"
            "print('held', flush=True); time.sleep(30)\n")
    import os
    import subprocess

    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, RUN_DIR_ENV: str(tmp_path / "run")})
    try:
        assert p.stdout is not None and p.stdout.readline() == "held\n"
        assert m.host_monitor_running()
        assert m._watched(U1)
        assert not m._watched(U2)
        assert not (tmp_path / "run" / f"watch-{U2}.lock").exists()  # asking made no file
    finally:
        p.kill()
        p.wait()
    assert not m.host_monitor_running()
    assert isinstance(m._watch_lock(U1), FileLock)


class Killed(BaseException):
    """The monitor's process dies here (SIGKILL): no handler of the monitor runs."""


@pytest.mark.parametrize("where", ["after the destroy", "before the destroy"])
def test_a_monitor_killed_mid_restart_leaves_the_restart_to_the_next(world, where) -> None:
    ops, clock, mon = world
    records.write_record(rec(started_at=clock.t - 1000))
    d = ops.add(U1, reason=1)
    real_destroy = ops.destroy

    def destroy(domid: int) -> bool:
        if where == "after the destroy":
            real_destroy(domid)
        raise Killed

    ops.destroy = destroy  # type: ignore[method-assign]
    with pytest.raises(Killed):
        mon.scan()
    ops.destroy = real_destroy  # type: ignore[method-assign]
    assert (d.domid in {x.domid for x in ops.domains()}) == (where == "before the destroy")
    # A new monitor (the daemon started again) knows only the domains and the records.
    again = m.Monitor(ops, backoff=mon.backoff, clock=clock)
    again.scan()
    again.scan()
    assert [c for c in ops.calls if c[0] == "create"] == [("create", "g")]
    new = [x for x in ops.domains() if x.uuid == U1]
    assert len(new) == 1 and new[0].domid != d.domid and not new[0].shutdown
    assert records.load_domain_config(U1).restart_at is None
