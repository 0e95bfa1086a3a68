"""The restore side of a libxc x86 PV stream against a fake hypervisor: frames are
translated, page tables localised and pinned, the start-info page and the guest's p2m
rewritten, and hostile streams refused with one line naming the file."""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from xentool.migration import libxl_stream as lx
from xentool.migration import restore as R
from xentool.migration import stream as sr

PAGE = 4096
DOMID = 9
OFF = {"flags": 512, "rdx": 616, "gdt_frames": 4832, "gdt_ents": 4960, "ctrlreg": 4984}
CTX_SIZE = 5168
MFN_BASE = 0x50000


class FakeXc:
    """Populates frames from MFN_BASE on (in reverse pfn order, so pfn != mfn), keeps
    page contents, records every other call."""

    def __init__(self) -> None:
        self.mem: dict[int, bytearray] = {}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.next = MFN_BASE
        self.shared_info_frame = 0x7777
        self.ports = iter((11, 12))

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kw: Any) -> None:
            self.calls.append((name, args[1:] + tuple(kw.values())))

        return record

    def domain_info(self, domid: int) -> Any:
        return type("Info", (), {"shared_info_frame": self.shared_info_frame})()

    def evtchn_alloc_unbound(self, domid: int, remote: int) -> int:
        return next(self.ports)

    def populate_physmap(self, domid: int, pfns: Sequence[int], order: int = 0) -> list[int]:
        out = []
        for _ in pfns:
            out.append(self.next)
            self.next += 3
        return out

    @staticmethod
    def vcpu_field_offsets() -> dict[str, int]:
        return OFF

    @contextmanager
    def map_foreign(self, domid: int, mfns: Sequence[int], writable: bool = True
                    ) -> Iterator[memoryview]:
        buf = bytearray(PAGE * len(mfns))
        for i, m in enumerate(mfns):
            buf[i * PAGE:(i + 1) * PAGE] = self.mem.get(m, bytes(PAGE))
        yield memoryview(buf)
        for i, m in enumerate(mfns):
            self.mem[m] = bytearray(buf[i * PAGE:(i + 1) * PAGE])

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [a for n, a in self.calls if n == name]


def pte(frame: int) -> int:
    return (frame << 12) | 0x67


def table(entries: dict[int, int]) -> bytes:
    t = [0] * 512
    for i, v in entries.items():
        t[i] = v
    return struct.pack("<512Q", *t)


def vcpu_context(rdx: int, cr3_pfn: int, gdt: Sequence[int] = ()) -> bytes:
    ctx = bytearray(CTX_SIZE)
    struct.pack_into("<Q", ctx, OFF["rdx"], rdx)
    struct.pack_into("<Q", ctx, OFF["ctrlreg"] + 24, cr3_pfn << 12)
    struct.pack_into("<Q", ctx, OFF["gdt_ents"], len(gdt) * 512)
    for i, f in enumerate(gdt):
        struct.pack_into("<Q", ctx, OFF["gdt_frames"] + 8 * i, f)
    return bytes(ctx)


L4 = sr.XEN_DOMCTL_PFINFO_L4TAB | sr.XEN_DOMCTL_PFINFO_LPINTAB
NOTAB = sr.XEN_DOMCTL_PFINFO_NOTAB


def guest_pages() -> dict[int, tuple[int, bytes]]:
    """pfn -> (type, contents) of a small 64-bit guest: a 4-level table chain to pfn 4,
    the start info at 5 naming the XenStore ring at 6 and the console at 7, the p2m at 8,
    a GDT page at 9."""
    si = bytearray(PAGE)
    struct.pack_into("<Q", si, 56, 6)
    struct.pack_into("<Q", si, 72, 7)
    return {
        0: (L4, table({0: pte(1), 300: pte(2)})),
        1: (sr.XEN_DOMCTL_PFINFO_L3TAB, table({0: pte(2)})),
        2: (sr.XEN_DOMCTL_PFINFO_L2TAB, table({0: pte(3)})),
        3: (sr.XEN_DOMCTL_PFINFO_L1TAB, table({0: pte(4), 5: pte(10)})),
        4: (NOTAB, b"\x42" * PAGE),
        5: (NOTAB, bytes(si)),
        6: (NOTAB, bytes(PAGE)),
        7: (NOTAB, bytes(PAGE)),
        8: (NOTAB, bytes(PAGE)),
        9: (NOTAB, bytes(PAGE)),
        # pfn 10 (named by the L1 table) comes in a later batch: populated on the spot
        10: (NOTAB, b"\x10" * PAGE),
    }


def libxc_stream(pages: dict[int, tuple[int, bytes]], *, ctx: bytes | None = None,
                 vcpu: int = 0, end: bool = True, extra: Sequence[sr.Record] = ()) -> bytes:
    out = io.BytesIO()
    w = sr.StreamWriter(out)
    w.write_headers(sr.DomainHeader(type=sr.DomainType.X86_PV, xen_major=4, xen_minor=17))
    w.write(sr.X86PvInfo(guest_width=8, pt_levels=4))
    w.write(sr.X86CpuidPolicy((sr.CpuidLeaf(0, 0xFFFFFFFF, 1, 2, 3, 4),)))
    w.write(sr.StaticDataEnd())
    w.write(sr.X86PvP2mFrames(0, 511, (8,)))
    for rec in extra:
        w.write(rec)
    batches = [sorted(p for p in pages if p != 10), [10]]
    for batch in batches:
        data = b"".join(pages[p][1] for p in batch)
        w.write(sr.PageData(tuple(batch), tuple(pages[p][0] for p in batch), data))
    w.write(sr.X86PvVcpuBasic(vcpu, ctx if ctx is not None else vcpu_context(5, 0, (9,))))
    w.write(sr.X86TscInfo(mode=0, khz=2_000_000, nsec=123, incarnation=1))
    if end:
        w.write(sr.End())
    return out.getvalue()


def save_file(libxc: bytes, config: dict[str, object] | None = None) -> bytes:
    cfg = json.dumps(config or {"c_info": {"type": "pv", "name": "g1"},
                                "b_info": {"max_memkb": 65536, "target_memkb": 65536,
                                           "max_vcpus": 1, "kernel": "/k"}}).encode() + b"\0"
    opt = struct.pack("<I", len(cfg)) + cfg
    hdr = struct.pack("<32sIIII", lx.XL_MAGIC, lx.XL_BYTEORDER, 3, 0, len(opt))
    libxl = struct.pack(">QII", lx.LIBXL_IDENT, 2, 0)
    return (hdr + opt + libxl + struct.pack("<II", 1, 0) + libxc
            + struct.pack("<II", 0, 0))


def run(data: bytes, tmp_path: Path, xc: FakeXc | None = None) -> tuple[FakeXc, Any]:
    path = tmp_path / "g.save"
    path.write_bytes(data)
    xc = xc or FakeXc()
    with open(path, "rb") as fp:
        src = sr.ExactReader(fp, str(path))
        header = R.read_save_header(src)
        config, _, _ = R.saved_config(header, str(path), None)
        built = R.build_from_stream(fp, src, str(path), config, xc, DOMID)  # type: ignore[arg-type]
    return xc, built


def p2m_of(xc: FakeXc) -> dict[int, int]:
    """pfn -> mfn as the restore wrote the guest's own p2m (frame of pfn 8)."""
    mfn8 = next(m for m, page in xc.mem.items() if page[:8] != bytes(8) and
                struct.unpack_from("<Q", page, 8 * 8)[0] == m)
    words = struct.unpack_from("<512Q", xc.mem[mfn8])
    return {pfn: mfn for pfn, mfn in enumerate(words) if mfn != R.INVALID_MFN}


def test_restore_translates_every_frame(tmp_path: Path) -> None:
    xc, built = run(save_file(libxc_stream(guest_pages())), tmp_path)
    p2m = p2m_of(xc)
    assert sorted(p2m) == list(range(11))
    assert len(set(p2m.values())) == 11 and all(m >= MFN_BASE for m in p2m.values())
    # page tables point at the new frames, flags kept; data pages are copied as they came
    l4 = struct.unpack("<512Q", xc.mem[p2m[0]])
    assert l4[0] == (p2m[1] << 12) | 0x67 and l4[300] == (p2m[2] << 12) | 0x67
    l1 = struct.unpack("<512Q", xc.mem[p2m[3]])
    assert l1[0] == (p2m[4] << 12) | 0x67 and l1[5] == (p2m[10] << 12) | 0x67
    assert xc.mem[p2m[4]] == b"\x42" * PAGE and xc.mem[p2m[10]] == b"\x10" * PAGE
    # only the pinned L4 is pinned
    (ops,) = xc.named("mmuext_ops")
    assert ops == ([(3, p2m[0])],)
    # start info: rings, new ports, shared info, page count
    si = xc.mem[p2m[5]]
    assert struct.unpack_from("<QQ", si, 32) == (512, 0x7777 << 12)
    assert struct.unpack_from("<QI", si, 56) == (p2m[6], 11)
    assert struct.unpack_from("<QI", si, 72) == (p2m[7], 12)
    assert (built.store_mfn, built.store_evtchn) == (p2m[6], 11)
    assert (built.console_mfn, built.console_evtchn) == (p2m[7], 12)
    assert xc.named("seed_grant_table") == [((0, p2m[7]), (0, p2m[6]))]
    # vCPU 0: start info in rdx, cr3 and the GDT frame translated, online
    (vcpu, ctx), = xc.named("set_vcpu_context_raw")
    assert vcpu == 0
    assert struct.unpack_from("<Q", ctx, OFF["rdx"])[0] == p2m[5]
    assert struct.unpack_from("<Q", ctx, OFF["ctrlreg"] + 24)[0] == p2m[0] << 12
    assert struct.unpack_from("<Q", ctx, OFF["gdt_frames"])[0] == p2m[9]
    assert struct.unpack_from("<Q", ctx, OFF["flags"])[0] & R.VGCF_ONLINE
    assert xc.named("set_tsc_info") == [(0, 123, 2_000_000, 1)]
    assert xc.named("set_cpu_policy") == [(struct.pack("<6I", 0, 0xFFFFFFFF, 1, 2, 3, 4),
                                           b"")]


def test_shared_info_is_restored_with_events_masked(tmp_path: Path) -> None:
    old = bytearray(b"\x01" * PAGE)
    xc, _ = run(save_file(libxc_stream(guest_pages(), extra=[sr.SharedInfo(bytes(old))])),
                tmp_path)
    sh = xc.mem[0x7777]
    assert sh[:8] == b"\x01" * 8 and sh[8:16] == bytes(8)  # pending selector cleared
    assert sh[2048:2560] == bytes(512) and sh[2560:3072] == b"\xff" * 512
    assert sh[3088:3096] == b"\x01" * 8 and sh[3096:3104] == bytes(8)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[:-5000], "truncated"),
    (lambda d: b"Y" + d[1:], "wrong magic number"),
    (lambda d: d[:len(d) - 8], "truncated"),
])
def test_damaged_files_fail_with_one_line(tmp_path: Path, mutate: Any, message: str) -> None:
    with pytest.raises((R.RestoreError, sr.StreamError)) as e:
        run(mutate(save_file(libxc_stream(guest_pages()))), tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(tmp_path / "g.save") in str(e.value)


def test_hostile_streams_are_refused(tmp_path: Path) -> None:
    # cr3 naming a page that is no L4 table
    with pytest.raises(R.RestoreError, match=r"cr3 .* has page type"):
        run(save_file(libxc_stream(guest_pages(), ctx=vcpu_context(5, 4))), tmp_path)
    # a page table naming a frame beyond the guest's p2m
    pages = guest_pages()
    pages[3] = (sr.XEN_DOMCTL_PFINFO_L1TAB, table({0: pte(0x10000)}))
    with pytest.raises(R.RestoreError, match="beyond the guest's p2m"):
        run(save_file(libxc_stream(pages)), tmp_path)
    # a vCPU the domain does not have
    with pytest.raises(R.RestoreError, match="vcpu 3"):
        run(save_file(libxc_stream(guest_pages(), vcpu=3)), tmp_path)
    # no END: the libxl stream goes on where the libxc one should have ended
    with pytest.raises((R.RestoreError, sr.StreamError)):
        run(save_file(libxc_stream(guest_pages(), end=False)), tmp_path)


def test_stored_config_becomes_xl_cfg() -> None:
    doc = {
        "c_info": {"type": "pv", "name": "web", "uuid": "13ab5cdb-b630-4f6c-b092-73edaf95cb01"},
        "b_info": {"max_vcpus": 2, "avail_vcpus": [0, 1], "max_memkb": 262144,
                   "target_memkb": 131072, "sched_params": {"weight": 512, "cap": 0},
                   "kernel": "/boot/vmlinuz", "cmdline": "console=hvc0 root=/dev/xvda"},
        "disks": [{"pdev_path": "/img/a.raw", "vdev": "xvda", "backend": "phy",
                   "format": "raw", "readwrite": 1}],
        "nics": [{"devid": 0, "mac": "00:16:3e:01:02:03", "bridge": "xenbr0",
                  "nictype": "vif"}],
        "on_reboot": "restart_rename", "vfbs": [],
    }
    text = R.config_text_from_json(doc, "f")
    from xentool.config import loads

    cfg = loads(text, "<saved>")
    assert (cfg.name, str(cfg.uuid), cfg.memory, cfg.maxmem) == (
        "web", "13ab5cdb-b630-4f6c-b092-73edaf95cb01", 128, 256)
    assert (cfg.vcpus, cfg.maxvcpus, cfg.cpu_weight) == (2, 2, 512)
    assert cfg.cmdline == "console=hvc0 root=/dev/xvda"
    assert [(d.target, d.vdev, d.readwrite) for d in cfg.disks] == [("/img/a.raw", "xvda", True)]
    assert [(v.mac, v.bridge) for v in cfg.vifs] == [("00:16:3e:01:02:03", "xenbr0")]
    assert cfg.on_reboot.libxl_name == "restart_rename"
    with pytest.raises(R.RestoreError, match="vfbs"):
        R.config_text_from_json({**doc, "vfbs": [{"devid": 0}]}, "f")


def test_a_config_file_replaces_the_saved_one(tmp_path: Path) -> None:
    """As ``xl restore CFG FILE``: the file's settings, not the saved ones; a save file
    without a stored config needs one."""
    cfg = tmp_path / "other.cfg"
    cfg.write_text('name = "other"\ntype = "pv"\nkernel = "/k2"\nmemory = 96\n')
    path = tmp_path / "g.save"
    path.write_bytes(save_file(libxc_stream(guest_pages())))
    with open(path, "rb") as fp:
        header = R.read_save_header(sr.ExactReader(fp, str(path)))
    config, text, source = R.saved_config(header, str(path), str(cfg))
    assert text == cfg.read_text()
    assert (config.name, config.kernel, config.memory, source) == ("other", "/k2", 96, str(cfg))
    saved, _, source = R.saved_config(header, str(path), None)
    assert (saved.name, saved.kernel, saved.memory, source) == ("g1", "/k", 64, "<saved>")
    bare = lx.XlSaveHeader(b"")
    with pytest.raises(R.RestoreError, match="Config file not specified and none in save"):
        R.saved_config(bare, str(path), None)
