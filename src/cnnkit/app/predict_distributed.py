"""``cnnkit predict`` on several processes: CPU processes (gloo) or one GPU per rank, started here or by a launcher.

:func:`predict_distributed` shares the work of :func:`cnnkit.app.predict.predict_files` among ranks and writes
the files one process writes, byte for byte:

* images run whole are shared by whole read groups (:func:`cnnkit.predict.sharding.image_groups`, balanced by
  pixels): a group runs the padded batches it runs in one process, so its numbers are the same;
* a scene over ``max_pixels`` is cut as in one process and its tiles dealt round the ranks
  (:func:`~cnnkit.predict.sharding.tile_owner`); every rank runs its tiles and sends each finished one to rank 0,
  which writes the scene's files through the one-process writer (:func:`cnnkit.app.predict.predict_scene_into`)
  in plan order. A rank blocks on its send until rank 0 takes the tile, so a rank holds about one tile and rank 0
  what one process holds (its writers) plus one tile received.

``out`` is checked and locked (:class:`~cnnkit.rasters.destination.FolderLock`) as by one process, for the whole
run. Every rank writes into its own folder under a hidden staging folder in ``out``; when every rank has finished,
rank 0 renames the files into ``out`` (so nothing appears under a final name before every output is complete) and
rank 0 alone reports the summary. ``resume`` is not available on several processes yet.

Processes: with ``devices=N`` (and no launcher) this module starts ``N`` processes itself — fresh interpreters
running ``python -m cnnkit.app.predict_distributed CONFIG`` with the variables torchrun sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), so the ranks run the same code as under torchrun.
Nothing is pickled into them but paths and plain options (the reason ``cnnkit train`` refuses ``ddp_spawn`` —
closures and callbacks that do not pickle — does not arise: each rank rebuilds the predictor from the run folder).
When a rank fails, the others are stopped at once (terminated, then killed after a few seconds), the staging
folder is removed, and the failing rank's error is raised; collectives time out after ``timeout`` seconds.
Under ``torchrun`` (or any launcher that sets those variables) each process is one rank: rank 0 returns the
summary, the others ``None``, and the launcher stops every rank when one fails.

The ranks talk through gloo (CPU tensors) on CPUs and GPUs alike: what they exchange is finished tiles, already on
the CPU for writing. GPUs, NCCL and several nodes were not run when this was written.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from cnnkit import errors
from cnnkit._checks import check_int
from cnnkit.app.predict import (
    PredictionRun,
    _check_out,
    _check_row_budget,
    expand_inputs,
    input_stem,
    load_predictor,
    predict_files,
    predict_scene_into,
)
from cnnkit.app.threads import usable_cores
from cnnkit.errors import CnnkitError, ShapeError, UnsupportedError
from cnnkit.predict.scene import open_scene
from cnnkit.predict.sharding import TileResult, balance, image_groups, predict_tiles, scene_tiles, tile_owner
from cnnkit.rasters.destination import FolderLock, prepare_folder, remove_leftovers
from cnnkit.train.distributed import broadcast_object, check_devices

__all__ = ["ACCELERATORS", "PREDICT_OPTIONS", "predict_distributed"]

ACCELERATORS = ("cpu", "cuda", "gpu", "auto")
"""Values of ``accelerator``: CPU processes, one CUDA GPU per rank, or GPUs where there are any."""

PREDICT_OPTIONS = ("tiff", "probabilities", "confidence", "max_pixels", "tile", "batch_size", "overwrite",
                   "resume", "external_sources", "rgb_bands", "probability_dtype", "progress", "log")
"""Keyword arguments of :func:`~cnnkit.app.predict.predict_files` that :func:`predict_distributed` passes on."""

_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                     "GROUP_RANK", "NODE_RANK", "TORCHELASTIC_RUN_ID")
_STAGING = ".cnnkit-predict-staging-"
"""Name (and a random suffix) of the hidden folder in ``out`` where the ranks write until every one has finished."""
_STOP_GRACE = 5.0
"""Seconds a rank is given to end after SIGTERM before it is killed."""


def predict_distributed(run: str | os.PathLike, inputs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                        devices: int | str = 1, accelerator: str = "cpu", threads: int | None = None,
                        timeout: float = 1800.0, **predict_options: Any) -> PredictionRun | None:
    """Predict ``inputs`` with the run on several processes; the files equal one process's, byte for byte.

    Args:
        run: A run folder (as for :func:`~cnnkit.app.predict.load_predictor`).
        inputs: Files, folders or glob patterns (as for :func:`~cnnkit.app.predict.predict_files`).
        out: Output folder.
        devices: Processes to start: CPU processes (at most the cores this process may use) or GPUs (at most those
            this machine has). ``1`` runs :func:`~cnnkit.app.predict.predict_files` in this process. Ignored under a
            launcher (``torchrun``), whose ``WORLD_SIZE`` decides.
        accelerator: ``"cpu"``, ``"cuda"`` (or ``"gpu"``: rank ``i`` of a node on GPU ``LOCAL_RANK``), or
            ``"auto"`` (GPUs where there are any).
        threads: CPU threads per rank (default: the usable cores shared evenly among a node's ranks, at least 1; in
            one process, torch's setting is left as it is).
        timeout: Seconds a rank waits on another (gloo's timeout) before failing.
        **predict_options: :data:`PREDICT_OPTIONS`, as for :func:`~cnnkit.app.predict.predict_files`.
            ``progress`` is called once, at the end, when several processes run; ``log`` only in one process;
            ``resume`` only in one process.

    Returns:
        What was predicted, with the outputs' final paths (on rank 0; ``None`` on the other ranks of a launcher).

    Raises:
        CnnkitError: a bad argument or input, before any process starts; or the error of the first rank that
            failed (its message; its class when it is one of :mod:`cnnkit.errors`), after every rank was stopped
            and nothing was left under a final name.
    """
    unknown = sorted(set(predict_options) - set(PREDICT_OPTIONS))
    if unknown:
        raise ShapeError(f"Unknown predict option {unknown[0]!r}. Expected one of {PREDICT_OPTIONS}.")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise ShapeError(f"timeout must be a number of seconds > 0. Received timeout={timeout!r}.")
    if threads is not None:
        check_int(threads, "threads")
    name = _check_accelerator(accelerator)
    progress = predict_options.pop("progress", None)
    log = predict_options.pop("log", None)
    config = {"run": os.fspath(run), "out": os.fspath(out), "accelerator": name, "threads": threads,
              "timeout": float(timeout), "options": _plain(predict_options)}
    if launched():
        if predict_options.get("resume"):
            raise UnsupportedError("resume is not available with several processes yet (this process is one rank "
                                   "of a launcher's run). Resume in one process, or pass overwrite=True.")
        config["files"] = [os.fspath(p) for p in expand_inputs(inputs)]
        result = _run_rank(config)
        if result is not None and progress is not None:
            progress(len(result.files), result.pixels)
        return result
    processes = _check_processes(name, devices)
    if processes > 1 and predict_options.get("resume"):
        raise UnsupportedError("--resume is not available with several processes yet. Received --resume with "
                               f"--devices {devices}: resume with --devices 1, or pass --overwrite to start again.")
    if processes == 1:
        if threads is not None:
            torch.set_num_threads(threads)
        predictor, manifest = load_predictor(run, device=_rank_device(name, 0))
        return predict_files(predictor, inputs, out, band_count=(manifest.get("input") or {}).get("band_count"),
                             progress=progress, **({"log": log} if log is not None else {}), **predict_options)
    result = _launch(config, inputs, processes)
    if progress is not None:
        progress(len(result.files), result.pixels)
    return result


def launched() -> bool:
    """Whether this process is one rank of several started by a launcher (``torchrun``, or a SLURM script that sets
    ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``).

    Examples:
        >>> launched() == (int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ)
        True
    """
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


def _check_accelerator(accelerator: str) -> str:
    name = accelerator.lower() if isinstance(accelerator, str) else accelerator
    if name not in ACCELERATORS:
        raise ShapeError(f"Unknown accelerator {accelerator!r}. Expected one of {ACCELERATORS}.")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() and torch.cuda.device_count() else "cpu"
    return "cuda" if name == "gpu" else name


def _check_processes(accelerator: str, devices: int | str) -> int:
    """The number of processes to start, checked against this machine before anything starts."""
    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    if devices == "auto":
        devices = -1 if accelerator == "cuda" else 1
    if isinstance(devices, bool) or not isinstance(devices, int) or not (devices >= 1 or devices == -1):
        raise ShapeError(f"--devices must be an integer >= 1 or 'auto'. Received --devices {devices!r}.")
    if accelerator == "cpu":
        if devices == -1:
            return 1
        if devices > usable_cores():
            raise ShapeError(f"--devices {devices} asks for {devices} CPU processes, but this machine has "
                             f"{usable_cores()} CPU cores. Use --devices <= {usable_cores()} (or --device cuda for "
                             "GPUs).")
        return devices
    return int(check_devices(accelerator, devices))


def _rank_device(accelerator: str, local_rank: int) -> str:
    return f"cuda:{local_rank}" if accelerator == "cuda" else "cpu"


def _plain(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` as JSON values (``rgb_bands`` a list), refusing what cannot travel to another process."""
    plain = {}
    for key, value in options.items():
        if key == "rgb_bands" and value is not None:
            value = [int(v) for v in value]
        try:
            json.dumps(value)
        except TypeError:
            raise ShapeError(f"{key} must be a plain value to be sent to other processes. Received "
                             f"{key}={value!r}.") from None
        plain[key] = value
    return plain


# -- starting the ranks and stopping them all when one fails -------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(config: dict, inputs: Sequence[str | os.PathLike], processes: int) -> PredictionRun:
    """Start ``processes`` ranks on this machine, wait for them, and return rank 0's result (or the first error)."""
    start = time.perf_counter()
    out = prepare_folder(config["out"])
    load_predictor(config["run"])  # the run's refusals before any process starts
    files = expand_inputs(inputs)
    with FolderLock(out):
        return _launch_locked(config, files, out, processes, start)


def _clear(out: Path) -> None:
    """Leftovers of interrupted runs in the locked folder ``out``: writers' temporary files and staging folders."""
    remove_leftovers(out)
    for stale in out.glob(f"{_STAGING}*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)


def _staging(out: Path, files: list[Path], overwrite: bool) -> Path:
    """In the locked folder ``out``: leftovers cleared, the final names checked, a new staging folder made."""
    _clear(out)
    _check_out(out, [input_stem(p) for p in files], overwrite)
    staging = out / f"{_STAGING}{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    return staging


def _launch_locked(config: dict, files: list[Path], out: Path, processes: int, start: float) -> PredictionRun:
    staging = _staging(out, files, bool(config["options"].get("overwrite", False)))
    ranks: list[subprocess.Popen] = []
    try:
        config = {**config, "files": [os.fspath(p) for p in files], "staging": os.fspath(staging),
                  "parent": os.getpid()}
        (staging / "config.json").write_text(json.dumps(config), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARIABLES and not k.startswith("SLURM_")}
        env.update(WORLD_SIZE=str(processes), LOCAL_WORLD_SIZE=str(processes), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(_free_port()))
        for rank in range(processes):
            ranks.append(subprocess.Popen(  # this interpreter, this module, our config
                [sys.executable, "-m", "cnnkit.app.predict_distributed", os.fspath(staging / "config.json")],
                env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}))
        while True:
            codes = [p.poll() for p in ranks]
            if any(code not in (None, 0) for code in codes):
                _stop(ranks)
                raise _first_error(staging, codes) from None  # the codes seen before the others were stopped
            if all(code == 0 for code in codes):
                break
            time.sleep(0.1)
        result = json.loads((staging / "result.json").read_text(encoding="utf-8"))
    finally:
        _stop(ranks)
        shutil.rmtree(staging, ignore_errors=True)
    run = PredictionRun(files={Path(k): [Path(p) for p in v] for k, v in result["files"]},
                        pixels=int(result["pixels"]), class_pixels=np.asarray(result["class_pixels"], np.int64),
                        tiled=[Path(p) for p in result["tiled"]])
    run.seconds = time.perf_counter() - start
    return run


def _stop(ranks: list[subprocess.Popen]) -> None:
    """Terminate the ranks still running, then kill those that have not ended after :data:`_STOP_GRACE` seconds."""
    alive = [p for p in ranks if p.poll() is None]
    for p in alive:
        p.terminate()
    deadline = time.monotonic() + _STOP_GRACE
    for p in alive:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _first_error(staging: Path, codes: list[int | None]) -> Exception:
    """The error of the rank that failed first (the others may have failed only because it went away)."""
    reports = []
    for path in staging.glob("error-rank*.json"):
        try:
            reports.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    ours = [r for r in reports if isinstance(getattr(errors, r["type"], None), type)
            and issubclass(getattr(errors, r["type"]), CnnkitError)]
    silent = [(rank, code) for rank, code in enumerate(codes)
              if code not in (None, 0) and rank not in {r["rank"] for r in reports}]
    if not ours and silent:  # its peers' reports only say it went away ("Connection closed by peer")
        rank, code = silent[0]
        how = f"was killed by signal {-code}" if code < 0 else f"stopped with exit code {code}"
        return CnnkitError(f"Rank {rank} of {len(codes)} {how} without reporting an error (killed, or out of "
                           "memory?); every rank was stopped and no output was written.")
    if not reports:
        return CnnkitError(f"The {len(codes)} ranks stopped without reporting an error (exit codes {codes}); no "
                           "output was written.")
    first = min(ours or reports, key=lambda r: (r["time"], r["rank"]))  # a data error, not the others' lost peer
    kind = getattr(errors, first["type"], None)
    if isinstance(kind, type) and issubclass(kind, CnnkitError):
        try:
            return kind(first["message"])
        except TypeError:
            pass
    return CnnkitError(f"Rank {first['rank']} of {len(codes)} failed: {first['type']}: {first['message']}")


def _end_with_parent(parent: int) -> None:
    """Have this rank terminated when ``parent`` (the process that started it) ends, and end now if it already has.

    A parent killed without its ``finally`` (SIGKILL, the out-of-memory killer, SIGTERM) would otherwise leave its ranks
    running: they would go on writing into a staging folder that the next run into ``out`` removes, and rank 0 would
    rename its files into ``out`` while that run holds the lock. Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere
    the ranks end when a collective times out.
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it ended before the line above
        sys.exit(1)


def _main(argv: Sequence[str]) -> int:
    """One rank started by :func:`_launch`: run it; on an error, write it where the launcher reads it."""
    config = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    if config.get("parent") is not None:
        _end_with_parent(config["parent"])

    reported: list[BaseException] = []

    def report(error: BaseException) -> None:  # at once: before leaving the group makes the others fail too
        rank = int(os.environ.get("RANK", "0"))
        (Path(config["staging"]) / f"error-rank{rank}.json").write_text(json.dumps(
            {"rank": rank, "time": time.time(), "type": type(error).__name__, "message": str(error)}),
            encoding="utf-8")
        reported.append(error)

    try:
        _run_rank(config, on_error=report)
    except BaseException as error:  # reported to the launcher, which raises it
        if not reported:  # raised before the rank's work began (joining the group: a port taken, a bad address)
            report(error)
        return 1
    return 0


# -- one rank ------------------------------------------------------------------------------------------------------

def _run_rank(config: dict, on_error=None) -> PredictionRun | None:
    """Join the process group the launcher's variables describe, do this rank's share, leave (``on_error`` is
    called with an error before the group is left)."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    threads = config.get("threads") or max(1, usable_cores() // max(local_world, 1))
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", timeout=timedelta(seconds=config["timeout"]))
    try:
        return _predict_rank(config)
    except BaseException as error:
        if on_error is not None:
            on_error(error)
        raise
    finally:
        dist.destroy_process_group()


def _predict_rank(config: dict) -> PredictionRun | None:
    rank = dist.get_rank()
    options = dict(config["options"])
    predictor, manifest = load_predictor(config["run"], device=_rank_device(config["accelerator"],
                                                                          int(os.environ.get("LOCAL_RANK", rank))))
    band_count = (manifest.get("input") or {}).get("band_count")
    out, files = Path(config["out"]), [Path(p) for p in config["files"]]
    staging, lock = config.get("staging"), None
    if staging is None:  # under a launcher: rank 0 checks and locks --out and names the staging folder, or all fail
        status = None
        if rank == 0:
            try:
                out = prepare_folder(out)
                lock = FolderLock(out).acquire()
                status = ("ok", os.fspath(_staging(out, files, bool(options.get("overwrite", False)))))
            except CnnkitError as error:
                status = (type(error).__name__, str(error))
        status = broadcast_object(status)
        if status[0] != "ok":
            if lock is not None:
                lock.release()
            raise getattr(errors, status[0], CnnkitError)(status[1])
        staging = status[1]
    try:
        return _predict_share(config, predictor, band_count, files, out, Path(staging))
    finally:
        if lock is not None:
            lock.release()


def _predict_share(config: dict, predictor, band_count: int | None, files: list[Path], out: Path,
                   staging: Path) -> PredictionRun | None:
    """This rank's read groups and tiles; on rank 0, every rank's outputs renamed into ``out``."""
    rank, world = dist.get_rank(), dist.get_world_size()
    options = dict(config["options"])
    mine = Path(staging) / f"rank{rank}"
    mine.mkdir(parents=True, exist_ok=True)
    plan = broadcast_object(_plan(files, band_count, options) if rank == 0 else None)
    share = PredictionRun(class_pixels=np.zeros(predictor.num_classes, np.int64))
    groups: dict[int, list[tuple[str, list[str]]]] = {}
    for index in plan["shares"][rank]:
        first, stop = plan["groups"][index]
        done = predict_files(predictor, plan["small"][first:stop], mine, band_count=band_count,
                             log=lambda line: None, **{**options, "overwrite": True})
        groups[index] = [(os.fspath(k), [os.fspath(p) for p in v]) for k, v in done.files.items()]
        share.pixels += done.pixels
        share.class_pixels += done.class_pixels
    for path in plan["large"]:
        scene = open_scene(path, band_count, external_sources=options.get("external_sources", False))
        try:
            if rank == 0:
                share.files[scene.path] = predict_scene_into(
                    scene, _TileGatherer(predictor, world), mine, share, tile=options.get("tile", 512),
                    tiff=options.get("tiff", False), probabilities=options.get("probabilities", False),
                    confidence=options.get("confidence", False), rgb_bands=options.get("rgb_bands"),
                    probability_dtype=options.get("probability_dtype", "uint8"), on_pixels=lambda pixels: None)
            else:
                for result in predict_tiles(predictor, scene, tile=options.get("tile", 512),
                                            owned=lambda i: tile_owner(i, world) == rank,
                                            probabilities=options.get("probabilities", False),
                                            confidence=options.get("confidence", False)):
                    dist.send_object_list([result], dst=0)
        finally:
            scene.close()
    record = {"groups": groups, "pixels": share.pixels, "class_pixels": share.class_pixels.tolist()}
    records = [None] * world if rank == 0 else None
    dist.gather_object(record, records, dst=0)
    if rank != 0:
        return None
    result = _assemble(plan, records, share, out, predictor.num_classes)
    if config.get("staging") is not None:  # started by _launch, which reads this and removes the staging folder
        (Path(staging) / "result.json").write_text(json.dumps({
            "files": [[os.fspath(k), [os.fspath(p) for p in v]] for k, v in result.files.items()],
            "pixels": result.pixels, "class_pixels": result.class_pixels.tolist(),
            "tiled": [os.fspath(p) for p in result.tiled]}), encoding="utf-8")
    else:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def _plan(files: list[Path], band_count: int | None, options: dict) -> dict:
    """Which rank runs which read group of whole images (balanced by pixels), and the scenes run in tiles: what
    :func:`~cnnkit.app.predict.predict_files` would run, in its order."""
    max_pixels = options.get("max_pixels", 1_048_576)
    sizes = []
    for path in files:
        scene = open_scene(path, band_count, external_sources=options.get("external_sources", False))
        try:
            _check_row_budget(scene, options.get("tile", 512), max_pixels)
            sizes.append(scene.height * scene.width)
        finally:
            scene.close()
    small = [(p, s) for p, s in zip(files, sizes) if s <= max_pixels]
    groups = image_groups(len(small), options.get("batch_size", 8))
    world = dist.get_world_size()
    return {"small": [os.fspath(p) for p, _ in small], "groups": [(g.start, g.stop) for g in groups],
            "shares": balance([sum(small[i][1] for i in g) for g in groups], world),
            "large": [os.fspath(p) for p, s in zip(files, sizes) if s > max_pixels]}


def _assemble(plan: dict, records: list[dict], share: PredictionRun, out: Path, num_classes: int) -> PredictionRun:
    """Rank 0: every rank's outputs renamed into ``out``, listed in the order one process lists them."""
    result = PredictionRun(class_pixels=np.zeros(num_classes, np.int64))
    owners = {index: rank for rank, indices in enumerate(plan["shares"]) for index in indices}

    def place(path: str | Path) -> Path:
        final = out / Path(path).name
        os.replace(path, final)
        return final

    for index in range(len(plan["groups"])):
        for source, written in records[owners[index]]["groups"][index]:
            result.files[Path(source)] = [place(p) for p in written]
    for path in plan["large"]:
        result.files[Path(path)] = [place(p) for p in share.files[Path(path)]]
    result.tiled = list(share.tiled)
    for record in records:  # rank 0's record counts its scenes too
        result.pixels += record["pixels"]
        result.class_pixels += np.asarray(record["class_pixels"], np.int64)
    return result


class _TileGatherer:
    """Rank 0's stand-in for the :class:`~cnnkit.predict.Predictor` that ``_predict_large`` drives: its
    ``predict_scene`` runs rank 0's tiles, receives the others' from their ranks, and writes them all in plan order
    into the one-process writers (everything else is the predictor's)."""

    def __init__(self, predictor, world: int):
        self._predictor, self._world = predictor, world

    def __getattr__(self, name: str):
        return getattr(self._predictor, name)

    def predict_scene(self, scene, *, tile: int, labels_out, probabilities_out=None, confidence_out=None,
                      on_tile=None, on_read=None, queue_depth: int = 2):
        predictor, world = self._predictor, self._world
        count = len(scene_tiles(predictor, scene, tile))
        own = predict_tiles(predictor, scene, tile=tile, owned=lambda i: tile_owner(i, world) == 0,
                            probabilities=probabilities_out is not None, confidence=confidence_out is not None,
                            queue_depth=queue_depth)
        counts = np.zeros(predictor.num_classes, np.int64)
        try:
            for index in range(count):
                owner = tile_owner(index, world)
                result = next(own) if owner == 0 else _receive(owner)
                if result.index != index:
                    raise RuntimeError(f"tile {result.index} from rank {owner} where tile {index} was expected")
                if result.rows is None:
                    continue
                rows, cols = result.rows, result.cols
                if on_read is not None:
                    on_read(rows, cols, result.raw)
                labels_out[rows, cols] = result.labels.astype(labels_out.dtype, copy=False)
                if probabilities_out is not None:
                    probabilities_out[rows, cols, :] = result.probabilities
                if confidence_out is not None:
                    confidence_out[rows, cols] = result.confidence
                counts += result.class_pixels
                if on_tile is not None:
                    on_tile(result.pixels)
        finally:
            own.close()
        return labels_out, torch.from_numpy(counts)


def _receive(rank: int) -> TileResult:
    box: list[Any] = [None]
    dist.recv_object_list(box, src=rank)
    return box[0]


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
