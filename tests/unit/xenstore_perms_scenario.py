"""One permission scenario run against any xenstored, recording what it observes.

The same steps run against the fake (unit tests) and the testbed's real xenstored
(tests/integration/test_xenstore_perms.py); nothing here says what the answers should be,
the two transcripts are compared with each other.

Every step runs on a dom0 connection: from dom0's socket the real daemon cannot be asked
to act for another domain (a domain's requests come from its own ring), so what is compared
is what dom0 observes: each request's answer (value, listing, OK or the errno) and, after
every step, the value and GET_PERMS of every node of the scenario's trees. That covers
inheritance on create (from an existing dir of the guest, a dom0 backend dir and new
intermediate dirs), SET_PERMS (owner change, ACLs, a domain that does not exist as owner and
in an ACL, malformed lists, missing nodes), RM (subtree, missing node, missing parent), and
the same inside transactions. The guest-side checks (EACCES, owner-on-create for a guest)
need a guest connection and are covered by the fake's own tests only.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from xenstore.client import Access, Op, Perm, Perms, Store, Transaction, _Ops
from xenstore.errors import XenStoreError

Outcome = str | list[str] | None
Snapshot = dict[str, tuple[str, str]]
Transcript = list[tuple[str, Outcome, Snapshot]]

#: A domain id no testbed domain has: a real xenstored asks the hypervisor and finds none.
ABSENT_DOMID = 32000


def roots(guest: int, tag: str) -> tuple[str, str]:
    """The guest-like tree and the backend-like tree the scenario works in."""
    return (f"/local/domain/{guest}/xstest-{tag}",
            f"/local/domain/0/backend/xstest-{tag}/{guest}/0")


def ancestors(path: str) -> list[str]:
    """Proper ancestors of ``path``, top first, without ``/``."""
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def snapshot(xs: _Ops, top: str) -> Snapshot:
    """Value and permissions of every node under ``top`` (as dom0 sees them)."""
    out: Snapshot = {}
    try:
        kids = xs.ls(top)
        out[top] = (xs.read(top), str(xs.get_perms(top)))
    except XenStoreError as e:
        if e.errno != errno.ENOENT:
            raise
        return out
    for k in kids:
        out.update(snapshot(xs, f"{top}/{k}"))
    return out


def raw_set_perms(xs: _Ops, path: str, *entries: str) -> None:
    """SET_PERMS with entries as given (the typed client refuses malformed ones)."""
    body = path.encode() + b"\0" + b"".join(e.encode() + b"\0" for e in entries)
    reply = xs._request(Op.SET_PERMS, body, path)
    assert reply == b"OK", reply


def run(store: Store, guest: int, tag: str) -> Transcript:
    """Run the scenario on ``store`` (a dom0 connection); the roots must not exist yet."""
    g, b = roots(guest, tag)
    transcript: Transcript = []

    def step(label: str, fn: Callable[[_Ops], Outcome], xs: _Ops | None = None) -> None:
        target = store if xs is None else xs
        try:
            got = fn(target)
        except XenStoreError as e:
            got = errno.errorcode.get(e.errno or 0, str(e.errno))
        # Inside a transaction the snapshot is the transaction's own view.
        transcript.append((label, got, {**snapshot(target, g), **snapshot(target, b)}))

    def ok(fn: Callable[[_Ops], object]) -> Callable[[_Ops], Outcome]:
        def call(xs: _Ops) -> Outcome:
            fn(xs)
            return "OK"
        return call

    nobody = Perms(0)
    guest_owns = Perms(guest)
    backend = Perms.private(0, guest)

    # The guest's own area: dom0 creates under the toolstack-made /local/domain/<guest>.
    step("write g/a", ok(lambda xs: xs.write(f"{g}/a", "1")))
    step("mkdir g/dir/sub", ok(lambda xs: xs.mkdir(f"{g}/dir/sub")))
    step("mkdir existing", ok(lambda xs: xs.mkdir(f"{g}/dir")))
    step("chown g to guest", ok(lambda xs: xs.set_perms(g, guest_owns)))
    step("write g/b under guest-owned", ok(lambda xs: xs.write(f"{g}/b", "2")))
    step("write g/new/deep/c", ok(lambda xs: xs.write(f"{g}/new/deep/c", "3")))
    step("acl on g/a", ok(lambda xs: xs.set_perms(
        f"{g}/a", Perms(0, Access.READ, (Perm(guest, Access.BOTH), Perm(0, Access.WRITE))))))
    step("acl names absent domain", ok(lambda xs: xs.set_perms(
        f"{g}/b", Perms(guest, Access.NONE, (Perm(ABSENT_DOMID, Access.READ),)))))
    step("owner is absent domain", ok(lambda xs: xs.set_perms(f"{g}/a", Perms(ABSENT_DOMID))))
    step("set_perms missing node", ok(lambda xs: xs.set_perms(f"{g}/nothere", nobody)))
    step("set_perms bad letter", ok(lambda xs: raw_set_perms(xs, f"{g}/a", "x0")))
    step("set_perms no entries", ok(lambda xs: raw_set_perms(xs, f"{g}/a")))
    # Numbers are read like strtol(, 0): a leading 0 means octal.
    step("set_perms padded domid", ok(lambda xs: raw_set_perms(xs, f"{g}/b", f"n{guest:04d}",
                                                               "r000")))
    step("set_perms hex domid", ok(lambda xs: raw_set_perms(xs, f"{g}/b", "n0",
                                                            f"r{hex(guest)}", "w0X0")))
    step("read g/a", lambda xs: xs.read(f"{g}/a"))
    step("read dir value", lambda xs: xs.read(f"{g}/dir"))
    step("read missing", lambda xs: xs.read(f"{g}/nothere"))
    step("ls g", lambda xs: sorted(xs.ls(g)))
    step("ls missing", lambda xs: xs.ls(f"{g}/nothere/x"))
    step("get_perms missing", lambda xs: str(xs.get_perms(f"{g}/nothere")))
    step("rm g/dir/sub", ok(lambda xs: xs.rm(f"{g}/dir/sub")))
    step("rm missing child", ok(lambda xs: xs.rm(f"{g}/dir/nothere")))
    step("rm missing parent", ok(lambda xs: xs.rm(f"{g}/nothere/x")))
    step("rm subtree", ok(lambda xs: xs.rm(f"{g}/new")))

    # A backend-like area, dom0's, created from nothing below /local/domain/0/backend.
    step("write b/state", ok(lambda xs: xs.write(f"{b}/state", "1")))
    step("backend perms", ok(lambda xs: xs.set_perms(b, backend)))
    step("write b/frontend-id", ok(lambda xs: xs.write(f"{b}/frontend-id", str(guest))))
    step("mkdir b/queue/0", ok(lambda xs: xs.mkdir(f"{b}/queue/0")))
    step("guest-owned b/state", ok(lambda xs: xs.set_perms(f"{b}/state", guest_owns)))

    # The same kinds of request inside a transaction, then what the commit left.
    with store.transaction(attempts=1) as t:
        tx: Transaction = t
        step("tx write g/tx/c", ok(lambda xs: xs.write(f"{g}/tx/c", "4")), tx)
        step("tx set_perms g/tx", ok(lambda xs: xs.set_perms(
            f"{g}/tx", Perms(guest, Access.READ))), tx)
        step("tx write g/tx/d", ok(lambda xs: xs.write(f"{g}/tx/d", "5")), tx)
        step("tx owner absent", ok(lambda xs: xs.set_perms(f"{g}/tx", Perms(ABSENT_DOMID))), tx)
        step("tx get_perms", lambda xs: str(xs.get_perms(f"{g}/tx/d")), tx)
        step("tx mkdir b/queue/1", ok(lambda xs: xs.mkdir(f"{b}/queue/1")), tx)
        step("tx rm b/queue/0", ok(lambda xs: xs.rm(f"{b}/queue/0")), tx)
        step("tx read removed", lambda xs: xs.read(f"{b}/queue/0"), tx)
    step("after commit", lambda xs: None)

    with store.transaction(attempts=1) as t:
        tx = t
        step("tx rm g", ok(lambda xs: xs.rm(g)), tx)
        step("tx read in removed", lambda xs: xs.read(f"{g}/a"), tx)
    step("after second commit", lambda xs: None)
    return transcript


def cleanup(store: Store, guest: int, tag: str) -> None:
    g, b = roots(guest, tag)
    store.rm(g, missing_ok=True)
    store.rm(b.rsplit("/", 2)[0], missing_ok=True)


def seed_like(store: Store, reference: Store, guest: int, tag: str) -> None:
    """Give ``store`` the ancestors of the scenario's roots that exist on ``reference``,
    with the same permissions, so both start from the same tree."""
    for root in roots(guest, tag):
        for path in ancestors(root):
            try:
                perms = reference.get_perms(path)
            except XenStoreError as e:
                if e.errno != errno.ENOENT:
                    raise
                break
            store.mkdir(path)
            store.set_perms(path, perms)
