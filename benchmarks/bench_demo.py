"""``cnnkit demo`` wall time, alone and beside a busy process, in one run.

Rows:
* ``cnnkit demo`` as a command (threads chosen by cnnkit), wall time against the 60 s goal;
* the same with one single-threaded competitor (``yes > /dev/null``) on the machine, against the first
  row's own time (goal ≤ 1.5×; with torch's one thread per core it was 3.4× on a 2-core machine).

Each run writes into a fresh temporary folder. Run: ``python -m benchmarks demo``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time


def _demo(out: str) -> tuple[float, float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cnnkit.cli", "demo", "--out", out], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "120"})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"cnnkit demo failed:\n{done.stdout}\n{done.stderr}")
    iou = float(re.search(r"held-out mean IoU:\s+([0-9.]+)", done.stdout).group(1))
    threads = re.search(r"^threads: .*$", done.stdout, re.M)
    return seconds, iou, threads.group(0) if threads else ""


def run() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        idle, iou, threads = _demo(os.path.join(tmp, "idle"))
        competitor = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL)
        try:
            time.sleep(1.0)  # let the competitor show up in the CPU counters cnnkit reads
            busy, busy_iou, busy_threads = _demo(os.path.join(tmp, "busy"))
        finally:
            competitor.kill()
            competitor.wait()
    return [
        {"benchmark": f"cnnkit demo (held-out mean IoU {iou:.3f}; {threads})", "baseline": "goal 60 s",
         "ms": 1000 * idle, "baseline_ms": 60_000.0, "ratio": idle / 60, "goal": "≤ 1"},
        {"benchmark": f"cnnkit demo beside `yes > /dev/null` (IoU {busy_iou:.3f}; {busy_threads})",
         "baseline": "the same demo alone, this run", "ms": 1000 * busy, "baseline_ms": 1000 * idle,
         "ratio": busy / idle, "goal": "≤ 1.5"},
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
