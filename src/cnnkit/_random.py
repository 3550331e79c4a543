"""Reproducible per-epoch randomness shared by samplers and dataset wrappers."""

from __future__ import annotations

import torch

from cnnkit._checks import is_int
from cnnkit.errors import ShapeError

__all__ = ["EpochSeeded"]


class EpochSeeded:
    """A seed drawn once at construction plus an epoch counter.

    What a subclass draws for epoch ``e`` depends only on ``(seed, e, …)``: the same in every
    ``DataLoader`` worker and, given generators with the same seed, in every DDP process.
    """

    seed: int
    epoch: int

    def _draw_seed(self, generator: torch.Generator | None) -> None:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ShapeError(f"generator must be a torch.Generator or None. Received generator={generator!r}.")
        self.seed = int(torch.randint(0, 2**62, (), generator=generator))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch`` from now on (same seed and epoch → same draws)."""
        if not is_int(epoch) or epoch < 0:
            raise ShapeError(f"epoch must be a non-negative integer. Received epoch={epoch!r}.")
        self.epoch = int(epoch)
