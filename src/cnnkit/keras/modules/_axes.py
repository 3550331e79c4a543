"""Keras's channel axis in cnnkit's channels-first layout: moving it, and shaping per-channel vectors.

Every tensor between the converter's modules is in PyTorch's layout: Keras's last (channel) axis moved to
position 1 for tensors of rank 3 and more; rank-2 tensors ``(N, F)`` are the same in both.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["channel_view", "to_channels_first", "to_channels_last"]


def to_channels_last(t: Tensor) -> Tensor:
    """``(N, C, *S)`` → ``(N, *S, C)``; rank-2 tensors unchanged."""
    return t.movedim(1, -1) if t.dim() >= 3 else t


def to_channels_first(t: Tensor) -> Tensor:
    """``(N, *S, C)`` → ``(N, C, *S)``; rank-2 tensors unchanged."""
    return t.movedim(-1, 1) if t.dim() >= 3 else t


def channel_view(t: Tensor, rank: int) -> Tensor:
    """A per-channel vector (C,) shaped to broadcast over a channels-first tensor of ``rank``."""
    return t.reshape(1, -1, *(1,) * (rank - 2)) if rank >= 3 else t.reshape(1, -1)
