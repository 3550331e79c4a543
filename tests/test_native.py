"""cnnkit._native: building, caching and the fallbacks when a C kernel cannot be built."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

import cnnkit._native as native
import cnnkit.nn._lc_native as lc_native
import cnnkit.nn._lc_torch as lc_torch
from cnnkit.errors import NativeKernelWarning
from cnnkit.nn import LocallyConnected2d

NAME = "nn.locally_connected"


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache folder and a forgotten build; the real build is restored afterwards."""
    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(tmp_path))
    native._load.cache_clear()
    native._FAILURES.clear()
    yield tmp_path
    native._load.cache_clear()
    native._FAILURES.clear()


def uses_torch_path() -> bool:
    """Whether a layer's forward and backward ran the pure-torch functions (else: the C kernel)."""
    calls = []
    saved = lc_torch.forward

    def recording(*args, **kwargs):
        calls.append(1)
        return saved(*args, **kwargs)

    lc_torch.forward = recording
    try:
        LocallyConnected2d(2, 3, 3, input_size=5)(torch.randn(2, 2, 5, 5)).sum().backward()
    finally:
        lc_torch.forward = saved
    return bool(calls)


def test_builds_once_into_the_cache_and_reuses_it(fresh, monkeypatch):
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    assert native.load(NAME) is not None
    (built,) = fresh.glob("locally_connected-*.so")
    assert native.status(NAME) == f"built: {built}"
    compiles = []
    real_run = subprocess.run

    def counting_run(cmd, *args, **kwargs):
        compiles.extend([cmd] if "-shared" in cmd else [])
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(native.subprocess, "run", counting_run)
    native._load.cache_clear()
    assert native.load(NAME) is not None and compiles == []  # the cached file, not a new build
    assert not uses_torch_path()


def test_no_compiler_warns_once_and_falls_back(fresh, monkeypatch):
    monkeypatch.setattr(native, "_compiler", lambda: None)
    with pytest.warns(NativeKernelWarning, match="no C compiler found.*CNNKIT_NATIVE=0"):
        assert native.load(NAME) is None
    assert native.status(NAME).startswith("not available: no C compiler")
    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter("always")
        assert uses_torch_path()
    assert not [w for w in later if issubclass(w.category, NativeKernelWarning)]  # once per process


def test_compile_error_is_reported_with_the_compiler_output(fresh, monkeypatch, tmp_path):
    broken = tmp_path / "csrc" / "locally_connected.c"
    broken.parent.mkdir()
    broken.write_text("int lc_forward( { this is not C }\n")
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    monkeypatch.setattr(native, "_source", lambda name: broken)
    with pytest.warns(NativeKernelWarning, match=r"the compiler failed:\n\$ .*-O3.*error"):
        assert native.load(NAME) is None
    assert uses_torch_path()
    assert list(fresh.glob("*.so")) == [] and list(fresh.glob("tmp*")) == []  # no half-written files left


def test_disabled_by_environment_without_a_warning(fresh, monkeypatch, recwarn):
    monkeypatch.setenv("CNNKIT_NATIVE", "0")
    assert native.load(NAME) is None
    assert native.status(NAME) == "not available: disabled by CNNKIT_NATIVE=0"
    assert uses_torch_path()
    assert not [w for w in recwarn if issubclass(w.category, NativeKernelWarning)]


def test_unwritable_cache_falls_back_to_a_temporary_folder(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(blocker / "sub"))  # cannot be created under a file
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "xdg"))
    monkeypatch.setenv("HOME", str(blocker / "home"))
    assert native._cache_dir().parent == Path(tempfile.gettempdir())


def test_a_fresh_process_uses_the_kernel_in_forward_and_backward():
    # The layer module as a user meets it: imported cold, float32 on CPU, all threads.
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    done = subprocess.run([sys.executable, "-W", "error", "-c", _USES_THE_KERNEL], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "kernel"
    assert lc_native.use_native


# A child process that runs a layer forward and backward with the pure-torch functions removed: it prints
# "kernel" only if the C kernel did all the work (run with -W error: any NativeKernelWarning fails it).
_USES_THE_KERNEL = (
    "import torch, cnnkit.nn as n, cnnkit.nn._lc_torch as m; "
    "m.forward = m.grad_weight = m.grad_input = None; "
    "l = n.LocallyConnected2d(4, 8, 3, input_size=6); "
    "l(torch.randn(3, 4, 6, 6, requires_grad=True)).sum().backward(); print('kernel')"
)


def _child_env(cache: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "CNNKIT_NATIVE")}
    return {**env, "CNNKIT_CACHE_DIR": str(cache), **extra}


def test_a_prebuilt_cache_is_used_without_a_compiler(tmp_path):
    # A container or cluster node without a compiler, with the cache of a machine like it: the cache is
    # looked at before the compiler (the compiler's --version was part of the key, so it was needed).
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine to make the cache with")
    cache, empty_bin = tmp_path / "cache", tmp_path / "bin"
    empty_bin.mkdir()
    built = subprocess.run([sys.executable, "-W", "error", "-c", _USES_THE_KERNEL], capture_output=True,
                           text=True, env=_child_env(cache))
    assert built.returncode == 0 and built.stdout.strip() == "kernel", built.stderr
    no_compiler = _child_env(cache, CC=str(tmp_path / "no-such-cc"), PATH=str(empty_bin))
    done = subprocess.run([sys.executable, "-W", "error", "-c", _USES_THE_KERNEL], capture_output=True,
                          text=True, env=no_compiler)
    assert done.returncode == 0 and done.stdout.strip() == "kernel", done.stderr
    # The same run with an empty cache really has no compiler: it falls back with the warning.
    fallback = subprocess.run([sys.executable, "-c", _USES_THE_KERNEL], capture_output=True, text=True,
                              env={**no_compiler, "CNNKIT_CACHE_DIR": str(tmp_path / "empty")})
    assert "no C compiler found" in fallback.stderr and "kernel" not in fallback.stdout


def test_cc_that_cannot_be_found_means_no_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert native._compiler() is None  # not silently another compiler from the PATH
    monkeypatch.setenv("CC", "ccache-is-not-here gcc")
    assert native._compiler() is None


def test_concurrent_first_builds_compile_once(tmp_path):
    # DDP ranks starting together: one compiles under the cache folder's lock, the other waits and loads
    # that build (each compiled before). $CC is a wrapper that logs every compile and takes a second.
    compiler = native._compiler()
    if compiler is None:
        pytest.skip("no C compiler on this machine")
    log = tmp_path / "compiles.log"
    wrapper = tmp_path / "slow-cc"
    wrapper.write_text(f"#!/bin/sh\necho \"$$\" >> {log}\nsleep 1\nexec {' '.join(compiler)} \"$@\"\n")
    wrapper.chmod(0o755)
    env = _child_env(tmp_path / "cache", CC=str(wrapper))
    children = [subprocess.Popen([sys.executable, "-W", "error", "-c", _USES_THE_KERNEL], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [child.communicate(timeout=300) for child in children]
    assert all(child.returncode == 0 and out.strip() == "kernel" for child, (out, _) in zip(children, results)), results
    assert len(log.read_text().splitlines()) == 1
    assert len(list((tmp_path / "cache").glob("locally_connected-*.so"))) == 1


def test_a_build_without_openmp_warns_once_when_torch_has_threads(fresh, monkeypatch):
    # Apple clang has no -fopenmp: the kernel is then serial, and with torch on several threads the torch
    # path is used instead. That was silent; it is reported once.
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    monkeypatch.setattr(native, "_FLAG_SETS", (["-O3", "-march=native", "-no-such-flag"], ["-O3", "-march=native"]))
    monkeypatch.setattr(native, "_WARNED", set())
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.warns(NativeKernelWarning, match=r"without OpenMP.*torch uses 2.*set_num_threads\(1\)"):
            assert native.load(NAME) is None
        with warnings.catch_warnings(record=True) as later:
            warnings.simplefilter("always")
            assert native.load(NAME) is None
            assert uses_torch_path()
        assert not [w for w in later if issubclass(w.category, NativeKernelWarning)]  # once per process
        torch.set_num_threads(1)
        assert native.load(NAME) is not None and not uses_torch_path()
    finally:
        torch.set_num_threads(threads)


def _x86_flags() -> str:
    try:
        return next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return ""


@pytest.mark.parametrize(("march", "cpu_flag", "width"), [("x86-64-v3", " avx2 ", 8), ("x86-64", " sse2 ", 4)])
def test_builds_for_narrower_vectors_give_the_same_numbers(fresh, monkeypatch, native_equals_float64, march,
                                                          cpu_flag, width):
    # -march=native picks the widest vectors here (AVX-512 on the CI machine); users' CPUs may only have
    # AVX2 (8 floats, 16 registers) or SSE2/NEON (4 floats): build those variants of the tiles and hold them
    # to the torch path in float64.
    if native._compiler() is None or cpu_flag not in _x86_flags() + " ":
        pytest.skip(f"needs a C compiler and an x86-64 CPU with {cpu_flag.strip()}")
    monkeypatch.setattr(native, "_FLAG_SETS", (["-O3", f"-march={march}", "-fopenmp"],))
    assert native.load(NAME).lc_vector_width() == width
    torch.manual_seed(0)
    for shape, kernel, stride, padding, filters in [
        ((21, 3, 9, 8), 3, 1, "same", 37), ((5, 2, 7, 7), (2, 3), (2, 1), "valid", 70),
        ((3, 4, 10), 3, 2, 1, 9), ((2, 2, 4, 5, 4), 2, 1, "same", 16),
    ]:
        native_equals_float64(shape, kernel, stride, padding, filters=filters, bias=False)


def test_offsets_stay_on_the_cpu_whatever_the_default_device():
    # The C kernel reads the offsets table: a table made on torch's default device (meta, cuda) would be
    # a foreign pointer (a segfault before this was fixed).
    lc_native.patch_offsets.cache_clear()
    torch.set_default_device("meta")
    try:
        table = lc_native.patch_offsets((6, 6), (3, 3), (2, 2), (1, 1), 3, (2, 2))
    finally:
        torch.set_default_device("cpu")
        lc_native.patch_offsets.cache_clear()
    assert table.device.type == "cpu"
    assert table.tolist() == [[3 * (r * 6 + c) for r in (i, i + 1, i + 2) for c in (j, j + 1, j + 2)]
                              for i in (0, 2) for j in (0, 2)]


def test_no_home_directory_uses_a_private_temporary_folder(monkeypatch):
    for variable in ("CNNKIT_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(native.Path, "home", staticmethod(no_home))
    folder = native._cache_dir()
    assert folder.parent == Path(tempfile.gettempdir()) and folder.name.startswith("cnnkit-kernels-")
    assert folder.stat().st_mode & 0o777 == 0o700  # nobody else can plant a library there


def test_cached_library_is_readable_by_other_users(fresh):
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    assert native.load(NAME) is not None
    (built,) = fresh.glob("*.so")
    umask = os.umask(0)
    os.umask(umask)
    assert built.stat().st_mode & 0o777 == 0o755 & ~umask  # not mkstemp's 0600: a shared cache works


def test_a_library_without_the_declared_functions_falls_back(fresh, monkeypatch, tmp_path):
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    other = tmp_path / "csrc" / "locally_connected.c"
    other.parent.mkdir()
    other.write_text("int something_else(void) { return 0; }\n")
    monkeypatch.setattr(native, "_source", lambda name: other)
    with pytest.warns(NativeKernelWarning, match="AttributeError.*undefined symbol: lc_"):
        assert native.load(NAME) is None
    assert uses_torch_path()


# ---- the register tiles: no spills, every edge of every build --------------------------------------------

_X86_LEVELS = [("x86-64", "xmm"), ("x86-64-v3", "ymm"), ("x86-64-v4", "zmm")]  # SSE2, AVX2 + FMA, AVX-512


def _compile_to_assembly(tmp_path: Path, march: str, *defines: str) -> str:
    """The kernel compiled as _native builds it, for ``-march=<march>``, as assembly text (skips where the
    compiler cannot target it: another architecture, or too old for the x86-64-v* names)."""
    compiler = native._compiler()
    if compiler is None or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("needs a C compiler for x86-64")
    out = tmp_path / f"{march}.s"
    done = subprocess.run([*compiler, "-O3", f"-march={march}", "-fopenmp", *defines, "-S",
                           str(native._source(NAME)), "-o", str(out)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"the compiler cannot build for -march={march}: {done.stderr.strip()[:200]}")
    return out.read_text()


def _tile_loops(asm: str) -> list[list[str]]:
    """The innermost loops (a label and the backward jump to it, with no other loop inside) that multiply
    vectors: the register tiles' loops over their steps."""
    lines = asm.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^(\.L\w+):", line))}
    loops = [(labels[m.group(1)], j) for j, line in enumerate(lines)
             if (m := re.match(r"^\s+j\w+\s+(\.L\w+)\s*$", line)) and labels.get(m.group(1), j) < j]
    innermost = [(i, j) for i, j in loops if not any(i <= a and b <= j and (a, b) != (i, j) for a, b in loops)]
    return [lines[i:j + 1] for i, j in innermost
            if any(re.search(r"\b(v?fmadd\w*|v?mulps)\b", line) for line in lines[i:j + 1])]


def _stack_traffic(loop: list[str]) -> list[str]:
    """Instructions of a loop that read or write the stack (a spilled accumulator or operand, a reloaded
    pointer) or store a vector register anywhere (the tiles store their accumulators after the loop)."""
    found = []
    for line in loop:
        op, _, args = line.strip().partition("\t")
        vector_store = re.search(r"%[xyz]mm\d+,.*\)$", args) and not op.startswith(("vfmadd", "vmul", "mul"))
        if "(%rsp)" in args or vector_store:
            found.append(line.strip())
    return found


@pytest.mark.parametrize(("march", "register"), _X86_LEVELS)
def test_tile_loops_keep_everything_in_registers(tmp_path, march, register):
    # Each instruction set's tile is sized to its register file (AVX2: 16 registers of 8 floats for a 3×4
    # tile's 12 accumulators, the broadcast and b); a tile that does not fit spills accumulators to the
    # stack inside the loop, which the compiler does silently. Checked in the compiler's own output.
    loops = _tile_loops(_compile_to_assembly(tmp_path, march))
    assert len(loops) >= 30  # every (rows, vectors) case of three products: the parser found the tiles
    assert all(any(f"%{register}" in line for line in loop) for loop in loops)
    spilled = {i: found for i, loop in enumerate(loops) if (found := _stack_traffic(loop))}
    assert spilled == {}


def test_spill_check_sees_a_tile_too_large_for_the_registers(tmp_path):
    # The check above can fail: 8 rows × 4 vectors = 32 accumulators cannot live in AVX2's 16 registers.
    loops = _tile_loops(_compile_to_assembly(tmp_path, "x86-64-v3", "-DLC_NB=4", "-DLC_ROWS=8"))
    assert any(_stack_traffic(loop) for loop in loops)


# Geometries that reach each tile's edges: rows (samples forward, K = kernel offsets × channels backward)
# of every remainder of the whole-block tile's 3 or 4 rows and up to the 8-row narrow tiles; filters with a
# partial last block of 1, 2 or 3 vectors and whole narrower blocks; batch-last padding to 16, 32, 48.
_TILE_EDGES = [
    # input shape, kernel, stride, padding, filters
    ((7, 5, 4, 5), 2, 1, "valid", 24),  # N 7 = 3+3+1, K 20, F 24: a whole block of 3 (AVX2) vectors
    ((10, 3, 5, 5), 3, 1, "same", 17),  # N 10 = 3·3+1, K 27, F 17: partial 3-vector block (AVX2)
    ((17, 2, 4, 4), (2, 2), 2, "valid", 40),  # N 17 (batch-last 32), K 8, F 40 = 32 + one vector
    ((33, 7, 3, 6), 1, 1, "valid", 3),  # N 33 (batch-last 48), K 7, F 3: one partial vector, 8-row tiles
    ((4, 13, 3, 4), (1, 2), 1, "valid", 56),  # N 4 = 3+1, K 26, F 56 = 32 + 24
    ((8, 1, 5, 5), 3, 1, "valid", 31),  # N 8, K 9 = 3·3, F 31: one row short of whole vectors
    ((2, 3, 9), 4, 2, 1, 66),  # 1-D, N 2, K 12, F 66 = 64 + 2: AVX-512's whole block + a partial vector
]


@pytest.mark.parametrize(("march", "cpu_flag"), [(None, ""), ("x86-64-v3", " avx2 "), ("x86-64", " sse2 ")])
def test_every_tile_edge_equals_float64_in_every_build(fresh, monkeypatch, native_equals_float64, march,
                                                        cpu_flag):
    if native._compiler() is None or (march and cpu_flag not in _x86_flags() + " "):
        pytest.skip(f"needs a C compiler{f' and an x86-64 CPU with {cpu_flag.strip()}' if march else ''}")
    if march:
        monkeypatch.setattr(native, "_FLAG_SETS", (["-O3", f"-march={march}", "-fopenmp"],))
    assert native.load(NAME) is not None
    for shape, kernel, stride, padding, filters in _TILE_EDGES:
        native_equals_float64(shape, kernel, stride, padding, filters=filters)


def test_load_variant_builds_for_another_instruction_set(fresh):
    if native._compiler() is None or " avx2 " not in _x86_flags() + " ":
        pytest.skip("needs a C compiler and an x86-64 CPU with avx2")
    lib = native.load_variant(NAME, "x86-64-v3")
    assert lib.lc_vector_width() == 8
    assert lib.lc_build() == b"AVX2+FMA, 8-float vectors, 3x4 tile"  # declared: a C string, not an int
    assert native.load_variant(NAME, "no-such-cpu") is None  # a compile error: None, no warning
