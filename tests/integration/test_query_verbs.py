"""xentool's query, control and scheduler verbs against xl 4.17 as the oracle.

Domain-0 (and any running guest) accumulates cpu time between two commands, so outputs are
compared like this: run xl, xentool, xl again.  Lines that xl printed identically both times
must be byte-identical in xentool's output; a line that changed in between may differ only
in its time column, and xentool's value must lie between xl's two values.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import GuestKit, private_cpupool, xentool, xl

pytestmark = pytest.mark.xen

def _sandwich(xl_args: list[str], xt_args: list[str], time_col: int | None,
              state_col: int | None = None) -> None:
    """Compare xentool with two surrounding xl runs (see the module docstring)."""
    for _attempt in range(3):
        a = xl(*xl_args).stdout
        b = xentool(*xt_args).stdout
        c = xl(*xl_args).stdout
        la, lb, lc = a.splitlines(), b.splitlines(), c.splitlines()
        if len(la) == len(lc) and len(la) == len(lb):
            break
        time.sleep(0.5)  # a domain changed state mid-comparison: once more
    assert len(lb) == len(la), f"xl:\n{a}\nxentool:\n{b}"
    assert b.endswith("\n") == a.endswith("\n")
    for x1, xt, x2 in zip(la, lb, lc, strict=False):
        if x1 == x2:
            assert xt == x1, f"\nxl:      {x1!r}\nxentool: {xt!r}"
            continue
        assert time_col is not None, f"unstable line without a time column: {x1!r} / {x2!r}"
        f1, ft, f2 = x1.split(), xt.split(), x2.split()
        t1, tt, t2 = float(f1[time_col]), float(ft[time_col]), float(f2[time_col])
        assert t1 <= tt <= t2, f"time {tt} not within xl's [{t1}, {t2}]: {xt!r}"
        def others(fields: list[str]) -> list[str]:
            # A running guest's r/b letters flip with scheduling, like its time does.
            return [re.sub(r"^[r-][b-]", "..", f) if i == state_col else f
                    for i, f in enumerate(fields) if i != time_col % len(fields)]

        assert others(ft) in (others(f1), others(f2)), f"\nxl:      {x1!r}\nxentool: {xt!r}"


class Guests:
    """Creates guests with xl and destroys them all at the end, even on failure."""

    def __init__(self, kit: GuestKit, tmp: Path, prefix: str) -> None:
        self.kit, self.tmp, self.prefix = kit, tmp, prefix
        self.names: list[str] = []

    def tiny(self, n: int = 1, *, paused: bool = True, more: str = "") -> list[str]:
        names = []
        for _ in range(n):
            name = f"{self.prefix}-{len(self.names)}"
            cfg = self.tmp / f"{name}.cfg"
            cfg.write_text(self.kit.tiny_cfg(name, wait=True, more=more))
            self.names.append(name)
            argv = ["create", *(["-p"] if paused else []), str(cfg)]
            if xl(*argv, check=False).returncode != 0:
                # xl's daemonizing child crashes now and then under emulation: once more.
                xl("destroy", name, check=False)
                xl(*argv)
            names.append(name)
        return names

    def domid(self, name: str) -> int:
        return int(xl("domid", name).stdout)

    def destroy_all(self) -> None:
        for name in self.names:
            xl("destroy", name, check=False)


@pytest.fixture
def guests(kit: GuestKit, tmp_path: Path, guest_name: str) -> Iterator[Guests]:
    g = Guests(kit, tmp_path, guest_name[:20])
    try:
        yield g
    finally:
        g.destroy_all()


# -- list ----------------------------------------------------------------------------------


def test_list_matches_xl_with_no_guests() -> None:
    _sandwich(["list"], ["list"], time_col=-1)


def test_list_matches_xl_with_one_running_guest(guests: Guests) -> None:
    guests.tiny(1, paused=False)
    _sandwich(["list"], ["list"], time_col=-1, state_col=4)


def test_list_matches_xl_with_one_paused_guest(guests: Guests) -> None:
    guests.tiny(1)
    _sandwich(["list"], ["list"], time_col=-1)


def test_list_matches_xl_with_ten_guests(guests: Guests) -> None:
    guests.tiny(10)
    _sandwich(["list"], ["list"], time_col=-1)


def test_list_selected_and_verbose_match_xl(guests: Guests) -> None:
    (name,) = guests.tiny(1)
    domid = str(guests.domid(name))
    _sandwich(["list", name], ["list", name], time_col=-1)
    _sandwich(["list", domid], ["list", domid], time_col=-1)
    # -v adds uuid, reason code and security label after the time column.
    _sandwich(["list", "-v"], ["list", "-v"], time_col=5)


def test_list_json_agrees_with_text(guests: Guests) -> None:
    import json

    (name,) = guests.tiny(1)
    doc = json.loads(xentool("list", "--json").stdout)
    mine = [d for d in doc if d["name"] == name]
    assert len(mine) == 1 and mine[0]["paused"] and mine[0]["state"] == "--p---"
    assert mine[0]["domid"] == guests.domid(name)
    assert mine[0]["memory_kb"] // 1024 == 32


# -- info, vcpu-list, uptime, domid, domname -----------------------------------------------


def test_info_matches_xl() -> None:
    _sandwich(["info"], ["info"], time_col=None)
    assert xentool("info", "xen_version").stdout == xl("info", "xen_version").stdout
    assert xentool("info", "xen_").stdout == xl("info", "xen_").stdout


def test_vcpu_list_matches_xl(guests: Guests) -> None:
    guests.tiny(1, more="vcpus = 2\n")
    _sandwich(["vcpu-list"], ["vcpu-list"], time_col=-4, state_col=4)


def _uptimes(text: str) -> list[tuple[str, int]]:
    """(name and id, seconds) per row of ``xl uptime``."""
    rows = []
    for line in text.splitlines()[1:]:
        head, clock = line.rsplit(" ", 1)
        days = 0
        if "day" in head:
            head, d = head.rsplit(",", 1)[0], head.split()[-2]
            days = int(d)
        h, m, s = (int(x) for x in clock.split(":"))
        rows.append((head.split()[0] + " " + head.split()[1], days * 86400 + h * 3600 + m * 60 + s))
    return rows


def test_uptime_matches_xl(guests: Guests) -> None:
    (name,) = guests.tiny(1)
    # Each command takes seconds under emulation: xentool's uptimes must lie between xl's.
    a = xl("uptime").stdout
    b = xentool("uptime").stdout
    c = xl("uptime").stdout
    assert b.splitlines()[0] == a.splitlines()[0]
    ra, rb, rc = _uptimes(a), _uptimes(b), _uptimes(c)
    assert [r[0] for r in rb] == [r[0] for r in ra] == [r[0] for r in rc]
    for (who, ta), (_, tb), (_, tc) in zip(ra, rb, rc, strict=False):
        assert ta <= tb <= tc, (who, ta, tb, tc)
    for line_a, line_b in zip(a.splitlines()[1:], b.splitlines()[1:], strict=False):
        assert len(line_a) == len(line_b) and line_a[:39] == line_b[:39]
    assert xentool("uptime", name).stdout.splitlines()[1].startswith(name)


def test_domid_and_domname_match_xl(guests: Guests) -> None:
    (name,) = guests.tiny(1)
    domid = xl("domid", name).stdout
    assert xentool("domid", name).stdout == domid
    assert xentool("domname", domid.strip()).stdout == xl("domname", domid.strip()).stdout
    assert xentool("domname", "0").stdout == "Domain-0\n"


@pytest.mark.parametrize("verb", [["list"], ["pause"], ["unpause"], ["destroy"],
                                  ["vcpu-list"], ["uptime"], ["domid"],
                                  ["sched-credit2", "-d"], ["vcpu-pin"]])
def test_unknown_domain_is_one_line_exit_1(verb: list[str]) -> None:
    extra = ["0", "all"] if verb == ["vcpu-pin"] else []
    r = xentool(*verb, "no-such-domain", *extra, check=False)
    assert r.returncode == 1
    assert r.stderr == "xentool: domain 'no-such-domain' does not exist\n"
    r = xentool("domname", "4000", check=False)
    assert (r.returncode, r.stderr) == (1, "xentool: domain '4000' does not exist\n")


# -- control -------------------------------------------------------------------------------


def _state(name: str) -> str:
    line = next(ln for ln in xl("list").stdout.splitlines() if ln.split()[0] == name)
    return line.split()[4]


def test_pause_unpause_destroy_seen_by_xl(guests: Guests) -> None:
    (name,) = guests.tiny(1, paused=False)
    assert "p" not in _state(name)
    xentool("pause", name)
    assert _state(name)[2] == "p"
    xentool("unpause", name)
    assert _state(name)[2] == "-"
    domid = guests.domid(name)
    xentool("destroy", str(domid))
    deadline = time.monotonic() + 30
    while name in xl("list").stdout and time.monotonic() < deadline:
        time.sleep(0.2)
    assert name not in xl("list").stdout
    assert xl("domid", name, check=False).returncode != 0
    r = xl("list", str(domid), check=False)
    assert r.returncode != 0


def test_destroy_refuses_dom0_without_force() -> None:
    r = xentool("destroy", "0", check=False)
    assert r.returncode == 1 and "domain 0" in r.stderr
    assert "Domain-0" in xl("list").stdout


def test_vcpu_pin_seen_by_xl(guests: Guests) -> None:
    (name,) = guests.tiny(1, more="vcpus = 2\n")
    xentool("vcpu-pin", name, "1", "1")
    rows = list(xl("vcpu-list", name).stdout.splitlines()[1:])
    assert rows[1].endswith("1 / all"), rows
    assert rows[0].endswith("all / all"), rows
    xentool("vcpu-pin", name, "all", "-", "0")
    rows = xl("vcpu-list", name).stdout.splitlines()[1:]
    assert rows[0].endswith("all / 0") and rows[1].endswith("1 / 0"), rows
    xl("vcpu-pin", name, "0", "0")
    assert xentool("vcpu-list", name).stdout.splitlines()[1].endswith("0 / 0")


# -- schedulers ----------------------------------------------------------------------------


def test_sched_credit2_both_directions(guests: Guests) -> None:
    (name,) = guests.tiny(1)
    xentool("sched-credit2", "-d", name, "-w", "512")
    out = xl("sched-credit2", "-d", name).stdout
    assert out.splitlines()[1].split()[2] == "512"
    xl("sched-credit2", "-d", name, "-w", "77")
    assert xentool("sched-credit2", "-d", name).stdout == xl("sched-credit2", "-d", name).stdout
    assert xentool("sched-credit2", "-d", name).stdout.splitlines()[1].split()[2] == "77"
    _sandwich(["sched-credit2"], ["sched-credit2"], time_col=None)
    assert xentool("sched-credit2", "-s").stdout == xl("sched-credit2", "-s").stdout
    r = xentool("sched-credit2", "-d", name, "-w", "0", check=False)
    assert r.returncode == 1 and "out of range" in r.stderr


@pytest.fixture
def credit_pool(tmp_path: Path) -> Iterator[str]:
    """A cpupool under the credit scheduler (the default is credit2) on pcpu 1."""
    with private_cpupool("xt-credit", "credit", tmp_path) as pool:
        yield pool


def test_sched_credit_both_directions(credit_pool: str, guests: Guests) -> None:
    # credit_pool first: its teardown (destroying the pool) must come after the guests go.
    (name,) = guests.tiny(1, more=f'pool = "{credit_pool}"\n')
    xentool("sched-credit", "-d", name, "-w", "512")
    assert xl("sched-credit", "-d", name).stdout.splitlines()[1].split()[2] == "512"
    xl("sched-credit", "-d", name, "-c", "50")
    out = xentool("sched-credit", "-d", name).stdout
    assert out == xl("sched-credit", "-d", name).stdout
    assert out.splitlines()[1].split()[2:] == ["512", "50"]
    _sandwich(["sched-credit"], ["sched-credit"], time_col=None)
    assert (xentool("sched-credit", "-s", "-p", credit_pool).stdout
            == xl("sched-credit", "-s", "-p", credit_pool).stdout)
    # The guest in Pool-0 runs under credit2: asking credit about it is an error.
    r = xentool("sched-credit", "-d", "0", check=False)
    assert r.returncode == 1 and "credit2 scheduler" in r.stderr
