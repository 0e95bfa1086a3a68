"""XenCtrl's logic over a fake libxenctrl: paging, errno mapping, handles closed on every path.

The fake replaces only the C functions (``lib``); structs and buffers are the real compiled
ones from the extension, so field names and types are checked by cffi as in production.
"""

from __future__ import annotations

import errno

import pytest

from domain_builder import _binding, xsread
from domain_builder import xenctrl as xc
from domain_builder._xenctrl import ffi, lib
from domain_builder.errors import XenError

XCH = ffi.cast("xc_interface *", 0x1000)
FMEM = ffi.cast("xenforeignmemory_handle *", 0x2000)


class FakeLib:
    def __init__(self, domids: list[int]) -> None:
        self.domids = domids
        self.calls: list[tuple] = []
        self.closed: list[str] = []
        self.mapped: dict[int, object] = {}

    def __getattr__(self, name: str):  # constants come from the real headers
        return getattr(lib, name)

    def xc_interface_open(self, *a):
        return XCH

    def xc_interface_close(self, h):
        self.closed.append("xc")
        return 0

    #: The hypervisor's release for XENVER_version (major << 16 | minor); None: the release
    #: of the libxenctrl the binding loaded, as on a matching host.
    hypervisor: tuple[int, int] | None = None

    def xc_version(self, h, cmd, arg):
        assert cmd == lib.XENVER_version
        major, minor = self.hypervisor or _binding.linked_release() or (4, 17)
        return major << 16 | minor

    def xenforeignmemory_open(self, *a):
        return FMEM

    def xenforeignmemory_close(self, h):
        self.closed.append("fmem")
        return 0

    def xc_domain_getinfolist(self, h, first, maxn, buf):
        self.calls.append(("getinfolist", first, maxn))
        found = [d for d in self.domids if d >= first][:maxn]
        for i, d in enumerate(found):
            buf[i].domain = d
            buf[i].tot_pages = 100 + d
            buf[i].flags = lib.XEN_DOMINF_paused
            buf[i].handle[0] = d
        return len(found)

    def xc_domain_pause(self, h, domid):
        if domid not in self.domids:
            ffi.errno = errno.ESRCH
            return -1
        return 0

    def xc_get_cpumap_size(self, h):
        return 2

    def xc_vcpu_getaffinity(self, h, domid, vcpu, hard, soft, flags):
        assert flags == lib.XEN_VCPUAFFINITY_HARD | lib.XEN_VCPUAFFINITY_SOFT
        hard[0], hard[1] = 0b101, 0b1
        soft[0], soft[1] = 0xFF, 0xFF
        return 0

    def xenforeignmemory_map(self, fm, dom, prot, n, arr, errs):
        if arr[0] == 0xBAD:
            errs[n - 1] = -errno.EFAULT
        mem = ffi.new("char[]", n * xc.PAGE_SIZE)
        addr = ffi.cast("void *", mem)
        self.mapped[int(ffi.cast("uintptr_t", addr))] = mem
        return addr

    def xenforeignmemory_unmap(self, fm, addr, n):
        del self.mapped[int(ffi.cast("uintptr_t", addr))]
        return 0


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path) -> FakeLib:
    dev = tmp_path / "privcmd"
    dev.touch()
    f = FakeLib([0, 1, 2, 5, 9])
    monkeypatch.setattr(xc, "_lib", f)
    monkeypatch.setattr(xc, "PRIVCMD", str(dev))
    return f


def test_domains_pages_through_batches(fake: FakeLib) -> None:
    with xc.XenCtrl() as x:
        doms = x.domains(batch=2)
    assert [d.domid for d in doms] == [0, 1, 2, 5, 9]
    assert [c[1] for c in fake.calls] == [0, 2, 6]  # restart after the last id seen
    assert doms[3].tot_pages == 105 and doms[3].paused and not doms[3].running
    assert doms[3].handle == bytes([5]) + bytes(15)
    assert fake.closed == ["xc"]


def test_domain_info_none_for_missing_domain(fake: FakeLib) -> None:
    with xc.XenCtrl() as x:
        assert x.domain_info(5).domid == 5
        assert x.domain_info(6) is None  # getinfolist returned the *next* domain, 9


def test_failed_call_raises_errno_and_still_closes(fake: FakeLib) -> None:
    with pytest.raises(XenError) as ei:
        with xc.XenCtrl() as x:
            x.pause(4)
    assert ei.value.errno == errno.ESRCH and ei.value.op == "xc_domain_pause"
    assert str(ei.value) == "xc_domain_pause failed: ESRCH (No such process): domain 4"
    assert fake.closed == ["xc"]


def test_affinity_decodes_cpumaps(fake: FakeLib) -> None:
    with xc.XenCtrl() as x:
        hard, soft = x.vcpu_affinity(1, 0)
    assert hard == {0, 2, 8} and soft == set(range(16))


def test_foreign_map_unmaps_and_closes_both_handles(fake: FakeLib) -> None:
    with xc.XenCtrl() as x:
        with x.map_foreign(3, [10, 11]) as view:
            view[-1] = 7
            assert len(fake.mapped) == 1
        assert fake.mapped == {}
    assert sorted(fake.closed) == ["fmem", "xc"]


def test_foreign_map_partial_failure_unmaps_and_names_the_page(fake: FakeLib) -> None:
    with xc.XenCtrl() as x:
        with pytest.raises(XenError) as ei:
            x.map_foreign(3, [0xBAD, 0x42])
        assert fake.mapped == {}
    assert ei.value.errno == errno.EFAULT and "pfn 0x42" in str(ei.value)


class FakeXsLib(FakeLib):
    """libxenstore part: a dict store; every returned buffer must be freed exactly once."""

    XSH = ffi.cast("struct xs_handle *", 0x3000)

    def __init__(self, nodes: dict[str, bytes]) -> None:
        super().__init__([])
        self.nodes = nodes
        self.live: dict[int, object] = {}

    def _keep(self, obj) -> object:
        self.live[int(ffi.cast("uintptr_t", obj))] = obj
        return obj

    def free(self, p) -> None:
        del self.live[int(ffi.cast("uintptr_t", p))]

    def xs_open(self, flags):
        return self.XSH

    def xs_close(self, h):
        self.closed.append("xs")

    def xs_read(self, h, t, path, n):
        value = self.nodes.get(path.decode())  # the caller passes bytes for char *
        if value is None:
            ffi.errno = errno.ENOENT
            return ffi.NULL
        n[0] = len(value)
        return ffi.cast("void *", self._keep(ffi.new("char[]", value + b"\0")))

    def xs_directory(self, h, t, path, n):
        prefix = path.decode() + "/"
        kids = sorted({k[len(prefix):].split("/")[0] for k in self.nodes if k.startswith(prefix)})
        if not kids:
            ffi.errno = errno.ENOENT
            return ffi.NULL
        strings = [ffi.new("char[]", k.encode()) for k in kids]
        arr = ffi.new("char *[]", strings)
        self._keep(arr)
        self.live[-1] = strings  # keep the strings alive with the array
        n[0] = len(kids)
        return arr


def test_xenstore_reader_reads_lists_and_frees(monkeypatch: pytest.MonkeyPatch) -> None:
    f = FakeXsLib({"/local/domain/0/name": b"Domain-0", "/local/domain/3/name": "gäst".encode(),
                   "/local/domain/3/vm": b"/vm/x"})
    monkeypatch.setattr(xsread, "_lib", f)
    with xsread.XenStoreReader() as r:
        assert r.get("/local/domain/0/name") == "Domain-0"
        assert r.get("/local/domain/3/name") == "gäst"
        assert r.get("/local/domain/7/name") is None
        assert r.get("/nope", "dflt") == "dflt"
        assert r.ls("/local/domain") == ["0", "3"]
        with pytest.raises(XenError) as ei:
            r.ls("/nowhere")
        assert ei.value.errno == errno.ENOENT
    f.live.pop(-1)
    assert f.live == {} and f.closed == ["xs"]


def test_open_refuses_a_hypervisor_of_another_release(fake: FakeLib,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_binding, "linked_release", lambda maps=None: (4, 17))
    fake.hypervisor = (4, 18)
    with pytest.raises(XenError) as e:
        xc.XenCtrl().open()
    assert "built for" not in str(e.value) and "Xen 4.17" in str(e.value)
    assert "Xen 4.18" in str(e.value) and "\n" not in str(e.value)
    assert fake.closed == ["xc"]  # the handle is not leaked
