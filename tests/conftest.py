"""Shared pytest set-up: tests marked ``xen`` need a real dom0 (the testbed provides one)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


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
