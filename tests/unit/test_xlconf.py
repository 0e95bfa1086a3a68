"""xl.conf (xentool.config.xlconf), the freemem steps and global lock (xentool.balloon),
xl's global options and verb prefixes (xentool.cli)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from xentool.balloon import MemoryShortage, freemem, global_lock, need_memkb
from xentool.cli import XL_DRYRUN_VERBS, XL_VERBS, AmbiguousVerb, main, resolve_verb
from xentool.config import ConfigError, loads
from xentool.config.xlconf import (
    APPLIED,
    GLOBAL_KEYS,
    REFUSE,
    WARN,
    GlobalConfig,
    apply_global_defaults,
    auto_autoballoon,
    global_mask,
    load_global_config,
    parse_global_config,
)
from xentool.settings import vcpu_affinities

CFG = 'name = "g"\nkernel = "/k"\nvcpus = 2\n'


def test_table_names_every_key_xl_reads_once_with_a_reason() -> None:
    xl_keys = {
        "autoballoon", "run_hotplug_scripts", "lockfile", "vifscript", "vif.default.script",
        "defaultbridge", "vif.default.bridge", "vif.default.gatewaydev", "vif.default.backend",
        "output_format", "blkdev_start", "claim_mode", "remus.default.netbufscript",
        "colo.default.proxyscript", "max_grant_frames", "max_maptrack_frames",
        "max_grant_version", "vm.cpumask", "vm.hvm.cpumask", "vm.pv.cpumask", "domid_policy",
    }
    assert set(GLOBAL_KEYS) == xl_keys
    for key, (handling, why) in GLOBAL_KEYS.items():
        assert handling in (APPLIED, WARN, REFUSE) and why, key


def test_defaults_are_xls() -> None:
    g = parse_global_config("", "xl.conf")
    assert g == GlobalConfig(source="xl.conf")
    assert (g.autoballoon, g.lockfile, g.claim_mode, g.output_format, g.run_hotplug_scripts) \
        == ("auto", "/var/lock/xl", True, "json", True)
    assert not g.warnings and not g.refusals


def test_values_are_read() -> None:
    g = parse_global_config(
        'autoballoon = "off"\nlockfile = "/run/l"\nvif.default.script = "vif-nat"\n'
        'vif.default.bridge = "br1"\nvif.default.gatewaydev = "eth1"\n'
        'vif.default.backend = "0"\noutput_format = "sxp"\nclaim_mode = 0\n'
        'max_grant_frames = 64\nmax_maptrack_frames = 1024\nmax_grant_version = 1\n'
        'vm.cpumask = "0-3"\nvm.pv.cpumask = "^1"\n', "xl.conf")
    assert (g.autoballoon, g.lockfile, g.vif_script, g.vif_bridge, g.vif_gatewaydev,
            g.vif_backend, g.output_format, g.claim_mode, g.max_grant_frames,
            g.max_maptrack_frames, g.max_grant_version, g.vm_cpumask, g.vm_pv_cpumask) == (
        "off", "/run/l", "vif-nat", "br1", "eth1", "0", "sxp", False, 64, 1024, 1, "0-3",
        "^1")
    assert not g.warnings and not g.refusals


def test_deprecated_spellings_warn_like_xl_and_lose_to_the_new_ones() -> None:
    g = parse_global_config('vifscript = "a"\ndefaultbridge = "b"\n', "xl.conf")
    assert (g.vif_script, g.vif_bridge) == ("a", "b")
    assert g.warnings == (
        "xl.conf:1:1: warning: the global config option vifscript is deprecated, please "
        "switch to vif.default.script",
        "xl.conf:2:1: warning: the global config option defaultbridge is deprecated, please "
        "switch to vif.default.bridge",
    )
    g = parse_global_config('defaultbridge = "b"\nvif.default.bridge = "c"\n', "xl.conf")
    assert g.vif_bridge == "c"


def test_keys_xentool_cannot_apply_warn_or_are_refused_by_name() -> None:
    g = parse_global_config('blkdev_start = "xvdb"\nfoo = 1\n'
                            'remus.default.netbufscript = "x"\n', "xl.conf")
    assert [w.split(": warning: ")[1].split(" ")[0] for w in g.warnings] == [
        "'blkdev_start'", "unknown", "'remus.default.netbufscript'"]
    g.check_applicable()  # warnings only
    for text, key in (("run_hotplug_scripts = 0\n", "run_hotplug_scripts"),
                      ('domid_policy = "random"\n', "domid_policy"),
                      ("max_grant_version = 3\n", "max_grant_version")):
        g = parse_global_config(text, "xl.conf")
        with pytest.raises(ConfigError, match=rf"^xl.conf:1:\d+: {key}: "):
            g.check_applicable()
    parse_global_config("run_hotplug_scripts = 1\n", "xl.conf").check_applicable()


@pytest.mark.parametrize(("text", "message"), [
    ('autoballoon = "maybe"\n', "xl.conf:1:15: autoballoon = 'maybe' is not one of"),
    ('output_format = "xml"\n', "xl.conf:1:17: output_format = 'xml' is not one of"),
    ("max_grant_frames = \"-1\"\n", "xl.conf:1:20: max_grant_frames = '-1' must be at least 0"),
    ('vm.cpumask = "0-x"\n', "xl.conf:1:14: vm.cpumask: invalid pcpu range: 0-x"),
    ('lockfile = "a\n', "xl.conf:1:12: unterminated string"),
])
def test_bad_values_are_errors_with_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_global_config(text, "xl.conf")
    assert str(ei.value).startswith(message)


def test_autoballoon_auto_follows_dom0_mem_like_xl() -> None:
    assert auto_autoballoon("console=com1")
    assert not auto_autoballoon("dom0_mem=1024M,max:1024M dom0_max_vcpus=2")
    assert not auto_autoballoon("x dom0_mem=min:512M,max:10%")
    assert auto_autoballoon("dom0_mem_x=1G")
    g = parse_global_config("autoballoon = 1\n", "xl.conf")
    assert g.autoballoon_enabled("dom0_mem=1G")
    assert not parse_global_config('autoballoon = "off"\n', "x").autoballoon_enabled("")
    assert not GlobalConfig().autoballoon_enabled("dom0_mem=1G")


def test_file_is_found_through_the_environment(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "xl.conf"
    monkeypatch.setenv("XENTOOL_XL_CONF", str(conf))
    assert load_global_config() == GlobalConfig(source=str(conf))  # missing: xl's defaults
    conf.write_bytes(b'vif.default.bridge = "br9"\r\n')
    g = load_global_config()
    assert g.vif_bridge == "br9"
    assert g.warnings == (f"{conf}: warning: CRLF line endings read as LF (xl refuses this "
                          "file)",)


def test_defaults_fill_in_what_the_guest_config_leaves_out() -> None:
    g = GlobalConfig(vif_bridge="br1", vif_script="vif-nat", vif_gatewaydev="eth1",
                     max_grant_frames=7, max_maptrack_frames=9)
    cfg = loads(CFG + "vif = [ '', 'bridge=xenbr0,script=vif-route' ]\n"
                "max_grant_frames = 3\n")
    out = apply_global_defaults(cfg, g)
    assert [(v.bridge, v.script, v.gatewaydev) for v in out.vifs] == [
        ("br1", "vif-nat", "eth1"), ("xenbr0", "vif-route", "eth1")]
    assert (out.max_grant_frames, out.max_maptrack_frames) == (3, 9)
    assert apply_global_defaults(cfg, GlobalConfig()) == cfg


def test_masks_restrict_hard_affinity_as_xl_applies_them() -> None:
    g = parse_global_config('vm.cpumask = "0-2"\nvm.pv.cpumask = "1-3"\n', "x")
    mask = global_mask(g, 4)
    assert mask == {1, 2}
    assert global_mask(GlobalConfig(), 4) is None
    assert global_mask(parse_global_config('vm.cpumask = "all"\n', "x"), 4) is None
    # No cpus: every vCPU gets the mask; cpus given: intersected.
    plain = loads(CFG)
    assert [(a.vcpu, a.hard) for a in vcpu_affinities(plain, 2, 4, mask)] == [
        (0, {1, 2}), (1, {1, 2})]
    pinned = loads(CFG + 'cpus = ["0-1"]\n')
    assert [(a.vcpu, a.hard) for a in vcpu_affinities(pinned, 2, 4, mask)] == [(0, {1})]
    assert vcpu_affinities(plain, 2, 4, None) == []
    with pytest.raises(Exception, match="vcpu hard affinity map is empty"):
        vcpu_affinities(loads(CFG + 'cpus = "3"\n'), 2, 4, mask)


# -- freemem and the global lock ---------------------------------------------------------------


class FakeHost:
    """Free memory grows by what dom0 gives back, one step per wait."""

    def __init__(self, free_kib: int, dom0_kib: int, balloon: bool = True) -> None:
        self.free = free_kib
        self.dom0 = dom0_kib
        self.balloon = balloon
        self.nodes = {"/local/domain/0/memory/target": str(dom0_kib),
                      "/local/domain/0/memory/static-max": str(dom0_kib)}

    # XenCtrl
    def physinfo(self) -> SimpleNamespace:
        return SimpleNamespace(free_pages=self.free // 4, scrub_pages=0)

    def domain_info(self, domid: int) -> SimpleNamespace:
        target = int(self.nodes["/local/domain/0/memory/target"])
        if self.balloon and self.dom0 > target:
            self.free += self.dom0 - target
            self.dom0 = target
        return SimpleNamespace(current_memkb=self.dom0, outstanding_memkb=0)

    # Store
    def transaction(self) -> FakeHost:
        return self

    def __enter__(self) -> FakeHost:
        return self

    def __exit__(self, *a: object) -> None:
        pass

    def get(self, path: str) -> str | None:
        return self.nodes.get(path)

    def write(self, path: str, value: str) -> None:
        self.nodes[path] = value


def test_need_memory_is_libxls_for_pv() -> None:
    assert need_memkb(32 * 1024) == 34 * 1024
    assert need_memkb(2047) == 4096


def test_freemem_lowers_dom0_target_by_the_shortfall() -> None:
    h = FakeHost(free_kib=10 * 1024, dom0_kib=1024 * 1024)
    freemem(h, h, 50 * 1024, sleep=lambda s: None)  # type: ignore[arg-type]
    assert h.nodes["/local/domain/0/memory/target"] == str(1024 * 1024 - 40 * 1024)
    assert h.nodes["/vm/00000000-0000-0000-0000-000000000000/memory"] == str(1024 - 40)
    assert h.free == 50 * 1024
    # Enough free: nothing touched.
    h = FakeHost(free_kib=100 * 1024, dom0_kib=1024 * 1024)
    freemem(h, h, 50 * 1024, sleep=lambda s: None)  # type: ignore[arg-type]
    assert "/vm/00000000-0000-0000-0000-000000000000/memory" not in h.nodes


def test_freemem_gives_up_like_xl() -> None:
    # dom0 never gives memory back: 10 s without progress, then xl's message.
    h = FakeHost(free_kib=0, dom0_kib=1024 * 1024, balloon=False)
    slept: list[float] = []
    with pytest.raises(MemoryShortage, match=r"^failed to free memory for the domain$") as ei:
        freemem(h, h, 50 * 1024, sleep=slept.append)  # type: ignore[arg-type]
    assert ei.value.exit_code == 3
    assert sum(slept) == 12  # first sample, then 10 s without progress
    # dom0 cannot go under libxl's minimum.
    h = FakeHost(free_kib=0, dom0_kib=200 * 1024)
    with pytest.raises(MemoryShortage):
        freemem(h, h, 100 * 1024, sleep=lambda s: None)  # type: ignore[arg-type]
    assert h.nodes["/local/domain/0/memory/target"] == str(200 * 1024)


def test_global_lock_excludes_another_process(tmp_path: Path) -> None:
    lock = tmp_path / "xl"
    probe = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY)\n"
             "try:\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n"
             "    sys.exit(1)\n")
    with global_lock(str(lock)):
        assert (os.stat(lock).st_mode & 0o777) == 0o200
        assert subprocess.run([sys.executable, "-c", probe, str(lock)]).returncode == 1
    assert subprocess.run([sys.executable, "-c", probe, str(lock)]).returncode == 0
    # Held by another process: we wait for it.
    fd = os.open(lock, os.O_WRONLY)
    holder = subprocess.Popen([sys.executable, "-c",
                               "import fcntl, os, sys, time\nfd = os.open(sys.argv[1], "
                               "os.O_WRONLY)\nfcntl.lockf(fd, fcntl.LOCK_EX)\nprint(1, "
                               "flush=True)\ntime.sleep(1)\n", str(lock)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "1\n"
    start = time.monotonic()
    with global_lock(str(lock)):
        assert time.monotonic() - start > 0.5
    holder.wait()
    os.close(fd)
    with pytest.raises(Exception, match="cannot open the lockfile"):
        with global_lock(str(tmp_path / "no" / "dir")):
            pass



# -- CLI: prefixes and global options ----------------------------------------------------------


def test_prefixes_resolve_like_xls_cmdtable_lookup() -> None:
    assert resolve_verb("li") == "list"
    assert resolve_verb("list") == "list"
    assert resolve_verb("i") == "info"  # xl's table decides, whatever xentool adds
    assert resolve_verb("sched-credit") == "sched-credit"  # exact beats prefix
    assert resolve_verb("config-c") == "config-check"  # xentool's own, where xl has none
    assert resolve_verb("zzz") is None
    for word in ("c", "vcpu-", "sched-c", "cpupool"):
        with pytest.raises(AmbiguousVerb):
            resolve_verb(word)
    assert set(XL_VERBS) >= XL_DRYRUN_VERBS and len(XL_VERBS) == len(set(XL_VERBS))


def test_ambiguous_prefix_and_dry_run_refusal_use_xls_words(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vcpu-"]) == 1
    assert capsys.readouterr().err == "command not implemented\n"
    assert main(["-N", "list"]) == 1
    assert capsys.readouterr().err == "command does not implement -N (dryrun) option\n"
    assert main(["-N", "block-attach", "d", "file:/x,xvda,w"]) == 2
    assert "block-attach: -N (dry run) is not supported yet" in capsys.readouterr().err


def test_dry_run_create_prints_and_touches_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "g.cfg"
    cfg.write_text(CFG + "vif = [ 'mac=00:16:3e:00:00:01' ]\n")
    conf = tmp_path / "xl.conf"
    conf.write_text('vif.default.bridge = "br7"\n')
    env = {**os.environ, "XENTOOL_XL_CONF": str(conf)}
    for argv in (["-N", "create", str(cfg)], ["create", "-n", str(cfg)],
                 ["-vfNtT", "cr", str(cfg)]):
        r = subprocess.run([sys.executable, "-m", "xentool", *argv], capture_output=True,
                           text=True, env=env)
        assert r.returncode == 0, r.stderr
        assert r.stderr == f"Parsing config from {cfg}\n"
        assert '"bridge": "br7"' in r.stdout
    conf.write_text('output_format = "sxp"\n')
    r = subprocess.run([sys.executable, "-m", "xentool", "-N", "create", str(cfg)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "output_format" in r.stderr and r.stdout == ""
    conf.write_text("run_hotplug_scripts = 0\n")
    r = subprocess.run([sys.executable, "-m", "xentool", "-N", "create", str(cfg)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 1
    assert r.stderr.startswith(f"xentool: {conf}:1:23: run_hotplug_scripts: ")


def test_timestamps_prefix_log_lines() -> None:
    code = ("import logging, sys\nfrom xentool.cli import _configure_logging\n"
            "_configure_logging(logging, 0, True)\nlogging.getLogger('x').warning('hi')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    date, clock, _tz, pid, rest = r.stderr.split(" ", 4)
    assert len(date) == 10 and len(clock) == 8 and pid.startswith("[")
    assert rest == "xentool: hi\n"


def test_crlf_configs_are_read_with_one_warning(tmp_path: Path) -> None:
    cfg = tmp_path / "w.cfg"
    cfg.write_bytes(CFG.replace("\n", "\r\n").encode())
    r = subprocess.run([sys.executable, "-m", "xentool", "config-check", str(cfg)],
                       capture_output=True, text=True)
    assert r.returncode == 0
    assert r.stderr == (f"xentool: {cfg}: warning: CRLF line endings read as LF (xl "
                        "refuses this file)\n")
