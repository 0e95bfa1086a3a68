"""systemd's own verdict on the installed units: `systemd-analyze verify` clean, and the
`systemd-analyze security` exposure below 9.6 (the score of an unhardened service),
printed at the end of the run."""

from __future__ import annotations

import re

import pytest

from .helpers import DAEMON, SECURITY, UNITS, run

pytestmark = [pytest.mark.xen, pytest.mark.production]


def test_installed_units_verify_clean() -> None:
    # Loaded as systemd loads them, with their ExecStart= commands and man pages present.
    r = run("systemd-analyze", "verify", *UNITS, check=False)
    assert (r.returncode, r.stdout + r.stderr) == (0, ""), r.stdout + r.stderr


def test_security_exposure_is_below_unsafe() -> None:
    unit = DAEMON  # (a socket unit runs nothing: systemd rates services only)
    out = run("systemd-analyze", "security", "--no-pager", unit).stdout
    m = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d+) (\w+)", out)
    assert m, out[-500:]
    SECURITY[unit] = f"{m.group(1)} {m.group(2)}"
    print(f"{unit}: {SECURITY[unit]}")
    assert float(m.group(1)) < 9.6
