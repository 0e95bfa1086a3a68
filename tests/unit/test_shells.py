"""Domain shells (xentool.shells): records, taking one, the keeper's life cycle, with fakes
of libxenctrl and xenstored.  The real thing is proven in tests/integration/test_shells.py."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain_builder.errors import XenError
from domain_builder.pv import Memory
from domain_builder.xenctrl import CreateConfig
from xentool import shells
from xentool.errors import XentoolError
from xentool.resident import parse_options
from xentool.state import shells_making

PAGES = 8192  # 32 MiB


@pytest.fixture(autouse=True)
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XENTOOL_RUN_DIR", str(tmp_path / "run"))
    return tmp_path / "run"


@dataclass
class Info:
    domid: int
    handle: bytes
    dying: bool = False


@dataclass
class PhysInfo:
    free_pages: int


class FakeXc:
    """Domains with handles; memory as a count of free pages."""

    def __init__(self, free_pages: int = 10 * PAGES) -> None:
        self.doms: dict[int, Info] = {}
        self.next_domid = 1
        self.free = free_pages
        self.pages: dict[int, int] = {}
        self.destroyed: list[int] = []
        self.fail_populate = False

    def __enter__(self) -> FakeXc:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def create_domain(self, cc: CreateConfig) -> int:
        domid = self.next_domid
        self.next_domid += 1
        self.doms[domid] = Info(domid, cc.handle)
        self.pages[domid] = 0
        return domid

    def domain_info(self, domid: int) -> Info | None:
        return self.doms.get(domid)

    def domains(self) -> list[Info]:
        return list(self.doms.values())

    def destroy(self, domid: int) -> None:
        if domid not in self.doms:
            raise XenError("xc_domain_destroy", 3)
        del self.doms[domid]
        self.free += self.pages.pop(domid)
        self.destroyed.append(domid)

    def physinfo(self) -> PhysInfo:
        return PhysInfo(self.free)

    def set_max_vcpus(self, domid: int, n: int) -> None: ...
    def set_address_size(self, domid: int, bits: int) -> None: ...
    def set_max_mem(self, domid: int, kb: int) -> None: ...
    def set_memmap_limit(self, domid: int, kb: int) -> None: ...

    def evtchn_alloc_unbound(self, domid: int, remote: int) -> int:
        return 1 + self.pages[domid] % 7

    def tot_pages(self, domid: int) -> int:
        return self.pages[domid]

    def populate_physmap(self, domid: int, pfns: list[int], order: int = 0,
                         mem_flags: int = 0) -> list[int]:
        if self.fail_populate:
            raise XenError("xc_domain_populate_physmap_exact", 12)
        n = len(pfns) << order
        self.free -= n
        self.pages[domid] += n
        return [0x100000 * domid + (i << order) for i in range(len(pfns))]


class FakeStore:
    def __init__(self) -> None:
        self.nodes: dict[str, str] = {}

    @contextlib.contextmanager
    def transaction(self) -> Iterator[FakeStore]:
        yield self

    @contextlib.contextmanager
    def pipelined(self) -> Iterator[None]:
        yield

    def write(self, path: str, value: str) -> None:
        self.nodes[path] = value

    def mkdir(self, path: str) -> None:
        self.nodes.setdefault(path, "")

    def set_perms(self, path: str, perms: object) -> None: ...

    def rm(self, path: str, missing_ok: bool = False) -> None:
        for p in [p for p in self.nodes if p == path or p.startswith(path + "/")]:
            del self.nodes[p]

    def close(self) -> None: ...


SHAPE = shells.Shape(CreateConfig(max_vcpus=1, grant_version=2), PAGES, PAGES)


def made(xc: FakeXc, xs: FakeStore, n: int = 1, shape: shells.Shape = SHAPE) -> list[int]:
    d = shells.shell_dir()
    return [shells.make(xc, xs, shape, d).domid for _ in range(n)]


# -- records ----------------------------------------------------------------------------------


@given(st.lists(st.integers(0, 1 << 40), max_size=200))
def test_frames_survive_their_runs(frames: list[int]) -> None:
    assert shells.unruns(shells.runs(frames), limit=len(frames)) == tuple(frames)


def test_a_superpage_is_one_run() -> None:
    assert shells.runs([*range(512, 1024), 7]) == [[512, 512], [7, 1]]


@pytest.mark.parametrize("doc", [
    {}, [[1]], [[1, 0]], [[-1, 2]], [["1", 2]], [[1, True, 3]], [[0, PAGES + 1]],
    [[0, PAGES], [9, 1]],
])
def test_bad_runs_are_refused(doc: object) -> None:
    with pytest.raises(ValueError):
        shells.unruns(doc, limit=PAGES)


def record(**change: object) -> str:
    shell = shells.Shell(5, b"\x01" * 16, SHAPE, Memory(tuple(range(10, 10 + PAGES)), 1, 2))
    doc = json.loads(shell.to_json())
    doc.update(change)
    return json.dumps(doc)


def test_a_record_reads_back_as_written() -> None:
    shell = shells.Shell.from_json(record())
    assert shell.domid == 5 and shell.handle == b"\x01" * 16
    assert shell.shape == SHAPE
    assert shell.memory == Memory(tuple(range(10, 10 + PAGES)), 1, 2)


@pytest.mark.parametrize("change", [
    {"domid": -1}, {"domid": "5"}, {"handle": "zz"}, {"nr_pages": PAGES + 1},
    {"create": {"max_vcpus": 1}}, {"create": {**json.loads(record())["create"], "x": 1}},
    {"create": {**json.loads(record())["create"], "max_vcpus": "1"}},
    {"p2m": [[0, 1 << 30]]}, {"store_evtchn": None},
])
def test_a_bad_record_is_refused(change: dict[str, object]) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        shells.Shell.from_json(record(**change))


def test_a_shape_fits_whatever_the_handle_and_nothing_else() -> None:
    other = replace(SHAPE.create, handle=b"\x09" * 16)
    assert SHAPE.fits(other, PAGES)
    assert not SHAPE.fits(other, PAGES + 256)
    assert not SHAPE.fits(replace(other, max_vcpus=2), PAGES)
    assert not SHAPE.fits(replace(other, cpupool_id=1), PAGES)
    assert not SHAPE.fits(replace(other, grant_version=1), PAGES)


# -- taking one ---------------------------------------------------------------------------------


def test_make_then_take() -> None:
    xc, xs = FakeXc(), FakeStore()
    [domid] = made(xc, xs)
    assert shells.shell_domids() == {domid}
    assert xs.nodes[f"/local/domain/{domid}/name"] == f"xentool-shell-{domid}"
    assert xc.pages[domid] == PAGES
    assert shells.take(xc, replace(SHAPE.create, max_vcpus=2), PAGES) is None
    taken = shells.take(xc, replace(SHAPE.create, handle=b"\x07" * 16), PAGES)
    assert taken is not None and taken.domid == domid
    assert taken.shell.memory.p2m[:2] == (0x100000 * domid, 0x100000 * domid + 1)
    assert shells.shell_domids() == frozenset()  # list shows it from here
    assert taken.path.name == f"{domid}.{os.getpid()}.taken"
    taken.adopted()
    assert not any(shells.shell_dir().iterdir())
    assert shells.take(xc, SHAPE.create, PAGES) is None


def test_a_shell_is_taken_once() -> None:
    xc, xs = FakeXc(), FakeStore()
    made(xc, xs)
    first = shells.take(xc, SHAPE.create, PAGES)
    assert first is not None
    assert shells.take(xc, SHAPE.create, PAGES) is None


def test_a_shell_destroyed_by_hand_or_its_domid_reused_is_not_taken() -> None:
    xc, xs = FakeXc(), FakeStore()
    a, b = made(xc, xs, 2)
    xc.destroy(a)
    xc.doms[b] = Info(b, b"\x05" * 16)  # domid b is another domain now
    assert shells.take(xc, SHAPE.create, PAGES) is None
    assert shells.shell_domids() == frozenset()
    assert b in xc.doms  # never destroyed: not ours


def test_a_failed_make_leaves_nothing() -> None:
    xc, xs = FakeXc(), FakeStore()
    xc.fail_populate = True
    with pytest.raises(XenError):
        made(xc, xs)
    assert xc.doms == {} and xs.nodes == {}
    assert not any(shells.shell_dir().iterdir())


# -- the keeper -------------------------------------------------------------------------------


def keeper(xc: FakeXc, xs: FakeStore, count: int, stop: threading.Event,
           shape: shells.Shape = SHAPE) -> shells.Keeper:
    return shells.Keeper(count, shape, connect=lambda: xs, close=lambda s: None,  # type: ignore[arg-type,return-value]
                         xenctrl=lambda: xc, stop=stop)  # type: ignore[arg-type,return-value]


def run_until(k: shells.Keeper, stop: threading.Event, done: object) -> None:
    t = threading.Thread(target=k.run)
    t.start()
    try:
        assert shells.wait_for_pool(k.count, 10)
        if callable(done):
            done()
    finally:
        stop.set()
        k.wake.set()
        t.join(10)
    assert not t.is_alive()


@pytest.fixture
def no_autoballoon(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conf = tmp_path / "xl.conf"
    conf.write_text('autoballoon="off"\n')
    monkeypatch.setenv("XENTOOL_XL_CONF", str(conf))
    monkeypatch.setattr(FakeXc, "version", lambda self: type("V", (), {"commandline": ""})(),
                        raising=False)


def test_the_keeper_fills_refills_and_releases(no_autoballoon: None) -> None:
    xc, xs, stop = FakeXc(), FakeStore(), threading.Event()
    k = keeper(xc, xs, 2, stop)

    def take_one() -> None:
        taken = shells.take(xc, SHAPE.create, PAGES)
        assert taken is not None
        taken.adopted()
        k.wake.set()
        assert shells.wait_for_pool(2, 10)  # a new one
        assert len(xc.doms) == 3

    run_until(k, stop, take_one)
    # The taken one is a guest now: only the ready ones are released.
    assert len(xc.doms) == 1 and shells.shell_domids() == frozenset()
    assert [p for p in xs.nodes if not p.startswith(f"/local/domain/{min(xc.doms)}")
            and not p.startswith(f"/libxl/{min(xc.doms)}")] == []


def test_the_keeper_leaves_one_shell_of_memory_free(no_autoballoon: None) -> None:
    xc, xs, stop = FakeXc(free_pages=3 * PAGES), FakeStore(), threading.Event()
    k = keeper(xc, xs, 5, stop)
    t = threading.Thread(target=k.run)
    t.start()
    shells.wait_for_pool(2, 10)
    stop.wait(0.3)
    stop.set()
    k.wake.set()
    t.join(10)
    assert xc.destroyed and len(xc.destroyed) == 2  # two made (the third would not fit)


def test_the_keeper_sweeps_what_killed_processes_left(no_autoballoon: None) -> None:
    xc, xs = FakeXc(), FakeStore()
    d = shells.shell_dir()
    # A create killed after taking a shell, before its journal named the domain.
    [taken] = made(xc, xs)
    os.rename(d / f"{taken}.json", d / f"{taken}.999999999.taken")
    # A daemon killed half-way through making one.
    handle = bytes([10] * 16)
    half = xc.create_domain(CreateConfig(handle=handle))
    (d / f"{handle.hex()}.making").write_text("")
    # A shell of another shape, from an earlier daemon: not adopted.
    [other] = made(xc, xs, shape=replace(SHAPE, nr_pages=PAGES * 2, max_pages=PAGES * 2))
    # A shell of this shape: adopted.
    [kept] = made(xc, xs)
    stop = threading.Event()
    k = keeper(xc, xs, 1, stop)
    run_until(k, stop, lambda: None)
    assert set(xc.destroyed) == {taken, half, other, kept}  # kept: released at the stop
    assert xc.destroyed.index(kept) == 3 and xc.doms == {}
    assert sorted(p.name for p in d.iterdir()) == ["keeper.lock"]


def test_autoballoon_means_no_shells(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conf = tmp_path / "xl.conf"
    conf.write_text('autoballoon="on"\n')
    monkeypatch.setenv("XENTOOL_XL_CONF", str(conf))
    monkeypatch.setattr(FakeXc, "version", lambda self: type("V", (), {"commandline": ""})(),
                        raising=False)
    ready = []
    k = shells.Keeper(1, SHAPE, connect=FakeStore, close=lambda s: None,  # type: ignore[arg-type]
                      xenctrl=FakeXc, stop=threading.Event(),  # type: ignore[arg-type]
                      on_ready=lambda: ready.append(1))
    with pytest.raises(XentoolError, match="autoballoon is on"):
        k.run()
    assert ready


# -- configuration and list ---------------------------------------------------------------------


def test_prebuild_settings() -> None:
    o = parse_options("[prebuild]\nshells = 3\nmemory = 16\nvcpus = 2\n", "x.toml")
    assert (o.prebuild, o.prebuild_memory, o.prebuild_vcpus) == (3, 16, 2)
    assert parse_options("", "x.toml").prebuild == 0
    for bad, what in (("shells = -1", "must not be negative"),
                      ("memory = 0", "at least 1"), ("size = 3", "unknown setting"),
                      ("shells = 'x'", "must be int")):
        with pytest.raises(XentoolError, match=what):
            parse_options(f"[prebuild]\n{bad}\n", "x.toml")


def test_shell_domids_are_the_ready_ones(run_dir: Path) -> None:
    d = run_dir / "shells"
    d.mkdir(parents=True)
    for name in ("3.json", "4.123.taken", "abc.json", "5.tmp", "ab12.making", "12.json"):
        (d / name).write_text("")
    assert shells.shell_domids() == {3, 12}
    assert shells_making() == {"ab12"}


def test_list_leaves_shells_out(run_dir: Path) -> None:
    from domain_builder.xenctrl import DomainInfo
    from xentool.host import _no_shells

    def dom(domid: int, handle: bytes) -> DomainInfo:
        return DomainInfo(domid, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, handle, 0)

    infos = [dom(0, bytes(16)), dom(3, b"\x01" * 16), dom(4, b"\x02" * 16),
             dom(5, b"\x03" * 16)]
    assert _no_shells(infos) == infos
    (run_dir / "shells").mkdir(parents=True)
    (run_dir / "shells" / "3.json").write_text("")
    # Domain 5 is a shell being made: no record yet, known by its handle.
    (run_dir / "shells" / f"{infos[3].handle.hex()}.making").write_text("")
    assert [d.domid for d in _no_shells(infos)] == [0, 4]
