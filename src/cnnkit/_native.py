"""Build-on-first-use C kernels, loaded with :mod:`ctypes`.

A few layers have a C kernel beside them (``cnnkit/<package>/csrc/<name>.c``) for the case where torch has no
fast op. :func:`load` compiles the file once per machine with the system's C compiler
(``cc -O3 -march=native -fopenmp``, about a second), caches the shared library and returns it. The code
is vectorised for the CPU it is built on (AVX-512, AVX2, SSE2 or NEON widths), so ``-march=native`` is
required; a compiler that refuses it means the torch path. It needs no
Python headers and no torch headers: the kernels take raw pointers to contiguous float32 buffers the
caller has laid out.

Every caller keeps a pure-torch path, used whenever :func:`load` returns ``None``: no compiler, a compile
error, ``CNNKIT_NATIVE=0`` in the environment, or a kernel built without OpenMP while torch runs more than
one thread. The first failure is reported once with :class:`cnnkit.errors.NativeKernelWarning`.

Cache: ``$CNNKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/cnnkit``, else ``~/.cache/cnnkit`` (the first that
can be written, else a folder in the temporary directory); the file name
holds a hash of the source, the compiler, its flags and the CPU's flags, so an edited kernel, another
compiler or another CPU gets its own build. Builds are written to a temporary name and renamed, so
processes that build at the same time (DDP workers, test runners) do not see half-written files.

OpenMP: the kernels' parallel loops use ``libgomp.so.1``. When torch has already loaded a library of that
name (Linux wheels ship one), the dynamic loader hands the kernels the same runtime, so they share torch's
thread pool rather than starting a second one.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from cnnkit.errors import NativeKernelWarning

__all__ = ["load", "status"]

# Always for the CPU at hand: a build for the baseline ISA (SSE2 on x86-64) would be slower than torch's
# own kernels, which pick the CPU's vector width at run time.
_FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-march=native"],  # no OpenMP (e.g. Apple clang): used with one thread only
)
_FAILURES: dict[str, str] = {}


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _cache_dir() -> Path:
    """The first of $CNNKIT_CACHE_DIR, $XDG_CACHE_HOME/cnnkit, ~/.cache/cnnkit that can be written, else a
    folder in the system's temporary directory."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    candidates = [os.environ.get("CNNKIT_CACHE_DIR"), (Path(xdg) if xdg else Path.home() / ".cache") / "cnnkit"]
    for root in candidates:
        if root:
            try:
                Path(root).mkdir(parents=True, exist_ok=True)
            except OSError:
                continue
            if os.access(root, os.W_OK):
                return Path(root)
    return Path(tempfile.gettempdir()) / f"cnnkit-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


def _source(name: str) -> Path:
    package, _, stem = name.rpartition(".")
    return Path(__file__).parent.joinpath(*package.split("."), "csrc", f"{stem}.c")


def _build(source: Path, compiler: str) -> tuple[Path | None, bool, str]:
    """Compile ``source`` with the first flag set that works: ``(library, has OpenMP, error text)``."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256(
            "\0".join([source.read_text(), compiler, version, " ".join(flags), platform.machine(), _cpu_flags()])
            .encode()
        ).hexdigest()[:16]
        target = _cache_dir() / f"{source.stem}-{key}.so"
        if target.exists():
            return target, "-fopenmp" in flags, ""
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        cmd = [compiler, *flags, "-shared", "-fPIC", str(source), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode == 0:
            os.replace(tmp, target)
            return target, "-fopenmp" in flags, ""
        os.unlink(tmp)
        errors.append(f"$ {' '.join(cmd)}\n{done.stderr.strip()}")
    return None, False, "\n".join(errors)


@functools.cache
def _load(name: str) -> tuple[ctypes.CDLL | None, bool]:
    if os.environ.get("CNNKIT_NATIVE", "1") == "0":
        _FAILURES[name] = "disabled by CNNKIT_NATIVE=0"
        return None, False
    compiler = _compiler()
    if compiler is None:
        _FAILURES[name] = "no C compiler found (looked for $CC, cc, gcc, clang)"
    else:
        try:
            path, openmp, error = _build(_source(name), compiler)
            if path is not None:
                return ctypes.CDLL(str(path)), openmp
            _FAILURES[name] = f"the compiler failed:\n{error}"
        except OSError as e:  # unwritable cache, unloadable library
            _FAILURES[name] = f"{type(e).__name__}: {e}"
    warnings.warn(
        f"cnnkit: the C kernel {name!r} is not available, so the slower pure-torch path is used. Reason: "
        f"{_FAILURES[name]}. Set CNNKIT_NATIVE=0 to use the torch path without this warning.",
        NativeKernelWarning,
        stacklevel=3,
    )
    return None, False


def load(name: str) -> ctypes.CDLL | None:
    """The C kernel ``name`` (e.g. ``"nn.locally_connected"``), built on first use; ``None`` if unusable.

    ``None`` also when the kernel was built without OpenMP and torch uses more than one thread (the torch
    path is faster then).

    Examples:
        >>> lib = load("nn.locally_connected")
        >>> lib is None or hasattr(lib, "lc_forward")
        True
    """
    lib, openmp = _load(name)
    if lib is not None and not openmp and torch.get_num_threads() > 1:
        return None
    return lib


def status(name: str) -> str:
    """One line saying whether the C kernel ``name`` is in use, and why not if it is not.

    Examples:
        >>> status("nn.locally_connected").startswith(("built", "not available"))
        True
    """
    lib, openmp = _load(name)
    if lib is None:
        return f"not available: {_FAILURES.get(name, 'unknown reason')}"
    return f"built: {lib._name}" + ("" if openmp else " (without OpenMP: used with one thread only)")
