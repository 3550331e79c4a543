"""Run every ``benchmarks/bench_*.py`` (each exposes ``run() -> list[dict]``) and print one table.

Each row is a ratio against a baseline measured in the same run, on the same machine:
``python -m benchmarks [NAME ...]`` (names filter by substring). Results are also written to
``benchmarks/results/latest.json``.
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
from datetime import date
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = sorted(p.stem for p in here.glob("bench_*.py"))
    if argv:
        names = [n for n in names if any(a in n for a in argv)]
    rows = []
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        for row in module.run():
            rows.append({"file": name, **row})
    table = Table(title=f"cnnkit benchmarks — {date.today()} — {platform.machine()}, "
                        f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    for column in ("benchmark", "baseline", "ms", "baseline_ms", "ratio", "goal"):
        table.add_column(column, justify="right" if column in ("ms", "baseline_ms", "ratio") else "left")
    for row in rows:
        table.add_row(*(f"{row[c]:.3g}" if isinstance(row.get(c), float) else str(row.get(c, ""))
                        for c in ("benchmark", "baseline", "ms", "baseline_ms", "ratio", "goal")))
    Console(width=160).print(table)
    out = here / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps({
        "date": str(date.today()), "machine": platform.platform(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
