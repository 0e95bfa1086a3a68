"""bench/plot.py turns result files into PNGs (skipped where matplotlib is not installed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_plot_writes_pngs_from_results(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    res = tmp_path / "res"
    res.mkdir()
    (res / "create_scaling.json").write_text(json.dumps({
        "machine": {"cpu": "test cpu", "virt": "qemu", "xen": "4.17", "nr_cpus": "2"},
        "create_latency_s": {"xl": [0.5, 0.6, 0.55], "xentool": [0.3, 0.35, 0.32]},
        "nth_create_s": {"xl": [0.5 + i / 100 for i in range(10)],
                         "xentool": [0.3] * 10},
        "list_s": {"xl": [0.1, 0.12], "xentool": [0.08, 0.09]}}))
    (res / "controller.json").write_text(json.dumps({"reaction_ms": [12.0, 15.5, 9.1]}))
    (res / "split.json").write_text(json.dumps({
        "phase1": {"xl": [1.0, 1.1], "one-shot": [3.0, 3.2], "daemon": [0.9, 1.0]},
        "phase2": {"xl": [1.0, 1.2], "shells": [0.5, 0.6], "refill": [0.4]},
        "api": {"per_guest": 0.7}, "api_shells": {"per_guest": 0.3}}))
    (res / "list.json").write_text(json.dumps([
        {"guests": n, "list_ratio": {"xl": 1.0, "xentool": 3.0, "daemon": 1.5},
         "destroy_ratio": {"xl": 1.0, "xentool": 4.0, "daemon": 1.2}} for n in (1, 28, 100)]))
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "plot.py"), "--results", str(res),
                        "--out", str(tmp_path / "png")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name in ("nth_create.png", "create_latency.png", "list.png", "controller.png",
                 "split.png", "list_destroy.png"):
        data = (tmp_path / "png" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_plot_without_results_fails_clearly(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "plot.py"), "--results",
                        str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr == f"plot: no results in {tmp_path}\n"


def test_create_breakdown_preimports_modules_that_exist() -> None:
    # A renamed module would make the "pre-imported" figure silently include its import.
    r = subprocess.run([sys.executable, "-c", "import sys; sys.path[:0] = ['bench']\n"
                        "import create_breakdown as b, importlib\n"
                        "for m in b.CREATE_MODULES: importlib.import_module(m)\n"
                        "print(len(b.CREATE_MODULES))"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) >= 20
