"""The comparison both Keras fixture suites make: a loaded model against the outputs Keras computed.

Each fixture ``.npz`` holds sample inputs ``x0, x1, …`` (channels-last, as Keras takes them) and the
outputs Keras computed from them, ``y0, y1, …``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


def _sample(npz: Path) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    data = np.load(npz, allow_pickle=False)
    xs = [torch.from_numpy(data[f"x{i}"]) for i in range(sum(k.startswith("x") for k in data.files))]
    ys = [data[f"y{i}"] for i in range(sum(k.startswith("y") for k in data.files))]
    return xs, ys


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def _channels_first(t: torch.Tensor) -> torch.Tensor:
    return t.movedim(-1, 1) if t.dim() >= 3 and t.is_floating_point() else t


class KerasOutputs:
    """``check_channels_last`` / ``check_channels_first``: run the model on the stored inputs, compare."""

    @staticmethod
    def check_channels_last(model, report, npz: Path) -> None:
        """A model loaded with ``channels_last_input=True`` gives Keras's outputs, and the report its shapes."""
        xs, ys = _sample(npz)
        with torch.no_grad():
            outs = _as_tuple(model(*xs))
        assert len(outs) == len(ys)
        for out, y in zip(outs, ys):
            assert tuple(out.shape) == y.shape
            np.testing.assert_allclose(out.numpy(), y, atol=1e-4, rtol=0)
        assert report.output_shapes == tuple(tuple(y.shape[1:]) for y in ys)

    @staticmethod
    def check_channels_first(model, npz: Path) -> None:
        """A model loaded for NCHW gives Keras's outputs moved to channels-first."""
        xs, ys = _sample(npz)
        with torch.no_grad():
            outs = _as_tuple(model(*[_channels_first(x) for x in xs]))
        assert len(outs) == len(ys)
        for out, y in zip(outs, ys):
            np.testing.assert_allclose(out.numpy(), _channels_first(torch.from_numpy(y)).numpy(), atol=1e-4, rtol=0)


@pytest.fixture
def keras_outputs() -> KerasOutputs:
    return KerasOutputs()
