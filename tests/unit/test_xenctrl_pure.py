"""XenCtrl parts that need no hypervisor: constants vs. headers, codecs, error paths."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain_builder import xenctrl as xc
from domain_builder._xenctrl import ffi, lib
from domain_builder.errors import XenError


@pytest.mark.parametrize("name,header", [
    ("PAGE_SIZE", "XC_PAGE_SIZE"),
    ("PAGE_SHIFT", "XC_PAGE_SHIFT"),
    ("XENMEMF_populate_on_demand", "XENMEMF_populate_on_demand"),
    ("XENMEMF_exact_node_request", "XENMEMF_exact_node_request"),
    ("XENMEMF_vnode", "XENMEMF_vnode"),
    ("CDF_HVM", "XEN_DOMCTL_CDF_hvm"),
    ("CDF_HAP", "XEN_DOMCTL_CDF_hap"),
    ("CDF_S3_INTEGRITY", "XEN_DOMCTL_CDF_s3_integrity"),
    ("CDF_OOS_OFF", "XEN_DOMCTL_CDF_oos_off"),
    ("CDF_XS_DOMAIN", "XEN_DOMCTL_CDF_xs_domain"),
    ("CDF_IOMMU", "XEN_DOMCTL_CDF_iommu"),
    ("CDF_NESTED_VIRT", "XEN_DOMCTL_CDF_nested_virt"),
    ("CDF_VPMU", "XEN_DOMCTL_CDF_vpmu"),
    ("VGCF_IN_KERNEL", "VGCF_in_kernel"),
    ("VGCF_ONLINE", "VGCF_online"),
    ("VGCF_FAILSAFE_DISABLES_EVENTS", "VGCF_failsafe_disables_events"),
    ("VGCF_SYSCALL_DISABLES_EVENTS", "VGCF_syscall_disables_events"),
    ("MMUEXT_PIN_L1_TABLE", "MMUEXT_PIN_L1_TABLE"),
    ("MMUEXT_PIN_L2_TABLE", "MMUEXT_PIN_L2_TABLE"),
    ("MMUEXT_PIN_L3_TABLE", "MMUEXT_PIN_L3_TABLE"),
    ("MMUEXT_PIN_L4_TABLE", "MMUEXT_PIN_L4_TABLE"),
    ("MMUEXT_UNPIN_TABLE", "MMUEXT_UNPIN_TABLE"),
    ("GTF_PERMIT_ACCESS", "GTF_permit_access"),
    ("GNTTAB_RESERVED_CONSOLE", "GNTTAB_RESERVED_CONSOLE"),
    ("GNTTAB_RESERVED_XENSTORE", "GNTTAB_RESERVED_XENSTORE"),
])
def test_python_constants_match_the_compiled_headers(name: str, header: str) -> None:
    assert getattr(xc, name) == getattr(lib, header)


def test_enums_match_headers() -> None:
    assert lib.SHUTDOWN_poweroff == xc.ShutdownReason.POWEROFF
    assert lib.SHUTDOWN_reboot == xc.ShutdownReason.REBOOT
    assert lib.SHUTDOWN_suspend == xc.ShutdownReason.SUSPEND
    assert lib.SHUTDOWN_crash == xc.ShutdownReason.CRASH
    assert lib.SHUTDOWN_watchdog == xc.ShutdownReason.WATCHDOG
    assert lib.SHUTDOWN_soft_reset == xc.ShutdownReason.SOFT_RESET
    assert xc.Scheduler.CREDIT == lib.XEN_SCHEDULER_CREDIT
    assert xc.Scheduler.CREDIT2 == lib.XEN_SCHEDULER_CREDIT2
    assert xc.Scheduler.RTDS == lib.XEN_SCHEDULER_RTDS
    assert xc.Scheduler.NULL == lib.XEN_SCHEDULER_NULL
    assert xc.Scheduler.ARINC653 == lib.XEN_SCHEDULER_ARINC653
    assert xc.Scheduler.CREDIT2.label == "credit2"


def test_physcaps_match_headers() -> None:
    for name, bit in xc._PHYSCAPS.items():
        assert getattr(lib, f"XEN_SYSCTL_PHYSCAP_{name}") == bit


def test_dominfo_flag_bits_match_headers() -> None:
    pairs = {"dying": "dying", "hvm": "hvm_guest", "shutdown": "shutdown", "paused": "paused",
             "blocked": "blocked", "running": "running", "debugged": "debugged",
             "xs_domain": "xs_domain", "hap": "hap"}
    for prop, hdr in pairs.items():
        d = _dom(flags=getattr(lib, f"XEN_DOMINF_{hdr}"))
        assert getattr(d, prop) is True
        others = [p for p in pairs if p != prop]
        assert not any(getattr(d, p) for p in others), prop
    assert lib.XEN_DOMINF_shutdownshift == 16 and lib.XEN_DOMINF_shutdownmask == 0xFF


def _dom(**kw: object) -> xc.DomainInfo:
    base = {"domid": 3, "flags": 0, "tot_pages": 25600, "max_pages": 25856,
            "outstanding_pages": 0, "shr_pages": 0, "paged_pages": 0, "shared_info_frame": 0,
            "cpu_time_ns": 0, "nr_online_vcpus": 1, "max_vcpu_id": 0, "ssidref": 0,
            "handle": bytes(range(16)), "cpupool": 0}
    base.update(kw)
    return xc.DomainInfo(**base)  # type: ignore[arg-type]


def test_dominfo_derived_values() -> None:
    d = _dom(flags=lib.XEN_DOMINF_shutdown | (lib.SHUTDOWN_crash << 16), outstanding_pages=3)
    assert d.shutdown_reason == 3
    assert d.current_memkb == 102400
    assert d.max_memkb == 103424
    assert d.outstanding_memkb == 12
    assert d.uuid == "00010203-0405-0607-0809-0a0b0c0d0e0f"
    # The reason bits are garbage unless the domain has shut down.
    assert _dom(flags=lib.SHUTDOWN_reboot << 16).shutdown_reason is None


@settings(max_examples=200)
@given(st.integers(1, 64).flatmap(
    lambda size: st.tuples(st.just(size), st.frozensets(st.integers(0, size * 8 - 1)))))
def test_cpumap_roundtrip(case: tuple[int, frozenset[int]]) -> None:
    size, cpus = case
    raw = xc.set_to_cpumap(cpus, size)
    assert len(raw) == size
    assert xc.cpumap_to_set(raw) == cpus


def test_cpumap_bit_order_is_libxenctrl_order() -> None:
    size = 4
    raw = ffi.new("uint8_t[]", size)
    for cpu in (0, 9, 31):
        # Same bit order as the library's own xc_cpumap_setcpu (byte cpu/8, bit cpu%8).
        raw[cpu // 8] |= 1 << (cpu % 8)
    assert xc.set_to_cpumap({0, 9, 31}, size) == bytes(ffi.buffer(raw, size))
    assert xc.cpumap_to_set(b"\x01\x02\x00\x80") == {0, 9, 31}


def test_cpumap_rejects_cpu_out_of_range() -> None:
    with pytest.raises(ValueError, match="cpu 16 is out of range"):
        xc.set_to_cpumap({16}, 2)


def test_grant_entry_layout_matches_header_struct() -> None:
    e = ffi.new("grant_entry_v1_t *")
    e.flags = lib.GTF_permit_access
    e.domid = 7
    e.frame = 0x12345
    assert xc.grant_entry_v1(7, 0x12345) == bytes(ffi.buffer(e))


def test_struct_layout_is_the_public_abi() -> None:
    # The vcpu context and cpu_user_regs layouts are Xen's stable x86_64 guest ABI.
    assert ffi.offsetof("vcpu_guest_context_x86_64_t", "user_regs") == 512 + 8
    assert ffi.offsetof("struct cpu_user_regs_x86_64", "rip") == 128
    assert ffi.sizeof("struct cpu_user_regs_x86_64") == 200
    assert ffi.sizeof("grant_entry_v1_t") == 8


class _FakeRelease:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def test_foreign_mapping_unmaps_once_even_on_error() -> None:
    mem = ffi.new("char[]", 2 * xc.PAGE_SIZE)
    rel = _FakeRelease()
    m = xc.ForeignMapping(rel, mem, 2 * xc.PAGE_SIZE)
    with pytest.raises(RuntimeError):
        with m as view:
            assert len(view) == 2 * xc.PAGE_SIZE and not view.readonly
            view[4096:4099] = b"abc"
            raise RuntimeError("boom")
    assert rel.calls == 1
    assert bytes(ffi.buffer(mem, 2 * xc.PAGE_SIZE))[4096:4099] == b"abc"
    with pytest.raises(ValueError):  # released: no use-after-unmap through the view
        view[0]
    m.close()
    assert rel.calls == 1


def test_seed_grant_table_writes_v1_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    mem = ffi.new("char[]", xc.PAGE_SIZE)
    rel = _FakeRelease()
    monkeypatch.setattr(xc.XenCtrl, "map_grant_table",
                        lambda self, domid: xc.ForeignMapping(rel, mem, xc.PAGE_SIZE))
    xc.XenCtrl().seed_grant_table(5, console=(0, 0xAAAA), xenstore=(0, 0xBBBB))
    table = ffi.cast("grant_entry_v1_t *", mem)
    assert (table[0].flags, table[0].domid, table[0].frame) == (1, 0, 0xAAAA)
    assert (table[1].flags, table[1].domid, table[1].frame) == (1, 0, 0xBBBB)
    assert table[2].flags == 0
    assert rel.calls == 1


def test_seed_grant_table_skips_self_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    mem = ffi.new("char[]", xc.PAGE_SIZE)
    monkeypatch.setattr(xc.XenCtrl, "map_grant_table",
                        lambda self, domid: xc.ForeignMapping(lambda: None, mem, xc.PAGE_SIZE))
    xc.XenCtrl().seed_grant_table(5, console=(5, 0xAAAA), xenstore=None)
    assert bytes(ffi.buffer(mem, 16)) == bytes(16)


def test_open_without_privcmd_is_one_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path) -> None:
    monkeypatch.setattr(xc, "PRIVCMD", str(tmp_path / "privcmd"))
    with pytest.raises(XenError) as ei:
        with xc.XenCtrl():
            pass
    assert ei.value.errno == errno.ENOENT
    assert "not running in a Xen dom0" in str(ei.value)
    assert "\n" not in str(ei.value)


def test_open_without_permission_says_root(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    dev = tmp_path / "privcmd"
    dev.touch()
    monkeypatch.setattr(xc, "PRIVCMD", str(dev))
    monkeypatch.setattr(xc.os, "access", lambda path, mode: False)
    with pytest.raises(XenError) as ei:
        xc.XenCtrl().open()
    assert ei.value.errno == errno.EACCES
    assert str(ei.value).endswith("must be run as root")


def test_calls_on_closed_handle_raise_xenerror() -> None:
    with pytest.raises(XenError, match="not open"):
        xc.XenCtrl().physinfo()


def test_check_maps_both_error_conventions(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(XenError) as ei:
        xc.XenCtrl._check("xc_version", -errno.EINVAL)
    assert ei.value.errno == errno.EINVAL and ei.value.errno_name == "EINVAL"
    assert xc.XenCtrl._check("x", 7) == 7


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        xc.CreateConfig(handle=b"short")
    with pytest.raises(ValueError):
        xc.CreateConfig(grant_version=3)
    with pytest.raises(ValueError):
        xc.VcpuContext(ctrlreg=(0,) * 4)
    assert xc.xen_pfn_to_cr3(0x1234) == 0x1234000
