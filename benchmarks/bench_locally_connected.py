"""LocallyConnected2d forward + backward against the matmul-bound limit and an unfold + einsum baseline.

Problem: batch 32, input 32×32×16, 32 filters 3×3, "valid" → 30×30 positions. The layer performs
``3 · 2·N·L·K·out`` FLOPs per forward + backward (one ``(N, K) @ (K, out)`` product per position forward,
two backward). Rows (``ratio = ms / baseline_ms``, lower is better):

* vs the *matmul-bound limit*: those FLOPs divided by the GFLOP/s of a 2048×2048 ``torch.matmul``
  measured in the same run (the machine's best matmul speed; goal ≤ 2 for an AVX2 build, ≤ 1.5 for a
  native AVX-512 one).
* vs the same limit computed from a dense ``(N·L, K) @ (K, out)`` matmul — the speed a matmul of this
  layer's shape reaches when the weight is shared (informative).
* vs ``F.unfold`` + ``torch.einsum`` written here (goal ≤ 0.4, i.e. ≥ 2.5× faster).
* vs the layer's own pure-torch path (slabs of ``torch.bmm``), the one used without a C compiler or for
  other dtypes and devices (informative).

The layer runs its C kernel (``cnnkit/nn/csrc/locally_connected.c``) when it can be built; the rows say
which build was timed (instruction set, vector width, register tile). On a CPU with AVX-512 the kernel
is also built for AVX2 (``-march=x86-64-v3``, what most laptops and desktops get) and timed in the same
run, so that both figures exist on one machine; on an AVX2 host the native build is the AVX2 build. Note
that on CPUs where MKL's ``sgemm`` does not use AVX-512 (AMD, for one) the kernel's register tiles can
multiply faster than the 2048² ``torch.matmul``, so the "limit" is a reference speed there, not a
hardware bound.

Run: ``python -m benchmarks.bench_locally_connected [--repeat N]`` (or ``python -m benchmarks locally``).
``--repeat N`` runs the whole measurement N times and ends with the median and range of each ratio: on
a shared machine one run can be off by tens of percent. ``--threads 1 --cpu-time`` times everything on one
thread by that thread's CPU time (``time.thread_time``) instead of the wall clock, which leaves out the
time other processes hold the core: the figure to compare builds on a loaded machine (it still includes
their effect on shared caches and memory bandwidth).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import cnnkit.nn._lc_native as lc_native
from benchmarks._timing import interleaved_ms
from cnnkit import _native
from cnnkit.nn import LocallyConnected2d

KERNEL = "nn.locally_connected"
AVX2_MARCH = "x86-64-v3"  # AVX2 + FMA: the x86-64 level of most laptops, desktops and many cloud CPUs


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def host() -> str:
    """CPU model and its widest x86 vector extension, e.g. ``"AMD EPYC, AVX2 (no AVX-512)"``."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    flags = _cpu_flags()
    isa = ("AVX-512" if "avx512f" in flags else "AVX2 (no AVX-512)" if "avx2" in flags
           else "no AVX2" if flags else "unknown ISA")
    return f"{model}, {isa}"


def build_name(lib: ctypes.CDLL) -> str:
    """What the kernel reports about its build: instruction set, vector width, register tile."""
    if not hasattr(lib, "lc_build"):  # a build from before lc_build existed
        return f"{lib.lc_vector_width()}-float vectors"
    lib.lc_build.restype = ctypes.c_char_p
    return lib.lc_build().decode()


@contextlib.contextmanager
def _kernel_of(lib: ctypes.CDLL):
    """Make the layer run ``lib`` (a variant build) instead of the kernel it would load."""
    saved = lc_native.library
    lc_native.library = lambda *tensors: lib if saved(*tensors) is not None else None
    try:
        yield
    finally:
        lc_native.library = saved


def cpu_time_ms(fns: dict[str, Callable[[], object]], rounds: int = 5, min_cpu_s: float = 0.3) -> dict:
    """Fastest call of each function over ``rounds`` interleaved rounds, in ms of this thread's CPU time
    (one thread only: work on other threads would not be counted)."""
    for fn in fns.values():
        fn()  # warm-up
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            spent = 0.0
            while spent < min_cpu_s:
                start = time.thread_time()
                fn()
                took = time.thread_time() - start
                spent += took
                best[name] = min(best[name], 1000 * took)
    return best


def run(batch: int = 32, channels: int = 16, size: int = 32, filters: int = 32, k: int = 3,
        threads: int | None = None, cpu_time: bool = False) -> list[dict]:
    threads = threads or os.cpu_count() or 1
    if cpu_time and threads != 1:
        raise ValueError(f"cpu_time counts one thread's CPU time, so threads must be 1. Received threads={threads}.")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layer = LocallyConnected2d(channels, filters, k, input_size=size)
    x = torch.randn(batch, channels, size, size, requires_grad=True)
    positions, inputs, _ = layer.weight.shape
    out_size = layer.output_size
    grad = torch.randn(batch, filters, *out_size)
    weight = layer.weight.detach().clone().requires_grad_()  # the baseline's own copy
    bias = layer.bias.detach().clone().requires_grad_()

    def ours():
        x.grad = layer.weight.grad = layer.bias.grad = None
        layer(x).backward(grad)

    def torch_path():
        lc_native.use_native = False
        try:
            ours()
        finally:
            lc_native.use_native = True

    def unfold_einsum():
        x.grad = weight.grad = bias.grad = None
        # unfold's patch order is (C, kh, kw); the baseline keeps its weight in that order.
        cols = F.unfold(x, k)  # (N, C·kh·kw, L)
        out = torch.einsum("nkl,lko->nol", cols, weight).reshape(batch, filters, *out_size) + bias
        out.backward(grad)

    def ours_with(lib):
        def timed():
            with _kernel_of(lib):
                ours()
        return timed

    # The builds timed: the native one (or the torch path without a kernel), and on a CPU beyond AVX2
    # the AVX2 build too.
    native = lc_native.library(x, layer.weight, layer.bias)
    where = host()
    if native is None:
        builds = {f"torch path ({_native.status(KERNEL).splitlines()[0]}); {where}": (ours, "≤ 2")}
    else:
        label = build_name(native)
        builds = {f"C kernel, native build: {label}; {where}": (ours, "≤ 1.5" if "AVX-512" in label else "≤ 2")}
        variant = _native.load_variant(KERNEL, AVX2_MARCH) if "avx2" in _cpu_flags() else None
        if variant is not None and build_name(variant) != label:
            builds[f"C kernel, AVX2 build (-march={AVX2_MARCH}): {build_name(variant)}; {where}"] = (
                ours_with(variant), "≤ 2")

    flops = 3 * 2 * batch * positions * inputs * filters
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    c, d = torch.randn(batch * positions, inputs), torch.randn(inputs, filters)
    fns = {name: fn for name, (fn, _) in builds.items()}
    timing = cpu_time_ms if cpu_time else interleaved_ms
    ms = timing({**fns, "einsum": unfold_einsum, "torch path": torch_path,
                 "square": lambda: torch.matmul(a, b), "dense": lambda: torch.matmul(c, d)})
    peak = 2 * 2048**3 / ms["square"] / 1e6  # GFLOP/s
    dense = 2 * batch * positions * inputs * filters / ms["dense"] / 1e6
    limit_ms, dense_ms = flops / peak / 1e6, flops / dense / 1e6
    rows = []
    for i, (path, (_, goal)) in enumerate(builds.items()):
        clock = "CPU time of one thread" if cpu_time else "wall clock"
        name = (f"LocallyConnected2d fwd+bwd, ({batch}, {channels}, {size}, {size}) → {filters}, {k}×{k}, {path}; "
                f"{threads} thread{'s' * (threads > 1)}, {clock}")

        def row(baseline: str, base_ms: float, goal: str, name=name, path=path) -> dict:
            return {"benchmark": name, "build": path.split(";")[0], "baseline": baseline, "ms": ms[path],
                    "baseline_ms": base_ms, "ratio": ms[path] / base_ms, "goal": goal}

        rows.append(row(f"matmul-bound limit ({flops / 1e9:.2f} GFLOP at {peak:.0f} GFLOP/s, 2048² matmul)",
                        limit_ms, goal))
        if i == 0:
            rows.append(row(f"same FLOPs at dense ({batch * positions}×{inputs})@({inputs}×{filters}) matmul "
                            f"speed ({dense:.0f} GFLOP/s)", dense_ms, "(info)"))
        rows.append(row("F.unfold + torch.einsum", ms["einsum"], "≤ 0.4"))
        if i == 0:
            rows.append(row("the layer's pure-torch path (torch.bmm per slab of positions)", ms["torch path"],
                            "(info)"))
    return rows


def _print(rows: list[dict]) -> None:
    benchmark = None
    for r in rows:
        if r["benchmark"] != benchmark:
            benchmark = r["benchmark"]
            print(benchmark)
            print(f"  {'baseline':<78} {'ms':>8} {'base ms':>8} {'ratio':>6}  goal")
        print(f"  {r['baseline']:<78} {r['ms']:8.2f} {r['baseline_ms']:8.2f} {r['ratio']:6.2f}  {r['goal']}")


def _summary(runs: list[list[dict]]) -> None:
    print(f"\n{len(runs)} runs: median ratio (range)")
    for i, r in enumerate(runs[0]):
        ratios = sorted(run[i]["ratio"] for run in runs)
        ms = statistics.median(run[i]["ms"] for run in runs)
        print(f"  {r['build'][:60]:<60} vs {r['baseline'].split(' (')[0][:40]:<40} "
              f"{statistics.median(ratios):5.2f} ({ratios[0]:.2f}–{ratios[-1]:.2f}), ours {ms:.2f} ms  {r['goal']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="run the measurement this many times")
    parser.add_argument("--threads", type=int, default=None, help="torch and kernel threads (default: all cores)")
    parser.add_argument("--cpu-time", action="store_true", help="time by this thread's CPU time (needs --threads 1)")
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeat):
        runs.append(run(threads=args.threads, cpu_time=args.cpu_time))
        _print(runs[-1])
    if args.repeat > 1:
        _summary(runs)
