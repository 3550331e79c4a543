"""cnnkit._native: building, caching and the fallbacks when a C kernel cannot be built."""

from __future__ import annotations

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
