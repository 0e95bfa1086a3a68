#!/usr/bin/env python3
"""Where the time of one `xentool create` goes, next to `xl create`, in the same run.

Run as root in a dom0 (``contrib/testbed/run -- python3 bench/create_breakdown.py``).
Four figures per repetition, alternating, for the guest kit's tiny PV kernel:

- ``interpreter``: ``python3 -c pass``, the floor of any one-shot Python command;
- ``xentool``: ``python3 -IS bin/xentool create CFG`` in-process (no xentoold), as installed;
- ``preimported``: ``xentool.cli.main(["create", CFG])`` in a child forked from this
  process after it imported every module a create uses and built the config grammar, i.e.
  the best a resident xentool process (a server the CLI hands its argv to) could do, before
  adding the client's own start-up;
- ``xl``: ``xl create CFG``.

Every repetition uses a new config file, as create_scaling.py does.  Prints medians and the
ratios to xl; ``--out`` keeps the samples as JSON.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from create_scaling import (
    XENTOOL,
    destroy,
    machine,
    ratio,
    run,
    tiny_guest_parser,
    workdir,
    write_cfg,
)

# Everything `xentool create` of a PV guest with no devices imports after argument parsing.
CREATE_MODULES = (
    "xentool.cli.commands.create", "xentool.host", "xentool.devices", "xentool.create",
    "xentool.journal", "xentool.locks", "xentool.records", "xentool.config.validate",
    "xentool.config.cache", "xentool.config.grammar", "xentool.config.libxl_json",
    "xenstore.client", "xenstore.devices.attach", "xenstore.devices.console",
    "xenstore.devices.vbd", "xenstore.devices.vif", "domain_builder.image",
    "domain_builder.layout", "domain_builder.pv", "domain_builder.xenctrl", "logging", "uuid",
)


def preimport() -> float:
    t0 = time.perf_counter()
    for name in CREATE_MODULES:
        importlib.import_module(name)
    from xentool.config import loads

    loads('name = "warm"\nkernel = "/k"\nmemory = 16\n')  # builds the grammar once
    return time.perf_counter() - t0


def forked_create(cfg: Path) -> float:
    from xentool import cli

    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os._exit(cli.main(["create", str(cfg)]))
    _, status = os.waitpid(pid, 0)
    dt = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise RuntimeError(f"pre-imported create of {cfg} exited {rc}")
    return dt


def main() -> int:
    ap = tiny_guest_parser(__doc__, "bench/results/create_breakdown.json")
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    d = workdir(a)
    if d is None:
        return 2
    print(f"machine: {machine()}")
    print(f"pre-importing the create path: {preimport():.2f} s", flush=True)
    samples: dict[str, list[float]] = {"interpreter": [], "xentool": [], "preimported": [],
                                       "xl": []}
    for i in range(a.reps):
        samples["interpreter"].append(run([sys.executable, "-c", "pass"])[0])
        for how in ("xentool", "preimported", "xl"):
            name = f"bench-bd-{how}-{i}"
            cfg = write_cfg(d, name, a.kernel, a.memory)
            try:
                if how == "preimported":
                    samples[how].append(forked_create(cfg))
                else:
                    argv = XENTOOL if how == "xentool" else ["xl"]
                    samples[how].append(run([*argv, "create", str(cfg)], tool=how)[0])
            finally:
                destroy(name)
    med = {k: statistics.median(v) for k, v in samples.items()}
    for k, v in med.items():
        print(f"{k:<12} median of {a.reps}: {v * 1000:8.1f} ms   ratio to xl {ratio(v, med['xl'])}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"samples_s": samples, "reps": a.reps}, indent=1) + "\n")
    print(f"results: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
