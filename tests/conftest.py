"""Shared pytest set-up: tests marked ``xen`` need a real dom0 (the testbed provides one)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

# A shell starts a background job with SIGINT ignored (contrib/check runs the unit tests
# so), and Python then leaves it ignored; the tests of Ctrl-C handling, and the commands
# they start, need the interpreter's usual handler.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def in_dom0() -> bool:
    try:
        return "control_d" in Path("/proc/xen/capabilities").read_text()
    except OSError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if in_dom0():
        return
    # Inside the testbed a missing dom0 is a broken testbed, not a reason to skip.
    if os.environ.get("XENTOOL_REQUIRE_XEN") == "1":
        raise pytest.UsageError("XENTOOL_REQUIRE_XEN=1 but this is not a Xen dom0")
    skip = pytest.mark.skip(reason="needs a Xen dom0: run through contrib/testbed/run")
    for item in items:
        if "xen" in item.keywords:
            item.add_marker(skip)
