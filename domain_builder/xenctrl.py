"""Typed, Pythonic access to libxenctrl and libxenforeignmemory (Xen 4.17).

Contract:
- ``XenCtrl`` is a context manager owning one ``xc_interface`` handle (and, lazily, one
  ``xenforeignmemory`` handle); both are closed on every exit path.
- Every failing call raises ``XenError(op, errno)``; no cffi pointer, NULL or C integer
  status ever leaves this module.  Results are frozen dataclasses.
- Guest memory mappings (``map_foreign``, ``map_grant_table``) are context managers that
  expose one writable ``memoryview`` and unmap when the ``with`` block ends.  The view is
  released at that point: do not keep slices of it beyond the block.

Grant-table seeding: the shared grant frame 0 of the guest is mapped with
``xenforeignmemory_map_resource(XENMEM_resource_grant_table, id_shared)``, which Xen 4.17
supports for PV and HVM guests alike (it is what libxenguest itself tries first); the v1
entries are written from Python.  No libxenguest code is involved.
"""

from __future__ import annotations

import _thread
import enum
import os
import sys

from domain_builder import _binding
from domain_builder._binding import IMPORT_ERROR as _IMPORT_ERROR
from domain_builder._binding import ffi as _ffi
from domain_builder._binding import lib as _lib
from domain_builder.errors import XenError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from types import TracebackType
    from typing import Any


PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

PRIVCMD = "/dev/xen/privcmd"

# XENMEMF_* flags for populate_physmap (xen/memory.h).
XENMEMF_populate_on_demand = 1 << 16
XENMEMF_exact_node_request = 1 << 17
XENMEMF_vnode = 1 << 18


def XENMEMF_address_bits(bits: int) -> int:
    return bits & 0xFF


def XENMEMF_node(node: int) -> int:
    return ((node + 1) & 0xFF) << 8


def XENMEMF_exact_node(node: int) -> int:
    return XENMEMF_node(node) | XENMEMF_exact_node_request


# XEN_DOMCTL_CDF_* (domain creation flags, xen/domctl.h).
CDF_HVM = 1 << 0
CDF_HAP = 1 << 1
CDF_S3_INTEGRITY = 1 << 2
CDF_OOS_OFF = 1 << 3
CDF_XS_DOMAIN = 1 << 4
CDF_IOMMU = 1 << 5
CDF_NESTED_VIRT = 1 << 6
CDF_VPMU = 1 << 7

# VGCF_* vcpu context flags (xen/arch-x86/xen.h).
VGCF_IN_KERNEL = 1 << 2
VGCF_FAILSAFE_DISABLES_EVENTS = 1 << 3
VGCF_SYSCALL_DISABLES_EVENTS = 1 << 4
VGCF_ONLINE = 1 << 5

MMUEXT_PIN_L1_TABLE = 0
MMUEXT_PIN_L2_TABLE = 1
MMUEXT_PIN_L3_TABLE = 2
MMUEXT_PIN_L4_TABLE = 3
MMUEXT_UNPIN_TABLE = 4

GTF_PERMIT_ACCESS = 1 << 0
GNTTAB_RESERVED_CONSOLE = 0
GNTTAB_RESERVED_XENSTORE = 1
_GRANT_V1 = "<HHI"  # struct format of a v1 grant entry: flags, domid, frame


class ShutdownReason(enum.IntEnum):
    """SHUTDOWN_* codes (xen/sched.h); xl prints them as the letters ``-rscwS``."""

    POWEROFF = 0
    REBOOT = 1
    SUSPEND = 2
    CRASH = 3
    WATCHDOG = 4
    SOFT_RESET = 5


class Scheduler(enum.IntEnum):
    """XEN_SCHEDULER_* ids; ``name`` in lower case is what xl prints."""

    CREDIT = 5
    CREDIT2 = 6
    ARINC653 = 7
    RTDS = 8
    NULL = 9

    @property
    def label(self) -> str:
        return self.name.lower()


# --------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------
#
# Frozen dataclasses, each made on first use.  @dataclass compiles half a dozen methods per
# class, about a millisecond of start-up each, importing dataclasses (and inspect with it)
# several more, and a verb needs one or two of these classes (``xentool list`` only
# DomainInfo, ``domname`` none).  So ``@_dataclass(frozen=True)`` just records the class
# (and ``_field(...)`` its arguments) and the name stays unbound; the first lookup of the
# name goes to the module's __getattr__ (PEP 562), which makes the class a dataclass, in
# place, and binds it.  ``from domain_builder.xenctrl import DomainInfo`` and
# ``xenctrl.DomainInfo`` work as ever; inside this module write ``_module.DomainInfo``: a
# bare ``DomainInfo`` is a NameError until something has looked the name up.

_DEFERRED: dict[str, tuple[type, dict[str, bool]]] = {}  # name: (class, dataclass options)
_MAKING = _thread.RLock()
if TYPE_CHECKING:  # this very module, so that ``_module.DomainInfo`` has its real type
    import domain_builder.xenctrl as _module
else:
    _module = sys.modules[__name__]


class _FieldArgs:
    """The arguments of a ``dataclasses.field()``, kept until the class is made."""

    def __init__(self, **kwargs: Any) -> None:  # whatever dataclasses.field() accepts
        self.kwargs = kwargs


def _defer(**options: bool) -> Callable[[type], type]:
    """``@dataclass(**options)`` at run time: record the class, make it on first use."""
    def defer(cls: type) -> type:
        _DEFERRED[cls.__name__] = (cls, options)
        return cls

    return defer


if TYPE_CHECKING:  # for type checkers these are plain dataclasses
    from dataclasses import dataclass as _dataclass
    from dataclasses import field as _field
else:
    _dataclass = _defer
    _field = _FieldArgs


def _make(name: str) -> type:
    """Make the deferred class ``name`` a dataclass and bind it (the module's __getattr__)."""
    if name not in _DEFERRED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _MAKING:
        if name not in globals():
            from dataclasses import dataclass, field

            cls, options = _DEFERRED[name]
            for attr, value in list(vars(cls).items()):
                if isinstance(value, _FieldArgs):
                    # A default made by another deferred class (VcpuContext.user_regs)
                    # needs that class made first.
                    factory = value.kwargs.get("default_factory")
                    if isinstance(factory, type) and factory.__name__ in _DEFERRED:
                        _make(factory.__name__)
                    setattr(cls, attr, field(**value.kwargs))
            globals()[name] = dataclass(**options)(cls)
    made: type = globals()[name]
    return made


if not TYPE_CHECKING:  # PEP 562; hidden from type checkers, which see every class declared
    __getattr__ = _make


def preload() -> None:
    """Make every deferred class now: a long-running daemon should not pay for a class's
    first use on an event path it is timed on."""
    for name in list(_DEFERRED):
        _make(name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_DEFERRED))


@_dataclass(frozen=True)
class VersionInfo:
    major: int
    minor: int
    extra: str
    capabilities: str
    changeset: str
    commandline: str
    compiler: str
    compile_by: str
    compile_domain: str
    compile_date: str
    pagesize: int
    virt_start: int
    build_id: str

    @property
    def version(self) -> str:
        return f"{self.major}.{self.minor}{self.extra}"


@_dataclass(frozen=True)
class PhysInfo:
    threads_per_core: int
    cores_per_socket: int
    nr_cpus: int
    max_cpu_id: int
    nr_nodes: int
    max_node_id: int
    cpu_khz: int
    capabilities: int
    total_pages: int
    free_pages: int
    scrub_pages: int
    outstanding_pages: int
    max_mfn: int
    hw_cap: tuple[int, ...]
    sharing_freed_pages: int = 0
    sharing_used_frames: int = 0

    def has_cap(self, name: str) -> bool:
        """``name`` is a XEN_SYSCTL_PHYSCAP_* suffix: pv, hvm, directio, hap, shadow, ..."""
        return bool(self.capabilities & _PHYSCAPS[name])


_PHYSCAPS = {
    "hvm": 1 << 0, "pv": 1 << 1, "directio": 1 << 2, "hap": 1 << 3, "shadow": 1 << 4,
    "iommu_hap_pt_share": 1 << 5, "vmtrace": 1 << 6, "vpmu": 1 << 7,
    "gnttab_v1": 1 << 8, "gnttab_v2": 1 << 9,
}


@_dataclass(frozen=True)
class DomainInfo:
    """One domain as ``XEN_SYSCTL_getdomaininfolist`` reports it (memory in pages)."""

    domid: int
    flags: int
    tot_pages: int
    max_pages: int
    outstanding_pages: int
    shr_pages: int
    paged_pages: int
    shared_info_frame: int
    cpu_time_ns: int
    nr_online_vcpus: int
    max_vcpu_id: int
    ssidref: int
    handle: bytes
    cpupool: int
    gpaddr_bits: int = 0

    @property
    def dying(self) -> bool:
        return bool(self.flags & (1 << 0))

    @property
    def hvm(self) -> bool:
        return bool(self.flags & (1 << 1))

    @property
    def shutdown(self) -> bool:
        return bool(self.flags & (1 << 2))

    @property
    def paused(self) -> bool:
        return bool(self.flags & (1 << 3))

    @property
    def blocked(self) -> bool:
        return bool(self.flags & (1 << 4))

    @property
    def running(self) -> bool:
        return bool(self.flags & (1 << 5))

    @property
    def debugged(self) -> bool:
        return bool(self.flags & (1 << 6))

    @property
    def xs_domain(self) -> bool:
        return bool(self.flags & (1 << 7))

    @property
    def hap(self) -> bool:
        return bool(self.flags & (1 << 8))

    @property
    def shutdown_reason(self) -> int | None:
        """The guest's SHUTDOWN_* code, or None while it has not shut down."""
        return (self.flags >> 16) & 0xFF if self.shutdown else None

    @property
    def current_memkb(self) -> int:
        return self.tot_pages * (PAGE_SIZE // 1024)

    @property
    def outstanding_memkb(self) -> int:
        return self.outstanding_pages * (PAGE_SIZE // 1024)

    @property
    def max_memkb(self) -> int:
        return self.max_pages * (PAGE_SIZE // 1024)

    @property
    def uuid(self) -> str:
        h = self.handle.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@_dataclass(frozen=True)
class VcpuInfo:
    vcpu: int
    online: bool
    blocked: bool
    running: bool
    cpu_time_ns: int
    cpu: int


@_dataclass(frozen=True)
class SchedCredit:
    """Per-domain parameters of the credit (and credit2) scheduler."""

    weight: int
    cap: int = 0


@_dataclass(frozen=True)
class CreditParams:
    """Per-cpupool parameters of the credit scheduler."""

    tslice_ms: int
    ratelimit_us: int
    vcpu_migr_delay_us: int


@_dataclass(frozen=True)
class Credit2Params:
    ratelimit_us: int


@_dataclass(frozen=True)
class RtdsParams:
    """RTDS parameters of a domain or one vCPU: period and budget in microseconds."""

    period: int
    budget: int
    extratime: bool = True


@_dataclass(frozen=True)
class CpupoolInfo:
    poolid: int
    sched_id: int
    n_dom: int
    cpus: frozenset[int]


@_dataclass(frozen=True)
class CreateConfig:
    """Inputs of ``XEN_DOMCTL_createdomain``; the defaults describe a plain PV guest."""

    flags: int = 0
    max_vcpus: int = 1
    max_evtchn_port: int = 1023
    max_grant_frames: int = -1  # < 0: hypervisor default
    max_maptrack_frames: int = -1
    grant_version: int = 1
    ssidref: int = 0
    handle: bytes = bytes(16)
    cpupool_id: int = 0
    emulation_flags: int = 0  # must be 0 for PV on x86
    misc_flags: int = 0

    def __post_init__(self) -> None:
        if len(self.handle) != 16:
            raise ValueError("domain handle (uuid) must be 16 bytes")
        if not 1 <= self.grant_version <= 2:
            raise ValueError(f"grant table version {self.grant_version} is not 1 or 2")


@_dataclass(frozen=True)
class UserRegs:
    """x86_64 ``cpu_user_regs`` as a PV boot needs it."""

    rip: int = 0
    rsp: int = 0
    rsi: int = 0
    rdi: int = 0
    rax: int = 0
    rbx: int = 0
    rcx: int = 0
    rdx: int = 0
    rbp: int = 0
    rflags: int = 0
    cs: int = 0
    ss: int = 0
    ds: int = 0
    es: int = 0
    fs: int = 0
    gs: int = 0


@_dataclass(frozen=True)
class VcpuContext:
    """x86_64 PV ``vcpu_guest_context`` fields that a boot (or a dump) needs.

    ``ctrlreg[3]`` holds the top-level page table as ``xen_pfn_to_cr3(mfn)``.
    Fields not named here are zero on ``set_vcpu_context`` (like libxenguest does).
    """

    user_regs: UserRegs = _field(default_factory=UserRegs)
    flags: int = 0
    ctrlreg: tuple[int, ...] = (0,) * 8
    kernel_ss: int = 0
    kernel_sp: int = 0
    event_callback_eip: int = 0
    failsafe_callback_eip: int = 0
    syscall_callback_eip: int = 0
    gdt_ents: int = 0
    gdt_frames: tuple[int, ...] = ()
    vm_assist: int = 0
    fs_base: int = 0
    gs_base_kernel: int = 0
    gs_base_user: int = 0

    def __post_init__(self) -> None:
        if len(self.ctrlreg) != 8:
            raise ValueError("ctrlreg needs exactly 8 entries")
        if len(self.gdt_frames) > 16:
            raise ValueError("at most 16 gdt_frames")


for _name in _DEFERRED:  # unbound until looked up: see "Result types" above
    del globals()[_name]


# --------------------------------------------------------------------------------------
# Pure helpers (unit-tested without Xen)
# --------------------------------------------------------------------------------------


def _need_binding(what: str) -> None:
    if _lib is None:
        raise XenError(what, 38,  # ENOSYS
                       _binding.missing_library(_IMPORT_ERROR)
                       if _IMPORT_ERROR is not None else "no libxenctrl binding")


def cpu_feature_bits() -> dict[str, int]:
    """Xen's featureset names (lower case, as xl.cfg's ``cpuid=`` spells them) and their
    bit numbers (32 * word + bit), from the headers the binding was compiled against."""
    _need_binding("cpu feature names")
    return {_ffi.string(_lib.xentool_cpu_feature_name(i)).decode().lower():
            _lib.xentool_cpu_feature_bit(i) for i in range(_lib.xentool_cpu_feature_count())}


def hvm_boot_cpu(*, rip: int, rbx: int) -> bytes:
    """The payload of an HVM CPU save record for a vCPU starting as the PVH boot ABI
    says (docs/misc/pvh.pandoc): 32-bit flat protected mode, paging off, ``ebx`` = the
    start info address, a 32-bit TSS; every other field zero."""
    _need_binding("HVM CPU record")
    c = _ffi.new("struct hvm_hw_cpu *")
    c.rip, c.rbx = rip, rbx
    c.rflags = 1 << 1  # the always-one bit; IF, TF and VM clear
    c.cr0 = 0x11  # PE, and ET (hardwired on every CPU since the 486)
    c.dr6, c.dr7 = 0xFFFF0FF0, 0x400  # their architectural reset values
    for seg in ("cs", "ds", "es", "ss"):
        setattr(c, f"{seg}_limit", 0xFFFFFFFF)
    c.tr_limit = 0x67
    # Access rights in Xen's packed form (type | S<<4 | DPL<<5 | P<<7 | DB<<10 | G<<11):
    # code execute/read accessed, data read/write accessed, a busy 32-bit TSS.
    c.cs_arbytes = 0xC9B
    c.ds_arbytes = c.es_arbytes = c.ss_arbytes = 0xC93
    c.tr_arbytes = 0x8B
    return bytes(_ffi.buffer(c))


def hvm_record_codes() -> dict[str, int]:
    """HVM save-record type codes of the headers (HEADER, CPU, MTRR, END)."""
    _need_binding("HVM record codes")
    return {"HEADER": _lib.XENTOOL_HVM_CODE_HEADER, "CPU": _lib.XENTOOL_HVM_CODE_CPU,
            "MTRR": _lib.XENTOOL_HVM_CODE_MTRR, "END": _lib.XENTOOL_HVM_CODE_END}


def hvm_mtrr_def_type_offset() -> int:
    """Where MSR_MTRRdefType sits in an MTRR save record's payload."""
    _need_binding("HVM MTRR record")
    offset: int = _ffi.offsetof("struct hvm_hw_mtrr", "msr_mtrr_def_type")
    return offset


def cpumap_to_set(raw: bytes) -> frozenset[int]:
    """Decode a libxenctrl cpumap (bit i of byte i//8 = cpu i)."""
    return frozenset(i * 8 + b for i, byte in enumerate(raw) for b in range(8) if byte >> b & 1)


def set_to_cpumap(cpus: Iterable[int], size: int) -> bytes:
    """Encode cpus into a cpumap of ``size`` bytes; a cpu beyond it is a ValueError."""
    out = bytearray(size)
    for cpu in cpus:
        if not 0 <= cpu < size * 8:
            raise ValueError(f"cpu {cpu} is out of range (0-{size * 8 - 1})")
        out[cpu // 8] |= 1 << (cpu % 8)
    return bytes(out)


def grant_entry_v1(backend_domid: int, frame: int) -> bytes:
    """One v1 grant entry giving ``backend_domid`` access to ``frame`` (read/write)."""
    import struct  # here: only the domain builder needs it

    return struct.pack(_GRANT_V1, GTF_PERMIT_ACCESS, backend_domid, frame)


def xen_pfn_to_cr3(pfn: int) -> int:
    return pfn << PAGE_SHIFT


def _cstr(buf: Any) -> str:
    text: str = _ffi.string(buf).decode("utf-8", "replace")
    return text


# --------------------------------------------------------------------------------------
# Mappings
# --------------------------------------------------------------------------------------


class ForeignMapping:
    """Guest pages mapped into dom0; ``view`` is a writable memoryview over all of them."""

    def __init__(self, release: Callable[[], None], addr: Any, nbytes: int) -> None:
        self._release = release
        self._addr = addr
        self.view: memoryview | None = memoryview(_ffi.buffer(addr, nbytes))

    def __enter__(self) -> memoryview:
        assert self.view is not None
        return self.view

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.view is None:
            return
        view, self.view = self.view, None
        try:
            view.release()
        finally:
            self._release()

    def __del__(self) -> None:  # last resort: never leak a mapping of guest memory
        # Not contextlib.suppress: it would cost an import, and at interpreter exit this
        # module's globals (a contextlib among them) may already be gone.
        try:
            self.close()
        except Exception:  # nothing sensible to do at finalisation
            pass


# --------------------------------------------------------------------------------------
# The handle
# --------------------------------------------------------------------------------------


#: xenctrl.h XC_OPENFLAG_NON_REENTRANT: the handle is used by one thread only.
_OPENFLAG_NON_REENTRANT = 1 << 1

# Held while a handle is opened or closed: the Xen libraries keep process-wide state for
# that (libxentoolcore's list of open handles, under a mutex), and a process forked while
# another thread was inside would find that mutex taken forever (xentoold forks its
# command children while its service threads run).  os.fork() waits for it.
_handles = _thread.allocate_lock()
os.register_at_fork(before=_handles.acquire, after_in_parent=_handles.release,
                    after_in_child=_handles.release)


class _Hypfs:
    """A libxenhypfs handle for a ``with`` block, opened and closed under ``_handles``."""

    def __enter__(self) -> Any:
        with _handles:
            self._fs = _lib.xenhypfs_open(_ffi.NULL, 0)
        if self._fs == _ffi.NULL:
            raise XenError("xenhypfs_open", _ffi.errno or 5)
        return self._fs

    def __exit__(self, *exc: object) -> None:
        with _handles:
            _lib.xenhypfs_close(self._fs)


class XenCtrl:
    """An open libxenctrl interface.  Use as ``with XenCtrl() as xc: ...``.

    ``one_thread``: only one thread uses this handle.  libxencall then takes no lock of
    its own for the hypercall buffers; without it, it takes a process-wide one, which a
    process forked while another thread held it (xentoold's children, forked while its
    monitor makes a hypercall) would find taken forever.
    """

    def __init__(self, *, one_thread: bool = False) -> None:
        self._flags = _OPENFLAG_NON_REENTRANT if one_thread else 0
        self._xch: Any = None
        self._fmem: Any = None
        self._cpumap_size: int | None = None

    # -- lifecycle --------------------------------------------------------------------
    def __enter__(self) -> XenCtrl:
        self.open()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def open(self) -> None:
        if self._xch is not None:
            return
        if _lib is None:
            raise XenError("xc_interface_open", 38,  # ENOSYS
                           _binding.missing_library(_IMPORT_ERROR)
                           if _IMPORT_ERROR is not None else "no libxenctrl binding")
        # Check first: libxenctrl's own message for this is multi-line and cryptic.
        if not os.path.exists(PRIVCMD):
            raise XenError("xc_interface_open", 2,
                           f"{PRIVCMD} is missing: not running in a Xen dom0 (or xen "
                           "modules not loaded)")
        if not os.access(PRIVCMD, os.R_OK | os.W_OK):
            raise XenError("xc_interface_open", 13,
                           f"cannot open {PRIVCMD}: this command must be run as root")
        with _handles:
            xch = _lib.xc_interface_open(_ffi.NULL, _ffi.NULL, self._flags)
            errno = _ffi.errno
        if xch == _ffi.NULL:
            raise XenError("xc_interface_open", errno or 5)
        ver = _lib.xc_version(xch, _lib.XENVER_version, _ffi.NULL)
        mismatch = ver >= 0 and _binding.release_mismatch(ver >> 16, ver & 0xFFFF,
                                                          _binding.linked_release())
        if mismatch:
            with _handles:
                _lib.xc_interface_close(xch)
            raise XenError("xc_interface_open", 95, mismatch)  # EOPNOTSUPP
        self._xch = xch

    def close(self) -> None:
        fmem, self._fmem = self._fmem, None
        xch, self._xch = self._xch, None
        with _handles:
            try:
                if fmem is not None:
                    _lib.xenforeignmemory_close(fmem)
            finally:
                if xch is not None:
                    _lib.xc_interface_close(xch)

    @property
    def _h(self) -> Any:
        if self._xch is None:
            raise XenError("xenctrl", 9, "interface is not open")  # EBADF
        return self._xch

    def _fm(self) -> Any:
        if self._fmem is None:
            self._h  # noqa: B018 - same "not open" error as other calls
            with _handles:
                fmem = _lib.xenforeignmemory_open(_ffi.NULL, 0)
                errno = _ffi.errno
            if fmem == _ffi.NULL:
                raise XenError("xenforeignmemory_open", errno or 5)
            self._fmem = fmem
        return self._fmem

    @staticmethod
    def _check(op: str, rc: int, detail: str = "") -> int:
        if rc < 0:
            # libxenctrl returns -1 + errno, a few calls return -errno directly.
            err = _ffi.errno if rc == -1 else -rc
            raise XenError(op, err or 5, detail)
        return rc

    # -- host ---------------------------------------------------------------------------
    def version(self) -> VersionInfo:
        h = self._h
        ver = self._check("xc_version", _lib.xc_version(h, _lib.XENVER_version, _ffi.NULL))
        extra = _ffi.new("char[16]")
        cc = _ffi.new("xen_compile_info_t *")
        caps = _ffi.new("char[1024]")
        chg = _ffi.new("char[64]")
        plat = _ffi.new("xen_platform_parameters_t *")
        cmdline = _ffi.new("char[1024]")
        for cmd, arg in ((_lib.XENVER_extraversion, extra), (_lib.XENVER_compile_info, cc),
                         (_lib.XENVER_capabilities, caps), (_lib.XENVER_changeset, chg),
                         (_lib.XENVER_platform_parameters, plat),
                         (_lib.XENVER_commandline, cmdline)):
            self._check("xc_version", _lib.xc_version(h, cmd, arg))
        pagesize = self._check("xc_version",
                               _lib.xc_version(h, _lib.XENVER_pagesize, _ffi.NULL))
        return _module.VersionInfo(
            major=ver >> 16, minor=ver & 0xFF, extra=_cstr(extra),
            capabilities=_cstr(caps), changeset=_cstr(chg), commandline=_cstr(cmdline),
            compiler=_cstr(cc.compiler), compile_by=_cstr(cc.compile_by),
            compile_domain=_cstr(cc.compile_domain), compile_date=_cstr(cc.compile_date),
            pagesize=pagesize, virt_start=plat.virt_start, build_id=self._build_id(),
        )

    def _build_id(self) -> str:
        # Same buffer size as xl (1 KiB union); an absent build id reads as "".
        raw = _ffi.new("char[]", 1024)
        bid = _ffi.cast("xen_build_id_t *", raw)
        bid.len = 1024 - _ffi.sizeof("xen_build_id_t")
        n = _lib.xc_version(self._h, _lib.XENVER_build_id, bid)
        if n <= 0:
            return ""
        start = _ffi.sizeof("xen_build_id_t")
        return bytes(_ffi.buffer(raw, start + n))[start:].hex()

    def physinfo(self) -> PhysInfo:
        h = self._h
        p = _ffi.new("xc_physinfo_t *")
        self._check("xc_physinfo", _lib.xc_physinfo(h, p))
        freed = self._sharing("xc_sharing_freed_pages", _lib.xc_sharing_freed_pages)
        used = self._sharing("xc_sharing_used_frames", _lib.xc_sharing_used_frames)
        return _module.PhysInfo(
            threads_per_core=p.threads_per_core, cores_per_socket=p.cores_per_socket,
            nr_cpus=p.nr_cpus, max_cpu_id=p.max_cpu_id, nr_nodes=p.nr_nodes,
            max_node_id=p.max_node_id, cpu_khz=p.cpu_khz, capabilities=p.capabilities,
            total_pages=p.total_pages, free_pages=p.free_pages, scrub_pages=p.scrub_pages,
            outstanding_pages=p.outstanding_pages, max_mfn=p.max_mfn,
            hw_cap=tuple(p.hw_cap), sharing_freed_pages=freed, sharing_used_frames=used,
        )

    def _sharing(self, op: str, fn: Callable[[Any], int]) -> int:
        n = fn(self._h)
        if n < 0:
            if _ffi.errno == 38:  # ENOSYS: no memory sharing (the normal case) reads as 0
                return 0
            self._check(op, -1)
        return n

    def sched_id(self) -> int:
        out = _ffi.new("int *")
        self._check("xc_sched_id", _lib.xc_sched_id(self._h, out))
        sched: int = out[0]
        return sched

    def max_cpus(self) -> int:
        return self._check("xc_get_max_cpus", _lib.xc_get_max_cpus(self._h))

    def online_cpus(self) -> int:
        return self._check("xc_get_online_cpus", _lib.xc_get_online_cpus(self._h))

    def cpumap_size(self) -> int:
        if self._cpumap_size is None:
            self._cpumap_size = self._check("xc_get_cpumap_size",
                                            _lib.xc_get_cpumap_size(self._h))
        return self._cpumap_size

    def cpupool_info(self, poolid: int) -> CpupoolInfo:
        """The pool with the smallest id ``>= poolid`` (libxenctrl semantics)."""
        info = _lib.xc_cpupool_getinfo(self._h, poolid)
        if info == _ffi.NULL:
            raise XenError("xc_cpupool_getinfo", _ffi.errno or 2, f"pool {poolid}")
        try:
            cpus = cpumap_to_set(bytes(_ffi.buffer(info.cpumap, self.cpumap_size())))
            return _module.CpupoolInfo(info.cpupool_id, info.sched_id, info.n_dom, cpus)
        finally:
            _lib.xc_cpupool_infofree(self._h, info)

    def cpupools(self) -> list[CpupoolInfo]:
        pools: list[CpupoolInfo] = []
        nxt = 0
        while True:
            info = _lib.xc_cpupool_getinfo(self._h, nxt)
            if info == _ffi.NULL:
                if _ffi.errno in (0, 2):  # ENOENT: no more pools
                    return pools
                raise XenError("xc_cpupool_getinfo", _ffi.errno)
            try:
                cpus = cpumap_to_set(bytes(_ffi.buffer(info.cpumap, self.cpumap_size())))
                pools.append(_module.CpupoolInfo(info.cpupool_id, info.sched_id, info.n_dom,
                                                 cpus))
                nxt = info.cpupool_id + 1
            finally:
                _lib.xc_cpupool_infofree(self._h, info)

    def free_cpus(self) -> frozenset[int]:
        """CPUs in no cpupool."""
        raw = _lib.xc_cpupool_freeinfo(self._h)
        if raw == _ffi.NULL:
            raise XenError("xc_cpupool_freeinfo", _ffi.errno or 5)
        try:
            return cpumap_to_set(bytes(_ffi.buffer(raw, self.cpumap_size())))
        finally:
            _lib.free(raw)

    def cpupool_create(self, sched_id: int, poolid: int | None = None) -> int:
        """Create an empty cpupool run by ``sched_id``; Xen picks the id unless given."""
        pid = _ffi.new("uint32_t *", 0xFFFFFFFF if poolid is None else poolid)
        self._check("xc_cpupool_create", _lib.xc_cpupool_create(self._h, pid, sched_id))
        created: int = pid[0]
        return created

    def cpupool_destroy(self, poolid: int) -> None:
        self._check("xc_cpupool_destroy", _lib.xc_cpupool_destroy(self._h, poolid),
                    f"pool {poolid}")

    def cpupool_add_cpu(self, poolid: int, cpu: int) -> None:
        """Move a free CPU into ``poolid`` (``cpu=-1``: any free CPU)."""
        self._check("xc_cpupool_addcpu", _lib.xc_cpupool_addcpu(self._h, poolid, cpu),
                    f"pool {poolid} cpu {cpu}")

    def cpupool_remove_cpu(self, poolid: int, cpu: int) -> None:
        self._check("xc_cpupool_removecpu", _lib.xc_cpupool_removecpu(self._h, poolid, cpu),
                    f"pool {poolid} cpu {cpu}")

    def cpupool_move_domain(self, poolid: int, domid: int) -> None:
        self._check("xc_cpupool_movedomain",
                    _lib.xc_cpupool_movedomain(self._h, poolid, domid),
                    f"domain {domid} to pool {poolid}")

    def read_console_ring(self, clear: bool = False, size: int = 16384) -> bytes:
        """Xen's console ring (``xl dmesg``), oldest first; ``clear`` empties it after."""
        buf = _ffi.new("char[]", size)
        index = _ffi.new("uint32_t *", 0)
        out = bytearray()
        while True:  # incremental reads: each returns the next up to ``size`` bytes
            n = _ffi.new("unsigned int *", size)
            # Xen clears up to where a read got, so each read carries the clear flag.
            self._check("xc_readconsolering",
                        _lib.xc_readconsolering(self._h, buf, n, int(clear), 1, index))
            out += _ffi.buffer(buf, n[0])
            if n[0] < size:
                break
        return bytes(out)

    def send_debug_keys(self, keys: str) -> None:
        self._check("xc_send_debug_keys", _lib.xc_send_debug_keys(self._h, keys.encode()))

    def numa_info(self) -> tuple[list[tuple[int, int]], list[list[int]]]:
        """Per node (memsize, memfree) in bytes, and the node distance matrix; a node
        Xen reports as invalid has memsize 0."""
        count = _ffi.new("unsigned *", 0)
        self._check("xc_numainfo", _lib.xc_numainfo(self._h, count, _ffi.NULL, _ffi.NULL))
        n = count[0]
        mem = _ffi.new("xc_meminfo_t[]", n)
        dist = _ffi.new("uint32_t[]", n * n)
        self._check("xc_numainfo", _lib.xc_numainfo(self._h, count, mem, dist))
        n = count[0]
        return ([(mem[i].memsize, mem[i].memfree) for i in range(n)],
                [[dist[i * n + j] for j in range(n)] for i in range(n)])

    def cpu_topology(self) -> list[tuple[int, int, int] | None]:
        """Per CPU (core, socket, node), None for a CPU that is not present."""
        count = _ffi.new("unsigned *", 0)
        self._check("xc_cputopoinfo", _lib.xc_cputopoinfo(self._h, count, _ffi.NULL))
        topo = _ffi.new("xc_cputopo_t[]", count[0])
        self._check("xc_cputopoinfo", _lib.xc_cputopoinfo(self._h, count, topo))
        return [None if t.core == _lib.XEN_INVALID_CORE_ID else (t.core, t.socket, t.node)
                for t in (topo[i] for i in range(count[0]))]

    def set_parameters(self, params: str) -> None:
        """Set hypervisor runtime parameters, ``name=value`` separated by blanks, through
        hypfs as libxl does (``/params/<name>``)."""
        with _Hypfs() as fs:
            for item in params.split():
                name, sep, value = item.partition("=")
                if not sep or not name:
                    raise XenError("xenhypfs_write", 22, f"not name=value: {item!r}")
                if _lib.xenhypfs_write(fs, f"/params/{name}".encode(), value.encode()):
                    raise XenError("xenhypfs_write", _ffi.errno or 5, name)

    def hypfs_read(self, path: str) -> str | None:
        """A hypfs node as text, None if it does not exist."""
        with _Hypfs() as fs:
            raw = _lib.xenhypfs_read(fs, path.encode())
            if raw == _ffi.NULL:
                if _ffi.errno == 2:
                    return None
                raise XenError("xenhypfs_read", _ffi.errno or 5, path)
            try:
                return _cstr(raw)
            finally:
                _lib.free(raw)

    # -- domains: query -----------------------------------------------------------------
    def domains(self, first: int = 0, batch: int = 1024) -> list[DomainInfo]:
        """All domains with id >= first, in domid order."""
        buf = _ffi.new("xc_domaininfo_t[]", batch)
        out: list[DomainInfo] = []
        while True:
            n = self._check("xc_domain_getinfolist",
                            _lib.xc_domain_getinfolist(self._h, first, batch, buf))
            out.extend(_dominfo(buf[i]) for i in range(n))
            if n < batch:
                return out
            first = out[-1].domid + 1

    def domain_info(self, domid: int) -> DomainInfo | None:
        """The domain ``domid``, or None if there is no such domain."""
        buf = _ffi.new("xc_domaininfo_t *")
        n = self._check("xc_domain_getinfolist",
                        _lib.xc_domain_getinfolist(self._h, domid, 1, buf))
        if n != 1 or buf.domain != domid:
            return None
        return _dominfo(buf[0])

    def vcpu_info(self, domid: int, vcpu: int) -> VcpuInfo:
        v = _ffi.new("xc_vcpuinfo_t *")
        self._check("xc_vcpu_getinfo", _lib.xc_vcpu_getinfo(self._h, domid, vcpu, v),
                    f"domain {domid} vcpu {vcpu}")
        return _module.VcpuInfo(v.vcpu, bool(v.online), bool(v.blocked), bool(v.running),
                                v.cpu_time, v.cpu)

    def vcpu_affinity(self, domid: int, vcpu: int) -> tuple[frozenset[int], frozenset[int]]:
        """(hard, soft) affinity of one vcpu."""
        size = self.cpumap_size()
        hard = _ffi.new("uint8_t[]", size)
        soft = _ffi.new("uint8_t[]", size)
        flags = _lib.XEN_VCPUAFFINITY_HARD | _lib.XEN_VCPUAFFINITY_SOFT
        self._check("xc_vcpu_getaffinity",
                    _lib.xc_vcpu_getaffinity(self._h, domid, vcpu, hard, soft, flags),
                    f"domain {domid} vcpu {vcpu}")
        return (cpumap_to_set(bytes(_ffi.buffer(hard, size))),
                cpumap_to_set(bytes(_ffi.buffer(soft, size))))

    def set_vcpu_affinity(self, domid: int, vcpu: int, hard: Iterable[int] | None,
                          soft: Iterable[int] | None, force: bool = False
                          ) -> tuple[frozenset[int], frozenset[int]]:
        """Set hard and/or soft affinity (None leaves it); returns the effective maps.
        ``force`` (``vcpu-pin -f``) also breaks a temporary pinning the guest set."""
        size = self.cpumap_size()
        flags = _lib.XEN_VCPUAFFINITY_FORCE if force else 0
        hard_c = _ffi.new("uint8_t[]", size)
        soft_c = _ffi.new("uint8_t[]", size)
        if hard is not None:
            _ffi.memmove(hard_c, set_to_cpumap(hard, size), size)
            flags |= _lib.XEN_VCPUAFFINITY_HARD
        if soft is not None:
            _ffi.memmove(soft_c, set_to_cpumap(soft, size), size)
            flags |= _lib.XEN_VCPUAFFINITY_SOFT
        if not flags & (_lib.XEN_VCPUAFFINITY_HARD | _lib.XEN_VCPUAFFINITY_SOFT):
            return self.vcpu_affinity(domid, vcpu)
        self._check("xc_vcpu_setaffinity",
                    _lib.xc_vcpu_setaffinity(self._h, domid, vcpu, hard_c, soft_c, flags),
                    f"domain {domid} vcpu {vcpu}")
        return (cpumap_to_set(bytes(_ffi.buffer(hard_c, size))),
                cpumap_to_set(bytes(_ffi.buffer(soft_c, size))))

    def node_affinity(self, domid: int) -> frozenset[int]:
        size = self._check("xc_get_nodemap_size", _lib.xc_get_nodemap_size(self._h))
        nodes = _ffi.new("uint8_t[]", size)
        self._check("xc_domain_node_getaffinity",
                    _lib.xc_domain_node_getaffinity(self._h, domid, nodes), f"domain {domid}")
        return cpumap_to_set(bytes(_ffi.buffer(nodes, size)))

    # -- domains: control ---------------------------------------------------------------
    def send_trigger(self, domid: int, trigger: int, vcpu: int = 0) -> None:
        self._check("xc_domain_send_trigger",
                    _lib.xc_domain_send_trigger(self._h, domid, trigger, vcpu),
                    f"domain {domid}")

    def dump_core(self, domid: int, path: str) -> None:
        """Write an ELF core of the domain's memory and vCPU state to ``path``.

        libxenguest fails some dumps (a guest that never published its p2m) without
        setting errno: that stays errno 0, which libxl reports as "Success"."""
        _ffi.errno = 0  # not whatever an earlier call left
        if _lib.xc_domain_dumpcore(self._h, domid, path.encode()) < 0:
            raise XenError("xc_domain_dumpcore", _ffi.errno, f"domain {domid}")

    def pause(self, domid: int) -> None:
        self._check("xc_domain_pause", _lib.xc_domain_pause(self._h, domid), f"domain {domid}")

    def unpause(self, domid: int) -> None:
        self._check("xc_domain_unpause", _lib.xc_domain_unpause(self._h, domid),
                    f"domain {domid}")

    def destroy(self, domid: int) -> None:
        self._check("xc_domain_destroy", _lib.xc_domain_destroy(self._h, domid),
                    f"domain {domid}")

    def shutdown(self, domid: int, reason: ShutdownReason | int) -> None:
        self._check("xc_domain_shutdown",
                    _lib.xc_domain_shutdown(self._h, domid, int(reason)), f"domain {domid}")

    # -- domains: build -----------------------------------------------------------------
    def create_domain(self, cfg: CreateConfig, domid: int = 0) -> int:
        """Create a (paused) domain; ``domid`` 0 lets Xen choose.  Returns the new domid."""
        c = _ffi.new("struct xen_domctl_createdomain *")
        c.ssidref = cfg.ssidref
        _ffi.memmove(c.handle, cfg.handle, 16)
        c.flags = cfg.flags
        c.max_vcpus = cfg.max_vcpus
        c.max_evtchn_port = cfg.max_evtchn_port
        c.max_grant_frames = cfg.max_grant_frames
        c.max_maptrack_frames = cfg.max_maptrack_frames
        c.grant_opts = cfg.grant_version & _lib.XEN_DOMCTL_GRANT_version_mask
        c.cpupool_id = cfg.cpupool_id
        c.arch.emulation_flags = cfg.emulation_flags
        c.arch.misc_flags = cfg.misc_flags
        pdomid = _ffi.new("uint32_t *", domid)
        self._check("xc_domain_create", _lib.xc_domain_create(self._h, pdomid, c))
        new_domid: int = pdomid[0]
        return new_domid

    def set_handle(self, domid: int, handle: bytes) -> None:
        if len(handle) != 16:
            raise ValueError("domain handle (uuid) must be 16 bytes")
        self._check("xc_domain_sethandle",
                    _lib.xc_domain_sethandle(self._h, domid, _ffi.new("uint8_t[16]", handle)))

    def set_max_vcpus(self, domid: int, n: int) -> None:
        self._check("xc_domain_max_vcpus", _lib.xc_domain_max_vcpus(self._h, domid, n))

    def set_tsc_mode(self, domid: int, mode: int) -> None:
        """``XEN_DOMCTL_settscinfo`` with Xen's own frequency and offsets, as libxl sets it
        at create (0 default, 1 always emulate, 2 native)."""
        self._check("xc_domain_set_tsc_info",
                    _lib.xc_domain_set_tsc_info(self._h, domid, mode, 0, 0, 0),
                    f"domain {domid}")

    def tsc_mode(self, domid: int) -> int:
        """The domain's TSC mode (``XEN_DOMCTL_gettscinfo``)."""
        mode = _ffi.new("uint32_t *")
        nsec = _ffi.new("uint64_t *")
        khz = _ffi.new("uint32_t *")
        inc = _ffi.new("uint32_t *")
        self._check("xc_domain_get_tsc_info",
                    _lib.xc_domain_get_tsc_info(self._h, domid, mode, nsec, khz, inc),
                    f"domain {domid}")
        return int(mode[0])

    def set_max_mem(self, domid: int, max_memkb: int) -> None:
        self._check("xc_domain_setmaxmem", _lib.xc_domain_setmaxmem(self._h, domid, max_memkb))

    def set_memmap_limit(self, domid: int, limit_kb: int) -> None:
        self._check("xc_domain_set_memmap_limit",
                    _lib.xc_domain_set_memmap_limit(self._h, domid, limit_kb))

    def claim_pages(self, domid: int, nr_pages: int) -> None:
        """Reserve ``nr_pages`` for the domain up front (0 releases the claim)."""
        self._check("xc_domain_claim_pages",
                    _lib.xc_domain_claim_pages(self._h, domid, nr_pages))

    def tot_pages(self, domid: int) -> int:
        return self._check("xc_get_tot_pages", _lib.xc_get_tot_pages(self._h, domid))

    def populate_physmap(self, domid: int, pfns: Sequence[int], order: int = 0,
                         mem_flags: int = 0) -> list[int]:
        """Back guest pfns with memory; returns the frame numbers Xen put in the array.

        For a PV guest these are the MFNs backing each extent (the p2m); HVM gets pfns back.
        Fails as a whole (``-exact`` semantics) if not every extent was populated.
        """
        arr = _ffi.new("xen_pfn_t[]", list(pfns))
        self._check("xc_domain_populate_physmap_exact",
                    _lib.xc_domain_populate_physmap_exact(self._h, domid, len(pfns), order,
                                                          mem_flags, arr),
                    f"{len(pfns)} extents of order {order}")
        return list(arr)

    def increase_reservation(self, domid: int, nr_extents: int, order: int = 0,
                             mem_flags: int = 0) -> list[int]:
        """Allocate extents to a PV domain without placing them; returns their MFNs."""
        arr = _ffi.new("xen_pfn_t[]", nr_extents)
        self._check("xc_domain_increase_reservation_exact",
                    _lib.xc_domain_increase_reservation_exact(self._h, domid, nr_extents,
                                                              order, mem_flags, arr))
        return list(arr)

    def decrease_reservation(self, domid: int, frames: Sequence[int], order: int = 0) -> None:
        arr = _ffi.new("xen_pfn_t[]", list(frames))
        self._check("xc_domain_decrease_reservation_exact",
                    _lib.xc_domain_decrease_reservation_exact(self._h, domid, len(frames),
                                                              order, arr))

    def mmuext_op(self, domid: int, cmd: int, mfn: int) -> None:
        op = _ffi.new("struct mmuext_op *")
        op.cmd = cmd
        op.arg1.mfn = mfn
        self._check("xc_mmuext_op", _lib.xc_mmuext_op(self._h, op, 1, domid),
                    f"cmd {cmd} mfn {mfn:#x}")

    def pin_l4_table(self, domid: int, mfn: int) -> None:
        """Pin the guest's top-level (L4) page table, as the PV boot protocol requires."""
        self.mmuext_op(domid, MMUEXT_PIN_L4_TABLE, mfn)

    def set_vcpu_context(self, domid: int, vcpu: int, ctx: VcpuContext) -> None:
        from dataclasses import fields

        any_ = _ffi.new("vcpu_guest_context_any_t *")  # zeroed, like libxenguest's
        c = any_.x64
        r = ctx.user_regs
        for f in fields(_module.UserRegs):
            setattr(c.user_regs, f.name, getattr(r, f.name))
        c.flags = ctx.flags
        for i, v in enumerate(ctx.ctrlreg):
            c.ctrlreg[i] = v
        for i, v in enumerate(ctx.gdt_frames):
            c.gdt_frames[i] = v
        for name in ("kernel_ss", "kernel_sp", "event_callback_eip", "failsafe_callback_eip",
                     "syscall_callback_eip", "gdt_ents", "vm_assist", "fs_base",
                     "gs_base_kernel", "gs_base_user"):
            setattr(c, name, getattr(ctx, name))
        self._check("xc_vcpu_setcontext", _lib.xc_vcpu_setcontext(self._h, domid, vcpu, any_),
                    f"domain {domid} vcpu {vcpu}")

    def vcpu_context(self, domid: int, vcpu: int) -> VcpuContext:
        from dataclasses import fields

        any_ = _ffi.new("vcpu_guest_context_any_t *")
        self._check("xc_vcpu_getcontext", _lib.xc_vcpu_getcontext(self._h, domid, vcpu, any_),
                    f"domain {domid} vcpu {vcpu}")
        c = any_.x64
        regs = _module.UserRegs(**{f.name: getattr(c.user_regs, f.name)
                                   for f in fields(_module.UserRegs)})
        return _module.VcpuContext(
            user_regs=regs, flags=c.flags, ctrlreg=tuple(c.ctrlreg),
            kernel_ss=c.kernel_ss, kernel_sp=c.kernel_sp,
            event_callback_eip=c.event_callback_eip,
            failsafe_callback_eip=c.failsafe_callback_eip,
            syscall_callback_eip=c.syscall_callback_eip, gdt_ents=c.gdt_ents,
            gdt_frames=tuple(c.gdt_frames), vm_assist=c.vm_assist, fs_base=c.fs_base,
            gs_base_kernel=c.gs_base_kernel, gs_base_user=c.gs_base_user,
        )

    def evtchn_alloc_unbound(self, domid: int, remote_domid: int) -> int:
        """A new unbound port in ``domid`` that ``remote_domid`` may bind to."""
        return self._check("xc_evtchn_alloc_unbound",
                           _lib.xc_evtchn_alloc_unbound(self._h, domid, remote_domid))

    def hypercall_init(self, domid: int, gmfn: int) -> None:
        """Have Xen fill the guest's hypercall page (XEN_ELFNOTE_HYPERCALL_PAGE) at ``gmfn``."""
        self._check("XEN_DOMCTL_hypercall_init",
                    _lib.xentool_hypercall_init(self._h, domid, gmfn),
                    f"domain {domid} mfn {gmfn:#x}")

    def set_address_size(self, domid: int, bits: int) -> None:
        """Declare a PV guest 64- or 32-bit (XEN_DOMCTL_set_address_size)."""
        self._check("XEN_DOMCTL_set_address_size",
                    _lib.xentool_set_address_size(self._h, domid, bits),
                    f"domain {domid} {bits}-bit")

    def hvm_param(self, domid: int, param: int) -> int:
        out = _ffi.new("uint64_t *")
        self._check("xc_hvm_param_get", _lib.xc_hvm_param_get(self._h, domid, param, out))
        value: int = out[0]
        return value

    def set_hvm_param(self, domid: int, param: int, value: int) -> None:
        self._check("xc_hvm_param_set", _lib.xc_hvm_param_set(self._h, domid, param, value))

    # -- HVM containers (PVH guests) -----------------------------------------------------
    def hvm_context(self, domid: int) -> bytes:
        """The domain's HVM save records (XEN_DOMCTL_gethvmcontext), as one buffer."""
        size = self._check("xc_domain_hvm_getcontext",
                           _lib.xc_domain_hvm_getcontext(self._h, domid, _ffi.NULL, 0),
                           f"domain {domid}")
        buf = _ffi.new("uint8_t[]", size)
        got = self._check("xc_domain_hvm_getcontext",
                          _lib.xc_domain_hvm_getcontext(self._h, domid, buf, size),
                          f"domain {domid}")
        return bytes(_ffi.buffer(buf, got))

    def set_hvm_context(self, domid: int, records: bytes) -> None:
        """Load HVM save records (XEN_DOMCTL_sethvmcontext); each load takes every vCPU
        down, so the boot vCPU's record goes last."""
        buf = _ffi.new("uint8_t[]", records)
        self._check("xc_domain_hvm_setcontext",
                    _lib.xc_domain_hvm_setcontext(self._h, domid, buf, len(records)),
                    f"domain {domid}, {len(records)} bytes")

    def set_paging_mempool_size(self, domid: int, size_bytes: int) -> None:
        """The pool Xen takes the guest's p2m (HAP) or shadow pages from."""
        self._check("xc_set_paging_mempool_size",
                    _lib.xc_set_paging_mempool_size(self._h, domid, size_bytes),
                    f"domain {domid}, {size_bytes} bytes")

    def set_pod_target(self, domid: int, target_pages: int) -> None:
        """The populate-on-demand target: Xen sizes the PoD cache so that the domain holds
        ``target_pages`` (a no-op for a domain without PoD entries)."""
        self._check("xc_domain_set_pod_target",
                    _lib.xc_domain_set_pod_target(self._h, domid, target_pages, _ffi.NULL,
                                                  _ffi.NULL, _ffi.NULL),
                    f"domain {domid}, {target_pages} pages")

    def paging_mempool_size(self, domid: int) -> int:
        out = _ffi.new("uint64_t *")
        self._check("xc_get_paging_mempool_size",
                    _lib.xc_get_paging_mempool_size(self._h, domid, out), f"domain {domid}")
        value: int = out[0]
        return value

    def set_memory_map(self, domid: int, entries: Sequence[tuple[int, int, int]]) -> None:
        """The guest's e820 (XENMEM_set_memory_map): (address, size, type) entries."""
        n = len(entries)
        addr = _ffi.new("uint64_t[]", [e[0] for e in entries])
        size = _ffi.new("uint64_t[]", [e[1] for e in entries])
        kind = _ffi.new("uint32_t[]", [e[2] for e in entries])
        self._check("xc_domain_set_memory_map",
                    _lib.xentool_set_memory_map(self._h, domid, n, addr, size, kind),
                    f"domain {domid}, {n} entries")

    def apply_cpuid_policy(self, domid: int,
                           entries: Sequence[tuple[int, int, tuple[str | None, ...]]],
                           *, itsc: bool = False, nested_virt: bool = False) -> None:
        """xc_cpuid_apply_policy for a new domain, as libxl__cpuid_legacy calls it:
        ``entries`` are (leaf, subleaf, (eax, ebx, ecx, edx)) with 32-character policy
        strings ('0', '1', 'x', 'k', 's' per bit, bit 31 first) or None for a register
        left alone; subleaf 0xffffffff means none."""
        n = len(entries)
        regs = bytearray(n * 4 * 33)
        for i, (_, _, policy) in enumerate(entries):
            if len(policy) != 4:
                raise ValueError("a CPUID policy entry has 4 registers")
            for r, text in enumerate(policy):
                if text is None:
                    continue
                raw = text.encode("ascii")
                if len(raw) != 32:
                    raise ValueError(f"CPUID policy string {text!r} is not 32 characters")
                off = (i * 4 + r) * 33
                regs[off:off + 32] = raw
        leaf = _ffi.new("uint32_t[]", [e[0] for e in entries] or [0])
        sub = _ffi.new("uint32_t[]", [e[1] for e in entries] or [0])
        buf = _ffi.new("char[]", bytes(regs) or b"\0")
        self._check("xc_cpuid_apply_policy",
                    _lib.xentool_cpuid_apply(self._h, domid, int(itsc), int(nested_virt),
                                             n, leaf, sub, buf),
                    f"domain {domid}")

    # -- memory mapping -----------------------------------------------------------------
    def map_foreign(self, domid: int, pfns: Sequence[int], writable: bool = True
                    ) -> ForeignMapping:
        """Map guest frames (gfns; MFNs for PV) contiguously; use as a context manager."""
        if not pfns:
            raise ValueError("nothing to map")
        fm = self._fm()
        n = len(pfns)
        arr = _ffi.new("xen_pfn_t[]", list(pfns))
        errs = _ffi.new("int[]", n)
        prot = _lib.PROT_READ | (_lib.PROT_WRITE if writable else 0)
        addr = _lib.xenforeignmemory_map(fm, domid, prot, n, arr, errs)
        if addr == _ffi.NULL:
            raise XenError("xenforeignmemory_map", _ffi.errno or 5,
                           f"domain {domid}, {n} pages from pfn {pfns[0]:#x}")
        # One C-speed scan of the error array instead of n cffi element reads.
        if _ffi.buffer(errs)[:].count(0) != n * _ffi.sizeof("int"):
            bad = next(i for i in range(n) if errs[i])
            _lib.xenforeignmemory_unmap(fm, addr, n)
            raise XenError("xenforeignmemory_map", abs(errs[bad]),
                           f"domain {domid} pfn {pfns[bad]:#x}")

        def release() -> None:
            if _lib.xenforeignmemory_unmap(fm, addr, n) != 0:
                raise XenError("xenforeignmemory_unmap", _ffi.errno or 5)

        return ForeignMapping(release, addr, n * PAGE_SIZE)

    def map_grant_table(self, domid: int, frame: int = 0, nr_frames: int = 1
                        ) -> ForeignMapping:
        """Map the guest's shared grant-table frames (XENMEM_resource_grant_table)."""
        fm = self._fm()
        paddr = _ffi.new("void **")
        fres = _lib.xenforeignmemory_map_resource(
            fm, domid, _lib.XENMEM_resource_grant_table,
            _lib.XENMEM_resource_grant_table_id_shared, frame, nr_frames, paddr,
            _lib.PROT_READ | _lib.PROT_WRITE, 0)
        if fres == _ffi.NULL:
            raise XenError("xenforeignmemory_map_resource", _ffi.errno or 5,
                           f"grant table of domain {domid}")

        def release() -> None:
            if _lib.xenforeignmemory_unmap_resource(fm, fres) != 0:
                raise XenError("xenforeignmemory_unmap_resource", _ffi.errno or 5)

        return ForeignMapping(release, paddr[0], nr_frames * PAGE_SIZE)

    def seed_grant_table(self, domid: int, console: tuple[int, int] | None,
                         xenstore: tuple[int, int] | None) -> None:
        """Write the reserved v1 grant entries a PV guest finds at boot.

        ``console``/``xenstore`` are ``(backend_domid, frame)``; the frame is the guest's
        gfn (the MFN for a PV guest).  None, or a backend equal to the guest, skips it.
        """
        import struct

        with self.map_grant_table(domid) as gt:
            for idx, entry in ((GNTTAB_RESERVED_CONSOLE, console),
                               (GNTTAB_RESERVED_XENSTORE, xenstore)):
                if entry is None or entry[0] == domid:
                    continue
                off = idx * struct.calcsize(_GRANT_V1)
                # domid/frame first, flags last: the entry becomes valid only when complete.
                gt[off + 2:off + 8] = grant_entry_v1(*entry)[2:]
                gt[off:off + 2] = grant_entry_v1(*entry)[:2]

    # -- schedulers -----------------------------------------------------------------------
    def sched_credit(self, domid: int) -> SchedCredit:
        s = _ffi.new("struct xen_domctl_sched_credit *")
        self._check("xc_sched_credit_domain_get",
                    _lib.xc_sched_credit_domain_get(self._h, domid, s), f"domain {domid}")
        return _module.SchedCredit(s.weight, s.cap)

    def set_sched_credit(self, domid: int, params: SchedCredit) -> None:
        s = _ffi.new("struct xen_domctl_sched_credit *")
        s.weight = params.weight
        s.cap = params.cap
        self._check("xc_sched_credit_domain_set",
                    _lib.xc_sched_credit_domain_set(self._h, domid, s), f"domain {domid}")

    def sched_credit2(self, domid: int) -> SchedCredit:
        s = _ffi.new("struct xen_domctl_sched_credit2 *")
        self._check("xc_sched_credit2_domain_get",
                    _lib.xc_sched_credit2_domain_get(self._h, domid, s), f"domain {domid}")
        return _module.SchedCredit(s.weight, s.cap)

    def set_sched_credit2(self, domid: int, params: SchedCredit) -> None:
        s = _ffi.new("struct xen_domctl_sched_credit2 *")
        s.weight = params.weight
        s.cap = params.cap
        self._check("xc_sched_credit2_domain_set",
                    _lib.xc_sched_credit2_domain_set(self._h, domid, s), f"domain {domid}")

    def credit_params(self, poolid: int) -> CreditParams:
        s = _ffi.new("struct xen_sysctl_credit_schedule *")
        self._check("xc_sched_credit_params_get",
                    _lib.xc_sched_credit_params_get(self._h, poolid, s), f"pool {poolid}")
        return _module.CreditParams(s.tslice_ms, s.ratelimit_us, s.vcpu_migr_delay_us)

    def set_credit_params(self, poolid: int, params: CreditParams) -> CreditParams:
        s = _ffi.new("struct xen_sysctl_credit_schedule *")
        s.tslice_ms = params.tslice_ms
        s.ratelimit_us = params.ratelimit_us
        s.vcpu_migr_delay_us = params.vcpu_migr_delay_us
        self._check("xc_sched_credit_params_set",
                    _lib.xc_sched_credit_params_set(self._h, poolid, s), f"pool {poolid}")
        return _module.CreditParams(s.tslice_ms, s.ratelimit_us, s.vcpu_migr_delay_us)

    def credit2_params(self, poolid: int) -> Credit2Params:
        s = _ffi.new("struct xen_sysctl_credit2_schedule *")
        self._check("xc_sched_credit2_params_get",
                    _lib.xc_sched_credit2_params_get(self._h, poolid, s), f"pool {poolid}")
        return _module.Credit2Params(s.ratelimit_us)

    def set_credit2_params(self, poolid: int, params: Credit2Params) -> Credit2Params:
        s = _ffi.new("struct xen_sysctl_credit2_schedule *")
        s.ratelimit_us = params.ratelimit_us
        self._check("xc_sched_credit2_params_set",
                    _lib.xc_sched_credit2_params_set(self._h, poolid, s), f"pool {poolid}")
        return _module.Credit2Params(s.ratelimit_us)


    def sched_rtds(self, domid: int) -> RtdsParams:
        s = _ffi.new("struct xen_domctl_sched_rtds *")
        self._check("xc_sched_rtds_domain_get",
                    _lib.xc_sched_rtds_domain_get(self._h, domid, s), f"domain {domid}")
        return _module.RtdsParams(s.period, s.budget,
                                  bool(s.flags & _lib.XEN_DOMCTL_SCHEDRT_extra))

    def set_sched_rtds(self, domid: int, params: RtdsParams) -> None:
        s = _ffi.new("struct xen_domctl_sched_rtds *")
        s.period = params.period
        s.budget = params.budget
        s.flags = _lib.XEN_DOMCTL_SCHEDRT_extra if params.extratime else 0
        self._check("xc_sched_rtds_domain_set",
                    _lib.xc_sched_rtds_domain_set(self._h, domid, s), f"domain {domid}")

    def sched_rtds_vcpus(self, domid: int, vcpus: Sequence[int]) -> list[RtdsParams]:
        n = len(vcpus)
        ids = _ffi.new("uint32_t[]", list(vcpus))
        period, budget, flags = (_ffi.new("uint32_t[]", n) for _ in range(3))
        self._check("xc_sched_rtds_vcpu_get",
                    _lib.xentool_rtds_vcpu(self._h, domid, 0, n, ids, period, budget, flags),
                    f"domain {domid}")
        return [_module.RtdsParams(period[i], budget[i],
                                   bool(flags[i] & _lib.XEN_DOMCTL_SCHEDRT_extra))
                for i in range(n)]

    def set_sched_rtds_vcpus(self, domid: int, params: dict[int, RtdsParams]) -> None:
        n = len(params)
        ids = _ffi.new("uint32_t[]", list(params))
        period = _ffi.new("uint32_t[]", [p.period for p in params.values()])
        budget = _ffi.new("uint32_t[]", [p.budget for p in params.values()])
        flags = _ffi.new("uint32_t[]", [_lib.XEN_DOMCTL_SCHEDRT_extra if p.extratime else 0
                                        for p in params.values()])
        self._check("xc_sched_rtds_vcpu_set",
                    _lib.xentool_rtds_vcpu(self._h, domid, 1, n, ids, period, budget, flags),
                    f"domain {domid}")

    # -- migration: restore ----------------------------------------------------------------
    # The records of a libxc stream carry these states as Xen's raw structures; they are
    # handed over byte for byte (the stream's parser has checked their sizes).

    @staticmethod
    def vcpu_context_size() -> int:
        """sizeof(vcpu_guest_context_x86_64_t): an X86_PV_VCPU_BASIC record's payload."""
        return int(_ffi.sizeof("vcpu_guest_context_x86_64_t"))

    @staticmethod
    def vcpu_field_offsets() -> dict[str, int]:
        """Byte offsets in an x86_64 ``vcpu_guest_context`` of the fields a restore
        translates: flags, user_regs.rdx, gdt_frames, gdt_ents, ctrlreg."""
        t = "vcpu_guest_context_x86_64_t"
        return {"flags": int(_ffi.offsetof(t, "flags")),
                "rdx": int(_ffi.offsetof(t, "user_regs", "rdx")),
                "gdt_frames": int(_ffi.offsetof(t, "gdt_frames")),
                "gdt_ents": int(_ffi.offsetof(t, "gdt_ents")),
                "ctrlreg": int(_ffi.offsetof(t, "ctrlreg"))}

    def set_vcpu_context_raw(self, domid: int, vcpu: int, raw: bytes) -> None:
        """XEN_DOMCTL_setvcpucontext with a whole x86_64 ``vcpu_guest_context``."""
        if len(raw) != self.vcpu_context_size():
            raise ValueError(f"vcpu context of {len(raw)} bytes, not "
                             f"{self.vcpu_context_size()}")
        any_ = _ffi.new("vcpu_guest_context_any_t *")
        _ffi.memmove(any_, raw, len(raw))
        self._check("xc_vcpu_setcontext", _lib.xc_vcpu_setcontext(self._h, domid, vcpu, any_),
                    f"domain {domid} vcpu {vcpu}")

    def set_ext_vcpu_context(self, domid: int, raw: bytes) -> None:
        """XEN_DOMCTL_set_ext_vcpucontext (the payload names its vCPU)."""
        self._check("XEN_DOMCTL_set_ext_vcpucontext",
                    _lib.xentool_set_ext_vcpucontext(self._h, domid, raw, len(raw)),
                    f"domain {domid}")

    def set_vcpu_extstate(self, domid: int, vcpu: int, raw: bytes) -> None:
        """XEN_DOMCTL_setvcpuextstate: the vCPU's XSAVE area as the stream carries it."""
        self._check("XEN_DOMCTL_setvcpuextstate",
                    _lib.xentool_set_vcpu_extstate(self._h, domid, vcpu, raw, len(raw)),
                    f"domain {domid} vcpu {vcpu}")

    def set_vcpu_msrs(self, domid: int, vcpu: int, raw: bytes) -> None:
        """XEN_DOMCTL_set_vcpu_msrs: ``raw`` is an array of xen_domctl_vcpu_msr_t."""
        self._check("XEN_DOMCTL_set_vcpu_msrs",
                    _lib.xentool_set_vcpu_msrs(self._h, domid, vcpu, raw, len(raw)),
                    f"domain {domid} vcpu {vcpu}")

    def set_tsc_info(self, domid: int, mode: int, elapsed_nsec: int, khz: int,
                     incarnation: int) -> None:
        self._check("xc_domain_set_tsc_info",
                    _lib.xc_domain_set_tsc_info(self._h, domid, mode, elapsed_nsec, khz,
                                                incarnation), f"domain {domid}")

    def set_cpu_policy(self, domid: int, leaves: bytes, msrs: bytes) -> None:
        """xc_set_domain_cpu_policy with arrays of xen_cpuid_leaf_t (24 bytes each) and
        xen_msr_entry_t (16 bytes each)."""
        err = _ffi.new("uint32_t[3]")
        rc = _lib.xentool_set_cpu_policy(self._h, domid, len(leaves) // 24, leaves or b"\0",
                                         len(msrs) // 16, msrs or b"\0", err)
        self._check("xc_set_domain_cpu_policy", rc,
                    f"domain {domid}: leaf {err[0]:#x} subleaf {err[1]:#x} msr {err[2]:#x}")

    def mmuext_ops(self, domid: int, ops: Sequence[tuple[int, int]]) -> None:
        """Several (cmd, mfn) MMUEXT operations in one hypercall."""
        if not ops:
            return
        arr = _ffi.new("struct mmuext_op[]", len(ops))
        for i, (cmd, mfn) in enumerate(ops):
            arr[i].cmd = cmd
            arr[i].arg1.mfn = mfn
        self._check("xc_mmuext_op", _lib.xc_mmuext_op(self._h, arr, len(ops), domid),
                    f"domain {domid}, {len(ops)} operations")

    # -- migration: save ------------------------------------------------------------------
    # Raw state for the libxc migration stream; the stream code interprets the bytes.
    def pfn_types(self, domid: int, mfns: Sequence[int]) -> list[int]:
        """XEN_DOMCTL_PFINFO_* type of each frame (xc_get_pfn_type_batch; an invalid
        frame comes back as XTAB)."""
        if not mfns:
            return []
        arr = _ffi.new("xen_pfn_t[]", list(mfns))
        self._check("xc_get_pfn_type_batch",
                    _lib.xc_get_pfn_type_batch(self._h, domid, len(mfns), arr),
                    f"domain {domid}")
        return list(arr)

    def tsc_info(self, domid: int) -> tuple[int, int, int, int]:
        """(mode, elapsed nsec, kHz, incarnation) of the domain's TSC (gettscinfo)."""
        mode = _ffi.new("uint32_t *")
        nsec = _ffi.new("uint64_t *")
        khz = _ffi.new("uint32_t *")
        inc = _ffi.new("uint32_t *")
        self._check("xc_domain_get_tsc_info",
                    _lib.xc_domain_get_tsc_info(self._h, domid, mode, nsec, khz, inc),
                    f"domain {domid}")
        return int(mode[0]), int(nsec[0]), int(khz[0]), int(inc[0])

    def resume(self, domid: int, fast: bool = True) -> None:
        """xc_domain_resume: a suspended domain runs again (``fast``: its suspend
        hypercall returns 1, the guest carries on where it was, as for ``xl save -c``)."""
        self._check("xc_domain_resume", _lib.xc_domain_resume(self._h, domid, int(fast)),
                    f"domain {domid}")

    def maximum_ram_page(self) -> int:
        out = _ffi.new("unsigned long *")
        self._check("xc_maximum_ram_page", _lib.xc_maximum_ram_page(self._h, out))
        return int(out[0])

    def guest_width(self, domid: int) -> int:
        """Bytes in a guest word (8 for a 64-bit PV guest)."""
        out = _ffi.new("unsigned int *")
        self._check("xc_domain_get_guest_width",
                    _lib.xc_domain_get_guest_width(self._h, domid, out), f"domain {domid}")
        return int(out[0])

    def vcpu_context_raw(self, domid: int, vcpu: int) -> bytes:
        """The x86_64 vcpu_guest_context of ``vcpu`` as Xen returns it."""
        buf = _ffi.new("uint8_t[]", _lib.XENTOOL_SAVE_VCPU_SIZE)
        self._check("xc_vcpu_getcontext", _lib.xentool_save_vcpu(self._h, domid, vcpu, buf),
                    f"domain {domid} vcpu {vcpu}")
        return bytes(_ffi.buffer(buf))

    def ext_vcpu_context(self, domid: int, vcpu: int) -> bytes:
        """XEN_DOMCTL_get_ext_vcpucontext's structure, as long as Xen says (b"": none)."""
        buf = _ffi.new("uint8_t[]", 256)
        size = _ffi.new("uint32_t *", 256)
        self._check("XEN_DOMCTL_get_ext_vcpucontext",
                    _lib.xentool_save_ext_vcpu(self._h, domid, vcpu, buf, size),
                    f"domain {domid} vcpu {vcpu}")
        return bytes(_ffi.buffer(buf, size[0]))

    def vcpu_xsave(self, domid: int, vcpu: int) -> bytes:
        """The vCPU's xsave area (XEN_DOMCTL_getvcpuextstate; b"": none)."""
        size = _ffi.new("uint32_t *", 0)
        what = f"domain {domid} vcpu {vcpu}"
        self._check("XEN_DOMCTL_getvcpuextstate",
                    _lib.xentool_save_xsave(self._h, domid, vcpu, _ffi.NULL, size), what)
        if size[0] == 0:
            return b""
        buf = _ffi.new("uint8_t[]", size[0])
        self._check("XEN_DOMCTL_getvcpuextstate",
                    _lib.xentool_save_xsave(self._h, domid, vcpu, buf, size), what)
        return bytes(_ffi.buffer(buf, size[0]))

    def vcpu_msrs(self, domid: int, vcpu: int) -> bytes:
        """The vCPU's MSRs as xen_domctl_vcpu_msr_t entries (XEN_DOMCTL_get_vcpu_msrs)."""
        count = _ffi.new("uint32_t *", 0)
        what = f"domain {domid} vcpu {vcpu}"
        self._check("XEN_DOMCTL_get_vcpu_msrs",
                    _lib.xentool_save_msrs(self._h, domid, vcpu, _ffi.NULL, count), what)
        if count[0] == 0:
            return b""
        room = count[0]
        buf = _ffi.new("uint8_t[]", room * _lib.XENTOOL_SAVE_VCPU_MSR_SIZE)
        self._check("XEN_DOMCTL_get_vcpu_msrs",
                    _lib.xentool_save_msrs(self._h, domid, vcpu, buf, count), what)
        return bytes(_ffi.buffer(buf, count[0] * _lib.XENTOOL_SAVE_VCPU_MSR_SIZE))

    def cpu_policy_serialised(self, domid: int) -> tuple[bytes, bytes]:
        """The domain's CPU policy as xen_cpuid_leaf_t and xen_msr_entry_t arrays
        (xc_cpu_policy_get_domain + xc_cpu_policy_serialise)."""
        nl = _ffi.new("uint32_t *")
        nm = _ffi.new("uint32_t *")
        what = f"domain {domid}"
        self._check("xc_cpu_policy_get_size",
                    _lib.xentool_save_cpu_policy(self._h, domid, _ffi.NULL, nl, _ffi.NULL, nm),
                    what)
        leaves = _ffi.new("uint8_t[]", max(1, nl[0]) * _lib.XENTOOL_SAVE_CPUID_LEAF_SIZE)
        msrs = _ffi.new("uint8_t[]", max(1, nm[0]) * _lib.XENTOOL_SAVE_MSR_ENTRY_SIZE)
        self._check("xc_cpu_policy_serialise",
                    _lib.xentool_save_cpu_policy(self._h, domid, leaves, nl, msrs, nm), what)
        return (bytes(_ffi.buffer(leaves, nl[0] * _lib.XENTOOL_SAVE_CPUID_LEAF_SIZE)),
                bytes(_ffi.buffer(msrs, nm[0] * _lib.XENTOOL_SAVE_MSR_ENTRY_SIZE)))

    @staticmethod
    def vcpu_context_offsets() -> dict[str, int]:
        """Offsets in the raw x86_64 vcpu context of the fields a save normalises."""
        return {"size": _lib.XENTOOL_SAVE_VCPU_SIZE, "rdx": _lib.XENTOOL_SAVE_OFF_RDX,
                "ctrlreg": _lib.XENTOOL_SAVE_OFF_CTRLREG,
                "gdt_frames": _lib.XENTOOL_SAVE_OFF_GDT_FRAMES,
                "gdt_ents": _lib.XENTOOL_SAVE_OFF_GDT_ENTS}

    # -- migration: live ------------------------------------------------------------------
    def logdirty(self, domid: int, enable: bool) -> None:
        """Log-dirty mode on (ENABLE_LOGDIRTY) or shadow mode off (SHADOW_OP_OFF)."""
        self._check("xc_shadow_control", _lib.xentool_logdirty(self._h, domid, int(enable)),
                    f"domain {domid}")

    def logdirty_clean(self, domid: int, pages: int) -> tuple[bytes, int]:
        """The dirty bitmap of pfns 0..pages-1 (bit i of byte i // 8 for pfn i), cleared
        in Xen (SHADOW_OP_CLEAN), and the number of pages Xen counted dirty."""
        nbytes = (pages + 63) // 64 * 8
        buf = _ffi.new("uint8_t[]", max(8, nbytes))
        dirty = _ffi.new("uint32_t *")
        self._check("xc_logdirty_control",
                    _lib.xentool_logdirty_clean(self._h, domid, buf, pages, dirty),
                    f"domain {domid}")
        return bytes(_ffi.buffer(buf, nbytes)), int(dirty[0])


def _dominfo(d: Any) -> DomainInfo:
    return _module.DomainInfo(
        domid=d.domain, flags=d.flags, tot_pages=d.tot_pages, max_pages=d.max_pages,
        outstanding_pages=d.outstanding_pages, shr_pages=d.shr_pages,
        paged_pages=d.paged_pages, shared_info_frame=d.shared_info_frame,
        cpu_time_ns=d.cpu_time, nr_online_vcpus=d.nr_online_vcpus,
        max_vcpu_id=d.max_vcpu_id, ssidref=d.ssidref, handle=bytes(d.handle),
        cpupool=d.cpupool, gpaddr_bits=d.gpaddr_bits,
    )

