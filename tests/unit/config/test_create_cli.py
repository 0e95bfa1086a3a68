"""`xentool create -n` and `xentool config-check` from the command line (no Xen needed)."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from xentool.cli import main
from xentool.cli.commands.create import split_create_args
from xentool.config.xlconf import GlobalConfig
from xentool.errors import UsageError

DATA = Path(__file__).resolve().parents[2] / "data" / "xlcfg"
FULL = str(DATA / "pv-full.cfg")


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xentool", *argv], capture_output=True,
                          text=True, timeout=60)


def test_dry_run_prints_libxl_json() -> None:
    r = run("create", "-n", FULL)
    assert r.returncode == 0, r.stderr
    assert r.stderr == f"Parsing config from {FULL}\n"
    j = json.loads(r.stdout)
    assert j["c_info"] == {"type": "pv", "name": "full-guest",
                           "uuid": "5e1c1a0b-6a3f-4e6b-9b7e-2f1f3c4d5e6f"}
    b = j["b_info"]
    assert (b["max_vcpus"], b["avail_vcpus"], b["max_memkb"], b["target_memkb"]) == \
        (4, [0, 1], 1024 * 1024, 768 * 1024)
    assert b["vcpu_hard_affinity"] == [[0, 1]] * 4
    assert b["sched_params"] == {"weight": 512, "cap": 150}
    assert (b["kernel"], b["ramdisk"], b["cmdline"]) == \
        ("/srv/xen/vmlinuz", "/srv/xen/initrd.img", "console=hvc0 root=/dev/xvda1 ro")
    assert (b["max_grant_frames"], b["max_maptrack_frames"], b["event_channels"]) == \
        (64, 1024, 2047)
    assert b["disable_migrate"] == "False" and b["type.pv"] == {"e820_host": "False"}
    assert j["disks"] == [{"pdev_path": "/dev/vg0/full-root", "vdev": "xvda",
                           "format": "raw", "readwrite": 1}]
    assert j["nics"] == [{"devid": 0, "mac": "00:16:3e:00:00:01", "bridge": "xenbr0",
                          "ifname": "full0", "script": "vif-bridge"}]
    assert (j["on_reboot"], j["on_watchdog"], j["on_crash"], j["on_soft_reset"]) == \
        ("restart", "preserve", "coredump_restart", "soft_reset")
    assert "on_poweroff" not in j  # destroy is libxl's default and is not printed


def test_dry_run_overrides_and_option_order_like_xl() -> None:
    r = run("create", FULL, "-q", "-n", "memory=900", 'name="renamed"')
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    j = json.loads(r.stdout)
    assert j["c_info"]["name"] == "renamed" and j["b_info"]["target_memkb"] == 900 * 1024


def test_dry_run_with_dev_null_takes_everything_from_overrides() -> None:
    r = run("create", "-qn", "/dev/null", 'name="cli"', 'kernel="/k"', "memory=64")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert (j["c_info"]["name"], j["b_info"]["kernel"], j["b_info"]["max_memkb"]) == \
        ("cli", "/k", 64 * 1024)
    assert len(j["c_info"]["uuid"]) == 36  # a fresh random one, as xl prints


def test_bad_config_is_one_located_error_with_excerpt_and_exit_1() -> None:
    path = str(DATA / "bad" / "xl-rejects-unquoted.cfg")
    r = run("create", "-n", path)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr == (f"Parsing config from {path}\n"
                        f"xentool: {path}:1:8: unquoted string 'guest': strings must be "
                        "quoted\n"
                        "    name = guest\n"
                        "           ^\n")


def test_bad_override_is_located_on_the_command_line() -> None:
    r = run("create", "-qn", FULL, "memory=lots")
    assert r.returncode == 1
    assert r.stderr.startswith("xentool: <command line>:1:8: unquoted string 'lots'")


def test_warnings_go_to_stderr() -> None:
    path = str(DATA / "pool-and-unknown.cfg")
    r = run("create", "-qn", path)
    assert r.returncode == 0
    assert r.stderr.splitlines() == [
        f"xentool: {path}:5:1: warning: 'viridian' does not apply to PV guests and is ignored "
        "(as xl does)",
        f"xentool: {path}:6:1: warning: unknown key 'my_custom.key' is ignored (xl ignores "
        "it too)",
    ]


def test_usage_errors() -> None:
    with pytest.raises(UsageError, match="no config file given"):
        split_create_args(None, ["a=1"])
    with pytest.raises(UsageError, match="more than one config file"):
        split_create_args(None, ["a.cfg", "b.cfg"])
    assert split_create_args("f.cfg", ["a=1", "b=[2]"]) == ("f.cfg", ["a=1", "b=[2]"])
    assert split_create_args(None, ["x=1", "g.cfg"]) == ("g.cfg", ["x=1"])


def test_create_hands_the_config_to_the_library(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[tuple[object, ...]] = []

    def create(config, *, paused: bool, **kw) -> int:
        calls.append(("create", config.name, paused, kw))
        return 7

    def plan_document(config, prep) -> dict[str, object]:
        calls.append(("plan", config.name))
        return {"name": config.name}

    monkeypatch.setitem(sys.modules, "xentool.create",
                        types.SimpleNamespace(create=create, Source=lambda p, o: (p, o),
                                              prepare=lambda config: None,
                                              plan_document=plan_document))
    import xentool.console
    monkeypatch.setattr(xentool.console, "require_client", lambda: None)
    monkeypatch.setattr(xentool.console, "console_before_start",
                        lambda domid, *, unpause: calls.append(("console", domid, unpause)))
    import xentool.host
    monkeypatch.setattr(xentool.host.Domain, "watch",
                        lambda self, *, background: calls.append(("watch", self.domid,
                                                                  background)))
    assert main(["create", "-q", "-p", "-c", FULL, "memory=512"]) == 0
    assert main(["create", "-q", "--plan", FULL]) == 0
    # The file and the overrides go along, so the monitor can create the domain again; with
    # -c the domain is created paused and the console lets it go (here: -p, so it does not);
    # --plan computes the plan and creates nothing.  Without -e a watcher is started for
    # the domain's on_* actions, as xl forks one.
    for c in calls:
        if c[0] == "create":  # xl.conf goes along (none on this host: xl's defaults)
            gconf = c[3].pop("gconf")
            assert gconf == GlobalConfig(source=gconf.source)
            assert c[3].pop("ignore_masks") is False
    assert calls == [("create", "full-guest", True,
                      {"source": (FULL, ("memory=512",)), "handle_signals": True}),
                     ("watch", 7, True),
                     ("console", 7, False),
                     ("plan", "full-guest")]
    monkeypatch.setattr(xentool.host.Domain, "unpause",
                        lambda self: calls.append(("unpause", self.domid)))
    calls.clear()
    assert main(["create", "-q", "-e", FULL]) == 0
    assert main(["create", "-q", "-F", FULL]) == 0
    assert [c[0] for c in calls] == ["create", "create", "watch"]
    assert [c[2] for c in calls[:2]] == [False, False]  # runs at once: nothing to wait for
    assert calls[2] == ("watch", 7, False)
    # Plain create: paused until the monitor is up, so a guest that dies at once is handled.
    calls.clear()
    assert main(["create", "-q", FULL]) == 0
    assert [c[:3] for c in calls] == [("create", "full-guest", True), ("watch", 7, True),
                                      ("unpause", 7)]
    assert json.loads(capsys.readouterr().out) == {"name": "full-guest"}


def test_config_check_reports_every_file() -> None:
    good = str(DATA / "pv-minimal.cfg")
    bad1 = str(DATA / "bad" / "xl-rejects-lone-cr.cfg")
    bad2 = str(DATA / "bad" / "xentool-rejects-hvm.cfg")
    r = run("config-check", good, bad1, bad2)
    assert r.returncode == 1
    assert r.stdout == f"{good}: ok (minimal)\n1 of 3 config files ok\n"
    errors = [line for line in r.stderr.splitlines() if line.startswith("xentool:")]
    assert errors == [
        f"xentool: {bad1}:1:12: carriage return without a line feed (lines end with LF or "
        "CRLF)",
        f"xentool: {bad2}:2:8: type 'hvm' is not supported: xentool builds PV and PVH "
        "guests only (for now)",
    ]
    assert "Traceback" not in r.stderr


# Corpus files xl accepts whose devices need qemu or a driver domain: config-check and
# create refuse them (create -n still prints them, as xl create -n does).
NEEDS_QEMU = {"disk-keyvalue.cfg", "disk-legacy-prefixes.cfg", "vif-doc-examples.cfg"}


def test_config_check_whole_corpus_is_ok() -> None:
    files = sorted(str(p) for p in DATA.glob("*.cfg") if p.name not in NEEDS_QEMU)
    r = run("config-check", "-q", "-W", *files)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


@pytest.mark.parametrize("name", sorted(NEEDS_QEMU))
def test_config_check_and_create_refuse_what_xentool_cannot_wire(name: str) -> None:
    path = str(DATA / name)
    r = run("config-check", "-q", "-W", path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith(f"xentool: {path}:") and (
        "needs qemu" in first or "not supported" in first), first
    c = run("create", "-q", path)  # refused before anything touches Xen
    assert c.returncode == 1 and c.stderr.splitlines()[-1] == first, c.stderr
    assert run("create", "-q", "-n", path).returncode == 0
