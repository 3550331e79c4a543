"""How many threads a command uses: the cores this process may run on, less the ones other work keeps busy.

Torch starts one thread per core. On a shared machine that is a trap: when another process holds a core, each
of torch's parallel regions waits for the thread that was preempted, and a 2-core machine with one busy
neighbour ran the demo 3.4× slower than idle (49 s → 169 s) — with one thread it took 57 s.
"""

from __future__ import annotations

import os
import time

from cnnkit._checks import check_int

__all__ = ["busy_cores", "choose_threads", "usable_cores"]


def _cpu_times() -> tuple[int, int] | None:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]), idle


def busy_cores(interval: float = 0.25) -> float:
    """Cores kept busy by all processes over ``interval`` seconds (``/proc/stat``; the load average elsewhere)."""
    first = _cpu_times()
    if first is None:
        try:
            return os.getloadavg()[0]
        except (OSError, AttributeError):
            return 0.0
    time.sleep(interval)
    second = _cpu_times()
    total, idle = second[0] - first[0], second[1] - first[1]
    if total <= 0:
        return 0.0
    return (os.cpu_count() or 1) * (total - idle) / total


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity on Linux, the machine's count elsewhere."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_threads(requested: int | None = None) -> tuple[int, str]:
    """The thread count for this process and a one-line reason; sets ``torch.set_num_threads``.

    ``requested`` (``--threads``) wins; otherwise the cores this process may use (its CPU affinity) minus
    those busy with other work, at least 1.
    """
    import torch

    usable = usable_cores()
    if requested is not None:
        threads = check_int(requested, "threads")
        reason = f"threads: {threads} (--threads), {usable} cores usable"
    else:
        busy = busy_cores()
        threads = max(1, min(usable, int(usable - busy + 0.5)))
        reason = (f"threads: {threads} of {usable} usable cores ({busy:.1f} busy with other work; "
                  "--threads to choose)")
    torch.set_num_threads(threads)
    return threads, reason
