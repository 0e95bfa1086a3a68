"""Telling whether a process recorded earlier is still the same live process.

Locks and journal records store ``<pid> <start time>``: a pid alone may have been reused
by an unrelated process since.
"""

from __future__ import annotations


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), None if there is no such
    process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields_after = stat.rsplit(")", 1)[1].split()
    return int(fields_after[19])


def process_alive(pid: int, start_time: int | None) -> bool:
    """Whether ``pid`` still runs *and* is the process that had ``start_time``."""
    now = proc_start_time(pid)
    return now is not None and (start_time is None or now == start_time)
