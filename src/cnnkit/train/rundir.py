"""The run folder of ``cnnkit train`` / ``cnnkit demo``: what cnnkit writes there, and what it may remove.

Layout::

    out/
        cnnkit-run.json              the marker: this folder is a cnnkit run (written first, kept)
        manifest.json                what inference needs: the network's builder and arguments, the input
                                     preprocessing, class names and palette, versions (:func:`write_manifest`)
        model.safetensors            the trained weights (no pickle)
        checkpoints/last.ckpt        every epoch (:func:`cnnkit.train.fit`); best.ckpt with validation
        logs/version_<k>/            metrics.csv and hparams.yaml, one folder per (re)start
        tensorboard/version_<k>/     when tensorboard is installed
        report/report.html           the report and its images; report/cnnkit-report.json lists them
        samples/heldout_NN.tif       cnnkit demo only: held-out scenes to try cnnkit predict on

The rule: cnnkit never deletes what it did not write. :func:`prepare_run_dir` refuses a folder that holds
anything unless the caller asks to ``resume`` (continue from ``checkpoints/last.ckpt``) or to ``overwrite``
an earlier run; an overwrite needs the marker and removes only files that cnnkit writes, by name
(:func:`_is_cnnkit_file`), leaving anything else where it is. :func:`read_checkpoint` reads a checkpoint and
turns a damaged one into an error that names the file and what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cnnkit.errors import CnnkitError, ShapeError

__all__ = [
    "BEST_CHECKPOINT",
    "CHECKPOINTS",
    "LAST_CHECKPOINT",
    "LOGS",
    "MANIFEST",
    "MARKER",
    "REPORT_MANIFEST",
    "RUN_OPTIONS",
    "SAMPLES",
    "TASKS",
    "TENSORBOARD",
    "WEIGHTS",
    "MissingRunFileError",
    "check_checkpoint",
    "check_run_dir",
    "check_run_options",
    "last_checkpoint",
    "prepare_run_dir",
    "read_checkpoint",
    "read_manifest",
    "read_report_manifest",
    "write_manifest",
    "write_report_manifest",
    "write_run_options",
]

CHECKPOINTS = "checkpoints"
"""The folder of Lightning checkpoints."""

LAST_CHECKPOINT = "last.ckpt"
"""Written at the end of every epoch; what ``--resume`` continues from."""

BEST_CHECKPOINT = "best.ckpt"
"""The lowest validation loss so far (only with a validation set)."""

LOGS = "logs"
"""CSV logs, one ``version_<k>`` folder per (re)start."""

TENSORBOARD = "tensorboard"
"""TensorBoard logs, when tensorboard is installed."""

MARKER = "cnnkit-run.json"
"""The file that marks a folder as a cnnkit run folder."""

MANIFEST = "manifest.json"
"""What inference needs to use a run (see :func:`write_manifest`)."""

WEIGHTS = "model.safetensors"
"""The trained network's ``state_dict`` as safetensors."""

RUN_OPTIONS = "run-options.json"
"""The options a run was started with that ``--resume`` must keep (written before training starts)."""

MANIFEST_VERSION = 1

TASKS = {"segmentation": "images", "series-segmentation": "series"}
"""The manifest's ``task`` values and the ``kind`` of input each takes: ``images`` (``cnnkit predict`` on
image files) or ``series`` (on image time series: one T-date stack or per-date folder per prediction)."""

SAMPLES = "samples"
"""``cnnkit demo`` writes held-out scenes here (``heldout_NN.tif``), input to try ``cnnkit predict`` on."""

REPORT_MANIFEST = "cnnkit-report.json"
"""The file in a report folder that lists what :func:`cnnkit.report.write_report` wrote there."""

_VERSION = re.compile(r"version_\d+")


class MissingRunFileError(CnnkitError, FileNotFoundError):
    """A run folder or checkpoint named by the caller does not exist (also a ``FileNotFoundError``)."""


def last_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """``run_dir/checkpoints/last.ckpt`` if it exists, else ``None``.

    Examples:
        >>> import tempfile
        >>> last_checkpoint(tempfile.mkdtemp()) is None
        True
    """
    path = Path(run_dir) / CHECKPOINTS / LAST_CHECKPOINT
    return path if path.is_file() else None


def _owned_report_files(folder: Path) -> set[str]:
    manifest = read_report_manifest(folder)
    return set(manifest["files"]) | {REPORT_MANIFEST} if manifest is not None else set()


def _is_cnnkit_file(relative: Sequence[str], report_files: set[str]) -> bool:
    """Whether a file at ``relative`` (path parts under the run folder) is one that cnnkit writes."""
    top, rest = relative[0], list(relative[1:])
    if top == CHECKPOINTS and len(rest) == 1:
        name = rest[0]
        staged = re.fullmatch(r"\.(last|best)\.ckpt\.tmp-\w+", name)  # AtomicCheckpointIO's temporary file
        return name in (LAST_CHECKPOINT, BEST_CHECKPOINT) or staged is not None
    if top == LOGS and len(rest) == 2 and _VERSION.fullmatch(rest[0]):
        return rest[1] in ("metrics.csv", "hparams.yaml")
    if top == TENSORBOARD and len(rest) == 2 and _VERSION.fullmatch(rest[0]):
        return rest[1] == "hparams.yaml" or rest[1].startswith("events.out.tfevents.")
    if top == "report" and len(rest) == 1:
        return rest[0] in report_files
    if top == SAMPLES and len(rest) == 1:  # the demo's held-out scenes
        return re.fullmatch(r"heldout_\d+\.tif", rest[0]) is not None
    return False


def _remove_earlier_run(out: Path, log: Callable[[str], None]) -> None:
    """Remove the files of an earlier cnnkit run in ``out`` (by name), and the folders they leave empty."""
    report_files = _owned_report_files(out / "report")
    kept: list[str] = []
    for name in (MANIFEST, WEIGHTS, RUN_OPTIONS):
        if (out / name).is_file() and not (out / name).is_symlink():
            (out / name).unlink()
    for top in ("checkpoints", "logs", "tensorboard", "report", SAMPLES):
        root = out / top
        if not root.is_dir() or root.is_symlink():
            if root.exists() or root.is_symlink():
                kept.append(top)
            continue
        files = sorted(p for p in root.rglob("*") if not p.is_dir() or p.is_symlink())
        for path in files:
            relative = path.relative_to(out).parts
            if not path.is_symlink() and _is_cnnkit_file(relative, report_files):
                path.unlink()
            else:
                kept.append("/".join(relative))
        for folder in sorted((p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
        if not any(root.iterdir()):
            root.rmdir()
    if kept:
        log(f"--overwrite kept what cnnkit did not write in {os.fspath(out)!r}: " + ", ".join(kept[:10])
            + (f" and {len(kept) - 10} more" if len(kept) > 10 else ""))


def check_run_dir(out: str | os.PathLike, *, overwrite: bool = False, resume: bool = False) -> Path:
    """The checks of :func:`prepare_run_dir` without its changes (nothing created or removed): run them before the
    expensive passes over the data, so that a bad ``--out`` fails at once.

    Raises:
        ShapeError, CnnkitError: as :func:`prepare_run_dir`.
    """
    return _checked_run_dir(out, overwrite=overwrite, resume=resume)[0]


def _checked_run_dir(out, *, overwrite: bool, resume: bool) -> tuple[Path, list[str], bool]:
    for name, value in (("overwrite", overwrite), ("resume", resume)):
        if not isinstance(value, bool):
            raise ShapeError(f"{name} must be True or False. Received {name}={value!r}.")
    if overwrite and resume:
        raise ShapeError("overwrite and resume exclude each other: --overwrite starts the run afresh, --resume "
                         "continues it. Received both.")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ShapeError(f"out must be a folder (the run folder). Received out={os.fspath(out)!r}, which is a file.")
    # the marker alone is an empty run folder (a run that stopped on bad input before writing anything)
    entries = sorted(p.name for p in path.iterdir() if p.name != MARKER) if path.is_dir() else []
    marked = (path / MARKER).is_file()
    if resume:
        if not marked:
            raise CnnkitError(
                f"--resume: {os.fspath(out)!r} is not a cnnkit run folder (it has no {MARKER}), so there is no run "
                "to continue. Drop --resume to start a new run in an empty folder."
            )
        if last_checkpoint(path) is None:
            raise CnnkitError(
                f"--resume: the run folder {os.fspath(out)!r} has no checkpoints/last.ckpt to continue from. Use "
                "--overwrite to start it afresh."
            )
        return path, entries, marked
    if entries and not overwrite:
        listed = ", ".join(entries[:8]) + (f" and {len(entries) - 8} more" if len(entries) > 8 else "")
        how = ("it holds an earlier cnnkit run: --overwrite replaces that run's checkpoints, logs and report "
               "(nothing else), --resume continues its training, or choose another --out"
               if marked else
               "cnnkit never deletes files it did not write: choose an empty or new --out folder")
        raise CnnkitError(f"The run folder --out {os.fspath(out)!r} is not empty (it holds {listed}); {how}.")
    if entries and overwrite and not marked:
        raise CnnkitError(
            f"--overwrite: {os.fspath(out)!r} has no {MARKER}, so it is not a run folder cnnkit wrote; nothing "
            "was deleted. Choose an empty or new --out folder, or empty this one yourself."
        )
    return path, entries, marked


def prepare_run_dir(
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Make ``out`` ready for a run, deleting nothing that cnnkit did not write.

    * ``out`` missing or empty: created, and the marker :data:`MARKER` written.
    * ``resume=True``: ``out`` must be a cnnkit run folder (marker) with ``checkpoints/last.ckpt``; nothing
      is removed, training continues from the checkpoint.
    * ``overwrite=True``: ``out`` must be a cnnkit run folder (marker); the checkpoints, logs, TensorBoard
      events and report files that cnnkit writes are removed, anything else in it is kept (and listed).
    * otherwise a folder that holds anything is refused, naming what is there.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        ShapeError: ``overwrite`` and ``resume`` both set, non-bool flags, or ``out`` is a file.
        CnnkitError: ``out`` holds files and may not be used as asked (the message says why and what to do).
    """
    path, entries, marked = _checked_run_dir(out, overwrite=overwrite, resume=resume)
    if resume:
        return path
    if entries and overwrite:
        _remove_earlier_run(path, log)
    path.mkdir(parents=True, exist_ok=True)
    if not marked:
        from cnnkit import __version__

        (path / MARKER).write_text(json.dumps({"cnnkit": __version__, "kind": "run folder"}) + "\n",
                                   encoding="utf-8")
    return path


def read_checkpoint(path: str | os.PathLike, *, what: str = "") -> dict[str, Any]:
    """A Lightning checkpoint read with ``weights_only=True`` (tensors and plain containers, no code runs).

    Raises:
        CnnkitError: the file is damaged (truncated, garbage) or holds Python objects other than tensors and
            plain containers; the message names the file and what to do (``what``: a hint for this caller).
    """
    import torch

    name = os.fspath(path)
    check_checkpoint(path, what=what)  # torch.load reads a non-zip file as a legacy pickle: garbage would pass
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" not in str(error) and "Weights only" not in str(error):
            raise _damaged(name, error, what) from None
        raise CnnkitError(
            f"{name!r} holds Python objects other than tensors and plain containers (e.g. saved "
            "hyper-parameter objects); cnnkit does not unpickle them. Load the model yourself and pass it to "
            f"write_report(model=...). ({error})"
        ) from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, KeyError, OSError) as error:
        raise _damaged(name, error, what) from None


def check_checkpoint(path: str | os.PathLike, *, what: str = "") -> None:
    """Raise :class:`CnnkitError` naming ``path`` if it is not a complete checkpoint archive (truncated, garbage).

    Nothing is unpickled: the zip directory is read and every member read through, its CRC checked where
    the writer stored one (``torch.serialization.set_crc32_options(False)`` writes none).
    """
    name = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0:  # written without a CRC: the member must at least lie inside the file
                    if info.header_offset + info.compress_size > size:
                        raise zipfile.BadZipFile(f"member {info.filename!r} runs past the end of the file")
                    continue
                with archive.open(info) as member:
                    while member.read(1 << 20):
                        pass
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError) as error:
        raise _damaged(name, error, what) from None


def _damaged(name: str, error: BaseException, what: str) -> CnnkitError:
    return CnnkitError(
        f"The checkpoint {name!r} is damaged or not a PyTorch checkpoint ({type(error).__name__}: {error}). "
        + (what or "Move it away (or delete it) and resume from another checkpoint, e.g. checkpoints/best.ckpt, "
           "or start the run afresh.")
    )


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_report_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of the report in ``folder``, or ``None`` if there is none (or it is unreadable).

    Returns ``{"files": [...], "sections": [...]}``: the files the report wrote *that still hold what it
    wrote* (a file the user replaced since is not listed) and the titles of the report's own sections.
    """
    folder = Path(folder)
    path = folder / REPORT_MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict) \
            or not isinstance(data.get("sections"), list):
        return None
    files = []
    for name, digest in data["files"].items():
        file = folder / str(name)
        if (isinstance(name, str) and "/" not in name and "\\" not in name and name not in ("", ".", "..")
                and file.is_file() and not file.is_symlink() and _digest(file) == digest):
            files.append(name)
    sections = [s for s in data["sections"] if isinstance(s, str)]
    return {"files": files, "sections": sections}


def write_report_manifest(folder: str | os.PathLike, files: Sequence[str], sections: Sequence[str], *,
                          staged: dict[str, Path] | None = None) -> None:
    """Record the files a report wrote in ``folder`` (with their SHA-256) and the titles of its own sections.

    ``staged``: files about to be renamed into ``folder`` under these names, recorded with the digest of their
    staged copy (the list is written before the rename, so that a report killed in between never leaves a page that
    no list names: the next report, e.g. of a ``--resume``, would have to keep it and refuse).
    """
    folder = Path(folder)
    digests = {name: _digest(folder / name) for name in files}
    digests.update({name: _digest(Path(path)) for name, path in (staged or {}).items()})
    path = folder / REPORT_MANIFEST
    partial = folder / (REPORT_MANIFEST + ".partial")
    partial.unlink(missing_ok=True)  # cnnkit's own temporary name (a link planted there is removed, not followed)
    partial.write_text(json.dumps({"files": dict(sorted(digests.items())), "sections": list(sections)}, indent=1)
                       + "\n", encoding="utf-8")
    os.replace(partial, path)  # whole or not at all


def write_manifest(out: str | os.PathLike, model, *, spec=None, in_channels: int | None = None,
                   num_classes: int | None = None, builder: str | None = None,
                   builder_args: dict[str, Any] | None = None, preprocessing: dict[str, Any] | None,
                   class_names: Sequence[str], palette: Sequence[Sequence[int]], ignore_index: int | None,
                   task: str = "segmentation", extra: dict[str, Any] | None = None) -> Path:
    """Write the trained weights (:data:`WEIGHTS`) and :data:`MANIFEST`: everything inference needs.

    The manifest names the network, never code: its :class:`~cnnkit.models.ModelSpec` (library, architecture,
    encoder, JSON arguments), ``in_channels`` and ``num_classes``, which :func:`cnnkit.models.build` rebuilds it
    from. ``model`` is ``{"spec": ..., "in_channels": ..., "num_classes": ..., "weights": "model.safetensors"}``.

    Args:
        out: The run folder.
        model: The trained network (its ``state_dict`` is saved as safetensors).
        spec: The network's :class:`~cnnkit.models.ModelSpec` (or its dict), or ``None`` for a network of the
            user's own (``cnnkit predict`` then cannot rebuild it; :class:`cnnkit.predict.Predictor` can).
        in_channels, num_classes: What the network reads and predicts (``num_classes`` defaults to the class
            names' count).
        builder, builder_args: The older way to name a network of :data:`cnnkit.models.MODELS` (``builder_args``
            holding ``in_channels`` and ``num_classes``), turned into a spec; give ``spec`` instead.
        preprocessing: The input's preprocessing (:class:`cnnkit.predict.Preprocessing` fields: ``mean``,
            ``std``, ``nodata``, ``bands`` (counted from 0), ``multiple_of``, ``validity_band``), plus
            ``band_count``, the bands of the files trained on; ``None`` when the data came as tensors.
        class_names: One name per class, in label order.
        palette: One RGB colour per class.
        ignore_index: The mask value meaning "not labelled" in the training files (e.g. 255), if any.
        task: ``"segmentation"`` (per-pixel classes) or ``"series-segmentation"`` (from time series); the
            manifest's ``kind`` follows from it (:data:`TASKS`).
        extra: Further keys (kept as given).
    """
    if task not in TASKS:
        raise ShapeError(f"Unknown task {task!r}. Expected one of {tuple(TASKS)}.")
    import torch
    from safetensors.torch import save_file

    from cnnkit import __version__
    from cnnkit.models import parse_spec

    if spec is None and builder is not None:
        args = dict(builder_args or {})
        in_channels = args.pop("in_channels", in_channels)
        num_classes = args.pop("num_classes", num_classes)
        spec = {"library": "cnnkit", "architecture": builder, "args": args}
    if spec is not None:
        spec = parse_spec(spec).to_dict()
    out = Path(out)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    try:
        save_file(state, out / WEIGHTS)
    except (OSError, RuntimeError, ValueError) as error:
        raise CnnkitError(f"Could not write the weights to {os.fspath(out / WEIGHTS)!r}: {error}.") from None
    network = ({"spec": spec, "in_channels": in_channels,
                "num_classes": num_classes if num_classes is not None else len(class_names)}
               if spec is not None else {"builder": None, "args": {}})
    manifest = {
        "format": "cnnkit-run", "version": MANIFEST_VERSION, "task": task, "kind": TASKS[task],
        "cnnkit": __version__, "torch": torch.__version__,
        "model": {**network, "weights": WEIGHTS},
        "input": preprocessing,
        "classes": {"names": list(class_names), "palette": [list(map(int, c)) for c in palette],
                    "ignore_index": ignore_index},
        **(extra or {}),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return out / MANIFEST


MAX_MANIFEST_BYTES = 1 << 22
"""A manifest larger than this (4 MiB) is refused unread; cnnkit's own are a few kilobytes."""


def read_manifest(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a run folder, checked as untrusted input (:func:`cnnkit.train.manifest.check_manifest`).

    ``data["model"]`` is always in the current form, ``{"spec", "in_channels", "num_classes", "weights"}``: an
    older manifest's ``{"builder", "args"}`` is converted.

    Raises:
        MissingRunFileError: ``run_dir`` does not exist.
        CnnkitError: no manifest (a run that stopped before writing it: resume it; or not a run folder), a
            manifest that is no regular file inside the folder, too large, damaged, or breaks a rule (the key, the
            rule and the value).
    """
    from cnnkit.train.manifest import check_manifest

    path = Path(run_dir)
    name = os.fspath(run_dir)
    if not path.is_dir():
        raise MissingRunFileError(f"The run folder {name!r} does not exist.")
    file = path / MANIFEST
    if not file.exists() and not file.is_symlink():
        if last_checkpoint(path) is not None:
            hint = ("the run stopped before writing its report and manifest (killed or interrupted), but its "
                    "checkpoints/last.ckpt is there: finish it with the same command and --resume, e.g. cnnkit "
                    f"train DATA --out {name} --resume (with the options it was started with)")
        elif (path / MARKER).is_file() or (path / CHECKPOINTS).is_dir():
            hint = ("the run never finished an epoch (no checkpoints/last.ckpt to resume from), or it is a run of an "
                    "older cnnkit: train it again with --overwrite")
        else:
            hint = "it is not a run folder of cnnkit train or cnnkit demo"
        raise CnnkitError(f"{name!r} has no {MANIFEST}: {hint}.")
    if file.is_symlink() or not file.is_file():
        raise CnnkitError(f"The manifest {os.fspath(file)!r} must be a regular file in the run folder, not a "
                          "symbolic link, folder or device. Received a run folder whose manifest is not.")
    size = file.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise CnnkitError(f"The manifest {os.fspath(file)!r} is {size:,} bytes, over the {MAX_MANIFEST_BYTES:,} a "
                          "cnnkit manifest may have; it was not read.")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except RecursionError:
        raise CnnkitError(f"The manifest {os.fspath(file)!r} cannot be used: it nests lists or objects too deeply "
                          "to read (a cnnkit manifest has a few levels).") from None
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise CnnkitError(f"The manifest {os.fspath(file)!r} is damaged ({error}). Train the run again.") from None
    return check_manifest(data, os.fspath(file), tuple(TASKS), MANIFEST_VERSION)


def write_run_options(out: str | os.PathLike, options: dict[str, Any]) -> None:
    """Record ``options`` (command-line names to JSON values) in :data:`RUN_OPTIONS`."""
    (Path(out) / RUN_OPTIONS).write_text(json.dumps(options, indent=1) + "\n", encoding="utf-8")


def check_run_options(out: str | os.PathLike, options: dict[str, Any]) -> None:
    """On ``--resume``: refuse options that differ from those the run was started with (:data:`RUN_OPTIONS`).

    Options the run did not record (a run of an older cnnkit) are not compared.

    Raises:
        CnnkitError: names the first differing option and both values.
    """
    file = Path(out) / RUN_OPTIONS
    if file.is_symlink() or not file.is_file() or file.stat().st_size > MAX_MANIFEST_BYTES:
        return
    try:
        recorded = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return
    if not isinstance(recorded, dict):
        return
    for key, value in options.items():
        if key in recorded and recorded[key] != value:
            raise CnnkitError(
                f"--resume: the run in {os.fspath(out)!r} was started with {key} {_option_text(recorded[key])}; this "
                f"command gives {key} {_option_text(value)}. A resumed run keeps its options: give {key} "
                f"{_option_text(recorded[key])} (or leave it out if that is the default), or start a new run in "
                "another --out (or --overwrite this one).")


def _option_text(value: Any) -> str:
    if value is None:
        return "(not given)"
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)
