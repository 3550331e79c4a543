"""Keras's preprocessing layers that models carry: ``Rescaling`` and ``Normalization``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cnnkit.keras.modules._axes import channel_view

__all__ = ["KerasNormalization", "Rescaling"]


class Rescaling(nn.Module):
    """Keras ``Rescaling``: ``input · scale + offset`` (scalars, or one value per channel).

    Examples:
        >>> Rescaling(1 / 255, 0.0)(torch.full((1, 3, 1, 1), 255.0)).flatten()
        tensor([1., 1., 1.])
    """

    def __init__(self, scale, offset) -> None:
        super().__init__()
        # Plain numbers, not buffers: the converter builds modules on the meta device.
        self.scale = tuple(float(v) for v in (scale if isinstance(scale, (list, tuple)) else [scale]))
        self.offset = tuple(float(v) for v in (offset if isinstance(offset, (list, tuple)) else [offset]))

    def forward(self, input: Tensor) -> Tensor:
        dtype = input.dtype if input.is_floating_point() else torch.get_default_dtype()
        scale = torch.tensor(self.scale, dtype=dtype, device=input.device)
        offset = torch.tensor(self.offset, dtype=dtype, device=input.device)
        if scale.numel() > 1:
            scale = channel_view(scale, input.dim())
        if offset.numel() > 1:
            offset = channel_view(offset, input.dim())
        return input.to(dtype) * scale + offset

    def extra_repr(self) -> str:
        return f"scale={self.scale}, offset={self.offset}"


class KerasNormalization(nn.Module):
    """Keras ``Normalization`` on the channel axis: ``(x − mean) / max(√variance, ε)`` (``invert``: the inverse).

    ``mean`` and ``variance`` (and Keras's sample ``count``, unused) are buffers, one value per channel or one
    for all; ``ε`` is Keras's ``backend.epsilon()`` (1e-7).

    Examples:
        >>> KerasNormalization(2)(torch.ones(1, 2, 3)).shape
        torch.Size([1, 2, 3])
    """

    def __init__(self, channels: int, invert: bool = False, epsilon: float = 1e-7) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("variance", torch.ones(channels))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.invert, self.epsilon = bool(invert), float(epsilon)

    def forward(self, input: Tensor) -> Tensor:
        mean = channel_view(self.mean, input.dim()) if self.mean.numel() > 1 else self.mean
        std = channel_view(self.variance, input.dim()) if self.variance.numel() > 1 else self.variance
        std = std.sqrt().clamp(min=self.epsilon)
        return mean + input * std if self.invert else (input - mean) / std

    def extra_repr(self) -> str:
        return f"channels={self.mean.numel()}" + (", invert=True" if self.invert else "")
