"""The cpupool verbs, ``list -c`` and ``sched-rtds`` against xl 4.17.

xentool drives each change and xl checks the result (and the reverse); for each error case
both tools are run with the same arguments: stdout and exit status must be identical, and
so must xl's own stderr lines (libxl's log lines are xentool's ``xentool:`` lines).

The testbed has pCPUs 0-1 in Pool-0.  Every test gives pCPU 1 back to Pool-0, and Pool-0 its
name, at the end, whatever happens.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import GuestKit, run, wait_cpupool_empty, xentool, xl

pytestmark = pytest.mark.xen

PREFIX = "xtcp"


def _pools() -> dict[str, tuple[int, str]]:
    """name -> (cpu count, scheduler) as xl lists them."""
    rows = xl("cpupool-list").stdout.splitlines()[1:]
    return {r.split()[0]: (int(r.split()[1]), r.split()[2]) for r in rows}


@pytest.fixture(autouse=True)
def pool0_whole() -> Iterator[None]:
    """Pool-0 named so and owning both pCPUs afterwards, whatever the test left."""
    yield
    names = xl("list").stdout.splitlines()[1:]
    for line in names:
        if line.startswith(PREFIX):
            xl("destroy", line.split()[0], check=False)
    renamed = run("xenstore-read", "/local/pool/0/name", check=False).stdout.strip()
    if renamed != "Pool-0":
        xl("cpupool-rename", "0", "Pool-0", check=False)
    for name in _pools():
        if name != "Pool-0":
            wait_cpupool_empty(name, timeout=30)
            xl("cpupool-destroy", name, check=False)
    xl("cpupool-cpu-add", "Pool-0", "1", check=False)
    assert xl("cpupool-list", "-c").stdout.splitlines()[1].split() == ["Pool-0", "0,1"]


def _own_lines(r: subprocess.CompletedProcess[str], mine: str) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if not ln.startswith(mine)]


def same(*args: str) -> subprocess.CompletedProcess[str]:
    """Run xl and xentool with ``args``; stdout, status and xl's own lines must agree."""
    a = xl(*args, check=False)
    b = xentool(*args, check=False)
    what = f"{' '.join(args)}\nxl: {a.returncode} {a.stdout!r} {a.stderr!r}\n" \
           f"xentool: {b.returncode} {b.stdout!r} {b.stderr!r}"
    assert b.stdout == a.stdout, what
    assert b.returncode == a.returncode, what
    assert _own_lines(b, "xentool:") == _own_lines(a, "libxl:"), what
    assert "Traceback" not in b.stderr, what
    return b


def _list_c(domain: str) -> str:
    """The Cpupool column of ``xl list -c DOMAIN`` (xentool's row must say the same)."""
    theirs = xl("list", "-c", domain).stdout.splitlines()
    ours = xentool("list", "-c", domain).stdout.splitlines()
    assert ours[0] == theirs[0]
    assert ours[1].split()[-1] == theirs[1].split()[-1]
    assert ours[1][:45] == theirs[1][:45]  # name, id: the time column moves
    return theirs[1].split()[-1]


def _tiny(kit: GuestKit, tmp: Path, name: str) -> None:
    cfg = tmp / f"{name}.cfg"
    cfg.write_text(kit.tiny_cfg(name, wait=True, more="vcpus = 2\n"))
    xentool("create", "-p", "-q", str(cfg), timeout=180)


def test_lists_match_xl() -> None:
    for args in (["cpupool-list"], ["cpupool-list", "--cpus", "Pool-0"],
                 ["cpupool-list", "0"]):  # by name only: "Pool '0' does not exist"
        same(*args)
    theirs, ours = xl("list", "-c").stdout, xentool("list", "-c").stdout
    assert [ln.split()[-1] for ln in ours.splitlines()] == \
        [ln.split()[-1] for ln in theirs.splitlines()]


def test_pool_made_by_xentool(kit: GuestKit, tmp_path: Path) -> None:
    pool, renamed, guest = f"{PREFIX}-a", f"{PREFIX}-b", f"{PREFIX}-g1"
    cfg = tmp_path / "pool.cfg"
    cfg.write_text(f'name = "{pool}"\nsched = "credit"\ncpus = ["1"]\n')
    xentool("cpupool-cpu-remove", "Pool-0", "1")
    assert xl("cpupool-list", "-c").stdout.splitlines()[1].split() == ["Pool-0", "0"]
    dry = same("cpupool-create", "-n", str(cfg))
    made = xentool("cpupool-create", str(cfg))
    assert made.stdout == dry.stdout and made.stderr == ""
    assert _pools()[pool] == (1, "credit")
    same("cpupool-list", "-c")
    rows = run("xenstore-ls", "/local/pool").stdout
    assert f'name = "{pool}"' in rows and "uuid = " in rows

    _tiny(kit, tmp_path, guest)
    xentool("cpupool-migrate", guest, pool)
    assert _list_c(guest) == pool
    xentool("cpupool-rename", pool, renamed)
    assert renamed in _pools() and pool not in _pools()
    assert _list_c(guest) == renamed
    same("cpupool-destroy", renamed)  # busy: a domain is in it
    same("cpupool-numa-split")        # more than one pool
    same("cpupool-migrate", "nope", renamed)
    xentool("cpupool-migrate", guest, "Pool-0")
    assert _list_c(guest) == "Pool-0"
    xentool("destroy", guest)
    same("cpupool-cpu-add", renamed, "1")  # not free: both warn and succeed

    xentool("cpupool-cpu-remove", renamed, "1")
    assert _pools()[renamed][0] == 0
    xentool("cpupool-cpu-add", renamed, "node:0")  # cpu 0 is Pool-0's: only 1 moves
    assert _pools()[renamed][0] == 1
    wait_cpupool_empty(renamed, timeout=30)
    xentool("cpupool-destroy", renamed)
    assert set(_pools()) == {"Pool-0"}
    assert run("xenstore-ls", "/local/pool").stdout.count("name =") == 1
    xentool("cpupool-cpu-add", "Pool-0", "1")


def test_pool_made_by_xl(tmp_path: Path) -> None:
    pool = f"{PREFIX}-x"
    xl("cpupool-cpu-remove", "Pool-0", "1")
    xl("cpupool-create", f'name="{pool}"', 'sched="credit2"', 'cpus="1"')
    same("cpupool-list")
    same("cpupool-list", "-c", pool)
    xentool("cpupool-cpu-remove", pool, "1")
    assert _pools()[pool][0] == 0
    same("cpupool-cpu-remove", pool, "1")   # not in it any more: warns, succeeds
    xentool("cpupool-cpu-add", pool, "1")
    assert xl("cpupool-list", "-c", pool).stdout.splitlines()[1].split() == [pool, "1"]
    for args in (["cpupool-cpu-add", "Pool-0", "7"], ["cpupool-cpu-add", "Pool-0", "x"],
                 ["cpupool-cpu-remove", "nope", "1"], ["cpupool-destroy", "Pool-0"]):
        same(*args)
    # dry runs of pool configs, good and bad, from the command line and from files
    (tmp_path / "p.cfg").write_text('sched="credit"\n')
    for extra in (["cpus=[1]"], ["nodes=[0]"], ['name="Pool-0"'], ['name="n"', 'cpus="all"']):
        same("cpupool-create", "-n", str(tmp_path / "p.cfg"), *extra)
    same("cpupool-create", "--dryrun", 'name="q"', 'sched="null"')
    xentool("cpupool-destroy", pool)
    assert set(_pools()) == {"Pool-0"}
    xentool("cpupool-cpu-add", "Pool-0", "1")


def test_numa_split_single_node() -> None:
    # One node: Pool-0 keeps every pCPU and is renamed Pool-node0, as xl does.
    xentool("cpupool-numa-split")
    ours = xl("cpupool-list", "-c").stdout
    xentool("cpupool-rename", "Pool-node0", "Pool-0")
    xl("cpupool-numa-split")
    assert xl("cpupool-list", "-c").stdout == ours
    assert run("xenstore-read", "/local/pool/0/name").stdout.strip() == "Pool-node0"


def test_sched_rtds(kit: GuestKit, tmp_path: Path) -> None:
    for args in (["sched-rtds", "-c", "Pool-0"], ["sched-rtds", "--cpupool", "nope"],
                 ["sched-rtds", "-d", "0"], ["sched-rtds", "-d", "0", "-v", "0"],
                 ["sched-rtds", "-d", "0", "-v", "all", "-p", "100", "-b", "50", "-e", "0"]):
        same(*args)
    # An RTDS pool of pCPU 1, if this Xen has the scheduler: made by xentool exactly as xl
    # makes it (or refused as xl refuses it).
    xl("cpupool-cpu-remove", "Pool-0", "1")
    pool, guest = f"{PREFIX}-rt", f"{PREFIX}-g2"
    probe = xl("cpupool-create", f'name="{pool}"', 'sched="rtds"', 'cpus="1"', check=False)
    if probe.returncode != 0:
        xl("cpupool-cpu-remove", "Pool-0", "1", check=False)
        same("cpupool-create", f'name="{pool}"', 'sched="rtds"', 'cpus="1"')
        assert set(_pools()) == {"Pool-0"}
        pytest.skip("this Xen has no RTDS scheduler (xl and xentool refuse the pool alike)")
    xl("cpupool-destroy", pool)
    xentool("cpupool-create", f'name="{pool}"', 'sched="rtds"', 'cpus="1"')
    assert _pools()[pool] == (1, "rtds")
    _tiny(kit, tmp_path, guest)
    xentool("cpupool-migrate", guest, pool)
    for args in (["sched-rtds"], ["sched-rtds", "-v", "all"], [f"--cpupool={pool}"],
                 ["sched-rtds", "-d", guest], ["sched-rtds", "-d", guest, "-v", "1"],
                 ["sched-rtds", "-d", guest, "-v", "all"],
                 ["sched-rtds", "-d", guest, "-v", "5"],
                 ["sched-rtds", "-d", guest, "-v", "all", "-p", "100", "-b", "200", "-e", "1"],
                 ["sched-rtds", "-d", guest, "-v", "7", "-p", "100", "-b", "20", "-e", "1"]):
        same(*(args if args[0] == "sched-rtds" else ["sched-rtds", *args]))
    xentool("sched-rtds", "-d", guest, "-v", "0", "-p", "20000", "-b", "5000", "-e", "0",
            "-v", "1", "-p", "30000", "-b", "6000", "-e", "1")
    theirs = xl("sched-rtds", "-d", guest, "-v", "all").stdout.splitlines()[1:]
    assert [ln.split()[2:] for ln in theirs] == [["0", "20000", "5000", "no"],
                                                 ["1", "30000", "6000", "yes"]]
    xentool("sched-rtds", "-d", guest, "-v", "all", "-p", "10000", "-b", "2000", "-e", "1")
    same("sched-rtds", "-d", guest, "-v", "all")
    xentool("destroy", guest)
    wait_cpupool_empty(pool, timeout=30)
    xentool("cpupool-destroy", pool)
