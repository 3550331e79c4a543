"""Lightweight temporal attention over the dates of an image time series (L-TAE, per pixel), masked per pixel.

L-TAE (Sainte Fare Garnot & Landrieu 2020) turns a series of feature maps into one map: at every pixel, each
head compares one **learned master query** with a key computed from each date's features (plus a sinusoidal
encoding of the acquisition day), and takes the softmax-weighted sum of its own group of the features over the
dates. The math, for one pixel, head ``h`` and dates ``t`` with validity ``m_t``::

    f_t   = W_in · norm(x_t) + b_in                              (d_model channels)
    e_t   = f_t + PE(day_t)                 (encoding="add", L-TAE's)
          = f_t ⊙ PE(day_t) + PE(day_t)     (encoding="modulate")
    k_t   = W_k · e_t + b_k                                      (num_heads × key_channels)
    s_t   = ⟨q_h, k_{t,h}⟩ / √key_channels                       (the attention logits)
    a_t   = masked_softmax(s, m)_t                               (exactly 0 where m_t is False)
    out   = MLP(concat_h Σ_t a_t · e_{t, group h})               (out_channels)

``encoding="modulate"`` multiplies each channel by its own sinusoid of the day, so that even uniform attention
sums ``Σ_t f_t ⊙ PE(day_t)``: a Fourier-like coefficient of each feature over the season, which tells how fast
and in which direction the bands change, not only when. On cnnkit's demo data, whose crops differ only by such
rhythms at a random phase per field, it reached a held-out mean IoU of 0.55 where ``"add"`` reached 0.35 (same
network, data and 432 steps; docs/timeseries.md).

Exactness: a date masked at a pixel gets weight exactly 0 there (its logit is set to −inf before the softmax,
never multiplied by a mask), and a pixel whose every date is masked gets all-zero weights and a zero output,
not NaN. No statistic is taken over dates or pixels: ``norm`` is a layer norm over the channels of one pixel
on one date (:class:`ChannelNorm`), so adding a fully masked date, padding a batch in time or in space, or
cutting the image into tiles changes nothing at the pixels kept.

The math lives in the functions :func:`masked_softmax`, :func:`date_encoding` and :func:`collapse_dates`;
:class:`LTAE2d` holds the weights and calls them, and :class:`~cnnkit.models.utae.UTAE` reuses its logits at
other resolutions.

References:
    V. Sainte Fare Garnot, L. Landrieu. *Lightweight Temporal Self-Attention for Classifying Satellite Images
    Time Series*, AALTD 2020. *Panoptic Segmentation of Satellite Image Time Series with Convolutional Temporal
    Attention Networks*, ICCV 2021 (U-TAE; github.com/VSainteuf/utae-paps).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit._checks import check_choice, check_int
from cnnkit.errors import ShapeError

__all__ = ["BASES", "ENCODINGS", "ChannelNorm", "LTAE2d", "TemporalAttention", "collapse_dates", "date_encoding",
           "masked_softmax"]

ENCODINGS = ("add", "modulate")
"""How :class:`LTAE2d` combines the dates' features with their date encoding."""

BASES = ("geometric", "harmonic")
"""The frequencies of :func:`date_encoding`: Vaswani et al.'s geometric ladder, or the harmonics of a period."""


def masked_softmax(logits: Tensor, mask: Tensor | None, dim: int) -> Tensor:
    """Softmax of ``logits`` along ``dim`` over the entries where ``mask`` is ``True``; exactly 0 elsewhere.

    Masked logits are set to −inf (NaN and inf there are selected away, never multiplied); a slice whose
    every entry is masked gives all zeros (not NaN) and no gradient.

    Args:
        logits: Any shape.
        mask: Bool, broadcastable to ``logits`` (``None``: a plain softmax).
        dim: The axis the weights sum to 1 over.

    Examples:
        >>> logits = torch.tensor([[1.0, 2.0, float("nan")], [0.0, 0.0, 0.0]])
        >>> mask = torch.tensor([[True, True, False], [False, False, False]])
        >>> masked_softmax(logits, mask, 1)
        tensor([[0.2689, 0.7311, 0.0000],
                [0.0000, 0.0000, 0.0000]])
    """
    if mask is None:
        return torch.softmax(logits, dim)
    mask = mask.expand_as(logits)
    any_valid = mask.any(dim, keepdim=True)
    filled = logits.masked_fill(~mask, float("-inf")).masked_fill(~any_valid, 0.0)
    return torch.where(mask, torch.softmax(filled, dim), torch.zeros((), dtype=logits.dtype, device=logits.device))


def _check_basis(basis: str, harmonics: int | None) -> None:
    check_choice(basis, BASES, "basis")
    if harmonics is not None:
        check_int(harmonics, "harmonics", 0)
        if basis != "harmonic":
            raise ShapeError(f"harmonics applies to basis='harmonic' only. Received basis={basis!r}, "
                             f"harmonics={harmonics}.")


def date_encoding(days: Tensor, channels: int, period: float = 1000.0, repeat: int = 1,
                  basis: str = "geometric", harmonics: int | None = None) -> Tensor:
    """Sinusoidal encoding of acquisition days (Vaswani et al.'s, on days instead of positions).

    ``basis="geometric"`` (L-TAE's): ``E[..., 2i] = sin(day / period^(2i/d))``, ``E[..., 2i+1] = cos(day /
    period^(2i/d))``. ``basis="harmonic"``: ``E[..., 2i] = sin(2π (i + 1) day / period)``, ``E[..., 2i+1] =
    cos(2π (i + 1) day / period)`` — one, two, … cycles per ``period`` (a season of 365 days: the yearly rhythms a
    crop's growth follows; the geometric ladder's wavelengths fall between them). Here ``d = channels // repeat``,
    the ``d`` channels repeated ``repeat`` times (one copy per attention head, as in L-TAE).

    ``harmonics=K`` (with ``basis="harmonic"``) cycles the pairs through ``0, 1, …, K`` cycles per ``period`` instead
    of counting up: a few chosen rhythms, each on several pairs. The pair of 0 cycles is ``(sin 0, cos 0) = (0,
    1)``: under :class:`LTAE2d`'s ``"modulate"`` the first channel is 0 and the second keeps its feature as it is,
    whose attention-weighted sum over the dates is its mean — the level around which the other pairs measure the
    rhythms. (On ``cnnkit demo --time-series`` ``(1, 1)`` instead, both channels kept, reached a five-seed mean IoU of
    0.891 where ``(0, 1)`` reached 0.937, one run each; docs/benchmarks.md.)

    Args:
        days: ``(N, T)`` days (day of year, or days since a reference date); any real dtype.
        channels: Encoding channels (divisible by ``repeat``).
        period: The longest wavelength's scale (L-TAE's ``T = 1000``), or with ``basis="harmonic"`` the
            fundamental period in days.
        repeat: Copies of the ``channels // repeat`` encoding.
        basis: One of :data:`BASES`.
        harmonics: ``K`` ≥ 0 or ``None`` (``basis="harmonic"`` only): the pairs cycle through ``0 … K`` cycles per
            period; ``None``: ``1, 2, …``, one frequency per pair.

    Returns:
        ``(N, T, channels)`` in the default float dtype for integer days, else in ``days``' dtype.

    Examples:
        >>> date_encoding(torch.tensor([[0, 10]]), 4)[0, 0].tolist()
        [0.0, 1.0, 0.0, 1.0]
        >>> quarter = date_encoding(torch.tensor([[91.25]]), 4, 365.0, basis="harmonic")[0, 0]  # a quarter season
        >>> [round(v, 6) + 0.0 for v in quarter.tolist()]  # sin, cos of 1 and 2 cycles
        [1.0, 0.0, 0.0, -1.0]
        >>> cycled = date_encoding(torch.tensor([[91.25]]), 6, 365.0, basis="harmonic", harmonics=1)[0, 0]
        >>> [round(v, 6) + 0.0 for v in cycled.tolist()]  # 0, 1, 0 cycles
        [0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    """
    if channels % repeat:
        raise ShapeError(f"channels must be divisible by repeat. Received channels={channels}, repeat={repeat}.")
    _check_basis(basis, harmonics)
    width = channels // repeat
    dtype = days.dtype if days.is_floating_point() else torch.get_default_dtype()
    pair = torch.div(torch.arange(width, device=days.device), 2, rounding_mode="floor").to(dtype)
    cycles = pair + 1 if harmonics is None else pair % (harmonics + 1)
    if basis == "harmonic":
        angle = days.to(dtype)[..., None] * (cycles * (2 * math.pi / period))
    else:
        angle = days.to(dtype)[..., None] / period ** (2 * pair / width)
    encoding = torch.where(torch.arange(width, device=days.device) % 2 == 0, torch.sin(angle), torch.cos(angle))
    return encoding.repeat(*(1,) * days.dim(), repeat)


def collapse_dates(values: Tensor, weights: Tensor) -> Tensor:
    """The attention-weighted sum over dates, each head weighing its own group of channels.

    Args:
        values: ``(N, T, C, H, W)`` with ``C`` divisible by the heads.
        weights: ``(N, heads, T, H, W)``, e.g. from :func:`masked_softmax` (0 at masked dates).

    Returns:
        ``(N, C, H, W)``: channel group ``h`` (``C / heads`` channels) is ``Σ_t weights[:, h, t] · values[:, t]``.

    Examples:
        >>> values = torch.arange(8.0).reshape(1, 2, 4, 1, 1)           # T = 2, C = 4
        >>> weights = torch.tensor([1.0, 0.0, 0.25, 0.75]).reshape(1, 2, 2, 1, 1)
        >>> collapse_dates(values, weights).flatten().tolist()
        [0.0, 1.0, 5.0, 6.0]
    """
    n, t, c, h, w = values.shape
    heads = weights.shape[1]
    if c % heads or tuple(weights.shape) != (n, heads, t, h, w):
        raise ShapeError(f"collapse_dates expects values (N, T, C, H, W) with C divisible by the heads, and weights "
                         f"(N, heads, T, H, W) = ({n}, heads, {t}, {h}, {w}). Received values {tuple(values.shape)}, "
                         f"weights {tuple(weights.shape)}.")
    if values.stride(2) == 1 and c > 1:
        # channels last (as UTAE's encoder leaves them): multiply and sum in that layout, (N, T, H, W, heads, C/heads)
        grouped = values.permute(0, 1, 3, 4, 2).reshape(n, t, h, w, heads, c // heads)
        weights = weights.permute(0, 2, 3, 4, 1).contiguous().unsqueeze(-1)
        return (grouped * weights).sum(1).reshape(n, h, w, c).permute(0, 3, 1, 2)
    grouped = values.reshape(n, t, heads, c // heads, h, w)
    return (grouped * weights.transpose(1, 2).unsqueeze(3)).sum(1).reshape(n, c, h, w)


class ChannelNorm(nn.Module):
    """Layer norm over the channels of each pixel (of each date), with an affine map per channel.

    Unlike ``nn.GroupNorm`` and ``nn.BatchNorm2d`` it takes no statistic over pixels, dates or samples: the
    output at a pixel depends on that pixel's channels only, so padding, masking and tiling stay exact.

    Args:
        num_channels: ``C``.
        eps: Added to the variance.

    Shape:
        ``(..., C, H, W)`` → the same shape; ``C`` is the third axis from the end.

    Examples:
        >>> norm = ChannelNorm(3)
        >>> y = norm(torch.tensor([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1))
        >>> [round(v, 4) for v in y.flatten().tolist()]
        [-1.2247, 0.0, 1.2247]
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        self.num_channels, self.eps = check_int(num_channels, "num_channels"), eps
        self.weight = nn.Parameter(torch.ones(num_channels, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(num_channels, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 3 or x.shape[-3] != self.num_channels:
            raise ShapeError(f"ChannelNorm expects (..., C, H, W) with C = {self.num_channels}. Received "
                             f"{tuple(x.shape)}.")
        return F.layer_norm(x.movedim(-3, -1), (self.num_channels,), self.weight, self.bias, self.eps).movedim(-1, -3)

    def extra_repr(self) -> str:
        return f"{self.num_channels}" + (f", eps={self.eps}" if self.eps != 1e-5 else "")


class LTAE2d(nn.Module):
    """Lightweight temporal attention (L-TAE) at every pixel: ``(N, T, C, H, W)`` → ``(N, out_channels, H, W)``.

    The equations and the exactness rules are in the module documentation.

    Args:
        in_channels: ``C`` of every date.
        out_channels: Channels of the output (default ``in_channels``).
        num_heads: Attention heads; each has its own master query and weighs its own group of ``d_model /
            num_heads`` channels.
        key_channels: Length of each head's query and keys (L-TAE's ``d_k``).
        d_model: Channels the dates are projected to before the attention (default ``in_channels``); divisible
            by ``num_heads``.
        period: Scale of the date encoding's longest wavelength, in days (:func:`date_encoding`).
        encoding: How the date encoding enters: ``"add"`` (L-TAE's ``f + PE``) or ``"modulate"``
            (``f ⊙ PE + PE``; the module documentation says why).
        basis: The date encoding's frequencies (:func:`date_encoding`): ``"geometric"`` (L-TAE's) or
            ``"harmonic"`` (1, 2, … cycles per ``period`` days).
        harmonics: With ``basis="harmonic"``: ``K`` ≥ 0 makes the pairs cycle through ``0 … K`` cycles per period
            (:func:`date_encoding`); ``None``: ``1, 2, …``.

    Shape:
        - x: ``(N, T, in_channels, H, W)``.
        - mask: ``(N, T, H, W)`` bool, ``True`` where the pixel holds data on that date (``None``: all valid).
        - days: ``(N, T)`` acquisition days (day of year or days since a reference date; ``None``: ``0 … T−1``).
        - Output: ``(N, out_channels, H, W)`` (0 where every date is masked), and the attention weights
          ``(N, num_heads, T, H, W)``, 0 at masked dates.

    Examples:
        >>> layer = LTAE2d(8, 6, num_heads=2)
        >>> x, mask = torch.randn(2, 5, 8, 4, 4), torch.rand(2, 5, 4, 4) > 0.3
        >>> days = torch.tensor([[3, 20, 41, 70, 90], [1, 2, 3, 4, 5]])
        >>> out, weights = layer(x, mask, days)
        >>> out.shape, weights.shape
        (torch.Size([2, 6, 4, 4]), torch.Size([2, 2, 5, 4, 4]))
        >>> bool((weights[~mask.unsqueeze(1).expand_as(weights)] == 0).all())
        True
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, *, num_heads: int = 4,
                 key_channels: int = 4, d_model: int | None = None, period: float = 1000.0, encoding: str = "add",
                 basis: str = "geometric", harmonics: int | None = None, device=None, dtype=None) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        d_model = in_channels if d_model is None else d_model
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("num_heads", num_heads),
                            ("key_channels", key_channels), ("d_model", d_model)):
            check_int(value, name)
        if d_model % num_heads:
            raise ShapeError(f"d_model must be divisible by num_heads. Received d_model={d_model}, "
                             f"num_heads={num_heads}.")
        if isinstance(period, bool) or not isinstance(period, (int, float)) or not period > 0:
            raise ShapeError(f"period must be a number > 0. Received period={period!r}.")
        self.encoding = check_choice(encoding, ENCODINGS, "encoding")
        self.basis = check_choice(basis, BASES, "basis")
        _check_basis(basis, harmonics)
        self.harmonics = harmonics
        factory = {"device": device, "dtype": dtype}
        self.in_channels, self.out_channels, self.num_heads = in_channels, out_channels, num_heads
        self.key_channels, self.d_model, self.period = key_channels, d_model, float(period)
        self.in_norm = ChannelNorm(in_channels, **factory)
        self.in_proj = nn.Conv2d(in_channels, d_model, 1, **factory)
        self.key = nn.Conv2d(d_model, num_heads * key_channels, 1, **factory)
        self.query = nn.Parameter(torch.randn(num_heads, key_channels, **factory) / math.sqrt(key_channels))
        self.mlp = nn.Sequential(nn.Conv2d(d_model, out_channels, 1, **factory), ChannelNorm(out_channels, **factory),
                                 nn.ReLU())

    def _check(self, x: Tensor, mask: Tensor | None, days: Tensor | None) -> tuple[Tensor | None, Tensor]:
        if not isinstance(x, Tensor) or x.dim() != 5 or x.shape[2] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ShapeError(f"LTAE2d expects x (N, T, C, H, W) with C = in_channels = {self.in_channels}. "
                             f"Received x of shape {got}.")
        n, t, _, h, w = x.shape
        if mask is not None and (not isinstance(mask, Tensor) or tuple(mask.shape) != (n, t, h, w)):
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ShapeError(f"LTAE2d: mask must be (N, T, H, W) = {(n, t, h, w)}. Received mask of shape {got}.")
        if days is None:
            days = torch.arange(t, device=x.device).expand(n, t)
        elif not isinstance(days, Tensor) or tuple(days.shape) != (n, t):
            got = tuple(days.shape) if isinstance(days, Tensor) else type(days).__name__
            raise ShapeError(f"LTAE2d: days must be (N, T) = {(n, t)}. Received days of shape {got}.")
        elif days.is_floating_point() and not torch.isfinite(days).all():
            raise ShapeError("LTAE2d: days must be finite. Received NaN or inf.")
        return (None if mask is None else mask.bool()), days

    def embed(self, x: Tensor, mask: Tensor | None = None, days: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The dates' embeddings ``e`` ``(N, T, d_model, H, W)`` (0 at masked pixels) and the attention logits
        ``s`` ``(N, num_heads, T, H, W)`` before masking (what :class:`~cnnkit.models.utae.UTAE` upsamples)."""
        mask, days = self._check(x, mask, days)
        n, t, c, h, w = x.shape
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        if mask is not None:
            x = torch.where(mask[:, :, None], x, zero)
        frames = self.in_proj(self.in_norm(x.reshape(n * t, c, h, w))).reshape(n, t, self.d_model, h, w)
        encoding = date_encoding(days.to(frames.dtype), self.d_model, self.period, self.num_heads, self.basis,
                                 self.harmonics)
        encoding = encoding[..., None, None]
        embedded = frames + encoding if self.encoding == "add" else frames * encoding + encoding
        if mask is not None:
            embedded = embedded * mask[:, :, None]  # finite: x is 0 at masked pixels, the days are finite
        keys = self.key(embedded.reshape(n * t, self.d_model, h, w))
        keys = keys.reshape(n, t, self.num_heads, self.key_channels, h, w)
        logits = torch.einsum("nthkyx,hk->nhtyx", keys, self.query) / math.sqrt(self.key_channels)
        return embedded, logits

    def forward(self, x: Tensor, mask: Tensor | None = None, days: Tensor | None = None) -> tuple[Tensor, Tensor]:
        embedded, logits = self.embed(x, mask, days)
        weights = masked_softmax(logits, None if mask is None else mask.bool()[:, None], 2)
        out = self.mlp(collapse_dates(embedded, weights))
        if mask is not None:
            out = torch.where(mask.bool().any(1)[:, None], out, torch.zeros((), dtype=out.dtype, device=out.device))
        return out, weights

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, num_heads={self.num_heads}, key_channels={self.key_channels}"
        if self.d_model != self.in_channels:
            text += f", d_model={self.d_model}"
        text += f", period={self.period:g}" if self.period != 1000.0 else ""
        text += f", basis={self.basis!r}" if self.basis != "geometric" else ""
        text += f", harmonics={self.harmonics}" if self.harmonics is not None else ""
        return text + (f", encoding={self.encoding!r}" if self.encoding != "add" else "")


TemporalAttention = LTAE2d
"""The name by what it does: :class:`LTAE2d`."""
