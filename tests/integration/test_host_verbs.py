"""xl's host and misc verbs against xl 4.17 as the oracle: dmesg, debug-keys,
set-parameters, info -n, list -n/-Z, vm-list, claims, sharing, channel-list, trigger,
sysrq, dump-core, vcpu-pin -f, and the coredump-destroy on_crash action.

One tiny paused guest created by xentool serves every test that needs a guest (the module
fixture); xl's libxl log lines are compared with xentool's after their prefixes
(``libxl: error: file:line:function: `` and ``xentool: ``) are taken off.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import GuestKit, domain_names, run, wait_for_console, xentool, xl
from .test_query_verbs import _sandwich

pytestmark = pytest.mark.xen

ROOT = Path(__file__).resolve().parents[2]
DUMP_DIR = Path("/var/lib/xen/dump")


@pytest.fixture(scope="module")
def guest(kit: GuestKit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tiny paused PV guest created by xentool."""
    name = f"t-hostverbs-{os.getpid()}"
    cfg = tmp_path_factory.mktemp("hostverbs") / f"{name}.cfg"
    cfg.write_text(kit.tiny_cfg(name, wait=True))
    xentool("create", "-q", "-p", "-e", str(cfg))
    try:
        yield name
    finally:
        xl("destroy", name, check=False)


def _domid(name: str) -> int:
    return int(xl("domid", name).stdout)


def _messages(stderr: str) -> list[str]:
    """stderr lines without the prefix libxl or xentool puts before a log message."""
    out = []
    for line in stderr.splitlines():
        line = re.sub(r"^libxl: error: [\w.]+:\d+:\w+: ", "", line)
        out.append(line.removeprefix("xentool: "))
    return out


def _same_as_xl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``args`` with xl then xentool: same exit status, stdout and messages."""
    a = xl(*args, check=False)
    b = xentool(*args, check=False)
    assert b.returncode == a.returncode, f"xl: {a.returncode} {a.stderr}\nxentool: " \
                                         f"{b.returncode} {b.stderr}"
    assert b.stdout == a.stdout
    assert _messages(b.stderr) == _messages(a.stderr), f"xl:\n{a.stderr}\nxentool:\n{b.stderr}"
    return b


# -- dmesg, debug-keys, set-parameters -------------------------------------------------------


def _continues(before: str, after: str) -> bool:
    """``after`` is a later read of Xen's ring than ``before``: the same text plus new
    lines (when the ring is full, its oldest lines go as new ones come)."""
    if after.startswith(before):
        return True
    tail = before[-2000:]
    return tail in after


def test_dmesg_matches_xl_and_clear_clears() -> None:
    a = xl("dmesg").stdout
    b = xentool("dmesg").stdout
    c = xl("dmesg").stdout
    assert b, "Xen's ring is never empty after boot"
    assert _continues(a, b), f"xl:\n{a[-500:]}\nxentool:\n{b[-500:]}"
    assert _continues(b, c)
    assert _continues(c, xentool("dmesg", "--clear").stdout)
    after = xl("dmesg").stdout
    assert len(after) < len(c) and c[-2000:] not in after, "dmesg -c did not clear the ring"
    assert xentool("dmesg", "-c").returncode == 0


def test_debug_keys_show_in_dmesg() -> None:
    xentool("dmesg", "-c")
    assert xentool("debug-keys", "h").stdout == ""
    text = xentool("dmesg").stdout
    assert "'h' pressed -> showing installed handlers" in text
    assert _continues(text, xl("dmesg").stdout)


def test_set_parameters_like_xl() -> None:
    # loglvl/guest_loglvl are runtime parameters; set them to what the testbed boots with.
    assert xentool("set-parameters", "loglvl=all guest_loglvl=all").returncode == 0
    r = run("xenhypfs", "cat", "/params/loglvl", check=False)
    if r.returncode == 0:  # xenhypfs(1) is not in every dom0
        assert "all" in r.stdout
    _same_as_xl("set-parameters", "loglvl=all")
    _same_as_xl("set-parameters", "no-such-parameter=1")
    _same_as_xl("set-parameters", "loglvl=all nosuchthing")


# -- info -n, list -n/-Z, vm-list, claims, sharing, channel-list -----------------------------


def test_info_numa_matches_xl() -> None:
    a = xl("info", "-n").stdout
    b = xentool("info", "-n").stdout
    c = xl("info", "-n").stdout

    def stable(text: str) -> list[str]:  # free memory moves with other domains' balloons
        return [ln for ln in text.splitlines() if not ln.startswith("free_memory")]

    assert stable(b) in (stable(a), stable(c)), f"xl:\n{a}\nxentool:\n{b}"
    for section in ("cpu_topology", "device topology", "numa_info"):
        assert section in b
    # xl ignores a NAME filter together with -n.
    assert xentool("info", "-n", "host").stdout.count("\n") == b.count("\n")


def test_list_numa_and_context_match_xl(guest: str) -> None:
    for opt in ("-n", "--numa", "-Z", "--context"):
        _sandwich(["list", opt], ["list", opt], time_col=5, state_col=4)
    _sandwich(["list", "-vZ"], ["list", "-vZ"], time_col=5, state_col=4)
    _sandwich(["list", "-n", guest], ["list", "-n", guest], time_col=5)


def test_vm_list_claims_sharing_match_xl(guest: str) -> None:
    _same_as_xl("vm-list")
    assert guest in xentool("vm-list").stdout
    _sandwich(["claims"], ["claims"], time_col=5, state_col=4)
    _same_as_xl("sharing")
    _same_as_xl("sharing", guest)
    _same_as_xl("sharing", "0")


def test_channel_list_matches_xl(guest: str) -> None:
    _same_as_xl("channel-list", "0")
    _same_as_xl("channel-list", guest)
    _same_as_xl("channel-list", "0", guest)


def test_create_refuses_channels(kit: GuestKit, tmp_path: Path) -> None:
    cfg = tmp_path / "chan.cfg"
    cfg.write_text(kit.tiny_cfg("t-hostverbs-chan",
                                more="channel = ['connection=pty,name=org.x.y']\n"))
    r = xentool("create", "-p", str(cfg), check=False)
    assert r.returncode != 0 and "channel" in r.stderr
    assert "t-hostverbs-chan" not in domain_names()


# -- trigger, sysrq ---------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["nmi"], ["power"], ["sleep"], ["reset"], ["s3resume"], ["unknown"], ["bogus"],
    ["nmi", "7"], ["NMI", "x"],
])
def test_trigger_like_xl(guest: str, args: list[str]) -> None:
    _same_as_xl("trigger", guest, *args)


def _sysrq_node(name: str) -> str | None:
    r = run("xenstore-read", f"/local/domain/{_domid(name)}/control/sysrq", check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def test_sysrq_like_xl(guest: str) -> None:
    xl("sysrq", guest, "s")
    assert _sysrq_node(guest) == "s"
    xentool("sysrq", guest, "u")
    assert _sysrq_node(guest) == "u"
    a = xl("sysrq", guest, "ab", check=False)
    b = xentool("sysrq", guest, "ab", check=False)
    assert (b.returncode, "Invalid sysrq.") == (a.returncode, a.stderr.splitlines()[0])
    assert b.stderr.splitlines()[0] == "Invalid sysrq."
    assert _sysrq_node(guest) == "u"


# -- dump-core, coredump-destroy --------------------------------------------------------------


def _elf_core(path: Path) -> int:
    with path.open("rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF" and head[4] == 2, "not a 64-bit ELF file"
    assert int.from_bytes(head[16:18], "little") == 4, "not an ET_CORE file"
    return path.stat().st_size


def test_dump_core_of_a_guest_without_p2m_fails_like_xl(guest: str, tmp_path: Path) -> None:
    # The tiny guest never publishes its p2m (a Linux guest does at boot): libxc cannot
    # dump it, for xl as for xentool.
    _same_as_xl("dump-core", guest, str(tmp_path / "core"))
    _same_as_xl("dump-core", guest, "/nonexistent/dir/core")


def test_vcpu_pin_force_applies(guest: str) -> None:
    try:
        xentool("vcpu-pin", "-f", guest, "0", "1")
        assert xl("vcpu-list", guest).stdout.splitlines()[1].split()[-3] == "1"
        xentool("vcpu-pin", "--force", guest, "all", "all")
        assert xl("vcpu-list", guest).stdout.splitlines()[1].split()[-3] == "all"
    finally:
        xl("vcpu-pin", guest, "all", "all", check=False)


def _crash(domid: int) -> None:
    code = ("import sys\nfrom domain_builder.xenctrl import XenCtrl, ShutdownReason\n"
            "with XenCtrl() as xc: xc.shutdown(int(sys.argv[1]), ShutdownReason.CRASH)\n")
    subprocess.run([sys.executable, "-c", code, str(domid)], check=True, timeout=60,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_dump_core_and_on_crash_coredump_destroy(kit: GuestKit, tmp_path: Path,
                                                 guest_name: str) -> None:
    """One Linux guest (it publishes its p2m, which a core dump needs): ``dump-core``, then
    a crash, which on_crash=coredump-destroy turns into a core in /var/lib/xen/dump/<name>
    and a destroyed domain.  (xl writes its core with the same libxc call: a core of its
    own to compare with took a minute under emulation and proved nothing more.)"""
    core = DUMP_DIR / guest_name
    cfg = tmp_path / "crash.cfg"
    cfg.write_text(kit.busybox_cfg(guest_name, more='on_crash = "coredump-destroy"\n'))
    xentool("create", "-q", str(cfg))
    try:
        wait_for_console(guest_name, "XENTOOL-GUEST-UP", timeout=600)
        mine = tmp_path / "xentool.core"
        xentool("dump-core", guest_name, str(mine))
        assert _elf_core(mine) >= 128 << 20, "a 128 MiB guest's core holds its memory"
        mine.unlink()
        _crash(_domid(guest_name))
        deadline = time.monotonic() + 120
        while guest_name in domain_names():
            assert time.monotonic() < deadline, "the crashed guest was not destroyed"
            time.sleep(0.2)
        assert _elf_core(core) >= 128 << 20
    finally:
        xl("destroy", guest_name, check=False)
        core.unlink(missing_ok=True)
