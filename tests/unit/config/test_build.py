"""From settings to DomainConfig: each key read as xl reads it, bad values refused clearly."""

from __future__ import annotations

from uuid import UUID

import pytest

from xentool.config import ConfigError, loads
from xentool.config.model import CpuSet, DomainType, ShutdownAction
from xentool.config.validate import c_strtol

BASE = 'name = "g"\nkernel = "/k"\n'


def cfg(extra: str = "", overrides=()):
    return loads(BASE + extra, "t.cfg", overrides)


def error(extra: str, base: str = BASE) -> str:
    with pytest.raises(ConfigError) as ei:
        loads(base + extra, "t.cfg")
    return str(ei.value)


@pytest.mark.parametrize("text,value", [
    ("0", 0), ("42", 42), ("-7", -7), ("+7", 7), (" 12", 12), ("0x1f", 31), ("0X1F", 31),
    ("010", 8), ("0", 0), ("9223372036854775807", 2**63 - 1),
])
def test_c_strtol(text: str, value: int) -> None:
    assert c_strtol(text) == value


@pytest.mark.parametrize("text", ["", "x", "12x", "08", "1.5", "0x", "12 ", "--1"])
def test_c_strtol_rejects(text: str) -> None:
    assert c_strtol(text) is None


def test_c_strtol_range() -> None:
    with pytest.raises(OverflowError):
        c_strtol("9223372036854775808")


def test_defaults_match_libxl() -> None:
    c = cfg()
    assert (c.name, c.kernel, c.type, c.uuid) == ("g", "/k", DomainType.PV, None)
    assert (c.memory, c.maxmem, c.vcpus, c.maxvcpus) == (32, 32, 1, 1)
    assert (c.on_poweroff, c.on_reboot, c.on_watchdog, c.on_crash, c.on_soft_reset) == (
        ShutdownAction.DESTROY, ShutdownAction.RESTART, ShutdownAction.DESTROY,
        ShutdownAction.DESTROY, ShutdownAction.SOFT_RESET)
    assert c.disks == () and c.vifs == () and c.cmdline is None and c.warnings == ()


@pytest.mark.parametrize("extra,cmdline", [
    ('root = "/dev/xvda1"\nextra = "quiet"\n', "root=/dev/xvda1 quiet"),
    ('root = "/dev/xvda1"\n', "root=/dev/xvda1"),
    ('extra = "quiet"\n', "quiet"),
    ('cmdline = "c"\nroot = "r"\nextra = "e"\n', "c"),
])
def test_cmdline_from_cmdline_root_extra(extra: str, cmdline: str) -> None:
    assert cfg(extra).cmdline == cmdline


def test_cmdline_wins_with_a_warning() -> None:
    c = cfg('cmdline = "c"\nextra = "e"\n')
    assert c.warnings == ("t.cfg:3:1: warning: 'root' and 'extra' are ignored in favour of "
                          "'cmdline'",)


def test_memory_and_vcpus() -> None:
    c = cfg("memory = 512\nmaxmem = 1024\nvcpus = 2\nmaxvcpus = 8\n")
    assert (c.memory, c.maxmem, c.memory_kib, c.maxmem_kib) == (512, 1024, 512 << 10, 1 << 20)
    assert (c.vcpus, c.maxvcpus) == (2, 8)
    c = cfg("memory = 300\nvcpus = 3\n")
    assert (c.memory, c.maxmem, c.vcpus, c.maxvcpus) == (300, 300, 3, 3)


def test_numbers_from_strings_hex_and_octal_like_xl() -> None:
    c = cfg('memory = "0x100"\nvcpus = 010\n')
    assert (c.memory, c.vcpus) == (256, 8)
    assert c.warnings == ("t.cfg:4:9: warning: vcpus = 010 is octal (8), as in C",)


def test_type_is_matched_by_prefix_like_xl() -> None:
    assert cfg('type = "p"\n').type is DomainType.PV
    assert cfg('builder = "generic"\n').type is DomainType.PV


def test_uuid() -> None:
    u = "5e1c1a0b-6a3f-4e6b-9b7e-2f1f3c4d5e6f"
    assert cfg(f'uuid = "{u}"\n').uuid == UUID(u)


def test_firmware_pvgrub_sets_kernel() -> None:
    c = loads('name = "g"\nfirmware = "pvgrub64"\n', "t.cfg")
    assert c.kernel == "/usr/lib/xen-4.17/boot/pvgrub64.bin"


def test_cpus_string_applies_to_every_vcpu_list_per_vcpu() -> None:
    c = cfg('vcpus = 2\nmaxvcpus = 3\ncpus = "0-3,^1,all,^2"\n')
    assert c.cpus.per_vcpu == (CpuSet(True, frozenset(), frozenset({2})),) * 3
    assert c.cpus.per_vcpu[0].resolve(4) == frozenset({0, 1, 3})
    c = cfg('vcpus = 2\ncpus = ["1", "2-3", "5"]\n')
    assert [s.resolve(8) for s in c.cpus.per_vcpu] == [frozenset({1}), frozenset({2, 3})]
    assert c.cpus.from_list


def test_disks_and_vifs() -> None:
    c = cfg("disk = [ 'phy:/dev/a,xvda,w', ',hdc:cdrom,r' ]\n"
            "vif = [ 'bridge=xenbr0', 'mac=00:16:3e:00:00:02' ]\n")
    assert [d.vdev for d in c.disks] == ["xvda", "hdc"]
    assert [(v.devid, v.mac_generated) for v in c.vifs] == [(0, True), (1, False)]


def test_overrides_win_and_append() -> None:
    c = cfg("memory = 128\nvif = ['bridge=a']\n", ["memory=256", "vif+=['bridge=b']"])
    assert c.memory == 256 and [v.bridge for v in c.vifs] == ["a", "b"]


def test_keys_xl_ignores_for_pv_and_unknown_keys_are_warned_with_their_line() -> None:
    c = cfg("viridian = 1\nmy_key = 'x'\nvif2 = []\n")
    assert c.warnings == (
        "t.cfg:3:1: warning: 'viridian' does not apply to PV guests and is ignored "
        "(as xl does)",
        "t.cfg:4:1: warning: unknown key 'my_key' is ignored (xl ignores it too)",
        "t.cfg:5:1: warning: 'vif2' is ignored: vif2 is obsolete; xl ignores it (use vif)",
    )


@pytest.mark.parametrize("text, message", [
    ("localtime = 1\n", "t.cfg:3:1: 'localtime' is not supported by xentool: the guest's "
                        "time offset is not applied yet"),
    ('tsc_mode = "native_paravirt"\n', "t.cfg:3:12: tsc_mode native_paravirt (PVRDTSCP) has "
                                       "been removed"),
    ('tsc_mode = "fast"\n', "t.cfg:3:12: invalid value 'fast' for tsc_mode"),
    ("tsc_mode = 4\n", "t.cfg:3:12: tsc_mode = 4 must be at most 3"),
    ("nomigrate = 1\n", "t.cfg:3:1: 'nomigrate' is not supported by xentool: only "
                        "nomigrate = 0"),
    ("e820_host = 1\n", "t.cfg:3:1: 'e820_host' is not supported"),
    ('pci = ["01:00.0"]\n', "t.cfg:3:1: 'pci' is not supported by xentool: PCI passthrough"),
])
def test_keys_xl_would_apply_and_xentool_cannot_are_refused_by_name(text: str,
                                                                     message: str) -> None:
    with pytest.raises(ConfigError) as info:
        cfg(text)
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize("extra,message", [
    ('type = "hvm"\n', "t.cfg:3:8: type 'hvm' is not supported: xentool builds PV and PVH "
                       "guests only (for now)"),
    ('builder = "hvm"\n', "t.cfg:3:11: type 'hvm' is not supported: xentool builds PV and "
                          "PVH guests only (for now)"),
    ('type = "pv"\nbuilder = "hvm"\n', "t.cfg:4:11: 'builder' contradicts 'type'"),
    ('type = "xen"\n', "t.cfg:3:8: type = 'xen' is not 'pv', 'pvh' or 'hvm'"),
    ('bootloader = "pygrub"\n', "t.cfg:3:14: bootloader 'pygrub' is not supported: xentool "
                                "does not run bootloaders such as pygrub; set kernel= (and "
                                "ramdisk=, cmdline=) to files in dom0"),
    ('vfb = [ "vnc=1" ]\n', "t.cfg:3:7: 'vfb' (virtual framebuffer) is not supported by "
                            "xentool; remove it or set vfb = []"),
    ("memory = 0\n", "t.cfg:3:10: memory = 0 must be at least 1"),
    ("memory = '1g'\n", "t.cfg:3:10: memory = '1g' is not a number"),
    ("memory = [1]\n", "t.cfg:3:10: 'memory' must be a single value, not a list"),
    ("memory += 1\n", "t.cfg:3:1: 'memory +=' cannot be used with a number"),
    ("memory = 99999999999999999999\n", "t.cfg:3:10: memory = 99999999999999999999 is out "
                                        "of range"),
    ("memory = 512\nmaxmem = 256\n", "t.cfg:4:1: memory (512 MiB) is more than maxmem "
                                     "(256 MiB)"),
    ("vcpus = 4\nmaxvcpus = 2\n", "t.cfg:4:1: maxvcpus (2) is less than vcpus (4)"),
    ("vcpus = 0\n", "t.cfg:3:9: vcpus = 0 must be at least 1"),
    ("cpu_weight = 0\n", "t.cfg:3:14: cpu_weight = 0 must be at least 1"),
    ("cap = '-1'\n", "t.cfg:3:7: cap = '-1' must be at least 0"),
    ('on_crash = "reboot"\n', "t.cfg:3:12: on_crash = 'reboot' is not one of: destroy, "
                              "restart, rename-restart, preserve, coredump-destroy, "
                              "coredump-restart, soft-reset"),
    ('uuid = "1234"\n', "t.cfg:3:8: uuid = '1234' is not a UUID "
                        "(xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"),
    ('disk = "phy:/dev/a,xvda,w"\n', "t.cfg:3:8: 'disk' must be a list, e.g. disk = [ "
                                     "'...' ]"),
    ("disk = [ ['x'] ]\n", "t.cfg:3:10: 'disk' items must be strings, not lists"),
    ("disk = [ 'phy:/a,xvda,w', 'phy:/b,xvda,w' ]\n", "t.cfg:3:27: disk 1: vdev 'xvda' is "
                                                     "already used by disk 0"),
    ("disk = [ 'vdev=xvda,format=zip,target=/x' ]\n",
     "t.cfg:3:21: disk 0: unknown value for format: 'zip' in disk spec "
     "'vdev=xvda,format=zip,target=/x'"),
    ("vif = [ 'bridge=b,devid=1', 'bridge=c' ]\n", "t.cfg:3:29: vif 1: devid 1 is already "
                                                  "used by vif 0"),
    ("vif = [ 'bridge=b, mtu=x' ]\n", "t.cfg:3:20: vif 0: mtu='x' is not a number in vif "
                                     "spec 'bridge=b, mtu=x'"),
    ('cpus = "node:0"\nvcpus = 1\n', "t.cfg:3:8: cpus item 'node:0': NUMA node ranges are "
                                     "not supported by xentool yet; list the pcpus"),
    ('cpus = "3-1"\nvcpus = 1\n', "t.cfg:3:8: cpus item '3-1' is not a pcpu or range (e.g. "
                                  "3, 0-3, ^2)"),
    ('cpus = "^all"\nvcpus = 1\n', "t.cfg:3:8: cpus: '^' and 'all' cannot be combined"),
    ('cpus = "0-4096"\nvcpus = 1\n', "t.cfg:3:8: cpus item '0-4096' goes beyond pcpu 4095 "
                                     "(Xen's limit)"),
    ('name = "123"\n', "t.cfg:3:8: name '123' is all digits and would read as a domain id"),
    ('firmware = "pvgrub64"\n', "t.cfg:3:12: both 'kernel' and 'firmware' are set"),
])
def test_semantic_errors(extra: str, message: str) -> None:
    assert error(extra) == message


def test_missing_name_and_kernel() -> None:
    assert error("", 'kernel = "/k"\n') == "t.cfg: 'name' must be set (the domain name)"
    assert error("", 'name = "g"\n') == ("t.cfg: 'kernel' must be set (xentool does not run "
                                         "bootloaders)")


@pytest.mark.parametrize("text, mode, warned", [
    ('tsc_mode = "always_emulate"\n', 1, False), ('tsc_mode = "Native"\n', 2, False),
    ('tsc_mode = "default"\n', 0, False), ("tsc_mode = 1\n", 1, True), ("", None, False),
])
def test_tsc_mode_as_xl_reads_it(text: str, mode: int | None, warned: bool) -> None:
    c = cfg(text)
    assert c.tsc_mode == mode
    assert any("tsc_mode as an integer is deprecated" in w for w in c.warnings) == warned


def test_cpus_without_vcpus_is_ignored_as_by_xl_and_said() -> None:
    c = loads("name='g'\nkernel='/k'\ncpus='1'\n", "t.cfg")
    assert c.cpus is not None and c.cpus.per_vcpu == ()
    assert c.warnings == ("t.cfg:3:1: warning: 'cpus' has no effect without vcpus or "
                          "maxvcpus (xl ignores it too)",)
