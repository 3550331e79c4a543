"""Reading a training run for its report: metrics CSV rows, the filter history and the trained weights.

The run folder's layout is owned by :mod:`cnnkit.train.rundir` (and :func:`cnnkit.train.fit.last_checkpoint`);
this module only reads through it.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any

from torch import nn

from cnnkit.errors import CnnkitError

__all__ = ["evolution_states", "load_run_weights", "read_metrics", "stub_evolution"]


def _version_key(path: Path) -> tuple[int, str]:
    match = re.fullmatch(r"version_(\d+)", path.parent.name)
    return (int(match.group(1)) if match else -1, str(path))


def _metric_files(run_dir: Path) -> list[Path]:
    logs = run_dir / "logs"
    return sorted(logs.rglob("metrics.csv"), key=_version_key) if logs.is_dir() else []


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, float]]:
    """Every row of every ``run_dir/logs/**/metrics.csv``, restarts concatenated in version order.

    Empty cells are left out of a row; each row gets a ``"version"`` entry (its ``version_<k>`` folder's
    ``k``, or -1), so a resumed run reads as one history whose ``step`` column keeps counting.

    Args:
        run_dir: The folder given to :func:`cnnkit.train.fit`.

    Returns:
        A list of ``{column: value}``, one per CSV row, oldest first.

    Examples:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> (run / "logs" / "version_0").mkdir(parents=True)
        >>> _ = (run / "logs" / "version_0" / "metrics.csv").write_text("epoch,step,val/loss\\n0,3,0.5\\n0,3,\\n")
        >>> read_metrics(run)
        [{'epoch': 0.0, 'step': 3.0, 'val/loss': 0.5, 'version': 0.0}, {'epoch': 0.0, 'step': 3.0, 'version': 0.0}]
    """
    rows: list[dict[str, float]] = []
    for path in _metric_files(Path(run_dir)):
        version = float(_version_key(path)[0])
        with path.open(newline="") as f:
            for raw in csv.DictReader(f):
                row: dict[str, float] = {}
                for key, cell in raw.items():
                    if key is None or cell is None or cell.strip() == "":
                        continue
                    try:
                        row[key] = float(cell)
                    except ValueError:
                        continue
                row["version"] = version
                rows.append(row)
    return rows


def evolution_states(run_dir: Path) -> list[dict[str, Any]]:
    """The :class:`~cnnkit.train.FilterEvolutionCallback` states saved in ``last.ckpt`` (Lightning keeps
    callback states under ``checkpoint["callbacks"][state_key]``)."""
    from cnnkit.train.fit import last_checkpoint

    path = last_checkpoint(run_dir)
    if path is None:
        return []
    checkpoint = _load_checkpoint(path)
    states = []
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith("FilterEvolutionCallback") and isinstance(state, dict) and state.get("history"):
            states.append(state)
    return states


_DAMAGED = ("The report reads the filter history and the trained weights from it: move it away (or delete it) "
            "to write the report without them, or resume the run (cnnkit train/demo --resume) from another "
            "checkpoint.")


def _load_checkpoint(path) -> dict[str, Any]:
    """A Lightning checkpoint read with ``weights_only=True``: tensors and plain containers, no code runs.
    A damaged file is a :class:`CnnkitError` naming it."""
    from cnnkit.train.rundir import read_checkpoint

    return read_checkpoint(path, what=_DAMAGED)


def stub_evolution(state: dict[str, Any]):
    """A :class:`~cnnkit.inspect.FilterEvolution` holding ``state``, built on placeholder modules named like the
    recorded layers (rendering needs the history only, not the trained network)."""
    from cnnkit.inspect import FilterEvolution

    root = nn.Module()
    for name, snapshots in state["history"].items():
        module = root
        for part in name.split("."):
            child = module._modules.get(part)
            if child is None:
                child = nn.Module()
                module.add_module(part, child)
            module = child
        module.register_parameter("weight", nn.Parameter(snapshots[0].clone(), requires_grad=False))
    evolution = FilterEvolution(root, list(state["history"]), every_n_steps=1)
    evolution.load_state_dict(state)
    return evolution


def load_run_weights(model: nn.Module, run_dir: str | os.PathLike) -> Path:
    """Load the weights of ``run_dir/checkpoints/last.ckpt`` into ``model`` (in place).

    The checkpoint holds the task's ``state_dict``; a task keeps the network under ``model.``, which is
    stripped when every key has it.

    Returns:
        The checkpoint file read.

    Raises:
        FileNotFoundError: if the run has no ``last.ckpt``.
        CnnkitError: if the weights do not fit ``model`` (the message lists a few missing / unexpected keys).
    """
    from cnnkit.train.fit import last_checkpoint
    from cnnkit.train.rundir import MissingRunFileError

    path = last_checkpoint(run_dir)
    if path is None:
        raise MissingRunFileError(f"run_dir {os.fspath(run_dir)!r} has no checkpoints/last.ckpt to load weights "
                                  "from.")
    state = _load_checkpoint(path)["state_dict"]
    if state and all(k.startswith("model.") for k in state):
        state = {k.removeprefix("model."): v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CnnkitError(
            f"The weights in {str(path)!r} do not fit the model: missing keys {result.missing_keys[:5]}, "
            f"unexpected keys {result.unexpected_keys[:5]}."
        )
    return path
