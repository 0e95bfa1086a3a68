"""The XenStore client against the real xenstored of the testbed dom0."""

from __future__ import annotations

import errno
import re
import threading
import uuid

import pytest

from xenstore.client import Access, Perm, Perms, Store
from xenstore.errors import XenStoreError

from .helpers import GuestKit, run, xl

pytestmark = pytest.mark.xen


@pytest.fixture
def base() -> str:
    path = f"/tool/xentool-test-{uuid.uuid4().hex[:8]}"
    yield path
    with Store.connect() as xs:
        xs.rm(path, missing_ok=True)


def test_read_write_perms_agree_with_xenstore_tools(base: str) -> None:
    with Store.connect() as xs:
        assert xs.read("/local/domain/0/name") == "Domain-0"
        xs.write(f"{base}/a", "hello")
        # Only existing domains may appear in permissions (xenstored says ENOENT otherwise),
        # and dom0 is the only one sure to exist.
        xs.set_perms(f"{base}/a", Perms(0, Access.NONE, (Perm(0, Access.READ),)))
        assert run("xenstore-read", f"{base}/a").stdout.strip() == "hello"
        listing = run("xenstore-ls", "-p", base).stdout
        # xenstore-ls pads with ". . ." up to the permissions column.
        assert re.fullmatch(r'a = "hello"[ .]*\(n0,r0\)\n', listing), listing
        run("xenstore-chmod", f"{base}/a", "w0", "b0")
        assert xs.get_perms(f"{base}/a").to_wire() == ["w0", "b0"]
        with pytest.raises(XenStoreError) as ei:
            xs.read(f"{base}/missing")
        assert ei.value.errno == errno.ENOENT


def test_transactions_on_real_xenstored(base: str) -> None:
    with Store.connect() as xs:
        xs.write(f"{base}/cnt", "0")

        def bump(t) -> None:
            t.write(f"{base}/cnt", str(int(t.read(f"{base}/cnt")) + 1))

        def worker() -> None:
            with Store.connect() as own:
                for _ in range(20):
                    own.transact(bump, attempts=500)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert xs.read(f"{base}/cnt") == "80"

        with pytest.raises(RuntimeError):
            with xs.transaction() as t:
                t.write(f"{base}/aborted", "x")
                raise RuntimeError
        assert not xs.exists(f"{base}/aborted")


def test_concurrent_sibling_creation_replays(base: str) -> None:
    errors = []

    def add(i: int) -> None:
        try:
            with Store.connect() as own, own.transaction(attempts=100) as t:
                assert not t.exists(f"{base}/dev/{i}")
                for k in range(10):
                    t.write(f"{base}/dev/{i}/k{k}", str(k))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    with Store.connect() as xs:
        assert sorted(xs.ls(f"{base}/dev"), key=int) == [str(i) for i in range(8)]
        assert all(len(xs.ls(f"{base}/dev/{i}")) == 10 for i in range(8))


def test_watch_and_release_domain_watch(kit: GuestKit, guest_name: str, cfg_file,
                                        base: str) -> None:
    with Store.connect() as xs:
        with xs.watch(base, timeout=10) as w:
            assert next(w).path == base
            run("xenstore-write", f"{base}/x", "1")
            assert next(w).path == f"{base}/x"
        cfg = cfg_file(kit.tiny_cfg(guest_name, wait=True))
        xl("create", str(cfg), timeout=300)
        try:
            with xs.watch("@releaseDomain", timeout=120) as w:
                assert next(w).path == "@releaseDomain"  # fired at registration
                xl("destroy", guest_name, timeout=300)
                assert next(w).path == "@releaseDomain"
        finally:
            xl("destroy", guest_name, check=False)
