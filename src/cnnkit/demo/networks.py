"""Small example networks used by ``cnnkit demo`` and the examples."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TinySegNet"]


class TinySegNet(nn.Module):
    """A small encoder–decoder for per-pixel classes: two stride-2 stages, a skip connection.

    Args:
        in_channels: Bands of the input image.
        num_classes: Classes predicted per pixel.
        width: Channels of the first stage (the second has twice as many).

    Shape:
        - Input: (N, in_channels, H, W) with H and W divisible by 4.
        - Output: (N, num_classes, H, W) logits.

    Examples:
        >>> TinySegNet(4, 5)(torch.zeros(2, 4, 32, 48)).shape
        torch.Size([2, 5, 32, 48])
    """

    def __init__(self, in_channels: int = 4, num_classes: int = 5, width: int = 16):
        super().__init__()
        self.in_channels, self.num_classes, self.width = in_channels, num_classes, width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.down = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=4, mode="nearest")
        self.head = nn.Conv2d(3 * width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.stem(x)
        deep = self.up(self.pool(self.down(skip)))
        return self.head(torch.cat([skip, deep], dim=1))

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, num_classes={self.num_classes}, width={self.width}"
