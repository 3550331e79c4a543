"""Keras's normalisation over the channel axis: ``LayerNormalization``, ``GroupNormalization``, and ConvNeXt's
``LayerScale`` (a learned per-channel factor)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit._checks import check_choice
from cnnkit.keras.modules._axes import channel_view, to_channels_first, to_channels_last

__all__ = ["ChannelScale", "ChannelsLastNorm"]


class ChannelsLastNorm(nn.Module):
    """Keras ``LayerNormalization`` over the channel axis (``nn.LayerNorm`` on channels-last), or Keras
    ``GroupNormalization`` (``nn.GroupNorm``); ``weight``/``bias`` are Keras's ``gamma``/``beta``.

    Examples:
        >>> ChannelsLastNorm("layer", 4, 1e-3)(torch.randn(2, 4, 5)).shape
        torch.Size([2, 4, 5])
    """

    def __init__(self, kind: str, channels: int, eps: float, groups: int = 1, scale: bool = True,
                 center: bool = True) -> None:
        super().__init__()
        self.kind = check_choice(kind, ("layer", "group"), "kind")
        self.channels, self.eps, self.groups = channels, float(eps), groups
        self.weight = nn.Parameter(torch.empty(channels)) if scale else None
        self.bias = nn.Parameter(torch.empty(channels)) if center else None

    def forward(self, input: Tensor) -> Tensor:
        if self.kind == "group":
            return F.group_norm(input, self.groups, self.weight, self.bias, self.eps)
        x = to_channels_last(input)
        return to_channels_first(F.layer_norm(x, (self.channels,), self.weight, self.bias, self.eps))

    def extra_repr(self) -> str:
        return f"{self.kind!r}, {self.channels}, eps={self.eps}" + (
            f", groups={self.groups}" if self.kind == "group" else "")


class ChannelScale(nn.Module):
    """A learned per-channel factor ``gamma`` (ConvNeXt's ``LayerScale``): ``input · gamma`` on dim 1.

    Examples:
        >>> ChannelScale(2)(torch.ones(1, 2, 3)).shape
        torch.Size([1, 2, 3])
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.empty(channels))

    def forward(self, input: Tensor) -> Tensor:
        return input * channel_view(self.gamma, input.dim())
