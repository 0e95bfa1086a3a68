"""The fake xenstored's permission model, as cxenstored 4.17 implements it.

Expected answers come from tools/xenstore/xenstored_core.c (perm_for_conn, ask_parents /
errno_from_parents, construct_node, do_rm, do_set_perms); the parts dom0 can observe are
also compared with the real daemon by tests/integration/test_xenstore_perms.py.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest
import xenstore_perms_scenario as scenario
from test_xenstore_fake import Server, act_as, fake_xenstored  # noqa: F401 - fixture

from xenstore.client import Access, Perm, Perms, Store
from xenstore.errors import XenStoreError

GUEST, OTHER = 5, 6


@pytest.fixture
def conns(fake_xenstored: tuple[Server, str]) -> Iterator[tuple[Store, Store, Store]]:  # noqa: F811
    """dom0, the guest and another guest, with a libxl-like /local/domain/<guest>."""
    srv, path = fake_xenstored
    srv.fake.domains = {0, GUEST, OTHER}
    with Store.connect(path, timeout=5) as d0, Store.connect(path, timeout=5) as g, \
            Store.connect(path, timeout=5) as o:
        act_as(g, GUEST)
        act_as(o, OTHER)
        d0.mkdir(f"/local/domain/{GUEST}")
        d0.set_perms(f"/local/domain/{GUEST}", Perms.private(0, GUEST))
        d0.mkdir(f"/local/domain/{GUEST}/data")
        d0.set_perms(f"/local/domain/{GUEST}/data", Perms.private(GUEST))
        yield d0, g, o


def err(fn, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(XenStoreError) as ei:
        fn(*args)
    return ei.value.errno or 0


def test_guest_creates_own_nodes_and_others_cannot_see_them(conns) -> None:
    d0, g, o = conns
    g.write("data/x/y", "v")  # relative: under the guest's own home
    assert d0.get_perms(f"/local/domain/{GUEST}/data/x/y") == Perms(GUEST)
    assert d0.read(f"/local/domain/{GUEST}/data/x/y") == "v"  # dom0 bypasses
    assert err(o.read, f"/local/domain/{GUEST}/data/x/y") == errno.EACCES
    # A missing node below an unreadable one is EACCES too: its absence is not told.
    assert err(o.read, f"/local/domain/{GUEST}/data/nothere") == errno.EACCES
    assert err(g.read, f"/local/domain/{GUEST}/data/nothere") == errno.ENOENT
    assert err(o.ls, f"/local/domain/{GUEST}/data") == errno.EACCES
    assert err(o.get_perms, f"/local/domain/{GUEST}/data") == errno.EACCES


def test_guest_creating_under_dom0_node_becomes_owner(conns) -> None:
    d0, g, _o = conns
    d0.mkdir("/shared")
    d0.set_perms("/shared", Perms(0, Access.NONE, (Perm(GUEST, Access.BOTH),)))
    g.write("/shared/a/b", "1")
    # Inherited list, first entry's domain replaced by the creator (construct_node).
    want = Perms(GUEST, Access.NONE, (Perm(GUEST, Access.BOTH),))
    assert d0.get_perms("/shared/a") == want
    assert d0.get_perms("/shared/a/b") == want
    # dom0 creating keeps the inherited owner.
    d0.write(f"/local/domain/{GUEST}/data/by0", "x")
    assert d0.get_perms(f"/local/domain/{GUEST}/data/by0") == Perms(GUEST)


def test_write_needs_write_on_node_or_nearest_ancestor(conns) -> None:
    d0, g, _o = conns
    home = f"/local/domain/{GUEST}"
    assert err(g.write, f"{home}/name", "x") == errno.EACCES  # n0,r5: read only
    assert err(g.mkdir, f"{home}/newdir") == errno.EACCES
    # mkdir of an existing node the guest may not write is EACCES too (do_mkdir).
    assert err(g.mkdir, home) == errno.EACCES
    d0.write(f"{home}/ro", "1")
    d0.set_perms(f"{home}/ro", Perms(0, Access.READ))
    assert g.read(f"{home}/ro") == "1"
    assert err(g.write, f"{home}/ro", "2") == errno.EACCES
    d0.set_perms(f"{home}/ro", Perms(0, Access.READ, (Perm(GUEST, Access.WRITE),)))
    g.write(f"{home}/ro", "2")  # the ACL entry for the guest wins over the default
    assert err(g.read, f"{home}/ro") == errno.EACCES  # ... and it says write only


def test_acl_entry_of_absent_domain_is_ignored(conns, fake_xenstored) -> None:  # noqa: F811
    d0, g, _o = conns
    d0.write("/p", "1")
    d0.set_perms("/p", Perms(0, Access.READ, (Perm(GUEST, Access.NONE),)))
    assert err(g.read, "/p") == errno.EACCES
    fake_xenstored[0].fake.domains = {0}
    assert g.read("/p") == "1"  # the entry names a domain that is gone: default applies
    assert err(d0.set_perms, "/p", Perms(GUEST)) == errno.ENOENT


def test_rm_needs_write_on_the_node_not_the_parent(conns) -> None:
    d0, g, o = conns
    home = f"/local/domain/{GUEST}"
    d0.write(f"{home}/gone", "1")
    d0.set_perms(f"{home}/gone", Perms(GUEST))
    d0.write(f"{home}/gone/kid", "2")
    d0.set_perms(f"{home}/gone/kid", Perms(0))  # not the guest's: removed all the same
    g.rm(f"{home}/gone")
    assert not d0.exists(f"{home}/gone")
    d0.write(f"{home}/name", "guest")
    assert err(g.rm, f"{home}/name") == errno.EACCES
    assert err(o.rm, f"{home}/data/nothere") == errno.EACCES
    g.rm(f"{home}/data/nothere")  # missing node, parent there and writable: fine
    assert err(g.rm, f"{home}/data/no/such") == errno.ENOENT


def test_set_perms_needs_ownership_and_keeps_the_owner(conns) -> None:
    d0, g, o = conns
    node = f"/local/domain/{GUEST}/data/n"
    g.write(node, "1")
    g.set_perms(node, Perms(GUEST, Access.READ, (Perm(OTHER, Access.BOTH),)))
    assert o.read(node) == "1"
    o.write(node, "2")  # b for OTHER
    assert err(o.set_perms, node, Perms(GUEST)) == errno.EACCES  # write is not ownership
    assert err(g.set_perms, node, Perms(OTHER)) == errno.EPERM  # no giving away
    d0.set_perms(node, Perms(OTHER))  # dom0 may
    assert o.get_perms(node) == Perms(OTHER)


def test_transactions_apply_the_same_checks(conns) -> None:
    d0, g, o = conns
    with g.transaction() as t:
        t.write("data/t/x", "1")
        assert t.get_perms("data/t/x") == Perms(GUEST)
        assert err(t.write, f"/local/domain/{GUEST}/name", "x") == errno.EACCES
    assert d0.get_perms(f"/local/domain/{GUEST}/data/t") == Perms(GUEST)
    with o.transaction() as t:
        assert err(t.read, f"/local/domain/{GUEST}/data/t/x") == errno.EACCES


def test_privileged_requests_refused_to_guests(conns) -> None:
    _d0, g, _o = conns
    assert err(g.is_domain_introduced, 3) == errno.EACCES
    assert err(g.introduce_domain, 7, 1, 1) == errno.EACCES
    assert err(act_as, g, 0) == errno.EACCES  # a guest cannot become dom0 again


def test_watch_events_only_for_readable_nodes(conns) -> None:
    d0, g, o = conns
    with o.watch(f"/local/domain/{GUEST}/data", timeout=2) as w:
        assert w.get(1) is not None  # the registration event
        d0.write(f"/local/domain/{GUEST}/data/secret", "1")
        assert w.get(0.3) is None
    with g.watch(f"/local/domain/{GUEST}/data", timeout=2) as w:
        assert w.get(1) is not None
        d0.write(f"/local/domain/{GUEST}/data/secret", "2")
        ev = w.get(1)
        assert ev is not None and ev.path.endswith("/data/secret")


def test_scenario_commit_keeps_what_the_transaction_saw(fake_xenstored) -> None:  # noqa: F811
    """The differential scenario on the fake (compared with the real daemon in the testbed):
    a commit must leave exactly the view the transaction ended with."""
    srv, path = fake_xenstored
    srv.fake.domains = {0, GUEST}
    with Store.connect(path, timeout=5) as xs:
        xs.mkdir(f"/local/domain/{GUEST}")
        xs.set_perms(f"/local/domain/{GUEST}", Perms.private(0, GUEST))
        log = scenario.run(xs, GUEST, "unit")
    by_label = {label: snap for label, _got, snap in log}
    assert by_label["after commit"] == by_label["tx read removed"]
    assert by_label["after second commit"] == by_label["tx read in removed"]
    assert len({label for label, _, _ in log}) == len(log)
