"""contrib/examples/provision.py end to end: the public API in a provisioning script.

Three tiny GRUB guests from one template, weighted 256/512/1024, up on their consoles,
reported as JSON and destroyed; and on a failure (a marker that never comes) destroyed all
the same.  Each run costs three tiny creates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from .helpers import GuestKit, console_log, domain_names

pytestmark = pytest.mark.xen

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "contrib" / "examples" / "provision.py"
MARKER = "XENTOOL-TINY-UP"  # what the tiny-wait kernel prints (contrib/testbed/guest/)


def provision(template: Path, prefix: str, *args: str,
              timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the example as a script author would, with this checkout's xentool."""
    path = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    argv = [sys.executable, str(SCRIPT), str(template), "--prefix", prefix, *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the script destroys its guests before it exits
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"provision.py still running after {timeout}s:\n{out}{err}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def left_behind(prefix: str) -> set[str]:
    return {n for n in domain_names() if n.startswith(f"{prefix}-")}


@pytest.fixture
def template(kit: GuestKit, tmp_path: Path) -> Path:
    # The name is a placeholder: the script gives each guest its own.
    path = tmp_path / "template.cfg"
    path.write_text(kit.tiny_cfg("provision-template", wait=True))
    return path


def test_provision_three_weighted_guests(template: Path) -> None:
    prefix = f"prov-{uuid.uuid4().hex[:6]}"
    r = provision(template, prefix, "--timeout", "120")
    assert r.returncode == 0, f"exit {r.returncode}:\n{r.stderr}"
    report = json.loads(r.stdout)
    guests = report["guests"]
    names = [f"{prefix}-{i}" for i in (1, 2, 3)]
    assert [g["name"] for g in guests] == names, report
    assert [g["weight"] for g in guests] == [256, 512, 1024], report
    domids = [g["domid"] for g in guests]
    assert len(set(domids)) == 3 and 0 not in domids, report
    for g in guests:
        assert g["cap"] == 0 and g["vcpus"] == 1 and 0 < g["memory"] <= 33, g
        assert g["state"][2:] == "----", g  # running or blocked: not paused, shut down, dying
    for name in names:  # the script saw each marker in the log xenconsoled writes
        assert MARKER in console_log(name).read_text(errors="replace"), name
    assert not left_behind(prefix)


def test_provision_failure_leaves_nothing(template: Path) -> None:
    prefix = f"provf-{uuid.uuid4().hex[:6]}"
    r = provision(template, prefix, "--marker", "NO-SUCH-MARKER", "--timeout", "5")
    assert r.returncode == 1, f"exit {r.returncode}:\n{r.stdout}{r.stderr}"
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"provision: {prefix}-1: no "
                                                  "'NO-SUCH-MARKER' on its console"), r.stderr
    assert not left_behind(prefix)
