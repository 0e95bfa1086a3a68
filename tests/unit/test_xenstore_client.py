"""The Store client against the in-process fake xenstored (real wire protocol, no Xen)."""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator

import pytest
from test_xenstore_fake import Server, fake_xenstored  # noqa: F401 - fixture

from xenstore.client import Access, Perm, Perms, Store, WatchEvent
from xenstore.errors import XenStoreError


@pytest.fixture
def xs(fake_xenstored: tuple[Server, str]) -> Iterator[Store]:  # noqa: F811
    _srv, path = fake_xenstored
    with Store.connect(path, timeout=5) as store:
        yield store


@pytest.fixture
def fake(fake_xenstored: tuple[Server, str]):  # noqa: F811
    return fake_xenstored[0].fake


def test_write_read_ls_rm(xs: Store, fake) -> None:
    xs.write("/local/domain/3/name", "guest")
    xs.write("/local/domain/3/data", b"\x01 raw\n")
    assert xs.read("/local/domain/3/name") == "guest"
    assert xs.read_bytes("/local/domain/3/data") == b"\x01 raw\n"
    assert sorted(xs.ls("/local/domain/3")) == ["data", "name"]
    xs.rm("/local/domain/3")
    assert fake.value("/local/domain/3/name") is None
    assert xs.ls("/local/domain") == []


def test_missing_node_is_enoent_with_path(xs: Store) -> None:
    with pytest.raises(XenStoreError) as ei:
        xs.read("/no/such")
    assert ei.value.errno == errno.ENOENT
    assert ei.value.path == "/no/such"
    assert "/no/such" in str(ei.value) and "ENOENT" in str(ei.value)
    assert xs.get("/no/such") is None
    assert xs.get("/no/such", "dflt") == "dflt"
    assert not xs.exists("/no/such")


def test_rm_missing(xs: Store) -> None:
    xs.mkdir("/a")
    xs.rm("/a/b")  # parent exists: xenstored says OK
    with pytest.raises(XenStoreError) as ei:
        xs.rm("/x/y")
    assert ei.value.errno == errno.ENOENT
    xs.rm("/x/y", missing_ok=True)


def test_mkdir_keeps_existing_value(xs: Store) -> None:
    xs.write("/a", "v")
    xs.mkdir("/a")
    xs.mkdir("/a/b/c")
    assert xs.read("/a") == "v"
    assert xs.read("/a/b/c") == ""


def test_bad_path_and_nul_value_are_einval(xs: Store) -> None:
    for bad in ("/a//b", "/a/", "/sp ace", "/dot.ted"):
        with pytest.raises(XenStoreError) as ei:
            xs.read(bad)
        assert ei.value.errno == errno.EINVAL, bad
    with pytest.raises(XenStoreError) as ei:
        xs.write("/a", b"x\0y")
    assert ei.value.errno == errno.EINVAL


def test_oversized_value_is_e2big(xs: Store) -> None:
    with pytest.raises(XenStoreError) as ei:
        xs.write("/a", "x" * 5000)
    assert ei.value.errno == errno.E2BIG


def test_perms_roundtrip(xs: Store, fake) -> None:
    xs.write("/local/domain/0/backend/vbd/5/51712/state", "1")
    p = Perms.private(0, 5)
    xs.set_perms("/local/domain/0/backend/vbd/5/51712/state", p)
    assert fake.tree("/local/domain/0/backend/vbd/5/51712/state")[
        "/local/domain/0/backend/vbd/5/51712/state"][1] == [b"n0", b"r5"]
    got = xs.get_perms("/local/domain/0/backend/vbd/5/51712/state")
    assert got == Perms(0, Access.NONE, (Perm(5, Access.READ),))
    assert str(got) == "n0,r5"
    xs.set_perms("/local/domain/0/backend/vbd/5/51712/state",
                 [Perm(5, Access.BOTH), Perm(0, Access.WRITE)])
    assert xs.get_perms("/local/domain/0/backend/vbd/5/51712/state").to_wire() == ["b5", "w0"]


@pytest.mark.parametrize("bad", ["", "x5", "r", "r-1", "r5a", "r\u0665"])
def test_perm_parse_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        Perm.parse(bad)


def test_read_int_is_strict(xs: Store) -> None:
    for raw, ok in [(b"42", 42), (b"0", 0)]:
        xs.write("/n", raw)
        assert xs.read_int("/n") == ok
    for raw in (b"", b" 4", b"4 ", b"0x10", b"1e3", b"9" * 30, b"\xff", b"+3"):
        xs.write("/n", raw)
        with pytest.raises(XenStoreError) as ei:
            xs.read_int("/n")
        assert ei.value.errno == errno.EINVAL, raw
    xs.write("/n", "70000")
    with pytest.raises(XenStoreError) as ei:
        xs.read_int("/n", hi=65535)
    assert ei.value.errno == errno.ERANGE


def test_get_domain_path(xs: Store) -> None:
    assert xs.get_domain_path(7) == "/local/domain/7"


def test_transaction_commits_and_aborts(xs: Store, fake) -> None:
    with xs.transaction() as t:
        t.write("/t/a", "1")
        t.write("/t/b", "2")
        assert fake.value("/t/a") is None  # not visible before commit
    assert fake.value("/t/a") == b"1" and fake.value("/t/b") == b"2"

    with pytest.raises(RuntimeError):
        with xs.transaction() as t:
            t.write("/t/a", "changed")
            raise RuntimeError("boom")
    assert fake.value("/t/a") == b"1"


def test_transaction_replays_on_eagain(xs: Store, fake) -> None:
    fake.force_conflicts = 2
    with xs.transaction() as t:
        assert t.get("/r/x") is None
        t.write("/r/x", "v")
    assert fake.value("/r/x") == b"v"
    assert fake.commits == 1


def test_transaction_replay_refuses_when_read_changed(xs: Store, fake) -> None:
    xs.write("/c", "0")
    with pytest.raises(XenStoreError) as ei:
        with xs.transaction() as t:
            n = int(t.read("/c"))
            xs.write("/c", "5")  # someone else, outside the transaction
            t.write("/c", str(n + 1))
    assert ei.value.errno == errno.EAGAIN
    assert fake.value("/c") == b"5"


def test_transact_reruns_read_modify_write(xs: Store, fake) -> None:
    xs.write("/c", "0")
    calls = []

    def bump(t) -> int:
        n = int(t.read("/c"))
        if not calls:
            xs.write("/c", "5")  # concurrent writer, only the first time
        calls.append(n)
        t.write("/c", str(n + 1))
        return n + 1

    assert xs.transact(bump) == 6
    assert calls == [0, 5]
    assert fake.value("/c") == b"6"


def test_transaction_gives_up_after_attempts(xs: Store, fake) -> None:
    fake.force_conflicts = 100
    with pytest.raises(XenStoreError) as ei:
        with xs.transaction(attempts=3) as t:
            t.write("/g", "1")
    assert ei.value.errno == errno.EAGAIN
    assert fake.value("/g") is None


def test_concurrent_counter_increments_lose_nothing(xs: Store, fake) -> None:
    xs.write("/cnt", "0")

    def bump(t) -> None:
        t.write("/cnt", str(int(t.read("/cnt")) + 1))

    def worker() -> None:
        for _ in range(10):
            xs.transact(bump, attempts=200)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert fake.value("/cnt") == b"80"


def test_concurrent_disjoint_transactions_all_land(xs: Store, fake) -> None:
    # Like 8 block-attach at once: siblings under one parent conflict in xenstored,
    # replay makes each succeed without the caller re-running anything.
    def attach(i: int) -> None:
        with xs.transaction(attempts=100) as t:
            if t.exists(f"/be/{i}"):
                raise AssertionError("exists")
            t.write(f"/be/{i}/state", "1")
            t.write(f"/be/{i}/dev", f"xvd{chr(97 + i)}")

    threads = [threading.Thread(target=attach, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(xs.ls("/be")) == [str(i) for i in range(8)]
    assert all(fake.value(f"/be/{i}/state") == b"1" for i in range(8))


def test_watch_fires_on_register_and_change(xs: Store) -> None:
    with xs.watch("/w", "tok", timeout=5) as w:
        assert next(w) == WatchEvent("/w", "tok")
        xs.write("/w/child", "x")
        assert next(w) == WatchEvent("/w/child", "tok")
        xs.write("/other", "x")
        assert w.get(timeout=0.2) is None  # not below /w


def test_watch_deadline_raises_etimedout(xs: Store) -> None:
    with xs.watch("/w", timeout=0.3) as w:
        next(w)
        with pytest.raises(XenStoreError) as ei:
            next(w)
        assert ei.value.errno == errno.ETIMEDOUT


def test_watch_unregisters_on_exit(xs: Store, fake) -> None:
    with xs.watch("/w", "t1"):
        assert len(fake.watches) == 1
    assert fake.watches == []


def test_special_watches(xs: Store, fake) -> None:
    with xs.watch("@introduceDomain", timeout=5) as wi, \
         xs.watch("@releaseDomain", timeout=5) as wr:
        assert next(wi).path == "@introduceDomain"
        assert next(wr).path == "@releaseDomain"
        xs.introduce_domain(4, 0xFEFFF, 1)
        assert next(wi).path == "@introduceDomain"
        assert xs.is_domain_introduced(4)
        xs.release_domain(4)
        assert next(wr).path == "@releaseDomain"
        assert not xs.is_domain_introduced(4)
    with pytest.raises(XenStoreError):
        xs.introduce_domain(0, 1, 1)


def test_connect_failure_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(XenStoreError) as ei:
        Store.connect(str(tmp_path / "nothing"))
    assert "cannot reach xenstored" in str(ei.value)
    assert str(tmp_path / "nothing") in str(ei.value)


def test_dead_xenstored_does_not_hang(fake_xenstored) -> None:  # noqa: F811
    srv, path = fake_xenstored
    with Store.connect(path, timeout=1) as xs:
        srv.hang = True
        with pytest.raises(XenStoreError) as ei:
            xs.read("/x")
        assert ei.value.errno == errno.ETIMEDOUT


def test_replay_treats_tolerated_rm_outcomes_alike(xs: Store, fake) -> None:
    # First attempt: /p is missing, rm of /p/q fails ENOENT (tolerated). Someone creates
    # /p before commit; the replayed rm now succeeds. The block cannot tell the difference,
    # so replay must go ahead rather than report a conflict.
    with xs.transaction() as t:
        t.rm("/p/q", missing_ok=True)
        xs.mkdir("/p")
        t.write("/p/q/r", "1")
    assert fake.value("/p/q/r") == b"1"


# -- pipelined transactions --------------------------------------------------------------


def test_pipelined_writes_are_sent_without_waiting(fake_xenstored, fake) -> None:  # noqa: F811
    srv, path = fake_xenstored
    with Store.connect(path, timeout=3) as xs:
        with xs.transaction() as t:
            # The fake answers only once 8 requests have come: a client that waited for
            # each answer would time out on the first.
            srv.batch = 8
            with t.pipelined():
                for i in range(4):
                    t.write(f"/p/{i}", str(i))
                    t.set_perms(f"/p/{i}", Perms(0, Access.NONE, (Perm(i + 1, Access.READ),)))
            srv.batch = 0
            assert t.read("/p/3") == "3"
        assert [fake.value(f"/p/{i}") for i in range(4)] == [b"0", b"1", b"2", b"3"]
        assert xs.get_perms("/p/2").to_wire() == ["n0", "r3"]


def test_pipelined_failure_is_raised_at_the_end_and_aborts(xs: Store, fake) -> None:
    with pytest.raises(XenStoreError) as ei:
        with xs.transaction() as t, t.pipelined():
            t.write("/q/a", "1")
            t.rm("/no/such/node")  # ENOENT, known only when the answers are collected
            t.rm("/no/other", missing_ok=True)  # tolerated: not the failure
            t.write("/q/b", "2")
    assert (ei.value.errno, ei.value.path) == (errno.ENOENT, "/no/such/node")
    assert fake.value("/q/a") is None and fake.value("/q/b") is None


def test_pipelined_read_waits_for_the_writes_before_it(xs: Store) -> None:
    with xs.transaction() as t, t.pipelined():
        t.write("/r/a", "1")
        t.mkdir("/r/dir")
        assert sorted(t.ls("/r")) == ["a", "dir"]
        t.write("/r/b", "2")
    assert xs.read("/r/b") == "2"


def test_pipelined_transaction_replays_on_eagain(xs: Store, fake) -> None:
    fake.force_conflicts = 2
    with xs.transaction() as t, t.pipelined():
        t.rm("/s", missing_ok=True)
        for i in range(40):  # more than one window
            t.write(f"/s/{i}", str(i))
    assert fake.commits == 1
    assert [fake.value(f"/s/{i}") for i in (0, 39)] == [b"0", b"39"]
