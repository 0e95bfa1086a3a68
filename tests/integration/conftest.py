"""Fixtures for the integration tests (run inside the testbed dom0, see helpers.py)."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import (
    FAULT_OFFSET,
    FAULT_STRIDE,
    FULL_FAULT_WALK,
    GuestKit,
    TcpPeer,
    Xentoold,
    domain_names,
    xl,
)

# Suites written against the real hypervisor that have not yet passed end to end in the testbed.
# `contrib/check` leaves them out unless XENTOOL_ALL_TESTS=1, so that main stays green while
# they are being finished; their status is tracked in the issues, not hidden here.
UNPROVEN: set[str] = {"test_migrate.py"}

# Single tests of those suites that have passed, as "file.py::test_name" (all parameters).
PROVEN: set[str] = {
    "test_migrate.py::test_localhost_live_migrations",
    "test_migrate.py::test_xl_migrate_to_xentool_and_back",
    "test_migrate.py::test_migrate_refuses_domain_0_and_unknown_domains",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        test = f"{item.path.name}::{item.originalname}"  # type: ignore[attr-defined]
        if item.path.name in UNPROVEN and test not in PROVEN:
            item.add_marker(pytest.mark.unproven)


@pytest.fixture(scope="session", autouse=True)
def session_daemon() -> Iterator[None]:
    """Every ``xentool`` a test runs goes through one xentoold (on a private socket), as
    on a host whose daemon runs: a command then costs what the command costs, not the
    interpreter's start-up (seconds under emulation), which keeps CI inside its limit.
    tests/integration/test_daemon.py holds both paths to the same bytes and exit status;
    ``XENTOOL_TEST_DAEMON=0`` runs every command in-process instead."""
    if os.environ.get("XENTOOL_TEST_DAEMON", "1") == "0":
        yield
        return
    daemon = Xentoold()
    os.environ["XENTOOL_DAEMON_SOCKET"] = daemon.sock
    try:
        yield
    finally:
        del os.environ["XENTOOL_DAEMON_SOCKET"]
        log = daemon.stop()
        if "Traceback" in log:
            print(f"xentoold log:\n{log}")


@pytest.fixture(scope="session")
def kit() -> GuestKit:
    d = os.environ.get("XENTOOL_GUEST_DIR")
    if not d or not (Path(d) / "vmlinuz").exists():
        pytest.fail("XENTOOL_GUEST_DIR does not point at the guest kit "
                    "(run via contrib/testbed/run)")
    return GuestKit(Path(d))


@pytest.fixture
def tcp_peer() -> Iterator[TcpPeer]:
    """dom0's end of a stateful guest's TCP connection (helpers.TcpPeer)."""
    peer = TcpPeer()
    try:
        yield peer
    finally:
        peer.close()


@pytest.fixture
def guest_name(request: pytest.FixtureRequest) -> str:
    """A domain name unique to this test run, so console logs never mix."""
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:24]
    return f"t-{base}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(autouse=True)
def no_leaked_domains() -> Iterator[None]:
    """Destroy whatever domain a test leaves behind, then fail the test if it leaked one."""
    before = domain_names()
    yield
    leaked = domain_names() - before
    for name in leaked:
        xl("destroy", name, check=False)
    assert not leaked, f"test left domains running: {sorted(leaked)}"


@pytest.fixture
def cfg_file(tmp_path: Path):
    def write(text: str, name: str = "guest.cfg") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p
    return write


# -- per-suite time, printed at the end (contrib/check keeps the run inside CI's limit) ------

_SUITE_SECONDS: dict[str, float] = {}

# Seconds each suite may take in CI (TCG, 2 cores): a ceiling about a fifth above what it
# measured, so their sum is more than a run takes; the measured total must stay inside the
# integration run's limit in contrib/check (75 minutes), which with the production profile
# and the set-up is CI's 90.  A suite over its budget is flagged in the summary: make it cheaper
# (smaller guests, fewer rounds in CI, the full count behind an environment variable)
# before raising its line.
BUDGET: dict[str, float] = {
    "test_config_xl.py": 80, "test_cpupool_verbs.py": 150, "test_create_faults.py": 220,
    "test_daemon.py": 260, "test_devices.py": 460, "test_domain_ops.py": 150,
    "test_fidelity.py": 160, "test_hardening.py": 60, "test_host_verbs.py": 240,
    "test_hostile_guest.py": 90, "test_migrate.py": 170, "test_mixed_use.py": 100,
    "test_monitor.py": 220, "test_op_faults.py": 300, "test_provision.py": 45,
    "test_pv_builder.py": 210, "test_pvh.py": 400, "test_query_verbs.py": 140,
    "test_restore.py": 400, "test_save.py": 240, "test_sched_controller.py": 45,
    "test_sched_fairshare.py": 200, "test_shells.py": 190, "test_state_parity.py": 200,
    "test_storm.py": 100, "test_testbed.py": 45, "test_xenstore_live.py": 30,
    "test_xenstore_perms.py": 30, "test_xl_conf.py": 120,
}


def _suite(nodeid: str) -> str:
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1]


def _suite_line(suite: str) -> str:
    seconds, budget = _SUITE_SECONDS.get(suite, 0.0), BUDGET.get(suite)
    mark = "no budget" if budget is None else (
        f"/ {budget:6.0f} s" + ("  OVER BUDGET" if seconds > budget else ""))
    return f"{seconds:8.1f} s  {mark}  {suite}"


_running: list[str] = []  # the suite whose tests run now


def _finish_suite(config: pytest.Config) -> None:
    """Print a suite's time as soon as it is done, so that a run cut short by its time
    limit still tells where the time went."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if _running and reporter is not None:
        # On a line of its own: after -q's dots the reporter does not know it is mid-line.
        reporter.write("\n")
        reporter.write_line(f"== suite done: {_suite_line(_running.pop())}")


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    suite = _suite(nodeid)
    if _running and _running[0] != suite:
        _finish_suite(_CONFIG[0])
    if not _running:
        _running.append(suite)


_CONFIG: list[pytest.Config] = []


def pytest_configure(config: pytest.Config) -> None:
    _CONFIG.append(config)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    suite = _suite(report.nodeid)
    _SUITE_SECONDS[suite] = _SUITE_SECONDS.get(suite, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _SUITE_SECONDS:
        return
    _finish_suite(terminalreporter.config)
    terminalreporter.section("time per suite (setup + call + teardown) / CI budget")
    for suite in sorted(_SUITE_SECONDS, key=lambda x: -_SUITE_SECONDS[x]):
        terminalreporter.write_line(_suite_line(suite))
    terminalreporter.write_line(f"{sum(_SUITE_SECONDS.values()):8.1f} s  in all "
                                f"(budget of these suites "
                                f"{sum(BUDGET.get(x, 0) for x in _SUITE_SECONDS):.0f} s)")
    if FULL_FAULT_WALK:
        terminalreporter.write_line("fault walks: every point (XENTOOL_FULL_FAULT_WALK=1)")
    else:
        terminalreporter.write_line(
            f"fault walks: every {FAULT_STRIDE}th step from offset {FAULT_OFFSET} "
            f"(XENTOOL_FAULT_OFFSET={FAULT_OFFSET} takes the same points again)")
