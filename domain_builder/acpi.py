"""The ACPI tables of a PVH guest, built the way libxl 4.17 lays them out (pure, no I/O).

A PVH guest has no firmware: the toolstack hands it RSDP, XSDT/RSDT, FADT, FACS, MADT
and a DSDT, and ``hvm_start_info.rsdp_paddr`` points at the RSDP.  libxl builds them
with libacpi (tools/libacpi/build.c, called from libxl_x86_acpi.c) into three modules:

* an *info page* at ``ACPI_INFO_ADDR`` (struct acpi_info: vCPU count, where the MADT's
  checksum and first LAPIC entry are, for the DSDT's CPU hotplug methods);
* the *tables*, from the page after it, allocated one after the other (16-byte aligned,
  the FACS 64-byte aligned) in this order: FACS, DSDT, FADT 1.0 (for the RSDT), FADT
  (revision 5, for the XSDT), MADT, XSDT, RSDT;
* the *RSDP* (64 bytes), in the page after the tables, or at 0xFFFC0 (the legacy BIOS
  area Linux scans) for a Linux kernel that does not announce it can take the RSDP
  from anywhere (XENFEAT_linux_rsdp_unrestricted).

Same order, sizes and addresses as libxl, so the guest's memory map and the domain's
page count equal xl's.  The tables say no IOAPIC, no PM timer, no VGA, no CMOS RTC and no
legacy PIC; the MADT lists one local APIC per possible vCPU (APIC id 2 * n), enabled for
the vCPUs online at boot.

The DSDT is encoded here (a small AML writer below): the ``\\_SB.BIOS`` region over the
info page, one Processor object per vCPU up to HVM_MAX_VCPUS with ``_MAT``/``_STA``/
``_EJ0``, and the CPU hotplug GPE handler that compares Xen's online-CPU bitmap (I/O port
0xaf00) with the MADT and notifies the OS -- what libacpi's mk_dsdt generates for PVH.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

PAGE_SIZE = 4096
HVM_MAX_VCPUS = 128
ACPI_INFO_ADDR = 0xFC000000  # ACPI_INFO_PHYSICAL_ADDRESS
LAPIC_BASE = 0xFEE00000
MAX_TABLE_PAGES = 16  # libxl's NUM_ACPI_PAGES
RSDP_LEGACY_ADDR = 0x100000 - 64
RSDP_SIZE = 64  # the module libxl hands over (the RSDP itself is 36 bytes)

# Identification libxl's tables carry (libacpi's ACPI_OEM_ID & co.), kept so that a guest
# sees the same tables as under xl.
OEM_ID = b"Xen"
OEM_TABLE_ID = b"HVM"
CREATOR = b"HVML"
# The DSDT's creator is the tool that wrote the AML: this module.
DSDT_CREATOR = b"XTOL"
DSDT_CREATOR_REV = 1

# I/O blocks the FADT names (Xen's fixed ACPI PM block for HVM: xen/include/public/hvm/
# ioreq.h ACPI_PM1A_EVT_BLK_ADDRESS_V1 & co.), and Xen's CPU hotplug bitmap port
# (arch-x86/guest-acpi.h).
PM1A_EVT_BLK = 0xB000
PM1A_CNT_BLK = 0xB004
PM_TMR_BLK = 0xB008
GPE0_BLK = 0xAFE0
GPE0_BLK_LEN = 4
CPU_MAP_PORT = 0xAF00
CPU_MAP_LEN = (HVM_MAX_VCPUS + 7) // 8
GPE_CPUHP_BIT = 2
PROCESSOR_PBLK = 0xB010

# FADT flags (ACPI 5.0 table 5-35) and IA-PC boot architecture flags (table 5-36).
_WBINVD, _PROC_C1, _PWR_BUTTON, _SLP_BUTTON, _FIX_RTC = 1 << 0, 1 << 2, 1 << 4, 1 << 5, 1 << 6
_TMR_VAL_EXT, _USE_PLATFORM_CLOCK = 1 << 8, 1 << 15
_BOOT_NO_VGA, _BOOT_NO_CMOS_RTC = 1 << 2, 1 << 5
_SYSTEM_IO = 1  # generic address structure: address space id

_HEADER = struct.Struct("<4sIBB6s8sI4sI")  # 36 bytes, checksum at offset 9
_FACS_SIZE = 64
_FADT10_SIZE = 116
_FADT_SIZE = 268  # revision 5
_MADT_HEAD = 44
_MADT_ALLOC_EXTRA = 16 * 10 + 12  # room libacpi reserves for overrides and an IOAPIC


def checksum_fix(table: bytearray, at: int, length: int) -> None:
    """Set byte ``at`` so that the first ``length`` bytes sum to 0 (mod 256)."""
    table[at] = 0
    table[at] = -sum(table[:length]) & 0xFF


def _header(sig: bytes, length: int, revision: int, *, creator: bytes = CREATOR,
            creator_rev: int = 0) -> bytes:
    return _HEADER.pack(sig, length, revision, 0, OEM_ID, OEM_TABLE_ID, 0, creator,
                        creator_rev)


def _gas(space: int, bits: int, address: int) -> bytes:
    """A Generic Address Structure (12 bytes)."""
    return struct.pack("<BBBBQ", space, bits, 0, 0, address)


# ---------------------------------------------------------------------------------------------
# A small AML writer: each function returns the encoding of one term (ACPI 5.0, chapter 20).


def pkg(body: bytes) -> bytes:
    """PkgLength (counting its own bytes) followed by ``body``."""
    n = len(body)
    for extra, limit in ((0, 0x3F), (1, 0xFFF), (2, 0xFFFFF), (3, 0xFFFFFFF)):
        total = n + 1 + extra
        if total <= limit:
            return _pkglength(total, extra) + body
    raise ValueError(f"AML package of {n} bytes is too long")


def _pkglength(value: int, extra: int) -> bytes:
    if extra == 0:
        return bytes([value])
    out = [(extra << 6) | (value & 0x0F)]
    value >>= 4
    for _ in range(extra):
        out.append(value & 0xFF)
        value >>= 8
    return bytes(out)


def _field_length(bits: int) -> bytes:
    """A field unit's width: PkgLength's encoding of the number itself."""
    for extra, limit in ((0, 0x3F), (1, 0xFFF), (2, 0xFFFFF), (3, 0xFFFFFFF)):
        if bits <= limit:
            return _pkglength(bits, extra)
    raise ValueError(f"field of {bits} bits is too wide")


def seg(name: str) -> bytes:
    """One NameSeg: up to four characters, padded with '_'."""
    if not 1 <= len(name) <= 4 or not (name[0].isupper() or name[0] == "_") or \
            not all(c.isupper() or c.isdigit() or c == "_" for c in name):
        raise ValueError(f"bad AML name segment {name!r}")
    return name.ljust(4, "_").encode("ascii")


def path(text: str) -> bytes:
    """A NameString: ``\\`` root and ``^`` parent prefixes, then dot-separated segments."""
    prefix = b""
    if text.startswith("\\"):
        prefix, text = b"\\", text[1:]
    while text.startswith("^"):
        prefix, text = prefix + b"^", text[1:]
    parts = text.split(".") if text else []
    segs = b"".join(seg(p) for p in parts)
    if not parts:
        return prefix + b"\x00"
    if len(parts) == 1:
        return prefix + segs
    if len(parts) == 2:
        return prefix + b"\x2e" + segs
    return prefix + b"\x2f" + bytes([len(parts)]) + segs


def integer(v: int) -> bytes:
    """The shortest encoding: Zero, One, or a Byte/Word/DWord/QWord constant."""
    if v == 0:
        return b"\x00"
    if v == 1:
        return b"\x01"
    for prefix, fmt, limit in ((0x0A, "<B", 0xFF), (0x0B, "<H", 0xFFFF),
                               (0x0C, "<I", 0xFFFFFFFF), (0x0E, "<Q", (1 << 64) - 1)):
        if 0 <= v <= limit:
            return bytes([prefix]) + struct.pack(fmt, v)
    raise ValueError(f"integer {v} does not fit AML")


def string(s: str) -> bytes:
    return b"\x0d" + s.encode("ascii") + b"\x00"


def local(n: int) -> bytes:
    return bytes([0x60 + n])


def arg(n: int) -> bytes:
    return bytes([0x68 + n])


NULL_TARGET = b"\x00"


def scope(name: str, *body: bytes) -> bytes:
    return b"\x10" + pkg(path(name) + b"".join(body))


def name_(name: str, value: bytes) -> bytes:
    return b"\x08" + path(name) + value


def method(name: str, nargs: int, *body: bytes) -> bytes:
    return b"\x14" + pkg(path(name) + bytes([nargs & 7]) + b"".join(body))


def processor(name: str, proc_id: int, pblk: int, pblk_len: int, *body: bytes) -> bytes:
    return b"\x5b\x83" + pkg(path(name) + struct.pack("<BIB", proc_id, pblk, pblk_len)
                             + b"".join(body))


SYSTEM_MEMORY, SYSTEM_IO = 0, 1
BYTE_ACC_NOLOCK_PRESERVE = 0x01


def op_region(name: str, space: int, offset: bytes, length: bytes) -> bytes:
    return b"\x5b\x80" + path(name) + bytes([space]) + offset + length


def field(region: str, flags: int, *units: tuple[str | None, int]) -> bytes:
    """Field units as (name, bits); a None name is reserved space (``Offset()``)."""
    body = b"".join((b"\x00" if n is None else seg(n)) + _field_length(bits)
                    for n, bits in units)
    return b"\x5b\x81" + pkg(path(region) + bytes([flags]) + body)


def buffer(data: bytes) -> bytes:
    return b"\x11" + pkg(integer(len(data)) + data)


def if_(predicate: bytes, *body: bytes) -> bytes:
    return b"\xa0" + pkg(predicate + b"".join(body))


def else_(*body: bytes) -> bytes:
    return b"\xa1" + pkg(b"".join(body))


def return_(value: bytes) -> bytes:
    return b"\xa4" + value


def store(src: bytes, dst: bytes) -> bytes:
    return b"\x70" + src + dst


def to_buffer(value: bytes) -> bytes:
    return b"\x96" + value + NULL_TARGET


def deref_of(ref: bytes) -> bytes:
    return b"\x83" + ref


def index(obj: bytes, idx: bytes) -> bytes:
    return b"\x88" + obj + idx + NULL_TARGET


def add(a: bytes, b: bytes, target: bytes = NULL_TARGET) -> bytes:
    return b"\x72" + a + b + target


def subtract(a: bytes, b: bytes, target: bytes = NULL_TARGET) -> bytes:
    return b"\x74" + a + b + target


def and_(a: bytes, b: bytes, target: bytes = NULL_TARGET) -> bytes:
    return b"\x7b" + a + b + target


def shift_right(a: bytes, b: bytes, target: bytes = NULL_TARGET) -> bytes:
    return b"\x7a" + a + b + target


def lless(a: bytes, b: bytes) -> bytes:
    return b"\x95" + a + b


def lequal(a: bytes, b: bytes) -> bytes:
    return b"\x93" + a + b


def lnot_equal(a: bytes, b: bytes) -> bytes:
    return b"\x92" + lequal(a, b)


def notify(obj: bytes, value: bytes) -> bytes:
    return b"\x86" + obj + value


def sleep(ms: bytes) -> bytes:
    return b"\x5b\x22" + ms


def call(name: str, *args: bytes) -> bytes:
    return path(name) + b"".join(args)


# ---------------------------------------------------------------------------------------------
# The DSDT


def _processor(cpu: int) -> bytes:
    """Processor PRnn: its MADT LAPIC entry (through the info page's MAPA) is _MAT, and
    its enabled bit is FLG: present while the vCPU is online."""
    pr = f"PR{cpu:02X}"
    if cpu:
        mat = return_(call("PMAT", integer(cpu), path("MAT")))
        sta = (if_(lless(integer(cpu), path("NCPU")),
                   if_(path("FLG"), return_(integer(0xF)))),
               return_(integer(0)))
    else:
        mat = return_(to_buffer(path("MAT")))
        sta = (if_(path("FLG"), return_(integer(0xF))), return_(integer(0)))
    return processor(
        pr, cpu, PROCESSOR_PBLK, 6,
        name_("_HID", string("ACPI0007")),
        name_("_UID", integer(cpu)),
        op_region("MATR", SYSTEM_MEMORY, add(path("MAPA"), integer(cpu * 8)), integer(8)),
        field("MATR", BYTE_ACC_NOLOCK_PRESERVE, ("MAT", 64)),
        field("MATR", BYTE_ACC_NOLOCK_PRESERVE, (None, 32), ("FLG", 1)),
        method("_MAT", 0, mat),
        method("_STA", 0, *sta),
        method("_EJ0", 1, sleep(integer(200))),
    )


def _hotplug_check() -> bytes:
    """PRSC: for every vCPU, compare Xen's online bit with the MADT's enabled flag; on a
    change update the flag (and the MADT checksum) and notify the OS."""
    body = [store(to_buffer(path("PRS")), local(0))]
    for cpu in range(HVM_MAX_VCPUS):
        flg = path(f"^PR{cpu:02X}.FLG")
        if cpu % 8 == 0:
            body.append(store(deref_of(index(local(0), integer(cpu // 8))), local(1)))
        else:
            body.append(shift_right(local(1), integer(1), local(1)))
        body.append(and_(local(1), integer(1), local(2)))
        body.append(if_(
            lnot_equal(local(2), flg),
            store(local(2), flg),
            if_(lequal(local(2), integer(1)),
                notify(path(f"PR{cpu:02X}"), integer(1)),  # device check
                subtract(path("MSU"), integer(1), path("MSU"))),
            else_(notify(path(f"PR{cpu:02X}"), integer(3)),  # eject request
                  add(path("MSU"), integer(1), path("MSU"))),
        ))
    body.append(return_(integer(1)))
    return method("PRSC", 0, *body)


def dsdt_aml() -> bytes:
    """The DSDT's AML (the table without its header)."""
    info = scope(
        "_SB",
        op_region("BIOS", SYSTEM_MEMORY, integer(ACPI_INFO_ADDR), integer(40)),
        field("BIOS", BYTE_ACC_NOLOCK_PRESERVE,
              ("UAR1", 1), ("UAR2", 1), ("LTP1", 1), ("HPET", 1), (None, 12),
              ("NCPU", 16), ("PMIN", 32), ("PLEN", 32), ("MSUA", 32), ("MAPA", 32),
              ("VGIA", 32), ("LMIN", 32), ("HMIN", 32), ("LLEN", 32), ("HLEN", 32)),
    )
    cpus = scope(
        "_SB",
        op_region("MSUM", SYSTEM_MEMORY, path("MSUA"), integer(1)),
        field("MSUM", BYTE_ACC_NOLOCK_PRESERVE, ("MSU", 8)),
        method("PMAT", 2,
               if_(lless(arg(0), path("NCPU")), return_(to_buffer(arg(1)))),
               return_(buffer(bytes([0, 8, 0xFF, 0xFF, 0, 0, 0, 0])))),
        *(_processor(cpu) for cpu in range(HVM_MAX_VCPUS)),
        op_region("PRST", SYSTEM_IO, integer(CPU_MAP_PORT), integer(CPU_MAP_LEN)),
        field("PRST", BYTE_ACC_NOLOCK_PRESERVE, ("PRS", HVM_MAX_VCPUS)),
        _hotplug_check(),
    )
    gpe = scope("_GPE", method(f"_E{GPE_CPUHP_BIT:02d}", 0, call("\\_SB.PRSC")))
    return info + cpus + gpe


def dsdt() -> bytes:
    body = dsdt_aml()
    table = bytearray(_header(b"DSDT", 36 + len(body), 5, creator=DSDT_CREATOR,
                              creator_rev=DSDT_CREATOR_REV) + body)
    checksum_fix(table, 9, len(table))
    return bytes(table)


# ---------------------------------------------------------------------------------------------
# The other tables and their layout


@dataclass(frozen=True)
class AcpiModules:
    """What goes into guest memory: (guest physical address, bytes) of each module, in
    libxl's module order (RSDP, info page, tables), and where each table landed."""

    rsdp_addr: int
    rsdp: bytes  # RSDP_SIZE bytes
    info_addr: int
    info: bytes  # one page
    tables_addr: int
    tables: bytes  # whole pages
    table_addrs: dict[str, int]

    @property
    def table_pages(self) -> int:
        return len(self.tables) // PAGE_SIZE

    def modules(self) -> list[tuple[int, bytes]]:
        return [(self.rsdp_addr, self.rsdp), (self.info_addr, self.info),
                (self.tables_addr, self.tables)]


class _Allocator:
    """libxl's ACPI allocator: 16-byte (or more) aligned; each allocation starts from the
    *last byte* of the previous one, which is what decides the addresses."""

    def __init__(self, start: int, end: int) -> None:
        self.start = self.curr = start
        self.end = end
        self.buf = bytearray(end - start)

    def alloc(self, size: int, align: int = 16) -> int:
        align = max(align, 16)
        s = (self.curr + align - 1) & ~(align - 1)
        e = s + size - 1
        if e < s or e >= self.end:
            raise ValueError("the ACPI tables do not fit in their pages")
        self.curr = e
        return s

    def put(self, addr: int, data: bytes) -> None:
        self.buf[addr - self.start:addr - self.start + len(data)] = data


def _fadt(dsdt_addr: int, facs_addr: int) -> tuple[bytes, bytes]:
    """(FADT 1.0 for the RSDT, FADT revision 5 for the XSDT).  The 1.0 copy is taken
    from libacpi's template before the PVH adjustments, as libxl does: it still names the
    PM timer and lacks the fixed-button flags."""
    flags = _PROC_C1 | _WBINVD | _FIX_RTC | _TMR_VAL_EXT | _USE_PLATFORM_CLOCK

    def body(pm_tmr: bool, flag_bits: int, boot_arch: int) -> bytearray:
        b = bytearray(_FADT_SIZE)
        struct.pack_into("<II", b, 36, facs_addr, dsdt_addr)
        struct.pack_into("<H", b, 46, 9)  # SCI_INT
        struct.pack_into("<8I", b, 56, PM1A_EVT_BLK, 0, PM1A_CNT_BLK, 0, 0,
                         PM_TMR_BLK if pm_tmr else 0, GPE0_BLK, 0)
        struct.pack_into("<8B", b, 88, 4, 2, 0, 4 if pm_tmr else 0, GPE0_BLK_LEN, 0, 0, 0)
        struct.pack_into("<HH", b, 96, 0x0FFF, 0x0FFF)  # no C2, no C3
        struct.pack_into("<H", b, 109, boot_arch)
        struct.pack_into("<I", b, 112, flag_bits)
        b[116:128] = _gas(_SYSTEM_IO, 8, 0xCF9)  # reset register
        b[128] = 6  # reset value
        struct.pack_into("<QQ", b, 132, facs_addr, dsdt_addr)
        b[148:160] = _gas(_SYSTEM_IO, 32, PM1A_EVT_BLK)
        b[172:184] = _gas(_SYSTEM_IO, 16, PM1A_CNT_BLK)
        if pm_tmr:
            b[208:220] = _gas(_SYSTEM_IO, 32, PM_TMR_BLK)
        return b

    old = body(True, flags, 0)[:_FADT10_SIZE]
    old[:36] = _header(b"FACP", _FADT10_SIZE, 1)
    struct.pack_into("<II", old, 36, facs_addr, dsdt_addr)
    checksum_fix(old, 9, _FADT10_SIZE)
    new = body(False, flags | _PWR_BUTTON | _SLP_BUTTON, _BOOT_NO_VGA | _BOOT_NO_CMOS_RTC)
    new[:36] = _header(b"FACP", _FADT_SIZE, 5)
    checksum_fix(new, 9, _FADT_SIZE)
    return bytes(old), bytes(new)


def _madt(max_vcpus: int, online: frozenset[int]) -> bytes:
    length = _MADT_HEAD + 8 * max_vcpus
    t = bytearray(_header(b"APIC", length, 2)) + struct.pack("<II", LAPIC_BASE, 1)  # PCAT
    for cpu in range(max_vcpus):
        t += struct.pack("<BBBBI", 0, 8, cpu, 2 * cpu, 1 if cpu in online else 0)
    checksum_fix(t, 9, length)
    return bytes(t)


def build(max_vcpus: int, online: Sequence[int], *, rsdp_legacy: bool = False
          ) -> AcpiModules:
    """The three modules for a guest of ``max_vcpus`` vCPUs, ``online`` of them up at boot.
    ``rsdp_legacy``: put the RSDP at 0xFFFC0 (a Linux kernel without
    XENFEAT_linux_rsdp_unrestricted)."""
    if not 1 <= max_vcpus <= HVM_MAX_VCPUS:
        raise ValueError(f"{max_vcpus} vCPUs: a PVH guest has 1 to {HVM_MAX_VCPUS}")
    on = frozenset(online)
    if not on <= frozenset(range(max_vcpus)):
        raise ValueError("an online vCPU is beyond max_vcpus")
    start = ACPI_INFO_ADDR + PAGE_SIZE
    a = _Allocator(start, start + MAX_TABLE_PAGES * PAGE_SIZE)
    addrs: dict[str, int] = {}

    facs = struct.pack("<4sI", b"FACS", _FACS_SIZE) + bytes(24) + struct.pack("<I", 1)
    facs += bytes(_FACS_SIZE - len(facs))
    addrs["FACS"] = a.alloc(_FACS_SIZE, 64)
    a.put(addrs["FACS"], facs)
    d = dsdt()
    addrs["DSDT"] = a.alloc(len(d))
    a.put(addrs["DSDT"], d)
    fadt10, fadt = _fadt(addrs["DSDT"], addrs["FACS"])
    addrs["FACP1"] = a.alloc(len(fadt10))
    a.put(addrs["FACP1"], fadt10)
    addrs["FACP"] = a.alloc(len(fadt))
    a.put(addrs["FACP"], fadt)
    madt = _madt(max_vcpus, on)
    addrs["APIC"] = a.alloc(_MADT_HEAD + _MADT_ALLOC_EXTRA + 8 * max_vcpus)
    a.put(addrs["APIC"], madt)
    secondary = [addrs["APIC"]]

    xsdt = bytearray(_header(b"XSDT", 36 + 8 * (1 + len(secondary)), 1))
    for ptr in (addrs["FACP"], *secondary):
        xsdt += struct.pack("<Q", ptr)
    checksum_fix(xsdt, 9, len(xsdt))
    addrs["XSDT"] = a.alloc(44 + 8 * len(secondary))
    a.put(addrs["XSDT"], bytes(xsdt))
    rsdt = bytearray(_header(b"RSDT", 36 + 4 * (1 + len(secondary)), 1))
    for ptr in (addrs["FACP1"], *secondary):
        rsdt += struct.pack("<I", ptr)
    checksum_fix(rsdt, 9, len(rsdt))
    addrs["RSDT"] = a.alloc(40 + 4 * len(secondary))
    a.put(addrs["RSDT"], bytes(rsdt))

    pages = ((a.curr + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE - start) // PAGE_SIZE
    tables = bytes(a.buf[:pages * PAGE_SIZE])

    info = bytearray(PAGE_SIZE)
    struct.pack_into("<H", info, 2, max_vcpus)
    struct.pack_into("<II", info, 12, addrs["APIC"] + 9, addrs["APIC"] + _MADT_HEAD)

    rsdp = bytearray(RSDP_SIZE)
    struct.pack_into("<8sB6sBII", rsdp, 0, b"RSD PTR ", 0, OEM_ID, 2, addrs["RSDT"], 36)
    struct.pack_into("<Q", rsdp, 24, addrs["XSDT"])
    checksum_fix(rsdp, 8, 20)
    checksum_fix(rsdp, 32, 36)
    rsdp_addr = RSDP_LEGACY_ADDR if rsdp_legacy else start + pages * PAGE_SIZE
    return AcpiModules(rsdp_addr=rsdp_addr, rsdp=bytes(rsdp), info_addr=ACPI_INFO_ADDR,
                       info=bytes(info), tables_addr=start, tables=tables,
                       table_addrs=addrs)
