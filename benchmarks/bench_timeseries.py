"""``cnnkit demo --time-series``: its held-out mean IoU against both baselines of the same run, and its time.

Rows (each a ratio against something measured in the same run):
* the ConvLSTM's held-out mean IoU minus the single-date baseline's (the same network trained and evaluated on
  each series' least cloudy date alone), goal ≥ 0.20; and the mean IoU itself against the 0.80 goal;
* the wall time of the whole command (data, training, both baselines, report) against the 120 s goal on two
  idle cores, with the CPU time the process used beside it (the machine may be shared: see ``uptime``).

Run: ``python -m benchmarks timeseries``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time


def _number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    if found is None:
        raise RuntimeError(f"cnnkit demo --time-series printed no {pattern!r}:\n{text}")
    return float(found.group(1))


def run() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        load = os.getloadavg()[0]
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "cnnkit.cli", "demo", "--time-series", "--out",
                               os.path.join(tmp, "run")], capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": "160"})
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"cnnkit demo --time-series failed:\n{done.stdout}\n{done.stderr}")
    out = done.stdout
    iou = _number(r"held-out mean IoU:\s+([0-9.]+)", out)
    single = _number(r"single-date baseline IoU:\s+([0-9.]+)", out)
    majority = _number(r"majority-class baseline IoU:\s+([0-9.]+)", out)
    cpu = _number(r"elapsed:.*s wall, ([0-9.]+) s CPU", out)
    threads = re.search(r"^threads: .*$", out, re.M)
    note = f"load {load:.1f} at start; {threads.group(0) if threads else ''}"
    return [
        {"benchmark": f"time-series mean IoU {iou:.3f} − single date {single:.3f} (majority {majority:.3f})",
         "baseline": "single-date baseline, this run", "ms": iou, "baseline_ms": single,
         "ratio": iou - single, "goal": "≥ 0.20 (a difference)"},
        {"benchmark": f"time-series mean IoU {iou:.3f}", "baseline": "goal 0.80", "ms": iou, "baseline_ms": 0.8,
         "ratio": iou / 0.8, "goal": "≥ 1"},
        {"benchmark": f"cnnkit demo --time-series wall time ({cpu:.0f} s CPU; {note})", "baseline": "goal 120 s",
         "ms": 1000 * seconds, "baseline_ms": 120_000.0, "ratio": seconds / 120, "goal": "≤ 1 on 2 idle cores"},
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
