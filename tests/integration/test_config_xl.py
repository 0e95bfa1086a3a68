"""`xentool create -n` against `xl create -n` on the whole xl.cfg corpus (needs a dom0).

Both print libxl_domain_config JSON.  We compare every leaf xentool prints, and every leaf
xl prints under the keys xentool supports (so a field we forgot fails too).  Bad configs
that xl rejects must be rejected by xentool as well.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[1] / "data" / "xlcfg"

# Leaves of xl's JSON that xentool owns (regexes over dotted paths; list indexes are numbers).
SUPPORTED = [re.compile(p) for p in (
    r"c_info\.(type|name|uuid|pool_name)",
    r"b_info\.(max_vcpus|numa_placement|max_memkb|target_memkb|kernel|cmdline|ramdisk"
    r"|event_channels|max_grant_frames|max_maptrack_frames|disable_migrate|type)",
    r"b_info\.(avail_vcpus|vcpu_hard_affinity|vcpu_soft_affinity)(\.\d+)*",
    r"b_info\.sched_params\.(weight|cap)",
    r"b_info\.type\.pv\.e820_host",
    # PVH guests
    r"c_info\.(hap|oos)",
    r"b_info\.(timer_mode|nested_hvm|shadow_memkb|tsc_mode|type\.pvh\.pvshim)",
    r"b_info\.cpuid\..*",
    r"disks\.\d+\..*",
    r"nics\.\d+\..*",
    r"on_(poweroff|reboot|watchdog|crash|soft_reset)",
)]


def flatten(obj, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, list):
        if not obj:
            out[prefix[:-1]] = []
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = obj
    return out


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120)


def xentool(*argv: str) -> subprocess.CompletedProcess[str]:
    """`xentool ARGV` in this process (a Python start-up per file is slow under TCG)."""
    from xentool.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return subprocess.CompletedProcess(argv, rc, out.getvalue(), err.getvalue())


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.cfg"))


def bad_files_xl_rejects() -> list[Path]:
    return sorted((CORPUS / "bad").glob("xl-rejects-*.cfg"))


@pytest.mark.xen
def test_corpus_json_matches_xl() -> None:
    files = corpus_files()
    assert files, f"no corpus in {CORPUS}"
    compared_keys = 0
    failures: list[str] = []
    for path in files:
        xl = run("xl", "create", "-n", "-q", str(path))
        ours = xentool("create", "-n", "-q", str(path))
        if xl.returncode != 0 or ours.returncode != 0:
            failures.append(f"{path.name}: xl rc={xl.returncode} {xl.stderr.strip()!r}; "
                            f"xentool rc={ours.returncode} {ours.stderr.strip()!r}")
            continue
        xl_leaves = flatten(json.loads(xl.stdout))
        our_leaves = flatten(json.loads(ours.stdout))
        has_uuid = re.search(r"^\s*uuid\s*=", path.read_text(), re.M) is not None
        keys = {k for k in xl_leaves if any(p.fullmatch(k) for p in SUPPORTED)}
        keys |= set(our_leaves)
        if not has_uuid:
            keys.discard("c_info.uuid")  # both draw a random one
        for k in sorted(keys):
            if xl_leaves.get(k, "<absent>") != our_leaves.get(k, "<absent>"):
                failures.append(f"{path.name}: {k}: xl={xl_leaves.get(k, '<absent>')!r} "
                                f"xentool={our_leaves.get(k, '<absent>')!r}")
        compared_keys += len(keys)
    print(f"compared {len(files)} config files, {compared_keys} keys")
    assert not failures, "\n".join(failures)


@pytest.mark.xen
def test_configs_xl_rejects_are_rejected() -> None:
    files = bad_files_xl_rejects()
    assert files
    for path in files:
        xl = run("xl", "create", "-n", "-q", str(path))
        ours = xentool("create", "-n", "-q", str(path))  # an exception would fail the test
        assert xl.returncode != 0, f"{path.name}: xl accepted it:\n{xl.stdout}"
        assert ours.returncode == 1, f"{path.name}: xentool rc={ours.returncode}"
        assert "Traceback" not in ours.stderr
        # Located at line:col, or only at the file for a key that is missing.
        assert re.search(rf"{re.escape(str(path))}(:\d+:\d+)?: ", ours.stderr), ours.stderr
    print(f"{len(files)} bad configs rejected by both")


@pytest.mark.xen
def test_overrides_match_xl() -> None:
    path = CORPUS / "pv-full.cfg"
    overrides = ["memory=900", 'extra="x"', 'vif+=["bridge=xenbr9"]', 'name="renamed"']
    xl = run("xl", "create", "-n", "-q", str(path), *overrides)
    ours = xentool("create", "-n", "-q", str(path), *overrides)
    assert xl.returncode == 0, xl.stderr
    assert ours.returncode == 0, ours.stderr
    a, b = flatten(json.loads(xl.stdout)), flatten(json.loads(ours.stdout))
    for k in b:
        assert a.get(k) == b[k], k
    assert b["c_info.name"] == "renamed" and b["b_info.target_memkb"] == 900 * 1024
    assert b["nics.1.bridge"] == "xenbr9"
