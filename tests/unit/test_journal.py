"""The rollback journal: undo order, original cause, signals, fault injection, crash records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xentool.errors import XentoolError
from xentool.journal import (
    FAULT_ENV,
    TRACE_ENV,
    Fault,
    FaultPlan,
    InjectedFault,
    Interrupted,
    Journal,
    orphan_records,
    traced_steps,
)
from xentool.procs import proc_start_time, process_alive

NO_FAULTS = FaultPlan()


def test_success_commits_and_keeps_results() -> None:
    undone: list[str] = []
    with Journal("op", faults=NO_FAULTS) as j:
        a = j.do("a", lambda: 41, undo=lambda r: undone.append(f"a{r}"))
        b = j.do("b", lambda: a + 1)
    assert (a, b) == (41, 42)
    assert undone == []
    assert j.steps_done == ["a", "b"]
    assert j.step_count == 2


def test_failure_undoes_in_reverse_and_reraises_the_original() -> None:
    undone: list[str] = []
    boom = OSError(5, "hypercall failed")
    with pytest.raises(OSError) as ei:
        with Journal("op", faults=NO_FAULTS) as j:
            j.do("a", lambda: 1, undo=lambda r: undone.append(f"a{r}"))
            j.push("inline", lambda: undone.append("inline"))
            j.do("b", lambda: 2, undo=lambda r: undone.append(f"b{r}"))
            j.do("c", lambda: (_ for _ in ()).throw(boom), undo=lambda r: undone.append("c"))
    assert ei.value is boom
    # c failed, so its undo was never registered; the others run newest first.
    assert undone == ["b2", "inline", "a1"]
    assert j.leftovers == []


def test_a_failing_undo_does_not_stop_the_others_and_is_reported() -> None:
    undone: list[str] = []

    def bad(_: object) -> None:
        raise OSError(16, "device busy")

    with pytest.raises(XentoolError, match="step three") as ei:
        with Journal("op", faults=NO_FAULTS) as j:
            j.do("one", lambda: 1, undo=lambda r: undone.append("one"))
            j.do("two", lambda: 2, undo=bad)
            j.do("three", lambda: (_ for _ in ()).throw(XentoolError("step three broke")))
    assert undone == ["one"]
    assert j.leftovers == ["two"]
    assert any("could not undo 'two'" in n and "device busy" in n
               for n in ei.value.__notes__)


def test_undo_receives_the_action_result() -> None:
    seen: list[int] = []
    with pytest.raises(RuntimeError):
        with Journal("op", faults=NO_FAULTS) as j:
            j.do("create", lambda: 17, undo=seen.append)
            raise RuntimeError("later")
    assert seen == [17]


@pytest.mark.parametrize("text, faults", [
    ("step:3", (Fault("step", 3),)),
    ("kill:1@create", (Fault("kill", 1, "create"),)),
    (" step:2 , kill:5@restart,", (Fault("step", 2), Fault("kill", 5, "restart"))),
    ("", ()),
])
def test_fault_plan_parse(text: str, faults: tuple[Fault, ...]) -> None:
    assert FaultPlan.parse(text).faults == faults


@pytest.mark.parametrize("bad", ["step", "step:", "step:0", "boom:1", "step:x", "step:-1",
                                 "kill:1@", "step:١"])
def test_fault_plan_rejects_bad_values_naming_them(bad: str) -> None:
    with pytest.raises(XentoolError) as ei:
        FaultPlan.parse(bad)
    msg = str(ei.value)
    assert FAULT_ENV in msg and f"'{bad.strip()}'" in msg and "\n" not in msg


def test_fault_plan_op_filter() -> None:
    plan = FaultPlan.parse("step:2@create")
    assert plan.at("create", 2) == Fault("step", 2, "create")
    assert plan.at("restart", 2) is None
    assert plan.at("create", 1) is None


@pytest.mark.parametrize("k", [1, 2, 3])
def test_injected_step_fault_rolls_back_everything_before_it(k: int) -> None:
    done: list[str] = []
    undone: list[str] = []
    with pytest.raises(InjectedFault) as ei:
        with Journal("create", faults=FaultPlan.parse(f"step:{k}")) as j:
            for name in ("domain", "memory", "xenstore"):
                j.do(name, lambda name=name: done.append(name),
                     undo=lambda _, name=name: undone.append(name))
    assert ei.value.step == k
    names = ["domain", "memory", "xenstore"]
    assert str(ei.value) == f"create: injected fault at step {k} ({names[k - 1]})"
    # the faulty step never ran; everything before it was undone, newest first
    assert done == ["domain", "memory", "xenstore"][:k - 1]
    assert undone == list(reversed(done))


def test_fault_plan_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "step:2")
    with pytest.raises(InjectedFault):
        with Journal("op") as j:
            j.do("a", lambda: None)
            j.do("b", lambda: None)
    monkeypatch.setenv(FAULT_ENV, "nonsense")
    with pytest.raises(XentoolError, match="bad value 'nonsense'"):
        Journal("op")


def test_trace_lists_every_step_reached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trace = tmp_path / "trace"
    monkeypatch.setenv(TRACE_ENV, str(trace))
    with Journal("create", faults=NO_FAULTS) as j:
        j.do("domain", lambda: 1)
        j.do("vbd 51712", lambda: 2)
    assert list(traced_steps(trace)) == [("create", 1, "domain"), ("create", 2, "vbd 51712")]
    assert list(traced_steps(trace, op="other")) == []


def test_do_outside_the_block_is_a_bug() -> None:
    j = Journal("op", faults=NO_FAULTS)
    with pytest.raises(RuntimeError):
        j.do("a", lambda: 1)


def test_signal_during_an_action_is_raised_after_its_undo_is_registered() -> None:
    undone: list[str] = []
    with pytest.raises(Interrupted) as ei:
        with Journal("op", faults=NO_FAULTS) as j:
            j.do("a", lambda: 1, undo=lambda _: undone.append("a"))
            # The signal lands inside the action; the action still completes.
            j.do("b", lambda: os.kill(os.getpid(), signal.SIGTERM) or "b-done",
                 undo=lambda r: undone.append(r))
            j.do("c", lambda: undone.append("c ran"))
    assert ei.value.signum == signal.SIGTERM
    assert str(ei.value) == "interrupted by SIGTERM"
    assert undone == ["b-done", "a"]
    # the old handler is back
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_signal_after_the_last_step_still_aborts() -> None:
    undone: list[str] = []
    with pytest.raises(Interrupted):
        with Journal("op", faults=NO_FAULTS) as j:
            j.do("a", lambda: os.kill(os.getpid(), signal.SIGINT),
                 undo=lambda _: undone.append("a"))
    assert undone == ["a"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _child(tmp_path: Path, body: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})},
                          cwd=Path(__file__).resolve().parents[2])


def test_sigint_from_outside_rolls_back_a_real_process(tmp_path: Path) -> None:
    """A SIGINT from another process while a step blocks: undos run, exit is 'interrupted'."""
    log = tmp_path / "log"
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time, pathlib
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from xentool.journal import Journal, FaultPlan, Interrupted
        log = open({str(log)!r}, "a", buffering=1)
        try:
            with Journal("create", faults=FaultPlan()) as j:
                j.do("domain", lambda: 7, undo=lambda d: log.write(f"destroy {{d}}\\n"))
                pathlib.Path({str(ready)!r}).touch()
                while True:
                    time.sleep(0.05)   # inline wait: interruptible anywhere
        except Interrupted as e:
            log.write(f"cause {{e}}\\n")
            sys.exit(130)
        """)])
    try:
        for _ in range(400):
            if ready.exists():
                break
            import time
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        proc.kill()
    assert log.read_text().splitlines() == ["destroy 7", "cause interrupted by SIGINT"]


def test_kill_injection_leaves_an_orphan_record(tmp_path: Path) -> None:
    rec = tmp_path / "ops"
    r = _child(tmp_path, f"""
        from xentool.journal import Journal
        with Journal("create", record_dir={str(rec)!r}) as j:
            j.do("domain", lambda: 9, undo=lambda d: print("undo", d))
            j.note("domid", 9)
            j.do("memory", lambda: print("memory ran"))
        print("not reached")
        """, env={FAULT_ENV: "kill:2@create"})
    assert r.returncode == -signal.SIGKILL
    assert "not reached" not in r.stdout and "undo" not in r.stdout
    assert "memory ran" not in r.stdout
    orphans = orphan_records(rec)
    assert len(orphans) == 1
    o = orphans[0]
    assert (o.op, o.steps, o.notes) == ("create", ("domain",), {"domid": 9})
    assert o.pid != os.getpid()


def test_records_vanish_on_commit_and_on_clean_rollback(tmp_path: Path) -> None:
    rec = tmp_path / "ops"
    with Journal("create", faults=NO_FAULTS, record_dir=rec) as j:
        j.do("a", lambda: 1)
        live = json.loads((rec / f"create-{os.getpid()}.json").read_text())
        assert live["steps"] == ["a"] and live["pid"] == os.getpid()
        assert orphan_records(rec) == []  # our own process is alive
    assert list(rec.iterdir()) == []
    with pytest.raises(ValueError):
        with Journal("create", faults=NO_FAULTS, record_dir=rec) as j:
            j.do("a", lambda: 1, undo=lambda _: None)
            raise ValueError("x")
    assert list(rec.iterdir()) == []


def test_process_alive_tells_reused_pids_apart() -> None:
    me = proc_start_time(os.getpid())
    assert me is not None
    assert process_alive(os.getpid(), me)
    assert not process_alive(os.getpid(), me + 1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not process_alive(dead.pid, None)


def test_half_built_domains_from_killed_creates(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from xentool.journal import default_record_dir, forget_record, half_built_domains

    monkeypatch.setenv("XENTOOL_RUN_DIR", str(tmp_path / "run"))
    assert default_record_dir() == tmp_path / "run" / "journal"
    r = _child(tmp_path, """
        from xentool.journal import Journal, default_record_dir
        with Journal("create", record_dir=default_record_dir()) as j:
            d = j.do("create domain", lambda: 12)
            j.note("domid", d)
            j.do("build", lambda: None)
        """, env={FAULT_ENV: "kill:2", "XENTOOL_RUN_DIR": str(tmp_path / "run")})
    assert r.returncode == -signal.SIGKILL
    found = half_built_domains()
    assert list(found) == [12] and found[12].steps == ("create domain",)
    from xentool import Host  # what `xentool list` flags on stderr

    assert Host().half_built() == {12: found[12].pid}
    forget_record(found[12])
    assert half_built_domains() == {}
    assert Host().half_built() == {}


def test_a_create_killed_before_its_first_step_leaves_no_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xentool.journal import default_record_dir, half_built_domains

    monkeypatch.setenv("XENTOOL_RUN_DIR", str(tmp_path / "run"))
    r = _child(tmp_path, """
        from xentool.journal import Journal, default_record_dir
        with Journal("create", record_dir=default_record_dir()) as j:
            j.do("create domain", lambda: 12)
        """, env={FAULT_ENV: "kill:1", "XENTOOL_RUN_DIR": str(tmp_path / "run")})
    assert r.returncode == -signal.SIGKILL
    # killed at the fault point of its first step, before doing anything: no record at all
    assert list(default_record_dir().glob("create-*.json")) == []
    assert half_built_domains() == {}
