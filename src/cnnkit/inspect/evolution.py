"""``FilterEvolution``: watch filters go from random numbers to feature detectors during training.

"Is a filter assigned a feature?" — no. At initialisation a filter is random numbers (Keras draws them
from ``glorot_uniform``, PyTorch from ``kaiming_uniform``); nothing in it looks for anything. Training
moves each weight along ``−∂loss/∂w``, and filters drift toward whatever patterns reduce the loss (edges,
strokes, blobs). :class:`FilterEvolution` makes that visible: it copies the chosen layers' weights at
initialisation and every ``every_n_steps`` optimiser steps, measures per filter how far each has moved
from where it started, and renders one strip per filter, time running left → right.

It has no training-framework dependency: call :meth:`FilterEvolution.step` after each
``optimizer.step()`` in a plain loop; a Lightning callback can do the same in ``on_train_batch_end``
and checkpoint it with :meth:`~FilterEvolution.state_dict` / :meth:`~FilterEvolution.load_state_dict`.
Snapshots are detached CPU copies; no hooks are installed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit.errors import ShapeError, UnsupportedError
from cnnkit.inspect._layers import LayerSpec, resolve_layers
from cnnkit.render.grids import signed_to_byte, signed_to_rgb, tile_images
from cnnkit.render.labels import save_png

__all__ = ["FilterChange", "FilterEvolution"]


@dataclass(frozen=True)
class FilterChange:
    """How far each filter has moved from its initial value, per snapshot.

    Attributes:
        steps: Training step of each snapshot (T,).
        tags: Tag of each snapshot (T,).
        relative_l2: (T, out_channels): ``‖w_t − w_0‖ / ‖w_0‖`` per filter (0 at the first snapshot;
            ``inf`` for a filter that started at exactly zero and moved).
        cosine: (T, out_channels): cosine similarity of ``w_t`` and ``w_0`` per filter (1 at the start;
            0 when either is all zeros).
    """

    steps: tuple[int, ...]
    tags: tuple[str, ...]
    relative_l2: Tensor
    cosine: Tensor


class FilterEvolution:
    """Snapshots of chosen layers' filters at initialisation and every ``every_n_steps`` training steps.

    Args:
        model: The network (snapshots are taken at construction — build this before training starts).
        layers: Layer names, module types or modules (as in :class:`~cnnkit.inspect.Recorder`); each must
            have a parameter ``param`` of shape (out_channels, …).
        every_n_steps: Snapshot when the step counter is a multiple of this (>= 1).
        param: The parameter to follow (default ``"weight"``).

    Attributes:
        global_step: Number of :meth:`step` calls so far.
        steps, tags: Step and tag of each snapshot (the first is ``0, "init"``).
        history: ``{layer name: [weight at snapshot 0, 1, …]}`` (CPU tensors).

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
        >>> initial = net[0].weight.detach().clone()
        >>> evo = FilterEvolution(net, nn.Conv2d, every_n_steps=2)
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> for _ in range(4):
        ...     opt.zero_grad()
        ...     net(torch.randn(8, 1, 8, 8)).square().mean().backward()
        ...     opt.step()
        ...     _ = evo.step()
        >>> evo.steps, torch.equal(evo.history["0"][0], initial)
        ([0, 2, 4], True)
        >>> change = evo.change("0")
        >>> change.relative_l2.shape, bool((change.relative_l2[-1] > 0).all())
        (torch.Size([3, 4]), True)
        >>> evo.render("0", zoom=2).shape  # 4 filters × 3 snapshots of 3 × 3 tiles
        (29, 22, 3)
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSpec | Sequence[LayerSpec],
        every_n_steps: int = 100,
        *,
        param: str = "weight",
    ):
        if not isinstance(every_n_steps, int) or isinstance(every_n_steps, bool) or every_n_steps < 1:
            raise ShapeError(f"every_n_steps must be an integer >= 1. Received every_n_steps={every_n_steps!r}.")
        self.model = model
        self.every_n_steps = every_n_steps
        self.param = param
        self._params: dict[str, Tensor] = {}
        for name, module in resolve_layers(model, layers).items():
            weight = dict(module.named_parameters(recurse=False)).get(param)
            if weight is None:
                raise ShapeError(
                    f"FilterEvolution needs layers with a parameter {param!r}, but layer {name!r} "
                    f"({type(module).__name__}) has {sorted(dict(module.named_parameters(recurse=False)))}."
                )
            if weight.dim() < 2:
                raise ShapeError(
                    f"FilterEvolution follows filters: parameter {param!r} of layer {name!r} must have shape "
                    f"(out_channels, …) with at least 2 dimensions. Received shape {tuple(weight.shape)}."
                )
            self._params[name] = weight
        self.global_step = 0
        self.steps: list[int] = []
        self.tags: list[str] = []
        self.history: dict[str, list[Tensor]] = {name: [] for name in self._params}
        self.snapshot("init")

    def __repr__(self) -> str:
        return (f"FilterEvolution(layers={list(self._params)}, every_n_steps={self.every_n_steps}, "
                f"param={self.param!r}, snapshots={len(self.steps)})")

    @property
    def layers(self) -> list[str]:
        """Names of the followed layers."""
        return list(self._params)

    # -- recording -----------------------------------------------------------------------------------

    def snapshot(self, tag: str | None = None) -> None:
        """Copy the current weights now (tag default: ``"step <global_step>"``)."""
        with torch.no_grad():
            for name, weight in self._params.items():
                self.history[name].append(weight.detach().to("cpu", copy=True))
        self.steps.append(self.global_step)
        self.tags.append(f"step {self.global_step}" if tag is None else str(tag))

    def step(self) -> bool:
        """Count one training step; snapshot if the count is a multiple of ``every_n_steps``.

        Returns:
            Whether a snapshot was taken.
        """
        self.global_step += 1
        if self.global_step % self.every_n_steps == 0:
            self.snapshot()
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        """Everything recorded, for checkpoints (the model itself is not included)."""
        return {"global_step": self.global_step, "steps": list(self.steps), "tags": list(self.tags),
                "history": {k: list(v) for k, v in self.history.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the followed layers must be the same)."""
        if set(state.get("history", {})) != set(self._params):
            raise ShapeError(
                f"state must hold the history of layers {self.layers}. "
                f"Received layers {sorted(state.get('history', {}))}."
            )
        self.global_step = int(state["global_step"])
        self.steps = list(state["steps"])
        self.tags = list(state["tags"])
        self.history = {k: list(v) for k, v in state["history"].items()}

    # -- reading -------------------------------------------------------------------------------------

    def _stack(self, layer: str) -> Tensor:
        if layer not in self.history:
            raise ShapeError(f"Unknown layer {layer!r}; FilterEvolution follows {self.layers}.")
        return torch.stack(self.history[layer])  # (T, O, …)

    def change(self, layer: str) -> FilterChange:
        """Per-filter relative L2 change from the first snapshot and cosine similarity to it."""
        h = self._stack(layer).flatten(2).double()  # (T, O, K)
        start = h[:1]
        moved = torch.linalg.vector_norm(h - start, dim=2)
        base = torch.linalg.vector_norm(start, dim=2).expand_as(moved)
        relative = torch.where(base > 0, moved / base.clamp_min(1e-300),
                               torch.where(moved > 0, math.inf, 0.0))
        cosine = F.cosine_similarity(h, start.expand_as(h), dim=2)
        return FilterChange(tuple(self.steps), tuple(self.tags), relative.float(), cosine.float())

    def render(
        self,
        layer: str,
        path: str | Path | None = None,
        *,
        filters: Sequence[int] | None = None,
        scale: float | None = None,
        zoom: int = 4,
        padding: int = 1,
        pad_color: Sequence[int] = (0, 0, 0),
    ) -> np.ndarray:
        """One strip per filter (rows), one tile per snapshot (columns, time left → right).

        Tiles follow :func:`cnnkit.render.filter_grid`'s colours on ONE scale shared by every snapshot
        (default: the largest |weight| over the whole history), so growth in magnitude shows as well as
        change in shape: filters of a 3-channel input are RGB tiles (0 is grey 128), others use the
        diverging map (negative blue, zero white, positive red) with the input channels side by side.

        Args:
            layer: A followed layer name.
            path: If given, the image is also written there as PNG.
            filters: Indices of the filters to show (default: all).
            scale: Full-intensity magnitude (default: max |weight| over all snapshots).
            zoom, padding, pad_color: Layout, as in :func:`cnnkit.render.tile_images`.

        Shape:
            - Output: (F·(kH·zoom + padding) + padding, T·(I'·kW·zoom + padding) + padding, 3) ``uint8``,
              with F filters, T snapshots and I' = 1 for RGB tiles, else in_channels (Conv1d: kH = 1).
        """
        h = self._stack(layer).double()
        if h.dim() == 6:
            raise UnsupportedError(f"render draws 1-D and 2-D filters; layer {layer!r} has Conv3d-shaped weights.")
        if h.dim() == 3:  # Linear (T, O, I): one row of I values per filter
            h = h[:, :, None, None, :]
        elif h.dim() == 4:  # Conv1d (T, O, I, k)
            h = h[:, :, :, None, :]
        out_channels = h.shape[1]
        if filters is None:
            chosen = list(range(out_channels))
        else:
            chosen = [int(f) for f in filters]
            if not chosen or any(not 0 <= f < out_channels for f in chosen):
                raise ShapeError(
                    f"filters must be a non-empty list of indices in [0, {out_channels - 1}]. "
                    f"Received filters={filters!r}."
                )
        h = h[:, chosen]  # (T, F, I, kH, kW)
        if scale is None:
            peak = float(h.abs().max())
            s = peak if peak > 0 else 1.0
        elif isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0:
            s = float(scale)
        else:
            raise ShapeError(f"scale must be a positive number (or None). Received scale={scale!r}.")
        arr = h.numpy()
        if arr.shape[2] == 3:
            tiles = np.moveaxis(signed_to_byte(arr, s), 2, -1)  # (T, F, kH, kW, 3)
        else:
            t, f, i, kh, kw = arr.shape
            side_by_side = arr.transpose(0, 1, 3, 2, 4).reshape(t, f, kh, i * kw)
            tiles = signed_to_rgb(side_by_side, scale=s)
        tiles = np.ascontiguousarray(np.swapaxes(tiles, 0, 1))  # (F, T, h, w, 3): row = filter
        image = tile_images(tiles.reshape(-1, *tiles.shape[2:]), ncols=tiles.shape[1], padding=padding,
                            pad_color=pad_color, zoom=zoom)
        if path is not None:
            save_png(image, path)
        return image
