#!/usr/bin/env python3
"""Draw the bench results as PNGs (needs matplotlib: ``pip install 'xentool[bench]'``).

    python3 bench/plot.py [--results bench/results] [--out bench/results]

Reads ``create_scaling.json`` and ``controller.json`` (whichever exist) and writes
``nth_create.png`` (creation time of the Nth guest, per tool), ``create_latency.png``
(distribution per tool), ``list.png`` and ``controller.png`` (reaction times vs the bar).
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
