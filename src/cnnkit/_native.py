"""Build-on-first-use C kernels, loaded with :mod:`ctypes`.

A few layers have a C kernel beside them (``cnnkit/<package>/csrc/<name>.c``) for the case where torch has
no fast op. :func:`load` compiles the file once per machine with the system's C compiler
(``cc -O3 -march=native -fopenmp``, about a second), caches the shared library and returns it with the
argument types the layer registered through :func:`declare`. No Python or torch headers are needed: the
kernels take raw pointers to contiguous float32 buffers the caller has laid out. The code is vectorised for
the CPU it is built on (AVX-512, AVX2, SSE2 or NEON widths), so ``-march=native`` is required; a compiler
that refuses it means the torch path.

Every caller keeps a pure-torch path, used whenever :func:`load` returns ``None``: no compiler and no
cached build, a compile error, ``CNNKIT_NATIVE=0`` in the environment, or a kernel built without OpenMP
(Apple clang) while torch runs more than one thread. Each of these but ``CNNKIT_NATIVE=0`` is reported once
per process with :class:`cnnkit.errors.NativeKernelWarning`.

Cache: ``$CNNKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/cnnkit``, else ``~/.cache/cnnkit`` (the first that
can be written, else a private temporary folder for the process). The file name holds a hash of the
source, the machine, the CPU's flags and the compiler flags, and nothing that needs the compiler: the
cache is consulted first, so a machine without a compiler (a container image, a cluster node) uses a build
made there earlier or copied in with the same CPU. ``$CC`` names the compiler (``"ccache gcc"`` works);
when it is set and cannot be found there is no compiler, else cc, gcc or clang on the PATH. Builds are
written to a temporary name and renamed, and a process builds only while it holds an exclusive lock on
``<name>.lock`` in the cache folder (``fcntl.flock``, where the platform has it): processes that start at
the same time (DDP ranks, test runners) compile once, the others wait and load that build.

OpenMP: the kernels' parallel loops use ``libgomp.so.1``. When torch has already loaded a library of that
name (the Linux wheel of torch 2.13 ships one under that name), the dynamic loader hands the kernels the
same runtime, so they share torch's thread pool. A torch build whose OpenMP runtime has another name
(older wheels bundled a renamed ``libgomp-<hash>.so.1``) leaves the kernels with the system's runtime: a
second pool of the same size, which works but was not measured here.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from cnnkit.errors import NativeKernelWarning

__all__ = ["declare", "load", "load_variant", "status"]

# Always for the CPU at hand: a build for the baseline ISA (SSE2 on x86-64) would be slower than torch's
# own kernels, which pick the CPU's vector width at run time.
_FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-march=native"],  # no OpenMP (e.g. Apple clang): used with one thread only
)
_COMPILE_TIMEOUT_S = 300
Signatures = dict[str, tuple[list, object]]  # C function name -> (ctypes argtypes, restype)
_SIGNATURES: dict[str, Signatures] = {}
_FAILURES: dict[str, str] = {}
_WARNED: set[str] = set()  # kernels whose no-OpenMP fallback was reported
_NO_COMPILER = "no C compiler found (looked for $CC, else cc, gcc, clang on the PATH)"


def declare(name: str, signatures: Signatures) -> None:
    """Register the C functions kernel ``name`` must export: ``{function: (argtypes, restype)}``.

    :func:`load` sets them on the library (a bare Python int would otherwise be passed as a C ``int``) and
    treats a missing function as a failed build.
    """
    _SIGNATURES[name] = signatures


def _compiler() -> list[str] | None:
    """The C compiler command: ``$CC`` if set (may be ``"ccache gcc"``; ``None`` if it cannot be found),
    else cc, gcc or clang on the PATH."""
    cc = shlex.split(os.environ.get("CC", ""))
    if cc:
        found = shutil.which(cc[0])
        return [found, *cc[1:]] if found else None
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return [shutil.which(name)]
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _writable(root: Path) -> bool:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(root, os.W_OK)


@functools.cache
def _private_dir() -> Path:
    """A fresh folder only this process's user can write (``mkdtemp`` makes it 0700)."""
    return Path(tempfile.mkdtemp(prefix="cnnkit-kernels-"))


def _cache_dir() -> Path:
    """The first of $CNNKIT_CACHE_DIR, $XDG_CACHE_HOME/cnnkit, ~/.cache/cnnkit that can be written, else a
    private temporary folder for this process (never a shared one with a guessable name: another user
    could plant a library there)."""
    if os.environ.get("CNNKIT_CACHE_DIR") and _writable(Path(os.environ["CNNKIT_CACHE_DIR"])):
        return Path(os.environ["CNNKIT_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME") and _writable(Path(os.environ["XDG_CACHE_HOME"]) / "cnnkit"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "cnnkit"
    try:
        home = Path.home()
    except (RuntimeError, KeyError):  # no $HOME and no passwd entry (containers run as an unknown uid)
        home = None
    if home is not None and _writable(home / ".cache" / "cnnkit"):
        return home / ".cache" / "cnnkit"
    return _private_dir()


def _source(name: str) -> Path:
    package, _, stem = name.rpartition(".")
    return Path(__file__).parent.joinpath(*package.split("."), "csrc", f"{stem}.c")


def _targets(source: Path, folder: Path, flag_sets: Sequence[list[str]]) -> list[tuple[list[str], Path]]:
    """``(flags, cached library)`` for each flag set. The key needs no compiler: source, machine, CPU, flags."""
    identity = [source.read_text(), platform.machine(), _cpu_flags()]
    targets = []
    for flags in flag_sets:
        key = hashlib.sha256("\0".join([*identity, " ".join(flags)]).encode()).hexdigest()[:16]
        targets.append((flags, folder / f"{source.stem}-{key}.so"))
    return targets


def _cached(targets: list[tuple[list[str], Path]]) -> tuple[Path, bool] | None:
    for flags, target in targets:
        if target.exists():
            return target, "-fopenmp" in flags
    return None


@contextlib.contextmanager
def _lock(path: Path):
    """Hold an exclusive lock on ``path`` (created if missing) while building; a no-op without fcntl."""
    try:
        import fcntl
    except ImportError:  # Windows: builds may race; the rename keeps each file whole
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(source: Path, flag_sets: Sequence[list[str]] | None = None) -> tuple[Path | None, bool, str]:
    """The library for ``source``: ``(library, has OpenMP, error text)``.

    A build already in the cache for any flag set (``_FLAG_SETS`` unless given) is used before a compiler is
    looked for. Otherwise the first flag set that compiles is built, under the cache folder's lock; a build
    that another process finished while this one waited for the lock is used instead.
    """
    folder = _cache_dir()
    targets = _targets(source, folder, flag_sets or _FLAG_SETS)
    if (hit := _cached(targets)) is not None:
        return (*hit, "")
    compiler = _compiler()
    if compiler is None:
        return None, False, _NO_COMPILER
    errors = []
    with _lock(folder / f"{source.stem}.lock"):
        if (hit := _cached(targets)) is not None:  # built by another process while this one waited
            return (*hit, "")
        for flags, target in targets:
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
            os.close(fd)
            try:
                cmd = [*compiler, *flags, "-shared", "-fPIC", str(source), "-o", tmp]
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S)
                if done.returncode == 0:
                    umask = os.umask(0)
                    os.umask(umask)
                    os.chmod(tmp, 0o755 & ~umask)  # mkstemp's 0600 would hide a shared cache from other users
                    os.replace(tmp, target)
                    return target, "-fopenmp" in flags, ""
                errors.append(f"$ {' '.join(cmd)}\n{done.stderr.strip()}")
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    return None, False, "the compiler failed:\n" + "\n".join(errors)


def _open(name: str, path: Path) -> ctypes.CDLL:
    """The library at ``path`` with the argument types declared for kernel ``name`` (AttributeError: a
    declared function is missing)."""
    lib = ctypes.CDLL(str(path))
    for function, (argtypes, restype) in _SIGNATURES.get(name, {}).items():
        getattr(lib, function).argtypes = argtypes
        getattr(lib, function).restype = restype
    return lib


@functools.cache
def _load(name: str) -> tuple[ctypes.CDLL | None, bool]:
    if os.environ.get("CNNKIT_NATIVE", "1") == "0":
        _FAILURES[name] = "disabled by CNNKIT_NATIVE=0"
        return None, False
    try:
        path, openmp, error = _build(_source(name))
        if path is not None:
            return _open(name, path), openmp  # AttributeError: an old or foreign library
        _FAILURES[name] = error
    except (OSError, AttributeError, subprocess.TimeoutExpired) as e:
        # unwritable cache, unloadable library, a library without the declared functions, a hung compiler
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
    if lib is not None and not openmp and (threads := torch.get_num_threads()) > 1:
        if name not in _WARNED:
            _WARNED.add(name)
            warnings.warn(
                f"cnnkit: the C kernel {name!r} was built without OpenMP (the compiler has no -fopenmp, e.g. "
                f"Apple clang), so it runs on one thread only, and torch uses {threads}: the pure-torch path is "
                f"used instead. torch.set_num_threads(1) uses the kernel; a compiler with OpenMP (macOS: "
                f"Homebrew's LLVM clang as $CC) and an empty cache folder build it for all threads. Set "
                f"CNNKIT_NATIVE=0 to use the torch path without this warning.",
                NativeKernelWarning,
                stacklevel=2,
            )
        return None
    return lib


@functools.cache
def load_variant(name: str, march: str) -> ctypes.CDLL | None:
    """The C kernel ``name`` built for ``-march=<march>`` instead of this CPU, or ``None`` (no compiler, a
    compile error, no OpenMP); never a warning.

    For benchmarks and tests that compare the build a narrower CPU would get with the native one (e.g.
    ``"x86-64-v3"``, AVX2 + FMA, on an AVX-512 machine); the layers always use :func:`load`. Only call
    its functions on a CPU that has that instruction set.
    """
    flags = ["-O3", f"-march={march}", "-fopenmp"]
    try:
        path, _, _ = _build(_source(name), [flags])
        return None if path is None else _open(name, path)
    except (OSError, AttributeError, subprocess.TimeoutExpired):
        return None


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
