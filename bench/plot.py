#!/usr/bin/env python3
"""Draw the bench results as PNGs (needs matplotlib: ``pip install 'xentool[bench]'``).

    python3 bench/plot.py [--results bench/results] [--out bench/results]

Reads ``create_scaling.json``, ``controller.json``, ``split.json`` and ``list.json``
(whichever exist) and writes ``nth_create.png`` (creation time of the Nth guest, per tool),
``create_latency.png`` (distribution per tool), ``list.png``, ``controller.png`` (reaction
times vs the bar), ``split.png`` (create latency: xl, one-shot, daemon, shell pool, API)
and ``list_destroy.png`` (list and destroy ratios to xl vs the number of guests).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="bench/results")
    ap.add_argument("--out", default=None, help="directory for the PNGs (default: --results)")
    a = ap.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return 1
    src = Path(a.results)
    out = Path(a.out or a.results)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    cs = src / "create_scaling.json"
    if cs.exists():
        r = json.loads(cs.read_text())
        where = _machine(r.get("machine", {}))
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for tool, v in r.get("nth_create_s", {}).items():
            ax.plot(range(1, len(v) + 1), [x * 1000 for x in v], marker=".", label=tool)
        ax.set_xlabel("N (guests already running + 1)")
        ax.set_ylabel("create -p time of the Nth guest (ms)")
        ax.set_title(f"Creation time vs number of guests\n{where}", fontsize=9)
        ax.set_ylim(bottom=0)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "nth_create.png", dpi=120)
        written.append("nth_create.png")
        for key, fname, label in (("create_latency_s", "create_latency.png",
                                   "create latency (ms)"),
                                  ("list_s", "list.png", "list with all guests (ms)")):
            data = r.get(key, {})
            if not data:
                continue
            fig, ax = plt.subplots(figsize=(5, 4))
            tools = list(data)
            ax.boxplot([[x * 1000 for x in data[t]] for t in tools])
            ax.set_xticks(range(1, len(tools) + 1), tools)  # `labels=` was renamed in 3.9
            for i, t in enumerate(tools, 1):
                ax.annotate(f"median {statistics.median(data[t]) * 1000:.0f}", (i, 0),
                            xytext=(0, 4), textcoords="offset points", ha="center",
                            fontsize=8)
            ax.set_ylabel(label)
            ax.set_ylim(bottom=0)
            ax.set_title(where, fontsize=8)
            fig.tight_layout()
            fig.savefig(out / fname, dpi=120)
            written.append(fname)
    cj = src / "controller.json"
    if cj.exists():
        r = json.loads(cj.read_text())
        fig, ax = plt.subplots(figsize=(6, 4))
        v = r["reaction_ms"]
        ax.plot(range(1, len(v) + 1), v, marker="o", label="reaction")
        ax.axhline(100, color="red", linestyle="--", label="bar: 100 ms")
        ax.set_xlabel("new domain #")
        ax.set_ylabel("@introduceDomain -> weight in force (ms)")
        ax.set_ylim(bottom=0)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "controller.png", dpi=120)
        written.append("controller.png")
    sp = src / "split.json"
    if sp.exists():
        r = json.loads(sp.read_text())
        p1, p2 = r["phase1"], r["phase2"]
        bars = {"xl": p1["xl"], "one-shot": p1["one-shot"], "daemon": p1["daemon"],
                "xl (phase 2)": p2["xl"], "shell pool": p2["shells"]}
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = [*bars, "API", "API + pool"]
        heights = [statistics.median(v) * 1000 for v in bars.values()]
        heights += [r["api"]["per_guest"] * 1000, r["api_shells"]["per_guest"] * 1000]
        ax.bar(labels, heights, color=["grey", "C0", "C0", "grey", "C1", "C2", "C2"])
        for i, h in enumerate(heights):
            ax.annotate(f"{h:.0f}", (i, h), xytext=(0, 2), textcoords="offset points",
                        ha="center", fontsize=8)
        ax.set_ylabel("create of a tiny guest (ms, median; API: per guest)")
        ax.set_title(f"Create latency, xentool vs xl\n{_machine(r.get('machine', {}))}",
                     fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        fig.tight_layout()
        fig.savefig(out / "split.png", dpi=120)
        written.append("split.png")
    lj = src / "list.json"
    if lj.exists():
        rows = json.loads(lj.read_text())
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
        for ax, key, goal in ((axes[0], "list_ratio", 1.0), (axes[1], "destroy_ratio", 1.0)):
            n = [row["guests"] for row in rows]
            for way in rows[0][key]:
                if way != "xl":
                    ax.plot(n, [row[key][way] for row in rows], marker="o", label=way)
            ax.axhline(goal, color="red", linestyle="--", label=f"goal {goal}")
            ax.set_xlabel("guests up")
            ax.set_ylabel(f"{key.split('_')[0]}: xentool / xl (median)")
            ax.set_ylim(bottom=0)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / "list_destroy.png", dpi=120)
        written.append("list_destroy.png")
    if not written:
        print(f"plot: no results in {src}", file=sys.stderr)
        return 1
    for w in written:
        print(out / w)
    return 0


def _machine(m: dict) -> str:
    return (f"{m.get('cpu', '?')} ({m.get('virt', '?')}), Xen {m.get('xen', '?')}, "
            f"{m.get('nr_cpus', '?')} pCPUs, {m.get('scheduler', '?')}")


if __name__ == "__main__":
    sys.exit(main())
