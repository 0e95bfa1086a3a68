"""A small in-process xenstored speaking the real wire protocol over a unix socket.

Independent of pyxs on purpose (struct + socketserver), so the client is tested against
the protocol as xs_wire.h defines it, not against itself. It models what our layer relies
on: nodes with values and permissions, implicit parents, watches (fired at registration,
on changes of the node or below, on removal of a parent), the special @introduceDomain /
@releaseDomain watches, and transactions that conflict like cxenstored's (a node the
transaction touched was changed by someone else since it started).

Permissions are enforced as cxenstored 4.17 does (xenstored_core.c: perm_for_conn,
errno_from_parents, construct_node, do_rm, do_set_perms): dom0 may do anything; the owner
(first entry) may do anything; otherwise the ACL entry for the domain, else the first
entry's letter, decides. A missing node reports ENOENT only when its nearest existing
ancestor grants the access asked for, EACCES otherwise; creating needs write on that
ancestor; new nodes copy their parent's permissions and an unprivileged creator becomes
their owner; removal needs write on the node itself (not on its parent) and takes the whole
subtree; SET_PERMS needs ownership, and an unprivileged owner cannot give the node away.
A connection acts as domain N after the fake-only control request ``fake-domid N`` (sent
by a privileged connection, see ``act_as``): the real daemon learns a connection's domain
from the ring it arrives on, which a socket test cannot provide.

Also holds its own tests, so the fake is known to behave before it judges the client.
Other test modules import ``fake_xenstored`` from here.
"""

from __future__ import annotations

import os
import socket
import socketserver
import struct
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from xenstore.client import Store

HDR = struct.Struct("<IIII")
(DEBUG, DIRECTORY, READ, GET_PERMS, WATCH, UNWATCH, TX_START, TX_END, INTRODUCE, RELEASE,
 GET_DOMAIN_PATH, WRITE, MKDIR, RM, SET_PERMS, WATCH_EVENT, ERROR, IS_INTRODUCED,
 RESUME) = range(19)


@dataclass
class Node:
    value: bytes
    perms: list[bytes]
    gen: int = 0


@dataclass
class Tx:
    nodes: dict[str, Node]
    start_gen: int
    touched: set[str] = field(default_factory=set)
    dirty: set[str] = field(default_factory=set)
    conn: Handler | None = None


def parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


_LETTERS = {ord("n"): "", ord("r"): "r", ord("w"): "w", ord("b"): "rw"}
EACCES, ENOENT, EINVAL, EPERM = b"EACCES\0", b"ENOENT\0", b"EINVAL\0", b"EPERM\0"
PRIVILEGED_OPS = {DEBUG, INTRODUCE, RELEASE, IS_INTRODUCED, RESUME, 20}  # 20: SET_TARGET


def _domid(conn: Handler | None) -> int:
    return 0 if conn is None else conn.domid


def _strtol0(text: bytes) -> int | None:
    """strtol(text, &end, 0) that must consume all of ``text``: 0x hex, 0 octal, decimal."""
    t = text.lower()
    try:
        if t.startswith(b"0x"):
            return int(t[2:], 16) if t[2:].isalnum() else None
        if t.startswith(b"0") and len(t) > 1:
            return int(t[1:], 8) if t[1:].isdigit() else None
        return int(t) if t.isdigit() else None
    except ValueError:
        return None


def parse_perms(strings: list[bytes]) -> list[bytes] | None:
    """xenstore_strings_to_perms: a letter of nrwb then a number as strtol(, 0) reads it;
    kept the way xenstored prints them back (``r007`` -> ``r7``). None when malformed."""
    out = []
    for p in strings:
        domid = _strtol0(p[1:])
        if p[:1] not in (b"n", b"r", b"w", b"b") or domid is None:
            return None
        out.append(p[:1] + str(domid).encode())
    return out


class Fake:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.gen = 1
        self.nodes: dict[str, Node] = {"/": Node(b"", [b"n0"])}
        self.txs: dict[int, Tx] = {}
        self.next_tx = 1
        self.watches: list[tuple[Handler, str, bytes]] = []
        self.introduced: set[int] = set()
        self.tombstones: dict[str, int] = {}  # path -> generation it was removed at
        self.force_conflicts = 0  # commits to refuse with EAGAIN regardless
        self.requests: list[tuple[int, int]] = []  # (op, tx_id) as received
        self.commits = 0
        # Domains the hypervisor knows (xenstored asks it when permissions name a domain);
        # None: every domid exists, as the fake has no hypervisor to ask.
        self.domains: set[int] | None = None

    # -- permissions (cxenstored 4.17) ------------------------------------------------------

    def domain_exists(self, domid: int) -> bool:
        return domid == 0 or self.domains is None or domid in self.domains

    def access(self, domid: int, perms: list[bytes]) -> str:
        """perm_for_conn: the letters (r, w, o for owner) ``domid`` has on a node."""
        if domid == 0 or int(perms[0][1:]) == domid:
            return "rwo"
        for p in perms[1:]:
            # An entry for a domain that does not exist is ignored (XS_PERM_IGNORE).
            if int(p[1:]) == domid and self.domain_exists(domid):
                return p[:1].decode().translate(_LETTERS)
        return perms[0][:1].decode().translate(_LETTERS)

    def _get(self, nodes: dict[str, Node], conn: Handler | None, path: str,
             need: str) -> tuple[Node | None, bytes]:
        """get_node: the node if ``conn`` has every access in ``need``, else the error,
        hidden behind EACCES unless the nearest existing ancestor grants some of ``need``."""
        node = nodes.get(path)
        if node is not None:
            if set(need) <= set(self.access(_domid(conn), node.perms)):
                return node, b""
            err = EACCES
        else:
            err = ENOENT
        anc = path
        while anc != "/":
            anc = parent(anc)
            if anc in nodes:
                break
        if not set(need) & set(self.access(_domid(conn), nodes[anc].perms)):
            err = EACCES
        return None, err

    def may_read(self, domid: int, path: str, perms: list[bytes] | None) -> bool:
        """watch_permitted: a watch event goes to an unprivileged watcher only if it may read
        the node (before or after the change) or its parent."""
        if perms is not None and "r" in self.access(domid, perms):
            return True
        node = self.nodes.get(path)
        if node is None:
            return False
        if "r" in self.access(domid, node.perms):
            return True
        par = self.nodes.get(parent(path))
        return par is not None and "r" in self.access(domid, par.perms)

    # -- tree helpers on a given node map ---------------------------------------------------

    def _create(self, nodes: dict[str, Node], path: str, tx: Tx | None,
                changed: list[str], owner: int = 0) -> None:
        if path in nodes:
            return
        par = parent(path)
        self._create(nodes, par, tx, changed, owner)
        perms = list(nodes[par].perms)
        if owner:  # unprivileged domains own what they create
            perms[0] = perms[0][:1] + str(owner).encode()
        nodes[path] = Node(b"", perms, self.gen)
        nodes[par].gen = self.gen  # the parent's child list changed
        if tx is not None:
            tx.touched.update({path, par})
            tx.dirty.update({path, par})
        changed.append(path)

    def _subtree(self, nodes: dict[str, Node], path: str) -> list[str]:
        pre = path.rstrip("/") + "/"
        return [p for p in nodes if p == path or p.startswith(pre)]

    # -- requests -------------------------------------------------------------------------

    def handle(self, conn: Handler | None, op: int, tx_id: int,
               payload: bytes) -> tuple[int, bytes]:
        with self.lock:
            self.requests.append((op, tx_id))
            domid = _domid(conn)
            if op in PRIVILEGED_OPS and domid != 0:
                return ERROR, EACCES
            if op == DEBUG:
                return self._control(conn, payload)
            args = payload.split(b"\0")
            tx = self.txs.get(tx_id) if tx_id else None
            if tx_id and (tx is None or tx.conn is not conn):
                return ERROR, ENOENT  # transactions belong to their connection
            nodes = tx.nodes if tx else self.nodes
            changed: list[str] = []
            old: dict[str, list[bytes]] = {}  # permissions before the change
            path = args[0].decode() if args and args[0] else ""
            if path and not path.startswith("/") and not path.startswith("@"):
                path = f"/local/domain/{domid}/" + path
            if tx is not None and path:
                tx.touched.add(path)
            if op in (READ, DIRECTORY, GET_PERMS):
                node, err = self._get(nodes, conn, path, "r")
                if node is None:
                    return ERROR, err
                if op == READ:
                    return op, node.value
                if op == GET_PERMS:
                    return op, b"".join(p + b"\0" for p in node.perms)
                pre = path.rstrip("/") + "/"
                kids = sorted(p[len(pre):] for p in nodes
                              if p.startswith(pre) and "/" not in p[len(pre):] and p != "/")
                return op, b"".join(k.encode() + b"\0" for k in kids)
            if op in (WRITE, MKDIR):
                node, err = self._get(nodes, conn, path, "w")
                if node is None and err != ENOENT:
                    return ERROR, err
                if op == MKDIR and node is not None:
                    return op, b"OK\0"  # already there: nothing changes, nothing fires
                self.gen += 1
                self._create(nodes, path, tx, [], domid)  # xenstored fires for the target only
                changed.append(path)
                if op == WRITE:
                    nodes[path].value = payload[len(args[0]) + 1:]
                    nodes[path].gen = self.gen
                    if tx is not None:
                        tx.dirty.add(path)
            elif op == RM:
                node, err = self._get(nodes, conn, path, "w")
                if node is None:
                    if err == ENOENT and parent(path) in nodes:
                        return op, b"OK\0"
                    return ERROR, err
                if path == "/":
                    return ERROR, EINVAL
                self.gen += 1
                gone = {p: list(nodes[p].perms) for p in self._subtree(nodes, path)}
                for p in gone:
                    del nodes[p]
                    if tx is not None:
                        tx.touched.add(p)
                        tx.dirty.add(p)
                    else:
                        self.tombstones[p] = self.gen
                nodes[parent(path)].gen = self.gen
                if tx is not None:
                    tx.touched.add(parent(path))
                    tx.dirty.add(parent(path))
                changed.append(path)
                old = gone  # watchers may see what they could read before it went
            elif op == SET_PERMS:
                if not payload.endswith(b"\0") or len(args) < 3:
                    return ERROR, EINVAL
                perms = parse_perms(args[1:-1])
                if perms is None:
                    return ERROR, EINVAL
                if not self.domain_exists(int(perms[0][1:])):
                    return ERROR, ENOENT
                node, err = self._get(nodes, conn, path, "wo")
                if node is None:
                    return ERROR, err
                if domid != 0 and perms[0][1:] != node.perms[0][1:]:
                    return ERROR, EPERM
                self.gen += 1
                old = {path: node.perms}
                node.perms = perms
                node.gen = self.gen
                changed.append(path)
                if tx is not None:
                    tx.dirty.add(path)
            elif op == WATCH:
                self.watches.append((conn, path, args[1]))
                conn.event(path, args[1])  # xenstored fires every new watch once
                return op, b"OK\0"
            elif op == UNWATCH:
                self.watches = [w for w in self.watches
                                if not (w[0] is conn and w[1] == path and w[2] == args[1])]
                return op, b"OK\0"
            elif op == TX_START:
                tid = self.next_tx
                self.next_tx += 1
                self.txs[tid] = Tx({p: Node(n.value, list(n.perms), n.gen)
                                    for p, n in self.nodes.items()}, self.gen, conn=conn)
                return op, str(tid).encode() + b"\0"
            elif op == TX_END:
                t = self.txs.pop(tx_id, None)
                if t is None:
                    return ERROR, b"ENOENT\0"
                if args[0] != b"T":
                    return op, b"OK\0"
                conflict = any(
                    (p in self.nodes and self.nodes[p].gen > t.start_gen)
                    or self.tombstones.get(p, 0) > t.start_gen
                    for p in t.touched)
                if self.force_conflicts > 0:
                    self.force_conflicts -= 1
                    conflict = True
                if conflict:
                    return ERROR, b"EAGAIN\0"
                self.gen += 1
                for p in t.dirty:
                    if p in t.nodes:
                        n = t.nodes[p]
                        cur = self.nodes.get(p)
                        if cur is None or (cur.value, cur.perms) != (n.value, n.perms):
                            changed.append(p)
                        self.nodes[p] = Node(n.value, list(n.perms), self.gen)
                    elif p in self.nodes:
                        del self.nodes[p]
                        self.tombstones[p] = self.gen
                        changed.append(p)
                self.commits += 1
                self._fire(changed)
                return op, b"OK\0"
            elif op == GET_DOMAIN_PATH:
                return op, f"/local/domain/{int(args[0])}".encode() + b"\0"
            elif op == INTRODUCE:
                self.introduced.add(int(args[0]))
                self._fire(["@introduceDomain"])
                return op, b"OK\0"
            elif op == RELEASE:
                self.introduced.discard(int(args[0]))
                self._fire(["@releaseDomain"])
                return op, b"OK\0"
            elif op == IS_INTRODUCED:
                return op, (b"T" if int(args[0]) in self.introduced else b"F") + b"\0"
            else:
                return ERROR, b"ENOSYS\0"
            if tx is None:
                self._fire(changed, old)
            return op, b"OK\0"

    def _control(self, conn: Handler | None, payload: bytes) -> tuple[int, bytes]:
        """XS_CONTROL (privileged). Only the fake's own ``fake-domid N``: from now on the
        connection is domain N's (the real xenstored answers EINVAL to unknown commands)."""
        args = payload.split(b"\0")
        if conn is not None and len(args) >= 2 and args[0] == b"fake-domid" \
                and args[1].isdigit():
            conn.domid = int(args[1])
            return DEBUG, b"OK\0"
        return ERROR, EINVAL

    def _fire(self, changed: list[str], old: dict[str, list[bytes]] | None = None) -> None:
        old = old or {}
        for path in dict.fromkeys(changed):
            for conn, wpath, token in list(self.watches):
                if path.startswith("@") or wpath.startswith("@"):
                    # Special events only reach privileged watchers here (xenstored
                    # also tells a domain about itself and its target).
                    hit = path == wpath and _domid(conn) == 0
                else:
                    hit = (path == wpath or path.startswith(wpath.rstrip("/") + "/")
                           or wpath.startswith(path.rstrip("/") + "/"))
                    where = wpath if wpath.startswith(path + "/") else path
                    if hit and _domid(conn) != 0:
                        hit = self.may_read(_domid(conn), where, old.get(where))
                if hit:
                    conn.event(wpath if wpath.startswith(path + "/") else path, token)

    # -- conveniences for tests -------------------------------------------------------------

    def value(self, path: str) -> bytes | None:
        with self.lock:
            n = self.nodes.get(path)
            return None if n is None else n.value

    def tree(self, top: str = "/") -> dict[str, tuple[bytes, list[bytes]]]:
        with self.lock:
            return {p: (n.value, list(n.perms)) for p, n in self.nodes.items()
                    if p == top or p.startswith(top.rstrip("/") + "/")}


class Handler(socketserver.BaseRequestHandler):
    server: Server

    def setup(self) -> None:
        self.send_lock = threading.Lock()
        self.domid = 0  # the domain this connection speaks for; 0 is privileged

    def _recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.request.recv(n - len(buf))
            if not chunk:
                raise ConnectionError
            buf += chunk
        return buf

    def _send(self, op: int, rq: int, tx: int, payload: bytes) -> None:
        with self.send_lock:
            try:
                self.request.sendall(HDR.pack(op, rq, tx, len(payload)) + payload)
            except OSError:
                pass

    def event(self, path: str, token: bytes) -> None:
        self._send(WATCH_EVENT, 0, 0, path.encode() + b"\0" + token + b"\0")

    def handle(self) -> None:
        fake = self.server.fake
        held: list[tuple[int, int, int, bytes]] = []
        try:
            while True:
                op, rq, tx, size = HDR.unpack(self._recv(HDR.size))
                payload = self._recv(size) if size else b""
                if self.server.hang:
                    continue
                rop, body = fake.handle(self, op, tx, payload)
                if self.server.batch:
                    # Answers held until `batch` requests have come: only a client that
                    # sends them without waiting for each answer gets any.
                    held.append((rop, rq, tx, body))
                    if len(held) < self.server.batch:
                        continue
                for answer in held or [(rop, rq, tx, body)]:
                    self._send(*answer)
                held.clear()
        except (ConnectionError, OSError):
            pass
        finally:
            with fake.lock:
                fake.watches = [w for w in fake.watches if w[0] is not self]


class Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str) -> None:
        self.fake = Fake()
        self.hang = False
        self.batch = 0  # > 0: answer in batches of that many requests (see Handler)
        super().__init__(path, Handler)


def act_as(store: Store, domid: int) -> None:
    """Make ``store``'s connection to the fake speak for domain ``domid`` from now on."""
    store._call(DEBUG, f"fake-domid\0{domid}\0".encode(), 0, "<control>")


@pytest.fixture
def fake_xenstored() -> Iterator[tuple[Server, str]]:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "socket")
        srv = Server(path)
        t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
        t.start()
        try:
            yield srv, path
        finally:
            srv.shutdown()
            srv.server_close()


# -- the fake's own contract, checked with raw sockets ------------------------------------


def _raw(path: str, op: int, payload: bytes, tx: int = 0) -> tuple[int, bytes]:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.sendall(HDR.pack(op, 7, tx, len(payload)) + payload)
        rop, rq, _tx, size = HDR.unpack(s.recv(HDR.size, socket.MSG_WAITALL))
        assert rq == 7
        return rop, s.recv(size, socket.MSG_WAITALL) if size else b""


def test_fake_write_read_and_error(fake_xenstored: tuple[Server, str]) -> None:
    _srv, path = fake_xenstored
    assert _raw(path, WRITE, b"/a/b\0hello") == (WRITE, b"OK\0")
    assert _raw(path, READ, b"/a/b\0") == (READ, b"hello")
    assert _raw(path, READ, b"/a\0") == (READ, b"")
    assert _raw(path, READ, b"/nope\0") == (ERROR, b"ENOENT\0")
    assert _raw(path, DIRECTORY, b"/a\0") == (DIRECTORY, b"b\0")


def test_fake_transaction_conflicts_on_touched_node(fake_xenstored: tuple[Server, str]) -> None:
    srv, _path = fake_xenstored
    f = srv.fake
    _op, tid = f.handle(None, TX_START, 0, b"\0")  # type: ignore[arg-type]
    t = int(tid.rstrip(b"\0"))
    f.handle(None, WRITE, t, b"/x\0one")  # type: ignore[arg-type]
    f.handle(None, WRITE, 0, b"/x\0two")  # type: ignore[arg-type]
    assert f.handle(None, TX_END, t, b"T\0") == (ERROR, b"EAGAIN\0")  # type: ignore[arg-type]
    assert f.value("/x") == b"two"
