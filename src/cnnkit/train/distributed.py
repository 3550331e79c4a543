"""What a distributed run needs besides Lightning: its size, one-line collectives, and argument checks.

Every helper is a no-op in one process (no ``torch.distributed`` process group, or a group of one), so code
that calls them runs unchanged on one CPU and on many GPUs. Inside :func:`~cnnkit.train.fit` — in a task's or
a callback's ``setup`` and later hooks — the process group Lightning made is used.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from cnnkit import errors
from cnnkit._checks import check_int, is_int
from cnnkit.errors import CnnkitError, ShapeError

__all__ = [
    "PRECISIONS",
    "all_reduce_sum",
    "broadcast_object",
    "check_devices",
    "check_precision",
    "global_rank",
    "launched_as_rank_zero",
    "stop_together",
    "world_size",
]

PRECISIONS = ("32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")
"""Values of ``fit(precision=...)`` (Lightning's names); ``None`` keeps Lightning's default, ``"32-true"``."""


def _group_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes of the initialised ``torch.distributed`` group; 1 without one.

    Examples:
        >>> world_size()
        1
    """
    return dist.get_world_size() if _group_ready() else 1


def global_rank() -> int:
    """This process's rank in the initialised ``torch.distributed`` group; 0 without one.

    Examples:
        >>> global_rank()
        0
    """
    return dist.get_rank() if _group_ready() else 0


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over all processes, as a new tensor (``tensor`` itself in one process).

    One collective: every process must call it, in the same order, with a tensor of the same shape and dtype
    (on the device of its backend: CUDA for NCCL).

    Examples:
        >>> all_reduce_sum(torch.tensor([1.0, 2.0]))
        tensor([1., 2.])
    """
    if world_size() == 1:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``value`` on every process (pickled); ``value`` itself in one process.

    For what must be computed once and be the same everywhere — band statistics, class weights: compute it on
    rank ``src`` (other ranks may pass ``None``) and broadcast it. It needs the process group, so call it where
    one exists: inside :func:`~cnnkit.train.fit` (a ``LightningModule.setup`` or ``Callback.setup``), or in
    processes started by ``torchrun``/``srun`` after ``torch.distributed.init_process_group``. Before ``fit``
    in a plain ``python script.py`` run with ``strategy="ddp"`` there is no group yet (Lightning starts the
    other processes inside ``fit``, and each runs the script up to ``fit`` on its own): there it returns
    ``value`` unchanged, so compute such values deterministically or inside ``fit``.

    Args:
        value: Any picklable object; only rank ``src``'s is used.
        src: The rank whose value is sent.

    Examples:
        >>> broadcast_object({"mean": [0.5, 0.25]})
        {'mean': [0.5, 0.25]}
    """
    if world_size() == 1:
        return value
    src = check_int(src, "src", minimum=0)
    if src >= world_size():
        raise ShapeError(f"src must be a rank in [0, {world_size()}). Received src={src}.")
    box = [value if global_rank() == src else None]
    device = None
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    dist.broadcast_object_list(box, src=src, device=device)
    return box[0]


def launched_as_rank_zero() -> bool:
    """Whether this process is rank 0 of its run, from the variables launchers set (torchrun's ``RANK``,
    SLURM's ``SLURM_PROCID``, Lightning's ``NODE_RANK``/``LOCAL_RANK``), before any process group exists.

    For what cnnkit writes before ``fit`` has a trainer to ask (``trainer.is_global_zero`` afterwards).
    A one-process SLURM job has ``SLURM_PROCID=0``.

    Examples:
        >>> import os
        >>> launched_as_rank_zero() == all(os.environ.get(k, "0") == "0" for k in
        ...                                ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"))
        True
    """
    if _group_ready():
        return dist.get_rank() == 0
    return all(os.environ.get(key, "0").strip() in ("", "0") for key in ("RANK", "SLURM_PROCID", "NODE_RANK",
                                                                         "LOCAL_RANK"))


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps_count() -> int:
    mps = getattr(torch.backends, "mps", None)
    return 1 if mps is not None and mps.is_available() else 0


def check_devices(accelerator: str, devices: int | str | Sequence[int], num_nodes: int = 1) -> int | None:
    """Check ``devices`` against what this machine has, before anything starts; return the process count.

    CPU processes may be as many as asked (each one a process with the gloo backend). GPUs (``"gpu"``,
    ``"cuda"``, or ``"auto"`` on a machine with CUDA) and Apple's ``"mps"`` must exist: asking for more than
    there are is an error that names the value and what exists. Other accelerators are left to Lightning.

    Args:
        accelerator: Lightning's accelerator name: ``"cpu"``, ``"gpu"``, ``"cuda"``, ``"mps"``, ``"auto"``, …
        devices: Devices per node: an int (``-1``: all), ``"auto"``, a digit string, or a list of indices.
        num_nodes: Number of machines (>= 1).

    Returns:
        The number of processes of the run (devices × nodes), or ``None`` where Lightning decides it
        (``"auto"`` on the CPU, accelerators not checked here).

    Examples:
        >>> check_devices("cpu", 4, num_nodes=2)
        8
        >>> check_devices("cpu", 0)
        Traceback (most recent call last):
        ...
        cnnkit.errors.ShapeError: devices must be an integer >= 1 (or -1 or 'auto' for all). Received devices=0.
    """
    num_nodes = check_int(num_nodes, "num_nodes")
    if not isinstance(accelerator, str):
        return None  # an Accelerator instance: Lightning checks it
    name = accelerator.lower()
    if name == "auto":
        name = "cuda" if _cuda_count() else "mps" if _mps_count() else "cpu"
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        if name == "cpu" or not devices or not all(is_int(d) and d >= 0 for d in devices) \
                or len(set(devices)) != len(devices):
            raise ShapeError(
                "devices as a list must hold distinct device indices >= 0, and only for GPUs. "
                f"Received devices={list(devices)!r} with accelerator={accelerator!r}."
            )
    elif not (devices == "auto" or (is_int(devices) and (devices >= 1 or devices == -1))):
        raise ShapeError(f"devices must be an integer >= 1 (or -1 or 'auto' for all). Received devices={devices!r}.")
    if name == "cpu":
        return None if devices in ("auto", -1) else int(devices) * num_nodes
    if name in ("gpu", "cuda", "mps"):
        available = _cuda_count() if name in ("gpu", "cuda") else _mps_count()
        kind = "CUDA GPU" if name in ("gpu", "cuda") else "MPS device"
        if isinstance(devices, Sequence) and not isinstance(devices, str):
            missing = [d for d in devices if d >= available]
            if missing:
                raise ShapeError(
                    f"devices={list(devices)!r} names {kind} {missing[0]}, but this machine has {available} "
                    f"{kind}(s) (indices 0 to {available - 1})." if available else
                    f"devices={list(devices)!r} asks for {kind}s, but this machine has none."
                )
            return len(devices) * num_nodes
        if available == 0:
            raise ShapeError(
                f"accelerator={accelerator!r} with devices={devices!r} asks for {kind}s, but this machine has none. "
                "Use accelerator='cpu' (any number of processes, gloo backend)."
            )
        count = available if devices in ("auto", -1) else int(devices)
        if count > available:
            raise ShapeError(
                f"devices={devices!r} asks for {count} {kind}s per node, but this machine has {available}. "
                f"Use devices <= {available}, or accelerator='cpu' for CPU processes."
            )
        return count * num_nodes
    return None


def check_precision(precision: str | None) -> str | None:
    """``precision`` if it is ``None`` or one of :data:`PRECISIONS`; else one clear error.

    Examples:
        >>> check_precision("bf16-mixed")
        'bf16-mixed'
        >>> check_precision("half")
        Traceback (most recent call last):
        ...
        cnnkit.errors.ShapeError: Unknown precision 'half'. Expected None or one of ('32-true', ...
    """
    if precision is None or (isinstance(precision, str) and precision in PRECISIONS):
        return precision
    raise ShapeError(f"Unknown precision {precision!r}. Expected None or one of {PRECISIONS}.")


ERRORS_VARIABLE = "CNNKIT_RANK_ERRORS"
"""The folder where the processes Lightning's ``ddp`` starts report their error (set by :func:`stop_together`)."""

_LAUNCHED = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_PROCID")
_PARENT_GRACE = 10.0
"""Seconds a failed process waits for the process that started it to end before it ends by itself."""
_active = threading.local()


def _reports(folder: str) -> list[dict]:
    found = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        if name.startswith("error-rank") and name.endswith(".json"):
            with contextlib.suppress(OSError, ValueError), open(os.path.join(folder, name), encoding="utf-8") as f:
                found.append(json.load(f))
    return found


def _is_ours(name: str) -> bool:
    kind = getattr(errors, name, None)
    return isinstance(kind, type) and issubclass(kind, CnnkitError)


def _first(reports: list[dict]) -> dict | None:
    """The report of the rank that failed first with a data error (a ``CnnkitError``), else the first report: the
    others may have failed only because it went away (gloo's "Connection closed by peer")."""
    ours = [r for r in reports if _is_ours(r.get("type", ""))]
    return min(ours or reports, key=lambda r: (r["time"], r["rank"])) if reports else None


def _as_error(report: dict) -> Exception:
    kind = getattr(errors, report["type"], None)
    if _is_ours(report["type"]):
        with contextlib.suppress(TypeError):
            return kind(report["message"])
    return CnnkitError(f"Rank {report['rank']} failed: {report['type']}: {report['message']}")


@contextlib.contextmanager
def stop_together(enabled: bool = True) -> Iterator[None]:
    """One rank's error stops every rank, and the process that started them fails with that error.

    For a command that Lightning's ``ddp`` runs again in each other process (``cnnkit train --devices N``): the
    process started by hand (no launcher's ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``SLURM_PROCID``) makes a
    temporary folder and names it in ``CNNKIT_RANK_ERRORS``, which the processes Lightning starts inherit. A process
    of the run that fails writes its error there (class, message, time) and waits (at most 10 s) for the first
    process to end, which it does at once, printing ``error: <message>`` and exiting with code 2 — also while it
    waits in a collective or for the others to join, where no Python exception reaches it. Of several errors the
    first data error (a :class:`~cnnkit.CnnkitError`, such as a damaged file) wins over the "Connection closed by
    peer" that the others see when a process goes away. Without this, Lightning's observer SIGKILLs the first
    process up to 5 s after another fails (exit code -9), or the first fails with gloo's connection error. A process
    that outlives the first one ends by itself. Under ``torchrun`` or SLURM (their launcher watches the processes)
    and with ``enabled=False`` this does nothing; a nested use is the outer one's.
    """
    if not enabled or getattr(_active, "on", False):
        yield
        return
    launched = any(key in os.environ for key in _LAUNCHED)
    folder = os.environ.get(ERRORS_VARIABLE)
    if launched and not (folder and not launched_as_rank_zero()):
        yield  # a launcher's process (torchrun, srun): the launcher stops the others
        return
    _active.on = True
    try:
        if folder:  # a process Lightning's ddp started
            with _child(folder):
                yield
        else:
            with _starter():
                yield
    finally:
        _active.on = False


@contextlib.contextmanager
def _child(folder: str) -> Iterator[None]:
    parent = os.getppid()

    def orphaned() -> bool:
        return os.getppid() != parent

    def watch() -> None:  # the first process is gone (killed, or failed on its own): nobody waits for this one
        while not orphaned():
            time.sleep(0.2)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    threading.Thread(target=watch, name="cnnkit-parent-watch", daemon=True).start()
    try:
        yield
    except BaseException as error:
        rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK", "?")
        report = {"rank": int(rank) if rank.isdigit() else rank, "time": time.time(), "type": type(error).__name__,
                  "message": str(error)}
        with contextlib.suppress(OSError):
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".report-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(report, f)
            os.replace(tmp, os.path.join(folder, f"error-rank{rank}.json"))
        deadline = time.monotonic() + _PARENT_GRACE
        while not orphaned() and time.monotonic() < deadline:
            time.sleep(0.05)
        if orphaned():  # the first process reported the error and ended: end without a second report
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        raise


@contextlib.contextmanager
def _starter() -> Iterator[None]:
    folder = tempfile.mkdtemp(prefix="cnnkit-rank-errors-")
    os.environ[ERRORS_VARIABLE] = folder
    lock, done = threading.Lock(), threading.Event()

    def watch() -> None:
        while not done.wait(0.1):
            first = _first(_reports(folder))
            if first is None:
                continue
            with lock:
                if done.is_set():
                    return
                sys.stdout.flush()
                sys.stderr.write(f"error: {_as_error(first)}\n")
                sys.stderr.flush()
                shutil.rmtree(folder, ignore_errors=True)
                os._exit(2)  # the main thread may wait in a collective that no exception reaches

    threading.Thread(target=watch, name="cnnkit-rank-errors", daemon=True).start()
    try:
        yield
    except BaseException as error:
        with lock:
            done.set()
        first = _first(_reports(folder))
        if first is not None and not isinstance(error, CnnkitError) and _is_ours(first["type"]):
            raise _as_error(first) from None  # our error was the others' going away
        raise
    finally:
        with lock:
            done.set()
        os.environ.pop(ERRORS_VARIABLE, None)
        shutil.rmtree(folder, ignore_errors=True)
