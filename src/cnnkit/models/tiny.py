"""TinySegNet and TinyResNet: the small networks of ``cnnkit demo``, ``cnnkit train``, the examples and tests."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TinyResNet", "TinySegNet"]


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


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))


class TinyResNet(nn.Module):
    """A small ResNet-style classifier: stride-2 stem, max-pool, residual blocks, global pooling, Linear.

    Args:
        in_channels: Input channels.
        num_classes: Outputs of the Linear head.
        width: Channels of the first stage (doubled at each of the later stages).
        features_only: Return the last feature map instead of class scores.

    Examples:
        >>> TinyResNet(3, 10)(torch.zeros(2, 3, 64, 48)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16, features_only: bool = False):
        super().__init__()
        self.features_only = features_only
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 5, stride=2, padding=2, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.layer1 = _Block(width, width, 1)
        self.layer2 = _Block(width, 2 * width, 2)
        self.layer3 = _Block(2 * width, 4 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        if self.features_only:
            return x
        return self.fc(torch.flatten(self.pool(x), 1))
