"""A small in-process xenstored speaking the real wire protocol over a unix socket.

Independent of pyxs on purpose (struct + socketserver), so the client is tested against
the protocol as xs_wire.h defines it, not against itself. It models what our layer relies
on: nodes with values and permissions, implicit parents, watches (fired at registration,
on changes of the node or below, on removal of a parent), the special @introduceDomain /
@releaseDomain watches, and transactions that conflict like cxenstored's (a node the
transaction touched was changed by someone else since it started).

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

    # -- tree helpers on a given node map ---------------------------------------------------

    def _create(self, nodes: dict[str, Node], path: str, tx: Tx | None,
                changed: list[str]) -> None:
        if path in nodes:
            return
        par = parent(path)
        self._create(nodes, par, tx, changed)
        nodes[path] = Node(b"", list(nodes[par].perms), self.gen)
        nodes[par].gen = self.gen  # the parent's child list changed
        if tx is not None:
            tx.touched.update({path, par})
            tx.dirty.update({path, par})
        changed.append(path)

    def _subtree(self, nodes: dict[str, Node], path: str) -> list[str]:
        pre = path.rstrip("/") + "/"
        return [p for p in nodes if p == path or p.startswith(pre)]

    # -- requests -------------------------------------------------------------------------

    def handle(self, conn: Handler, op: int, tx_id: int, payload: bytes) -> tuple[int, bytes]:
        with self.lock:
            self.requests.append((op, tx_id))
            args = payload.split(b"\0")
            tx = self.txs.get(tx_id) if tx_id else None
            if tx_id and tx is None:
                return ERROR, b"ENOENT\0"
            nodes = tx.nodes if tx else self.nodes
            changed: list[str] = []
            path = args[0].decode() if args and args[0] else ""
            if path and not path.startswith("/") and not path.startswith("@"):
                path = "/local/domain/0/" + path
            if tx is not None and path:
                tx.touched.add(path)
            if op == READ:
                if path not in nodes:
                    return ERROR, b"ENOENT\0"
                return op, nodes[path].value
            if op == DIRECTORY:
                if path not in nodes:
                    return ERROR, b"ENOENT\0"
                pre = path.rstrip("/") + "/"
                kids = sorted(p[len(pre):] for p in nodes
                              if p.startswith(pre) and "/" not in p[len(pre):] and p != "/")
                return op, b"".join(k.encode() + b"\0" for k in kids)
            if op == GET_PERMS:
                if path not in nodes:
                    return ERROR, b"ENOENT\0"
                return op, b"".join(p + b"\0" for p in nodes[path].perms)
            if op == WRITE:
                self.gen += 1
                value = payload[len(args[0]) + 1:]
                self._create(nodes, path, tx, [])  # xenstored fires for the target only
                nodes[path].value = value
                nodes[path].gen = self.gen
                changed.append(path)
                if tx is not None:
                    tx.dirty.add(path)
            elif op == MKDIR:
                self.gen += 1
                self._create(nodes, path, tx, [])
                changed.append(path)
            elif op == RM:
                if path not in nodes:
                    if parent(path) in nodes:
                        return op, b"OK\0"
                    return ERROR, b"ENOENT\0"
                if path == "/":
                    return ERROR, b"EINVAL\0"
                self.gen += 1
                for p in self._subtree(nodes, path):
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
            elif op == SET_PERMS:
                if path not in nodes:
                    return ERROR, b"ENOENT\0"
                perms = [a for a in args[1:] if a]
                if not perms or any(p[:1] not in b"nrwb" or not p[1:].isdigit() for p in perms):
                    return ERROR, b"EINVAL\0"
                self.gen += 1
                nodes[path].perms = perms
                nodes[path].gen = self.gen
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
                self._fire(changed)
            return op, b"OK\0"

    def _fire(self, changed: list[str]) -> None:
        for path in dict.fromkeys(changed):
            for conn, wpath, token in list(self.watches):
                if path.startswith("@") or wpath.startswith("@"):
                    hit = path == wpath
                else:
                    hit = (path == wpath or path.startswith(wpath.rstrip("/") + "/")
                           or wpath.startswith(path.rstrip("/") + "/"))
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
        try:
            while True:
                op, rq, tx, size = HDR.unpack(self._recv(HDR.size))
                payload = self._recv(size) if size else b""
                if self.server.hang:
                    continue
                rop, body = fake.handle(self, op, tx, payload)
                self._send(rop, rq, tx, body)
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
        super().__init__(path, Handler)


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
