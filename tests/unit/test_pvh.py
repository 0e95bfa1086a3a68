"""PVH builder, pure parts: layout, memory map, start info, ACPI tables, HVM records, CPUID
policy, and the build's call sequence against a fake hypervisor."""

from __future__ import annotations

import contextlib
import gzip
import shutil
import struct
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from test_image_kit import KSTART_PADDR, linux_notes, make_elf, real_kernel_path

from domain_builder import acpi, pvh
from domain_builder.cpuid import NA, CpuidError, policy, split
from domain_builder.errors import LayoutError, XenError
from domain_builder.image import load_kernel, parse_kernel

ENTRY32 = KSTART_PADDR + 0x40
SI = struct.Struct("<IIIIQQQQII")


def pvh_kernel(*, size: int = 0x5000, mod_start_pfn: bool = True, rsdp_anywhere: bool = True,
               phys32: bool = True, guest_os: str = "linux"):
    notes = linux_notes(n16=struct.pack("<I", int(mod_start_pfn)),
                        n6=guest_os.encode() + b"\0",
                        n17=struct.pack("<I", (1 << 15) if rsdp_anywhere else 0))
    if phys32:
        notes.append((18, struct.pack("<I", ENTRY32)))
    return parse_kernel(make_elf(segments=[(KSTART_PADDR, b"\x90" * 256, size)], notes=notes))


def plan(**kw: object) -> pvh.PvhPlan:
    image = kw.pop("image", None) or pvh_kernel()
    args: dict[str, object] = {"memory_mib": 64, "vcpus": 1}
    args.update(kw)
    return pvh.compute(image, **args)  # type: ignore[arg-type]


# -- layout ------------------------------------------------------------------------------------


def test_boot_data_follows_the_kernel_ramdisk_last_with_mod_start_pfn() -> None:
    p = plan(ramdisk_size=10000, cmdline="console=hvc0")
    assert p.entry == ENTRY32
    assert (p.kernel.addr, p.kernel.pages) == (KSTART_PADDR, 5)
    assert p.start_info.pfn == p.kernel.pfn_end and p.start_info.pages == 1
    assert p.ramdisk is not None and p.ramdisk.pfn == p.start_info.pfn_end
    assert (p.ramdisk.size, p.ramdisk.pages) == (10000, 3)


def test_without_mod_start_pfn_the_ramdisk_comes_before_the_start_info() -> None:
    p = plan(image=pvh_kernel(mod_start_pfn=False), ramdisk_size=10000)
    assert p.ramdisk is not None and p.ramdisk.pfn == p.kernel.pfn_end
    assert p.start_info.pfn == p.ramdisk.pfn_end


def test_memory_map_of_a_small_guest() -> None:
    p = plan(memory_mib=128, vcpus=2, max_vcpus=3)
    assert p.lowmem_end == 128 << 20 and p.highmem_end == 0
    assert p.e820 == (
        (0, 128 << 20, pvh.E820_RAM),
        (0xFEFF8000, 0x8000, pvh.E820_RESERVED),
        (p.acpi.rsdp_addr, 64, pvh.E820_ACPI),
        (acpi.ACPI_INFO_ADDR, 0x1000, pvh.E820_ACPI),
        (acpi.ACPI_INFO_ADDR + 0x1000, p.acpi.table_pages * 0x1000, pvh.E820_ACPI))
    # The RSDP sits in the page after the tables, all of it in the MMIO hole.
    assert p.acpi.rsdp_addr == acpi.ACPI_INFO_ADDR + (1 + p.acpi.table_pages) * 0x1000
    assert pvh.MMIO_START == 0xFC000000


def test_ram_above_the_mmio_hole_moves_above_4g() -> None:
    p = plan(memory_mib=4096 + 512)
    ram = [(a, s) for a, s, t in p.e820 if t == pvh.E820_RAM]
    assert ram == [(0, 0xFC000000), (1 << 32, (4096 + 512 << 20) - 0xFC000000)]
    assert sum(s for _, s in ram) == p.max_pages * 4096
    assert p.ram_ranges == [(0, 0xFC000), (0x100000, 0x100000 + (p.highmem_end - (1 << 32)
                                                                   >> 12))]


def test_an_old_linux_gets_its_rsdp_in_the_bios_area() -> None:
    p = plan(image=pvh_kernel(rsdp_anywhere=False))
    assert p.acpi.rsdp_addr == 0xFFFC0
    assert (0xFF000, 0x1000, pvh.E820_ACPI) in p.e820
    # Any other OS finds it through the start info alone.
    assert plan(image=pvh_kernel(rsdp_anywhere=False, guest_os="freebsd")).acpi.rsdp_addr \
        != 0xFFFC0


@pytest.mark.parametrize("kw, message", [
    ({"image": "no-phys32"}, "no XEN_ELFNOTE_PHYS32_ENTRY"),
    ({"memory_mib": 16, "ramdisk_size": 1 << 20}, "memory=16 MiB is too small"),
    ({"vcpus": 2, "max_vcpus": 1}, "vcpus=2 must be between 1 and maxvcpus=1"),
    ({"vcpus": 1, "max_vcpus": 129}, "at most 128 vCPUs"),
    ({"memory_mib": 64, "maxmem_mib": 32}, "maxmem=32 MiB is below memory=64 MiB"),
])
def test_impossible_layouts_are_refused(kw: dict[str, object], message: str) -> None:
    if kw.get("image") == "no-phys32":
        kw["image"] = pvh_kernel(phys32=False)
    with pytest.raises(LayoutError, match=message):
        plan(**kw)


def test_paging_pool_is_libxls_default_unless_set() -> None:
    assert pvh.paging_pool_kb(128 * 1024, 1) == 4 * (256 + 128)
    assert pvh.paging_pool_kb(128 * 1024, 2, hap=False) == 4 * (512 + 256)
    assert plan(memory_mib=128, vcpus=2).paging_pool_kb == 4 * (512 + 128)
    assert plan(memory_mib=128, paging_pool_mib=8).paging_pool_kb == 8192
    # libxl's quirk for a config without vcpus/maxvcpus: the pool has no vCPU share.
    assert plan(memory_mib=160, pool_vcpus=0).paging_pool_kb == 4 * 160


def test_plan_document_is_json_friendly() -> None:
    import json

    doc = plan(memory_mib=64, ramdisk_size=100, cmdline="x").to_dict()
    json.dumps(doc)
    assert doc["type"] == "pvh" and doc["nr_pages"] == 64 * 256
    assert doc["start_info"]["addr"] == f"{KSTART_PADDR + 0x5000:#x}"
    assert [e["type"] for e in doc["e820"]] == ["ram", "reserved", "acpi", "acpi", "acpi"]


# -- start info --------------------------------------------------------------------------------


def _cstr(buf: bytes, base: int, paddr: int) -> str:
    off = paddr - base
    return buf[off:buf.index(b"\0", off)].decode()


def test_start_info_points_at_cmdline_module_and_memory_map() -> None:
    p = plan(memory_mib=64, ramdisk_size=12345, cmdline="console=hvc0 root=/dev/ram0")
    buf = pvh.start_info(p)
    base = p.start_info.addr
    magic, version, flags, nmod, modlist, cmdline, rsdp, memmap, nmap, res = \
        SI.unpack_from(buf)
    assert (magic, version, flags, nmod, res) == (0x336EC578, 1, 0, 1, 0)
    assert _cstr(buf, base, cmdline) == "console=hvc0 root=/dev/ram0"
    assert cmdline == base + 56  # right after the structure
    assert struct.unpack_from("<QQQQ", buf, modlist - base) == (p.ramdisk.addr, 12345, 0, 0)
    assert rsdp == p.acpi.rsdp_addr
    assert nmap == len(p.e820)
    got = [struct.unpack_from("<QQII", buf, memmap - base + 24 * i)[:3] for i in range(nmap)]
    assert got == [tuple(e) for e in p.e820]
    # Room for two modules and their command lines between the list and the map.
    assert memmap - modlist == 2 * (32 + 1024)
    assert len(buf) == p.start_info.pages * 4096 >= pvh.start_info_size(p.cmdline, nmap)


def test_start_info_without_cmdline_or_ramdisk_leaves_their_addresses_zero() -> None:
    p = plan(memory_mib=64)
    _, _, _, nmod, modlist, cmdline, _, memmap, _, _ = SI.unpack_from(pvh.start_info(p))
    assert (nmod, modlist, cmdline) == (0, 0, 0)
    assert memmap == p.start_info.addr + 56 + 2 * (32 + 1024)
    # An empty command line is still a (empty) string, as libxenguest writes it.
    p = plan(memory_mib=64, cmdline="")
    _, _, _, _, _, cmdline, _, memmap, _, _ = SI.unpack_from(pvh.start_info(p))
    assert cmdline == p.start_info.addr + 56 and memmap == cmdline + 8 + 2 * (32 + 1024)


def test_module_image_inflates_gzip_as_libxenguest_does() -> None:
    raw = bytes(range(256)) * 100
    z = gzip.compress(raw)
    assert pvh.module_image(z) == raw + bytes(16)
    assert pvh.module_image(raw) == raw  # not gzip: as is
    broken = z[:12] + b"\xff" * (len(z) - 20) + z[-8:]  # the trailer still claims raw's size
    assert pvh.module_image(broken) == broken + bytes(len(raw) + 16 - len(broken))
    huge = z[:-4] + struct.pack("<I", (1 << 30) + 1)
    assert pvh.module_image(huge) == huge


def test_ident_pt_maps_the_first_4g_with_large_pages() -> None:
    page = pvh.ident_pt_page()
    entries = struct.unpack("<1024I", page)
    assert entries[0] == 0xE7 and entries[1023] == (1023 << 22) | 0xE7


# -- ACPI --------------------------------------------------------------------------------------


def _tables(m: acpi.AcpiModules) -> dict[str, bytes]:
    """Every table, found by walking from the RSDP as a guest does."""
    mem = {m.info_addr: m.info, m.tables_addr: m.tables, m.rsdp_addr: m.rsdp}

    def read(addr: int, n: int) -> bytes:
        for base, data in mem.items():
            if base <= addr and addr + n <= base + len(data):
                return data[addr - base:addr - base + n]
        raise AssertionError(f"{addr:#x} is in no module")

    def table(addr: int) -> bytes:
        return read(addr, struct.unpack("<I", read(addr + 4, 4))[0])

    rsdp = m.rsdp[:36]
    assert rsdp[:8] == b"RSD PTR " and rsdp[15] == 2
    assert sum(rsdp[:20]) % 256 == 0 and sum(rsdp) % 256 == 0
    out = {}
    xsdt = table(struct.unpack_from("<Q", rsdp, 24)[0])
    rsdt = table(struct.unpack_from("<I", rsdp, 16)[0])
    out["XSDT"], out["RSDT"] = xsdt, rsdt
    for i in range((len(xsdt) - 36) // 8):
        t = table(struct.unpack_from("<Q", xsdt, 36 + 8 * i)[0])
        out[t[:4].decode()] = t
    out["FACP1"] = table(struct.unpack_from("<I", rsdt, 36)[0])
    fadt = out["FACP"]
    out["DSDT"] = table(struct.unpack_from("<Q", fadt, 140)[0])
    out["FACS"] = read(struct.unpack_from("<Q", fadt, 132)[0], 64)
    return out


@pytest.mark.parametrize("max_vcpus, online", [(1, [0]), (3, [0, 1]), (128, range(64))])
def test_acpi_tables_walk_and_checksum(max_vcpus: int, online: Sequence[int]) -> None:
    m = acpi.build(max_vcpus, online)
    t = _tables(m)
    assert set(t) == {"XSDT", "RSDT", "FACP", "FACP1", "APIC", "DSDT", "FACS"}
    for name, table in t.items():
        if name != "FACS":
            assert sum(table) % 256 == 0, name
    assert t["FACS"][:4] == b"FACS" and t["FACS"][32] == 1
    # Both FADTs name the same DSDT and FACS; the revision 5 one has no PM timer.
    assert t["FACP"][8] == 5 and len(t["FACP"]) == 268
    assert t["FACP1"][8] == 1 and len(t["FACP1"]) == 116
    for f in (t["FACP"], t["FACP1"]):
        assert struct.unpack_from("<II", f, 36) == (m.table_addrs["FACS"], m.table_addrs["DSDT"])
    assert struct.unpack_from("<I", t["FACP"], 76)[0] == 0  # PM timer
    assert struct.unpack_from("<H", t["FACP"], 109)[0] == (1 << 2) | (1 << 5)  # VGA, RTC
    # MADT: one LAPIC per possible vCPU, APIC id 2n, enabled when online at boot.
    madt = t["APIC"]
    assert struct.unpack_from("<II", madt, 36) == (0xFEE00000, 1)
    lapics = [struct.unpack_from("<BBBBI", madt, 44 + 8 * i) for i in range(max_vcpus)]
    assert len(madt) == 44 + 8 * max_vcpus
    assert lapics == [(0, 8, i, 2 * i, int(i in online)) for i in range(max_vcpus)]
    # The info page tells the DSDT where to find the MADT's checksum and first LAPIC.
    ncpu, = struct.unpack_from("<H", m.info, 2)
    csum, lapic0 = struct.unpack_from("<II", m.info, 12)
    assert ncpu == max_vcpus
    assert (csum, lapic0) == (m.table_addrs["APIC"] + 9, m.table_addrs["APIC"] + 44)
    assert m.table_pages <= acpi.MAX_TABLE_PAGES
    assert len(m.tables) == m.table_pages * 4096


def test_acpi_layout_is_libxls() -> None:
    """Addresses follow libxl's allocator: each table from the last byte of the previous
    one, 16-byte aligned; the FACS first, 64-byte aligned.  Seven pages, as under xl."""
    m = acpi.build(3, [0, 1])
    dsdt_len = len(acpi.dsdt())
    a = m.table_addrs
    assert a["FACS"] == 0xFC001000 and a["DSDT"] == 0xFC001040
    assert a["FACP1"] == (a["DSDT"] + dsdt_len - 1 + 15) & ~15
    assert a["FACP"] == (a["FACP1"] + 116 - 1 + 15) & ~15
    assert a["APIC"] == (a["FACP"] + 268 - 1 + 15) & ~15
    assert a["XSDT"] == (a["APIC"] + 44 + 172 + 8 * 3 - 1 + 15) & ~15
    assert m.table_pages == 7


def test_dsdt_has_a_processor_per_possible_vcpu_and_the_hotplug_handler() -> None:
    d = acpi.dsdt()
    assert d[:4] == b"DSDT" and struct.unpack_from("<I", d, 4)[0] == len(d)
    assert sum(d) % 256 == 0
    for cpu in (0, 1, 127):
        assert b"\x5b\x83" in d and f"PR{cpu:02X}".encode() in d
    assert d.count(b"ACPI0007") == 128
    assert b"_GPE\x14" in d and b"_E02" in d and b"\\.\x5fSB_PRSC".replace(b".", b"\x2e") in d


@pytest.mark.skipif(shutil.which("iasl") is None, reason="iasl (acpica-tools) not installed")
def test_dsdt_disassembles_cleanly(tmp_path: Path) -> None:
    aml = tmp_path / "dsdt.aml"
    aml.write_bytes(acpi.dsdt())
    r = subprocess.run(["iasl", "-d", str(aml)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    dsl = (tmp_path / "dsdt.dsl").read_text()
    assert dsl.count("Processor (PR") == 128
    assert "Method (PRSC, 0" in dsl and "Method (_E02, 0" in dsl
    assert 'OperationRegion (BIOS, SystemMemory, 0xFC000000, 0x28)' in dsl
    assert "OperationRegion (PRST, SystemIO, 0xAF00, 0x10)" in dsl


@pytest.mark.parametrize("n, encoded", [
    (0, b"\x01"), (62, b"\x3f"), (63, b"\x41\x04"), (0xFFD, b"\x4f\xff"),
    (0xFFE, b"\x81\x00\x01"),
])
def test_aml_package_lengths_count_themselves(n: int, encoded: bytes) -> None:
    out = acpi.pkg(bytes(n))
    assert out[:len(encoded)] == encoded and len(out) == n + len(encoded)


@pytest.mark.parametrize("value, encoded", [
    (0, b"\x00"), (1, b"\x01"), (2, b"\x0a\x02"), (0xFF, b"\x0a\xff"), (0x100, b"\x0b\x00\x01"),
    (0xFC000000, b"\x0c\x00\x00\x00\xfc"), (1 << 32, b"\x0e" + struct.pack("<Q", 1 << 32)),
])
def test_aml_integers_take_the_shortest_form(value: int, encoded: bytes) -> None:
    assert acpi.integer(value) == encoded


def test_aml_names() -> None:
    assert acpi.path("_SB") == b"_SB_"
    assert acpi.path("\\_SB.PRSC") == b"\\\x2e_SB_PRSC"
    assert acpi.path("^PR01.FLG") == b"^\x2ePR01FLG_"
    assert acpi.path("\\A.B.C") == b"\\\x2f\x03A___B___C___"
    with pytest.raises(ValueError):
        acpi.seg("toolong")


# -- HVM context records ----------------------------------------------------------------------


def _context(mtrr: bytes = bytes(240)) -> bytes:
    return (pvh.record(1, 0, b"H" * 24) + pvh.record(2, 0, bytes(1032))
            + pvh.record(14, 0, mtrr) + pvh.record(14, 1, mtrr) + pvh.record(0, 0, b""))


def test_boot_records_set_every_vcpus_mtrrs_then_the_boot_vcpu() -> None:
    loads = pvh.boot_records(_context(), b"C" * 1032, 3, mtrr_def_type_at=232)
    assert len(loads) == 4
    for v, data in enumerate(loads[:3]):
        recs = pvh.parse_records(data)
        assert [(c, i) for c, i, _ in recs] == [(1, 0), (14, v), (0, 0)]
        assert recs[0][2] == b"H" * 24
        assert struct.unpack_from("<Q", recs[1][2], 232)[0] == 6 | (1 << 11)
    recs = pvh.parse_records(loads[3])
    assert [(c, i) for c, i, _ in recs] == [(1, 0), (2, 0), (0, 0)]
    assert recs[1][2] == b"C" * 1032


def test_a_context_without_header_is_an_error() -> None:
    with pytest.raises(XenError, match="no header or MTRR"):
        pvh.boot_records(pvh.record(2, 0, bytes(8)) + pvh.record(0, 0, b""), b"", 1, 0)
    with pytest.raises(XenError, match="truncated"):
        pvh.parse_records(struct.pack("<HHI", 2, 0, 100) + bytes(10))


def test_boot_cpu_record_is_flat_32bit_protected_mode() -> None:
    xenctrl = pytest.importorskip("domain_builder.xenctrl")
    from domain_builder._binding import ffi, lib

    if lib is None:
        pytest.skip("no binding")
    rec = xenctrl.hvm_boot_cpu(rip=0x1000850, rbx=0x4A00000)
    assert len(rec) == ffi.sizeof("struct hvm_hw_cpu")

    def field(name: str, fmt: str) -> int:
        return struct.unpack_from(fmt, rec, ffi.offsetof("struct hvm_hw_cpu", name))[0]

    assert (field("rip", "<Q"), field("rbx", "<Q")) == (0x1000850, 0x4A00000)
    assert field("cr0", "<Q") == 0x11 and field("cr4", "<Q") == 0
    assert field("rflags", "<Q") & (1 << 9 | 1 << 8 | 1 << 17) == 0
    assert field("cs_limit", "<I") == 0xFFFFFFFF and field("cs_arbytes", "<I") == 0xC9B
    assert field("ss_arbytes", "<I") == 0xC93 and field("tr_limit", "<I") == 0x67
    assert xenctrl.hvm_record_codes() == {"HEADER": pvh.HVM_CODE_HEADER,
                                          "CPU": pvh.HVM_CODE_CPU, "MTRR": pvh.HVM_CODE_MTRR,
                                          "END": pvh.HVM_CODE_END}


# -- CPUID policy -------------------------------------------------------------------------------

FEATURES = {"rdtscp": 2 * 32 + 27, "lm": 2 * 32 + 29, "avx512f": 5 * 32 + 16,
            "sse3": 1 * 32 + 0, "arch_caps": 9 * 32 + 29, "rdcl_no": 16 * 32 + 0}


def test_cpuid_string_items() -> None:
    assert split("host,rdtscp=0,,lm=k") == (("rdtscp", "0"), ("lm", "k"))
    with pytest.raises(CpuidError, match='first word must be "host"'):
        split("rdtscp=0")
    with pytest.raises(CpuidError, match='missing "="'):
        split("host,rdtscp")


def test_cpuid_policy_strings_are_libxls() -> None:
    p = policy(split("host,rdtscp=0,avx512f=0,lm=k,sse3=1,est=x,sse4.1=0x3"), FEATURES)
    assert [e.to_libxl() for e in p] == [
        {"leaf": 0x80000001, "edx": "xxkx0" + "x" * 27},
        {"leaf": 7, "subleaf": 0, "ebx": "x" * 15 + "0" + "x" * 16},
        {"leaf": 1, "ecx": "x" * 12 + "1" + "x" * 11 + "x" + "x" * 6 + "1"},
    ]
    assert p[0].subleaf == NA and p[0].regs[3] is not None and p[0].regs[0] is None


@pytest.mark.parametrize("text, message", [
    ("host,bogus=0", "unknown CPUID flag name 'bogus'"),
    ("host,family=6", "'family' is not applied by xentool yet"),
    ("host,rdcl_no=1", "MSR_ARCH_CAPS"),
    ("host,rdtscp=y", "invalid value 'y'"),
])
def test_cpuid_refusals(text: str, message: str) -> None:
    with pytest.raises(CpuidError, match=message):
        policy(split(text), FEATURES)


def test_cpuid_names_come_from_the_binding_headers() -> None:
    xenctrl = pytest.importorskip("domain_builder.xenctrl")
    from domain_builder._binding import lib

    if lib is None:
        pytest.skip("no binding")
    bits = xenctrl.cpu_feature_bits()
    assert bits["rdtscp"] == 2 * 32 + 27 and bits["lm"] == 2 * 32 + 29
    assert bits["avx512f"] == 5 * 32 + 16
    header = Path("/usr/include/xen/arch-x86/cpufeatureset.h")
    if header.exists():
        import re

        found = dict(re.findall(r"XEN_CPUFEATURE\((\w+),\s*(\d+)\*32\+", header.read_text()))
        assert {k.lower() for k in found} == set(bits)


# -- the build against a fake hypervisor ------------------------------------------------------


class FakeXc:
    """Guest memory as a dict of pages; every call recorded."""

    def __init__(self, fail_order: int | None = None) -> None:
        self.mem: dict[int, bytearray] = {}
        self.calls: list[tuple[str, tuple[object, ...]]] = []
        self.params: dict[int, int] = {}
        self.loads: list[bytes] = []
        self.fail_order = fail_order

    def _log(self, name: str, *args: object) -> None:
        self.calls.append((name, args))

    def set_max_vcpus(self, domid: int, n: int) -> None:
        self._log("set_max_vcpus", n)

    def set_max_mem(self, domid: int, kb: int) -> None:
        self._log("set_max_mem", kb)

    def evtchn_alloc_unbound(self, domid: int, remote: int) -> int:
        self._log("evtchn", remote)
        return 10 + sum(1 for c in self.calls if c[0] == "evtchn")

    def set_hvm_param(self, domid: int, param: int, value: int) -> None:
        self.params[param] = value

    def set_paging_mempool_size(self, domid: int, size: int) -> None:
        self._log("paging_pool", size)

    def populate_physmap(self, domid: int, pfns: Sequence[int], order: int = 0,
                         mem_flags: int = 0) -> list[int]:
        if order == self.fail_order:
            raise XenError("xc_domain_populate_physmap_exact", 12)
        self._log("populate", len(pfns), order, mem_flags)
        for p in pfns:
            for i in range(1 << order):
                assert p + i not in self.mem, f"pfn {p + i:#x} populated twice"
                self.mem[p + i] = bytearray(4096)
        return list(pfns)

    def tot_pages(self, domid: int) -> int:
        return len(self.mem)

    def set_pod_target(self, domid: int, pages: int) -> None:
        self._log("pod_target", pages)

    def set_memory_map(self, domid: int, entries: Sequence[tuple[int, int, int]]) -> None:
        self._log("memory_map", tuple(entries))

    @contextlib.contextmanager
    def map_foreign(self, domid: int, pfns: Sequence[int], writable: bool = True
                    ) -> Iterator[memoryview]:
        buf = bytearray(b"".join(bytes(self.mem[p]) for p in pfns))
        yield memoryview(buf)
        for i, p in enumerate(pfns):
            self.mem[p][:] = buf[i * 4096:(i + 1) * 4096]

    def hvm_context(self, domid: int) -> bytes:
        return _context()

    def set_hvm_context(self, domid: int, records: bytes) -> None:
        self.loads.append(records)

    def seed_grant_table(self, domid: int, console: tuple[int, int] | None,
                         xenstore: tuple[int, int] | None) -> None:
        self._log("grants", console, xenstore)

    def read(self, addr: int, n: int) -> bytes:
        out = b""
        while n:
            page, off = divmod(addr, 4096)
            k = min(n, 4096 - off)
            out += bytes(self.mem[page][off:off + k])
            addr, n = addr + k, n - k
        return out


CPU = pvh.CpuState(cpu_record=lambda rip, rbx: struct.pack("<QQ", rip, rbx),
                   mtrr_def_type_at=232)


def test_build_lays_out_memory_and_hands_over_what_xenstore_needs() -> None:
    image = pvh_kernel()
    ramdisk = b"R" * 9000
    p = plan(image=image, memory_mib=64, vcpus=2, max_vcpus=3, ramdisk_size=len(ramdisk),
             cmdline="console=hvc0")
    xc = FakeXc()
    order: list[str] = []
    built = pvh.build(xc, 5, image, p, ramdisk, CPU, cpuid=lambda: order.append("cpuid"),
                      claim=lambda n: order.append(f"claim {n}"))
    # RAM, the special pages and every ACPI page: what `xl list` counts for the guest.
    assert len(xc.mem) == 64 * 256 + 8 + 1 + p.acpi.table_pages + 1
    assert order == ["cpuid", f"claim {64 * 256}", "claim 0"]
    names = [c[0] for c in xc.calls]
    assert names[:5] == ["set_max_vcpus", "set_max_mem", "evtchn", "evtchn", "paging_pool"]
    assert ("set_max_mem", (64 * 1024 + 1024,)) in xc.calls
    assert ("memory_map", (p.e820,)) in xc.calls
    assert xc.read(KSTART_PADDR, 256) == b"\x90" * 256  # the kernel at its paddr
    assert xc.read(p.ramdisk.addr, 9000) == ramdisk
    assert xc.read(p.start_info.addr, 4096) == pvh.start_info(p)
    assert xc.read(p.acpi.rsdp_addr, 64) == p.acpi.rsdp
    assert xc.read(p.acpi.tables_addr, len(p.acpi.tables)) == p.acpi.tables
    assert xc.read(pvh.special_pfn("ident_pt") << 12, 4096) == pvh.ident_pt_page()
    assert xc.params[pvh.HVM_PARAM_STORE_PFN] == 0xFEFFC == built.store_mfn
    assert xc.params[pvh.HVM_PARAM_CONSOLE_PFN] == 0xFEFFF == built.console_mfn
    assert xc.params[pvh.HVM_PARAM_STORE_EVTCHN] == built.store_evtchn == 11
    assert xc.params[pvh.HVM_PARAM_CONSOLE_EVTCHN] == built.console_evtchn == 12
    assert xc.params[pvh.HVM_PARAM_TIMER_MODE] == 1
    assert xc.params[pvh.HVM_PARAM_IDENT_PT] == 0xFEFFE000
    # The boot vCPU last: ebx is the start info.
    assert len(xc.loads) == 4
    cpu = pvh.parse_records(xc.loads[-1])[1][2]
    assert struct.unpack("<QQ", cpu) == (ENTRY32, p.start_info.addr)
    assert xc.calls[-1] == ("grants", ((0, 0xFEFFF), (0, 0xFEFFC)))


def test_build_populates_2m_extents_and_falls_back_to_4k() -> None:
    image = pvh_kernel()
    p = plan(image=image, memory_mib=66)
    xc = FakeXc()
    pvh.populate(xc, 1, p)
    pops = [c[1] for c in xc.calls if c[0] == "populate"]
    assert all(order == 9 and flags == 0 for _, order, flags in pops)
    assert sum(n << order for n, order, _ in pops) == 66 * 256
    assert max(n for n, _, _ in pops) == 4  # at most 8 MiB per call, as libxenguest
    xc = FakeXc(fail_order=9)
    pvh.populate(xc, 1, plan(image=image, memory_mib=32))
    assert len(xc.mem) == 32 * 256
    assert {c[1][1] for c in xc.calls if c[0] == "populate"} == {0}


def test_memory_below_maxmem_is_populate_on_demand() -> None:
    """libxenguest's order: claim the target, size the PoD cache to it, then make every
    RAM page a PoD entry; Xen's limit and the claim are the target, not maxmem."""
    image = pvh_kernel()
    p = plan(image=image, memory_mib=64, maxmem_mib=96)
    assert p.pod and (p.nr_pages, p.max_pages) == (64 * 256, 96 * 256)
    assert p.e820[0] == (0, 96 << 20, pvh.E820_RAM)
    xc = FakeXc()
    order: list[str] = []
    pvh.build(xc, 5, image, p, None, CPU, claim=lambda n: order.append(f"claim {n}"))
    assert order == [f"claim {64 * 256}", "claim 0"]
    names = [c[0] for c in xc.calls]
    first_populate = names.index("populate")
    assert names.index("pod_target") < first_populate
    assert ("pod_target", (64 * 256,)) in xc.calls
    assert ("set_max_mem", (64 * 1024 + 1024,)) in xc.calls
    ram = [c[1] for c in xc.calls if c[0] == "populate" and c[1][2]]
    assert sum(n << order for n, order, _ in ram) == 96 * 256
    assert {flags for _, _, flags in ram} == {pvh.XENMEMF_POPULATE_ON_DEMAND}
    # The ACPI and special pages are real pages.
    assert [c[1][2] for c in xc.calls if c[0] == "populate"][-1] == 0


def test_build_refuses_a_ramdisk_other_than_planned() -> None:
    image = pvh_kernel()
    p = plan(image=image, ramdisk_size=100)
    with pytest.raises(ValueError, match="ramdisk does not match"):
        pvh.build(FakeXc(), 1, image, p, b"x" * 99, CPU)


# -- the guest kit's kernel --------------------------------------------------------------------


def test_the_debian_kernel_lays_out_as_under_xl() -> None:
    """The layout xl gave the guest kit's Debian kernel (read from a guest's memory in the
    testbed): kernel at 16 MiB, start info right after it, the ramdisk after that."""
    path = real_kernel_path()
    if path is None:
        pytest.skip("no real kernel on this machine")
    image = load_kernel(path)
    p = pvh.compute(image, memory_mib=128, vcpus=2, max_vcpus=3, ramdisk_size=0x213E10,
                    cmdline="console=hvc0 xentool.mode=wait xentool.settle=2")
    assert image.notes.phys32_entry is not None and pvh.rsdp_unrestricted(image)
    assert p.kernel.addr == 0x1000000 and p.start_info.addr == image.pend
    assert p.ramdisk is not None and p.ramdisk.addr == image.pend + 0x1000
    assert p.acpi.rsdp_addr == 0xFC008000 and p.acpi.table_pages == 7


# -- create's XenStore nodes for a PVH guest ---------------------------------------------------


def test_pvh_nodes_are_libxls() -> None:
    from xentool.nodes import build_post_nodes, domain_make_nodes

    made = {p: v for p, v, _ in domain_make_nodes(7, "g", "u-1", "pvh")}
    assert made["/libxl/7/type"] == "pvh"
    post = {p: v for p, v, _ in build_post_nodes(
        7, "u-1", max_memkb=131072, target_memkb=131072, vcpus=1, max_vcpus=2,
        store_port=1, store_mfn=0xFEFFC, start_time=1.5, kernel=None, ramdisk="/r",
        cmdline="c")}
    # libxl__build_hvm hands build_post only the start time: no /vm/<uuid>/image.
    assert not [p for p in post if "/image/" in p]
    assert post["/vm/u-1/start_time"] == "1.50"
    assert post["/local/domain/7/store/ring-ref"] == str(0xFEFFC)


def test_a_pvh_guests_disk_frontend_names_no_ring_protocol() -> None:
    """libxl writes ``protocol`` (the guest's ring ABI) into the disk frontend of PV guests
    only: an HVM container's rings are native."""
    from xentool.config import loads
    from xentool.devices.vbd import config_nodes

    text = "name = 'g'\nkernel = '/k'\ndisk = ['/img,,xvda,w']\n"
    for dtype, protocol in (("pv", "x86_64-abi"), ("pvh", None)):
        (dev,) = config_nodes(3, loads(f"{text}type = '{dtype}'\n", "t.cfg"))
        node = dev.nodes.get(f"{dev.frontend}/protocol")
        assert (node[0] if node else None) == protocol, dtype
