"""SeriesSegNet: per-pixel classes from an image time series with clouds (the ConvLSTM seed question).

Each frame goes through a small convolutional encoder; a :class:`~cnnkit.nn.ConvLSTM2d` runs over the dates
with a per-pixel, per-date validity mask (a cloudy pixel keeps its state: the cloud never enters the memory);
a head classifies every pixel from the final state.

Padded batches are exact without :func:`cnnkit.masked`: pad each series at the end in time and at the
bottom and right in space with zeros and ``mask = False``. The encoder's only spatial window is its first
convolution, which reads the zero input there exactly as zero padding; the ConvLSTM selects the input away
and keeps the state at 0 at masked pixels, so its windows and the head's read zeros there too; a padded
date changes no state. So each series' output equals the output for that series alone (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit._checks import check_int
from cnnkit.errors import ShapeError
from cnnkit.nn import ConvLSTM2d
from cnnkit.nn.temporal_attention import date_encoding

__all__ = ["SeriesSegNet"]


class SeriesSegNet(nn.Module):
    """Frame encoder → ConvLSTM2d over the dates (masked per pixel) → per-pixel classes.

    Args:
        in_channels: Bands of every frame.
        num_classes: Classes predicted per pixel.
        width: Channels of the frame encoder.
        hidden: Hidden channels of the ConvLSTM (and of the head).
        kernel_size: Window of the ConvLSTM's convolutions (odd; 1 is an LSTM per pixel, about 9× cheaper
            than 3, with the spatial context left to the encoder's and the head's 3 × 3 windows).
        harmonics: ``K`` ≥ 0. With ``K > 0`` the ConvLSTM reads, beside each date's ``width`` encoder features
            ``e_t``, the products ``e_t · sin(2πk·day_t / period)`` and ``e_t · cos(2πk·day_t / period)`` for ``k = 1
            … K`` (``(2K + 1)·width`` channels): summed over the dates they are the Fourier coefficients of the
            features over the season, which tell a rhythm apart from its reverse or its double; an LSTM accumulates
            sums easily and products poorly. ``0``: the features alone (the days are not used).
        period: The fundamental period of the harmonics, in days (365: one season).
        phasors: ``P`` ≥ 0. With ``P > 0`` (and ``K > 0``) the harmonics multiply ``P`` *linear* views of each
            date's bands, ``p_t = W·x_t`` (a 1 × 1 convolution without bias or ReLU), instead of the encoder's
            features, and the ConvLSTM reads ``[e_t, p_t, p_t·sin, p_t·cos …]`` (``width + (2K + 1)·P``
            channels). A crop's bands at one date are the sine and cosine of its place in its cycle, linearly:
            ``p_t`` can be that phasor, and ``Σ_t p_t·e^(−2πik·day_t/period)`` adds up coherently for the crop's
            own rhythm only (ReLU features bend the phasor and blur the sums).
        head_dilations: One 3 × 3 convolution (with ReLU) of the head per entry, with that dilation, before the
            1 × 1 classifier; ``(1, 2, 4)`` sees 15 × 15 px of final states, so that a pixel with few clear dates
            can read its field's neighbours. Pixels with no valid date are 0 between these convolutions, as
            padding is, so padded batches stay exact.
        context: ``k`` (odd, 0 = off). With ``k > 0`` the head also reads, at each pixel, the mean of the final
            states over its ``k × k`` neighbourhood weighted by each neighbour's number of valid dates (a pixel
            seen on 20 dates counts 20 times one seen on 1; pixels never seen, padding and beyond the edge count 0):
            fields are uniform, clouds fall elsewhere on other dates, so a pixel with few clear dates reads its
            field's better-seen neighbours (0 at a pixel never seen itself, as at padding). No weights; the head's
            first convolution takes ``2 · hidden`` channels.

    Shape:
        - x: (N, T, in_channels, H, W).
        - mask: (N, T, H, W) bool, ``True`` where the pixel holds data on that date (``None``: all valid).
        - days: (N, T) acquisition days, accepted so that every series network is called alike (as
          :class:`~cnnkit.models.utae.UTAE` is) and not used: the ConvLSTM sees only the order of the dates.
        - Output: (N, num_classes, H, W) logits.

    Examples:
        >>> net = SeriesSegNet(6, 5)
        >>> x, mask = torch.randn(2, 7, 6, 30, 30), torch.rand(2, 7, 30, 30) > 0.3
        >>> net(x, mask).shape
        torch.Size([2, 5, 30, 30])
    """

    def __init__(self, in_channels: int = 6, num_classes: int = 5, width: int = 16, hidden: int = 32,
                 kernel_size: int = 3, harmonics: int = 0, period: float = 365.0,
                 head_dilations: Sequence[int] = (1,), context: int = 0, phasors: int = 0):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("width", width),
                            ("hidden", hidden), ("kernel_size", kernel_size)):
            check_int(value, name)
        check_int(harmonics, "harmonics", 0)
        check_int(context, "context", 0)
        check_int(phasors, "phasors", 0)
        if context and context % 2 == 0:
            raise ShapeError(f"context must be odd (a centred window) or 0. Received context={context}.")
        if kernel_size % 2 == 0:
            raise ShapeError(f"kernel_size must be odd (a centred window). Received kernel_size={kernel_size}.")
        if isinstance(period, bool) or not isinstance(period, (int, float)) or not period > 0:
            raise ShapeError(f"period must be a number > 0 (days). Received period={period!r}.")
        if isinstance(head_dilations, (str, bytes)) or not isinstance(head_dilations, Sequence) or not head_dilations:
            raise ShapeError(f"head_dilations must be a list of at least one dilation. Received "
                             f"head_dilations={head_dilations!r}.")
        head_dilations = tuple(check_int(d, f"head_dilations[{i}]") for i, d in enumerate(head_dilations))
        self.in_channels, self.num_classes, self.width, self.hidden = in_channels, num_classes, width, hidden
        self.kernel_size, self.harmonics, self.period = kernel_size, harmonics, float(period)
        self.head_dilations, self.context, self.phasors = head_dilations, context, phasors
        # linear views of each date's bands (no ReLU), the ones the harmonics multiply when phasors > 0
        self.phasor = nn.Conv2d(in_channels, phasors, 1, bias=False) if phasors else None
        self.encoder = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(width, width, 1), nn.ReLU())
        modulated = (2 * harmonics + 1) * phasors if phasors else 2 * harmonics * width
        self.recurrent = ConvLSTM2d(width + modulated, hidden, kernel_size, padding="same")
        head: list[nn.Module] = []
        for i, d in enumerate(head_dilations):
            channels = 2 * hidden if context and not i else hidden
            head += [nn.Conv2d(channels, hidden, 3, padding=d, dilation=d), nn.ReLU()]
        self.head = nn.Sequential(*head, nn.Conv2d(hidden, num_classes, 1))

    def forward(self, x: Tensor, mask: Tensor | None = None, days: Tensor | None = None) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 5 or x.shape[2] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ShapeError(f"SeriesSegNet expects x (N, T, C, H, W) with C = in_channels = {self.in_channels}. "
                             f"Received x of shape {got}.")
        n, t, c, h, w = x.shape
        if days is not None and (not isinstance(days, Tensor) or tuple(days.shape) != (n, t)):
            got = tuple(days.shape) if isinstance(days, Tensor) else type(days).__name__
            raise ShapeError(f"SeriesSegNet: days must be (N, T) = {(n, t)}. Received days of shape {got}.")
        if mask is not None:
            if tuple(mask.shape) != (n, t, h, w):
                raise ShapeError(f"SeriesSegNet: mask must be (N, T, H, W) = {(n, t, h, w)}. Received mask of shape "
                                 f"{tuple(mask.shape)}.")
            mask = mask.bool()
            x = torch.where(mask[:, :, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        features = self.encoder(x.reshape(n * t, c, h, w)).reshape(n, t, self.width, h, w)
        if self.harmonics:
            if days is None:
                days = torch.arange(t, device=x.device).expand(n, t)
            dtype = features.dtype
            waves = date_encoding(days.to(dtype), 2 * self.harmonics, self.period, basis="harmonic")  # (N, T, 2K)
            if self.phasor is not None:
                linear = self.phasor(x.reshape(n * t, c, h, w)).reshape(n, t, self.phasors, h, w)
                modulated = linear[:, :, None] * waves[:, :, :, None, None, None]
                features = torch.cat([features, linear, modulated.reshape(n, t, -1, h, w)], 2)
            else:
                modulated = features[:, :, None] * waves[:, :, :, None, None, None]  # (N, T, 2K, width, H, W)
                features = torch.cat([features, modulated.reshape(n, t, -1, h, w)], 2)
        _, (h_n, _) = self.recurrent(features, mask=mask)
        out = h_n[-1]
        if self.context:
            count = (torch.full((n, t, h, w), 1.0, dtype=out.dtype, device=out.device) if mask is None
                     else mask.to(out.dtype)).sum(1, keepdim=True)  # (N, 1, H, W) valid dates per pixel
            k = self.context
            # sums over the window (zero beyond the edge: the same as padding, which has no valid date)
            total = F.avg_pool2d(out * count, k, 1, k // 2, count_include_pad=True)
            weight = F.avg_pool2d(count, k, 1, k // 2, count_include_pad=True)
            # 0 at a pixel never seen itself (padding is one: the head's window must read 0 there)
            pooled = torch.where((weight > 0) & (count > 0), total / weight.clamp_min(torch.finfo(out.dtype).tiny),
                                 torch.zeros((), dtype=out.dtype, device=out.device))
            out = torch.cat([out, pooled], 1)
        if len(self.head) == 3:
            return self.head(out)
        # several spatial convolutions: zero the pixels without any valid date between them (as padding reads)
        keep = torch.ones((), dtype=torch.bool, device=x.device) if mask is None else mask.any(1)[:, None]
        zero = torch.zeros((), dtype=out.dtype, device=out.device)
        for conv in self.head[:-1:2]:
            out = torch.where(keep, F.relu(conv(out)), zero)
        return self.head[-1](out)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, num_classes={self.num_classes}, width={self.width}, "
                f"hidden={self.hidden}" + (f", kernel_size={self.kernel_size}" if self.kernel_size != 3 else "")
                + (f", harmonics={self.harmonics}, period={self.period:g}" if self.harmonics else "")
                + (f", head_dilations={self.head_dilations}" if self.head_dilations != (1,) else "")
                + (f", context={self.context}" if self.context else ""))
