"""Keras's reshaping layers: ``Flatten``, ``Reshape`` and ``Permute`` in Keras's channels-last order,
``UpSampling1D/2D``, ``Cropping1D/2D``."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit._checks import check_choice
from cnnkit.keras.modules._axes import to_channels_first, to_channels_last

__all__ = ["ChannelsLastFlatten", "ChannelsLastReshape", "Crop", "KerasPermute", "UpSample"]


class ChannelsLastFlatten(nn.Module):
    """Keras ``Flatten``: ``(N, C, *S)`` is permuted to ``(N, *S, C)`` before flattening (Keras's order).

    Examples:
        >>> import torch
        >>> x = torch.arange(8.0).reshape(1, 2, 2, 2)        # (N, C, H, W)
        >>> ChannelsLastFlatten()(x)
        tensor([[0., 4., 1., 5., 2., 6., 3., 7.]])
    """

    def forward(self, input: Tensor) -> Tensor:
        return to_channels_last(input).flatten(1)


class ChannelsLastReshape(nn.Module):
    """Keras ``Reshape(target_shape)``: reshaped in channels-last order, returned channels first.

    Examples:
        >>> import torch
        >>> ChannelsLastReshape((2, 3, 4))(torch.zeros(5, 24)).shape        # Keras (5, 2, 3, 4)
        torch.Size([5, 4, 2, 3])
    """

    def __init__(self, target_shape: Sequence[int]) -> None:
        super().__init__()
        self.target_shape = tuple(int(s) for s in target_shape)

    def forward(self, input: Tensor) -> Tensor:
        return to_channels_first(to_channels_last(input).reshape(input.shape[0], *self.target_shape))

    def extra_repr(self) -> str:
        return repr(self.target_shape)


class KerasPermute(nn.Module):
    """Keras ``Permute(dims)`` (1-based, batch excluded) applied in Keras's channels-last layout."""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = tuple(dims)

    def forward(self, input: Tensor) -> Tensor:
        x = to_channels_last(input).permute(0, *self.dims)
        return to_channels_first(x.contiguous())

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class UpSample(nn.Module):
    """Keras ``UpSampling1D/2D``: repeat (``"nearest"``) or bilinear (half-pixel centres) by ``size``.

    Examples:
        >>> import torch
        >>> UpSample((2,), "nearest")(torch.tensor([[[1.0, 2.0]]]))
        tensor([[[1., 1., 2., 2.]]])
    """

    def __init__(self, size: Sequence[int], interpolation: str = "nearest") -> None:
        super().__init__()
        self.size = tuple(size)
        self.interpolation = check_choice(interpolation, ("nearest", "bilinear"), "interpolation")

    def forward(self, input: Tensor) -> Tensor:
        if self.interpolation == "nearest":
            x = input
            for i, s in enumerate(self.size):
                x = x.repeat_interleave(s, dim=2 + i)
            return x
        out = [int(n) * s for n, s in zip(input.shape[2:], self.size)]
        return F.interpolate(input, size=out, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}, interpolation={self.interpolation!r}"


class Crop(nn.Module):
    """Keras ``Cropping1D/2D``: ``(before, after)`` rows removed per spatial axis.

    Examples:
        >>> import torch
        >>> Crop(((1, 0),))(torch.arange(3.0).reshape(1, 1, 3))
        tensor([[[1., 2.]]])
    """

    def __init__(self, cropping: Sequence[tuple[int, int]]) -> None:
        super().__init__()
        self.cropping = tuple(tuple(p) for p in cropping)

    def forward(self, input: Tensor) -> Tensor:
        index = [slice(lo, int(n) - hi) for (lo, hi), n in zip(self.cropping, input.shape[2:])]
        return input[(slice(None), slice(None), *index)]

    def extra_repr(self) -> str:
        return f"cropping={self.cropping}"
