"""Benchmarks: `python -m benchmarks` runs every bench_*.py and prints ratios measured side by side."""
