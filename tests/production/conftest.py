"""The production profile's tests: run them with

    contrib/testbed/run --production -- python3 -m pytest -q -p no:cacheprovider tests/production

There dom0 is booted by systemd with Debian's xen.service, and xentool is the package built
on the host, installed with apt, its units enabled (contrib/testbed/dom0/production.sh).
Anywhere else (the host, the default testbed dom0) these tests are skipped; where the job
agent says the profile is production, whatever is missing is a failure.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration.helpers import GuestKit

from .helpers import SECURITY, xentool, xl

PRODUCTION = os.environ.get("XENTOOL_TESTBED_PROFILE") == "production"

# Seconds each file may take (TCG, 2 cores); contrib/check prints the sum beside the boot.
BUDGET: dict[str, float] = {
    "test_after_boot.py": 60, "test_docs.py": 60, "test_install.py": 120,
    "test_policy.py": 90, "test_readme.py": 200, "test_restart.py": 90, "test_systemd.py": 30,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if PRODUCTION:
        return
    skip = pytest.mark.skip(reason="needs the production testbed profile "
                                   "(contrib/testbed/run --production)")
    for item in items:
        if "production" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def kit() -> GuestKit:
    d = os.environ.get("XENTOOL_GUEST_DIR")
    if not d or not (Path(d) / "tiny.elf").exists():
        pytest.fail("XENTOOL_GUEST_DIR does not point at the guest kit "
                    "(run via contrib/testbed/run --production)")
    return GuestKit(Path(d))


@pytest.fixture
def guest_name(request: pytest.FixtureRequest) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:20]
    return f"p-{base}-{uuid.uuid4().hex[:6]}"


def _domain_names() -> set[str]:
    return {line.split()[0] for line in xl("list").stdout.splitlines()[1:] if line.strip()}


@pytest.fixture(autouse=True)
def no_leaked_domains(request: pytest.FixtureRequest) -> Iterator[None]:
    """Destroy whatever domain a test leaves behind (with xentool, so that the monitor
    forgets it too), then fail the test if it leaked one."""
    if "production" not in request.keywords or not PRODUCTION:
        yield
        return
    before = _domain_names()
    yield
    leaked = _domain_names() - before
    for name in leaked:
        xentool("destroy", name, check=False)
    assert not leaked, f"test left domains running: {sorted(leaked)}"


_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/production/" in report.nodeid:
        name = report.nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
        _SECONDS[name] = _SECONDS.get(name, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SECURITY:
        terminalreporter.section("systemd-analyze security (installed units)")
        for unit, score in sorted(SECURITY.items()):
            terminalreporter.write_line(f"{unit}: {score}")
    if _SECONDS:
        terminalreporter.section("production profile: time per file / budget")
        for name, seconds in sorted(_SECONDS.items(), key=lambda kv: -kv[1]):
            budget = BUDGET.get(name)
            mark = "no budget" if budget is None else (
                f"/ {budget:4.0f} s" + ("  OVER BUDGET" if seconds > budget else ""))
            terminalreporter.write_line(f"{seconds:7.1f} s  {mark}  {name}")
        terminalreporter.write_line(f"{sum(_SECONDS.values()):7.1f} s  in all (budget "
                                    f"{sum(BUDGET.get(n, 0) for n in _SECONDS):.0f} s)")
