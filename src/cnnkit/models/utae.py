"""UTAE: per-pixel classes from an image time series with a U-Net shared by all dates and temporal attention.

U-TAE's design (Sainte Fare Garnot & Landrieu, ICCV 2021; github.com/VSainteuf/utae-paps), with per-pixel masks:

1. **Encoder, shared by all dates**: one 3 × 3 convolution at full resolution (where the T dates cost the most:
   a second one made a demo training step about 25 % slower); at each level ``i > 0`` a stride-2 convolution
   (kernel 4, padding 1) and a 3 × 3 one, so level ``i`` is at ``1 / 2^i`` of the input's resolution.
2. **Temporal attention at the lowest resolution** (:class:`~cnnkit.nn.LTAE2d`: multi-head, a learned master
   query per head, a sinusoidal encoding of the acquisition day) collapses the dates into one map, pixel by pixel.
3. **The attention reused for the skip connections**: the lowest level's attention logits are upsampled
   (bilinearly, from the pixels where that date is valid only) to each level's resolution, masked there and
   softmaxed over the dates; each head's weights
   collapse its own group of the level's channels (:func:`~cnnkit.nn.temporal_attention.collapse_dates`).
4. **Decoder**: a transposed convolution (kernel 4, stride 2) up, concatenated with the collapsed skip, a
   convolution; a 1 × 1 head.

Masks and exactness (tested in float64):

- a pixel that holds no data on a date (cloud, nodata, padding in time) is 0 in the encoder's input; level ``i``'s
  mask is the level above's max-pooled by 2 (a coarse pixel is valid on a date when one of its 2 × 2 pixels is),
  and every feature map is 0 where its mask is ``False`` (the encoder's per date, the decoder's where no date is
  valid). A date masked at a pixel gets attention weight exactly 0 there, at every level: adding a fully masked
  date to a series changes nothing.
- the input is padded at the bottom and right to a multiple of ``2^(levels − 1)`` with masked pixels, so any size
  works; because masked pixels read as zeros everywhere, a batch padded in space and time (as
  :func:`cnnkit.data.collate_series` pads it, and as :class:`~cnnkit.models.SeriesSegNet` documents) gives each
  series exactly its output alone.
- **normalisation**: :class:`~cnnkit.nn.temporal_attention.ChannelNorm` (a layer norm over the channels of each
  pixel on each date) instead of U-TAE's GroupNorm/BatchNorm: no statistic is taken over pixels, dates or series,
  so padded pixels and masked dates cannot change the statistics, and the output at a pixel depends only on its
  receptive field (the U-Net's) — tiles aligned to ``2^(levels − 1)`` pixels with that halo equal the whole.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit._checks import check_int
from cnnkit.errors import ShapeError
from cnnkit.nn.temporal_attention import ChannelNorm, LTAE2d, collapse_dates, masked_softmax

__all__ = ["UTAE"]


def _block(out_channels: int, first: nn.Module, second: bool = True) -> nn.ModuleList:
    """``first`` (a convolution into ``out_channels``), norm, ReLU[, 3 × 3 convolution, norm, ReLU] — as a list, so
    the caller can zero the masked pixels after each convolution's norm."""
    layers = [first, ChannelNorm(out_channels)]
    if second:
        layers += [nn.Conv2d(out_channels, out_channels, 3, padding=1), ChannelNorm(out_channels)]
    return nn.ModuleList(layers)


def _run(block: nn.ModuleList, x: Tensor, keep: Tensor) -> Tensor:
    # times the bool mask rather than torch.where (about 10x slower here on the CPU): exact, as every feature map is
    # finite (the input is zeroed at masked pixels, NaN included, before the first convolution)
    for conv, norm in zip(block[0::2], block[1::2]):
        x = F.relu(norm(conv(x))) * keep
    return x


def _tent(size: int, scale: int, like: Tensor) -> Tensor:
    """``(size · scale, size)``: bilinear (``align_corners=False``) weights from a grid to one ``scale`` times finer,
    with nothing read beyond the grid's edge (no clamping)."""
    fine = (torch.arange(size * scale, device=like.device, dtype=like.dtype) + 0.5) / scale - 0.5
    coarse = torch.arange(size, device=like.device, dtype=like.dtype)
    return (1 - (fine[:, None] - coarse[None, :]).abs()).clamp_min(0)


def _upsample_valid(values: Tensor, valid: Tensor, scale: int) -> Tensor:
    """Bilinear upsampling by ``scale`` of ``values (..., h, w)`` from its ``valid`` pixels only (normalised
    convolution: ``up(values · valid) / up(valid)``, 0 where no valid pixel contributes).

    Masked pixels and pixels beyond the edge contribute nothing, so an image gives the same values alone and padded
    in a batch (plain bilinear upsampling would read the padding, or clamp at the image's own edge).
    """
    rows, cols = _tent(values.shape[-2], scale, values), _tent(values.shape[-1], scale, values)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    weight = valid.to(values.dtype).expand_as(values)
    numerator = rows @ torch.where(valid, values, zero) @ cols.T
    denominator = rows @ weight @ cols.T
    return torch.where(denominator > 0, numerator / denominator.where(denominator > 0, torch.ones_like(zero)), zero)


class UTAE(nn.Module):
    """U-Net encoder shared by all dates → masked temporal attention (L-TAE) → U-Net decoder → per-pixel classes.

    Called like :class:`~cnnkit.models.SeriesSegNet`, with the acquisition days as an optional third argument.
    The design and the exactness rules are in the module documentation.

    Args:
        in_channels: Bands of every date.
        num_classes: Classes predicted per pixel.
        encoder_widths: Channels of each level, full resolution first (``levels = len(encoder_widths)`` ≥ 2);
            every level but the last is a skip connection, so divisible by ``num_heads``.
        decoder_widths: Channels of the decoder at each level (default ``encoder_widths``); the last is the
            attention's output.
        num_heads: Attention heads (L-TAE's ``n_head``).
        key_channels: Length of each head's query and keys (L-TAE's ``d_k``).
        d_model: Channels of the attention's date embeddings (default ``encoder_widths[-1]``).
        period: Scale of the date encoding, in days (:func:`~cnnkit.nn.temporal_attention.date_encoding`).
        encoding: How the date encoding enters the attention: ``"add"`` (L-TAE's) or ``"modulate"`` (each feature
            times its own sinusoid of the day; see :class:`~cnnkit.nn.LTAE2d`).
        basis: The date encoding's frequencies: ``"geometric"`` (L-TAE's) or ``"harmonic"`` (1, 2, … cycles per
            ``period`` days; :func:`~cnnkit.nn.temporal_attention.date_encoding`).
        harmonics: With ``basis="harmonic"``: ``K`` ≥ 0 makes the encoding's pairs cycle through ``0 … K`` cycles per
            ``period`` (0: the features' weighted mean over the dates; 1 … K: their Fourier coefficients), as
            :class:`~cnnkit.models.SeriesSegNet`'s ``harmonics``; ``None``: ``1, 2, …`` cycles, one per pair.
        phasors: ``P`` ≥ 0 extra channels of the attention's input: ``P`` linear views of each date's bands (a
            1 × 1 convolution without bias or ReLU), averaged over the valid pixels of each ``2^(levels−1)``-pixel
            block of the lowest level (0 where none is valid). The encoder's ReLU features bend a crop's phasor
            (its bands are the sine and cosine of its place in its cycle); these keep it, so that ``"modulate"``
            sums it over the dates coherently.

    Shape:
        - x: ``(N, T, in_channels, H, W)`` (any H and W).
        - mask: ``(N, T, H, W)`` bool, ``True`` where the pixel holds data on that date (``None``: all valid).
        - days: ``(N, T)`` acquisition days — day of year, or days since a reference date (``None``: ``0 … T−1``).
        - Output: ``(N, num_classes, H, W)`` logits.

    Examples:
        >>> net = UTAE(6, 5)
        >>> x, mask = torch.randn(2, 7, 6, 30, 30), torch.rand(2, 7, 30, 30) > 0.3
        >>> days = torch.tensor([[5, 17, 40, 66, 90, 120, 150]] * 2)
        >>> net(x, mask, days).shape
        torch.Size([2, 5, 30, 30])
    """

    def __init__(self, in_channels: int = 6, num_classes: int = 5, encoder_widths: Sequence[int] = (16, 32, 32),
                 decoder_widths: Sequence[int] | None = None, num_heads: int = 4, key_channels: int = 4,
                 d_model: int | None = None, period: float = 1000.0, encoding: str = "add",
                 basis: str = "geometric", harmonics: int | None = None, phasors: int = 0):
        super().__init__()
        check_int(in_channels, "in_channels")
        check_int(num_classes, "num_classes")
        check_int(num_heads, "num_heads")
        check_int(phasors, "phasors", 0)
        encoder_widths = self._widths(encoder_widths, "encoder_widths")
        decoder_widths = encoder_widths if decoder_widths is None else self._widths(decoder_widths, "decoder_widths")
        if len(decoder_widths) != len(encoder_widths):
            raise ShapeError(f"decoder_widths must have one width per level, like encoder_widths "
                             f"({len(encoder_widths)}). Received decoder_widths={decoder_widths}.")
        uneven = [w for w in encoder_widths[:-1] if w % num_heads]
        if uneven:
            raise ShapeError(f"The skip levels' widths (encoder_widths[:-1]) must be divisible by num_heads: each head "
                             f"weighs its own group of channels. Received encoder_widths={encoder_widths}, "
                             f"num_heads={num_heads}.")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.encoder_widths, self.decoder_widths, self.num_heads = encoder_widths, decoder_widths, num_heads
        self.levels = len(encoder_widths)
        self.encoder = nn.ModuleList([_block(encoder_widths[0], nn.Conv2d(in_channels, encoder_widths[0], 3, padding=1),
                                             second=False)])
        for i in range(1, self.levels):
            self.encoder.append(_block(encoder_widths[i],
                                       nn.Conv2d(encoder_widths[i - 1], encoder_widths[i], 4, stride=2, padding=1)))
        self.phasors = phasors
        self.phasor = nn.Conv2d(in_channels, phasors, 1, bias=False) if phasors else None
        self.attention = LTAE2d(encoder_widths[-1] + phasors, decoder_widths[-1], num_heads=num_heads,
                                key_channels=key_channels, d_model=d_model or encoder_widths[-1], period=period,
                                encoding=encoding, basis=basis, harmonics=harmonics)
        self.up = nn.ModuleList([
            nn.ModuleList([nn.ConvTranspose2d(decoder_widths[i + 1], decoder_widths[i], 4, stride=2, padding=1),
                           ChannelNorm(decoder_widths[i])])
            for i in range(self.levels - 1)])
        self.decoder = nn.ModuleList([
            nn.ModuleList([nn.Conv2d(decoder_widths[i] + encoder_widths[i], decoder_widths[i], 3, padding=1),
                           ChannelNorm(decoder_widths[i])])
            for i in range(self.levels - 1)])
        self.head = nn.Conv2d(decoder_widths[0], num_classes, 1)

    @staticmethod
    def _widths(value, name: str) -> tuple[int, ...]:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) < 2:
            raise ShapeError(f"{name} must be a list of at least 2 channel counts (one per level). Received "
                             f"{name}={value!r}.")
        return tuple(check_int(v, f"{name}[{i}]") for i, v in enumerate(value))

    @property
    def size_multiple(self) -> int:
        """The input is padded (masked) to a multiple of this: ``2^(levels − 1)``; tiles must start on multiples of
        it to equal the whole image."""
        return 2 ** (self.levels - 1)

    def forward(self, x: Tensor, mask: Tensor | None = None, days: Tensor | None = None) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 5 or x.shape[2] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ShapeError(f"UTAE expects x (N, T, C, H, W) with C = in_channels = {self.in_channels}. "
                             f"Received x of shape {got}.")
        n, t, c, height, width = x.shape
        if mask is None:
            mask = torch.ones(n, t, height, width, dtype=torch.bool, device=x.device)
        elif not isinstance(mask, Tensor) or tuple(mask.shape) != (n, t, height, width):
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ShapeError(f"UTAE: mask must be (N, T, H, W) = {(n, t, height, width)}. Received mask of shape "
                             f"{got}.")
        mask = mask.bool()
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        x = torch.where(mask[:, :, None], x, zero)
        multiple = self.size_multiple
        pad_h, pad_w = -height % multiple, -width % multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
            mask = F.pad(mask, (0, pad_w, 0, pad_h))
        # the encoder, every date at once; masks per level
        masks, skips = [], []
        # channels last: each pixel's channels side by side, so ChannelNorm's layer norm reads them without a copy
        features = x.reshape(n * t, c, *x.shape[-2:]).contiguous(memory_format=torch.channels_last)
        level_mask = mask
        for i, block in enumerate(self.encoder):
            if i:
                level_mask = F.max_pool2d(level_mask.reshape(n * t, 1, *level_mask.shape[-2:]).to(x.dtype), 2)
                level_mask = level_mask.reshape(n, t, *level_mask.shape[-2:]) > 0
            features = _run(block, features, level_mask.reshape(n * t, 1, *level_mask.shape[-2:]))
            masks.append(level_mask)
            skips.append(features.reshape(n, t, -1, *features.shape[-2:]))
        # attention at the lowest resolution
        low_mask = masks[-1]
        low = skips[-1]
        if self.phasor is not None:
            block = self.size_multiple
            valid = mask.reshape(n * t, 1, *mask.shape[-2:]).to(x.dtype)
            # the block sums of the linear views = the linear views of the block sums (x is 0 at masked pixels and
            # the 1 × 1 convolution has no bias): pooled first, the convolution runs on 1 / block² of the pixels
            total = self.phasor(F.avg_pool2d(x.reshape(n * t, c, *x.shape[-2:]), block))
            count = F.avg_pool2d(valid, block)
            mean = torch.where(count > 0, total / count.clamp_min(torch.finfo(x.dtype).tiny), zero)
            low = torch.cat([low, mean.reshape(n, t, self.phasors, *mean.shape[-2:])], 2)
        embedded, logits = self.attention.embed(low, low_mask, days)
        weights = masked_softmax(logits, low_mask[:, None], 2)
        out = self.attention.mlp(collapse_dates(embedded, weights))
        out = out * low_mask.any(1)[:, None]
        # the decoder, each skip collapsed by the upsampled attention
        for i in reversed(range(self.levels - 1)):
            level_mask = masks[i]
            keep = level_mask.any(1)[:, None]
            conv, norm = self.up[i]
            out = F.relu(norm(conv(out))) * keep
            level_logits = _upsample_valid(logits, low_mask[:, None], 2 ** (self.levels - 1 - i))
            skip = collapse_dates(skips[i], masked_softmax(level_logits, level_mask[:, None], 2))
            conv, norm = self.decoder[i]
            out = F.relu(norm(conv(torch.cat([out, skip], 1)))) * keep
        return self.head(out)[..., :height, :width]

    def extra_repr(self) -> str:
        text = (f"in_channels={self.in_channels}, num_classes={self.num_classes}, "
                f"encoder_widths={self.encoder_widths}")
        if self.decoder_widths != self.encoder_widths:
            text += f", decoder_widths={self.decoder_widths}"
        return text + f", num_heads={self.num_heads}" + (f", phasors={self.phasors}" if self.phasors else "")
