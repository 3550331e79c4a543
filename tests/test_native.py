"""cnnkit._native: building, caching and the fallbacks when a C kernel cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

import cnnkit._native as native
import cnnkit.nn.locally_connected as lc_module
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
    out = LocallyConnected2d(2, 3, 3, input_size=5)(torch.randn(2, 2, 5, 5))
    return type(out.grad_fn).__name__ == "_LocallyConnectedFunctionBackward"


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
    code = (
        "import torch, cnnkit.nn as n; l = n.LocallyConnected2d(4, 8, 3, input_size=6); "
        "y = l(torch.randn(3, 4, 6, 6, requires_grad=True)); y.sum().backward(); print(type(y.grad_fn).__name__)"
    )
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "_NativeLocallyConnectedFunctionBackward"
    assert lc_module._use_native


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
    lc_module._patch_offsets.cache_clear()
    torch.set_default_device("meta")
    try:
        table = lc_module._patch_offsets((6, 6), (3, 3), (2, 2), (1, 1), 3, (2, 2))
    finally:
        torch.set_default_device("cpu")
        lc_module._patch_offsets.cache_clear()
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
    with pytest.warns(NativeKernelWarning, match="AttributeError.*lc_forward"):
        assert native.load(NAME) is None
    assert uses_torch_path()
