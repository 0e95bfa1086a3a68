#!/usr/bin/env python3
"""Provision three guests from one template with the xentool library, then tear them down.

What a provisioning script does, in one process and with the public API only
(``import xentool``; run as root in dom0, with xentool installed or on ``PYTHONPATH``)::

    provision.py [TEMPLATE] [--prefix prov] [--marker XENTOOL-TINY-UP] [--timeout 60]

1. reads the xl.cfg ``TEMPLATE`` once and
   refuses what three guests cannot share (a fixed MAC, a writable disk);
2. creates ``PREFIX-1`` .. ``PREFIX-3`` from it, paused (the name is an override, as on
   xl's command line; a template that fixes a ``uuid`` gets a fresh one per guest), gives
   them CPU weights 256, 512 and 1024 and only then lets them run;
3. waits until each guest's console shows ``MARKER``: the console log xenconsoled writes
   with ``--log=guest`` (``/var/log/xen/console/guest-NAME.log``), read only past what the
   log held before the guest was created (xenconsoled appends to an older guest's log of
   the same name); all three within ``--timeout`` seconds;
4. prints the host as JSON on stdout::

       {"host": "dom0", "xen": "4.17.3",
        "guests": [{"domid": 7, "name": "prov-1", "weight": 256, "cap": 0,
                    "memory": 32, "vcpus": 1, "state": "-b----"}, ...]}

   (``memory`` in MiB and ``vcpus`` online, as ``xl list`` counts them; ``state`` is
   ``xl list``'s State column; weight and cap as the hypervisor reports them);
5. destroys the guests it created, whatever happened (also on an error, Ctrl-C or
   SIGTERM), never a domain it did not create.

On failure it prints one line, ``provision: <what went wrong>``, on stderr and exits
non-zero (1, or 130 when interrupted).

The weights are set on the running domains with ``Domain.set_sched``.  A restart by the
host's monitor (``on_reboot = "restart"``) builds a guest again from the template and its
overrides, so a weight that must survive restarts belongs in the overrides too
(``cpu_weight=512``); and a ``xentool sched-controller`` with a rule matching these names
would put its own weight back.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import xentool

WEIGHTS = (256, 512, 1024)
CONSOLE_LOG_DIR = Path("/var/log/xen/console")
SHUTDOWN_LETTERS = "-rscwS"  # xl list: poweroff, reboot, suspend, crash, watchdog, soft reset


class ProvisionError(Exception):
    """A failure of this script itself (as opposed to xentool's errors)."""


def console_log(name: str) -> Path:
    return CONSOLE_LOG_DIR / f"guest-{name}.log"


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def wait_for_marker(name: str, marker: bytes, offset: int, deadline: float,
                    timeout: float) -> None:
    """Return once ``marker`` is in guest ``name``'s console log past ``offset``."""
    path = console_log(name)
    while True:
        try:
            with path.open("rb") as f:
                if os.fstat(f.fileno()).st_size < offset:
                    offset = 0  # the log was truncated or rotated meanwhile
                f.seek(offset)
                if marker in f.read():
                    return
        except FileNotFoundError:
            pass
        if time.monotonic() >= deadline:
            why = (f"not in {path} since the guest was created" if path.exists() else
                   f"{path} does not exist: is xenconsoled run with --log=guest?")
            raise ProvisionError(f"{name}: no {marker.decode()!r} on its console within "
                                 f"{timeout:g}s ({why})")
        time.sleep(0.2)


def state_of(d: Any) -> str:
    """``xl list``'s State column for a hypervisor record (``Domain.info()``)."""
    reason = d.shutdown_reason if d.shutdown else 0
    letter = SHUTDOWN_LETTERS[reason] if 0 <= reason < len(SHUTDOWN_LETTERS) else "?"
    return "".join(("r" if d.running else "-", "b" if d.blocked else "-",
                    "p" if d.paused else "-", "s" if d.shutdown else "-", letter,
                    "d" if d.dying else "-"))


def check_template(cfg: xentool.DomainConfig, path: str) -> None:
    """Refuse a template whose devices three guests cannot share."""
    for vif in cfg.vifs:
        if not vif.mac_generated:
            raise ProvisionError(f"{path}: vif {vif.devid} has a fixed mac={vif.mac}, which "
                                 "three guests cannot share; leave mac= out")
    for disk in cfg.disks:
        if disk.readwrite and not disk.is_cdrom:
            raise ProvisionError(f"{path}: disk {disk.vdev} is writable, and three guests "
                                 "cannot share it; make it read-only or leave it out")


def provision(host: xentool.Host, template: str, names: list[str], marker: bytes,
              timeout: float, created: dict[str, xentool.Domain]) -> dict[str, object]:
    """Create, weight, start and wait for the guests; add each one to ``created`` (by name)
    as soon as it exists, so that the caller destroys it whatever happens next."""
    # Read the template once up front: a bad file fails before anything exists.
    first = xentool.load_config(template, [f"name='{names[0]}'"])
    check_template(first, template)
    fixed_uuid = first.uuid is not None

    offsets = {}
    for name, weight in zip(names, WEIGHTS, strict=True):
        overrides = [f"name='{name}'"]
        if fixed_uuid:  # one uuid for three domains would mix up their XenStore and records
            overrides.append(f"uuid='{uuid.uuid4()}'")
        offsets[name] = log_size(console_log(name))
        guest = host.create(template, overrides, paused=True)
        created[name] = guest
        guest.set_sched(weight=weight)  # before the guest has run at all
    for guest in created.values():
        guest.unpause()

    deadline = time.monotonic() + timeout
    for name in names:
        wait_for_marker(name, marker, offsets[name], deadline, timeout)

    info = host.info()
    guests = []
    for guest in created.values():
        d = guest.info()
        sched = guest.sched()
        guests.append({"domid": guest.domid, "name": guest.name, "weight": sched.weight,
                       "cap": sched.cap, "memory": d.current_memkb // 1024,
                       "vcpus": d.nr_online_vcpus, "state": state_of(d)})
    return {"host": info.uname.nodename, "xen": info.version.version, "guests": guests}


def destroy_all(created: dict[str, xentool.Domain]) -> list[str]:
    """Destroy every guest in ``created``, newest first; the errors, one line each."""
    errors = []
    for name, guest in reversed(created.items()):
        try:
            guest.destroy()
        except xentool.DomainNotFound:
            pass  # already gone
        except xentool.XentoolError as exc:
            errors.append(f"cannot destroy {name} (domid {guest.domid}): {exc}")
    return errors


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def prefix_arg(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,40}", text):
        raise argparse.ArgumentTypeError(f"invalid prefix {text!r}: a letter, then letters, "
                                         "digits, '_', '.' or '-' (up to 41 in all)")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Create three guests from one xl.cfg template "
                                 "with different CPU weights, wait for their consoles, "
                                 "print them as JSON, destroy them.")
    ap.add_argument("template", help="xl.cfg of the guests (its name is replaced per guest)")
    ap.add_argument("--prefix", type=prefix_arg, default="prov",
                    help="guests are named PREFIX-1, PREFIX-2, PREFIX-3 (default: prov)")
    ap.add_argument("--marker", default="XENTOOL-TINY-UP",
                    help="text each guest's console shows once it is up "
                         "(default: XENTOOL-TINY-UP)")
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds to wait for all three markers (default: 60)")
    args = ap.parse_args(argv)
    if args.timeout <= 0:
        ap.error("--timeout must be positive")

    names = [f"{args.prefix}-{i}" for i in range(1, len(WEIGHTS) + 1)]
    cleanup_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    saved = {sig: signal.getsignal(sig) for sig in cleanup_signals}
    for sig in (signal.SIGTERM, signal.SIGHUP):  # clean up as on Ctrl-C
        signal.signal(sig, _interrupt)
    created: dict[str, xentool.Domain] = {}
    errors: list[str] = []
    status = 0
    try:
        with xentool.Host() as host:
            try:
                report = provision(host, args.template, names, args.marker.encode(),
                                   args.timeout, created)
                print(json.dumps(report, indent=2), flush=True)
            finally:
                # Nothing may cut the clean-up short: further signals wait until it is done.
                for sig in cleanup_signals:
                    signal.signal(sig, signal.SIG_IGN)
                errors += destroy_all(created)
    except (xentool.XentoolError, ProvisionError, OSError) as exc:
        status = getattr(exc, "exit_code", 1)
        errors.insert(0, str(exc))
    except KeyboardInterrupt as exc:
        status = 130
        errors.insert(0, f"interrupted by {exc}" if str(exc) else "interrupted")
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    for line in errors:
        print(f"provision: {line}", file=sys.stderr)
    return status or (1 if errors else 0)

if __name__ == "__main__":
    sys.exit(main())
