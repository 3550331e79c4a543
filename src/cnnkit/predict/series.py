"""Image time series predicted in tiles in space, every date kept, equal to the whole series.

A series network (:class:`~cnnkit.models.utae.UTAE`, :class:`~cnnkit.models.SeriesSegNet`) takes ``(x (N, T, C, H,
W), valid (N, T, H, W), days (N, T))``. :class:`SeriesAsImage` presents it as an image network: its input packs each
date's bands and each date's validity as ``T·C + T`` channels of one ``(1, T·C + T, H, W)`` image, the days held
fixed. The image tiling of :mod:`cnnkit.predict.tiling` then applies unchanged: :func:`series_tile_geometry` traces
the halo and the grid (the total stride) of the wrapped network with :func:`~cnnkit.predict.tile_geometry` and
checks them on a random probe series (random validity included), and :func:`tiled_series_forward` runs the tiles with
:func:`~cnnkit.predict.tiled_forward` — no second tiler.

What holds, network by network:

* **UTAE**: the U-Net encoder is shared over the dates, the attention (L-TAE) is per pixel over the dates, its
  normalisation (``ChannelNorm``) takes no statistic over pixels: an output pixel depends on a bounded window of
  the input, whatever T. The trace finds the grid ``2^(levels − 1)`` (``UTAE.size_multiple``) and a halo that sums
  every windowed op's reach (the bilinear upsampling of the attention, a product with small matrices, is not a
  traced op: its reach, one pixel of the lowest level, lies well inside that sum, and the probe check would refuse
  the geometry otherwise). Tiled == whole up to float rounding (tested: 1e-10 in float64).
* **SeriesSegNet (ConvLSTM)**: its receptive field **grows with T** when ``kernel_size > 1``: each date's step
  convolves the state with a ``k × k`` window, so the final state at a pixel has seen ``T · (k − 1) / 2`` pixels
  around it, plus one for the encoder's and one for the head's 3 × 3 windows: halo ``= 2 + T · (k − 1) / 2`` (a
  head of several dilated 3 × 3 convolutions adds the sum of its dilations instead of 1). The trace counts every
  step's convolution, so the geometry traced for a series of T dates covers exactly that (:func:`series_tile_geometry`
  is called with its days); with ``kernel_size = 1`` the halo is 2, whatever T. Tiled == whole then holds exactly
  (tested in float64); a halo of the T-independent 2 with ``kernel_size = 3`` does not.

Memory: with :func:`tiled_series_forward` the series itself is held whole (``T × C × H × W`` float32, as it is
read); :func:`tiled_series_windows` reads each tile's window and halo of every date from disk instead
(:class:`cnnkit.data.series.SeriesWindows`), so the input follows the tile too. The network's activations —
``T × width × H × W`` per layer, the part that grows — follow the tile plus its halo either way; the logits
``(K, H, W)`` are gathered whole.

Examples:
    >>> from cnnkit.models.utae import UTAE
    >>> net = UTAE(3, 4, encoder_widths=(4, 4, 4), num_heads=2).eval()
    >>> x, valid = torch.randn(1, 5, 3, 30, 27), torch.rand(1, 5, 30, 27) > 0.2
    >>> days = torch.tensor([[3, 9, 40, 41, 70]])
    >>> geometry = series_tile_geometry(net, bands=3, days=days)
    >>> geometry.multiple
    (4, 4)
    >>> tiled = tiled_series_forward(net, x, valid, days, tile=8, geometry=geometry)
    >>> bool(torch.allclose(tiled, net(x, valid, days), atol=1e-5))
    True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit._checks import check_int
from cnnkit.errors import ShapeError
from cnnkit.predict.tiling import TileGeometry, tile_geometry, tiled_forward

__all__ = ["SeriesAsImage", "SeriesGeometries", "pack_series", "series_tile_geometry", "tiled_series_forward",
           "tiled_series_windows"]

SERIES_PROBE_SIZE = 64
"""Side of the series traced by :func:`series_tile_geometry` (a power of two: every stride up to 64 divides it)."""


class SeriesAsImage(nn.Module):
    """A series network as an image network of ``T·C + T`` channels: each date's bands, then each date's validity.

    Args:
        model: A series network ``(x (N, T, C, H, W), valid (N, T, H, W), days (N, T)) → (N, K, H, W)``.
        bands: ``C``.
        days: ``(T,)`` or ``(1, T)`` acquisition days, passed to every call.

    Shape:
        - Input: ``(1, T·C + T, H, W)``: channels ``t·C … t·C + C − 1`` are date ``t``'s bands, channel ``T·C + t``
          its validity (``> 0.5`` = valid).
        - Output: ``(1, K, H, W)``.

    Examples:
        >>> from cnnkit.models import SeriesSegNet
        >>> net = SeriesSegNet(2, 3, width=4, hidden=4).eval()
        >>> x, valid, days = torch.randn(1, 4, 2, 9, 9), torch.rand(1, 4, 9, 9) > 0.3, torch.arange(4)[None]
        >>> image = SeriesAsImage(net, 2, days)
        >>> bool(torch.equal(image(pack_series(x, valid)), net(x, valid, days)))
        True
    """

    def __init__(self, model: nn.Module, bands: int, days: Tensor) -> None:
        super().__init__()
        self.model, self.bands = model, check_int(bands, "bands")
        days = torch.as_tensor(days).reshape(1, -1)
        self.steps = days.shape[1]
        check_int(self.steps, "the number of dates")
        self.register_buffer("days", days, persistent=False)

    def forward(self, packed: Tensor) -> Tensor:
        steps, bands = self.steps, self.bands
        if packed.dim() != 4 or packed.shape[0] != 1 or packed.shape[1] != steps * (bands + 1):
            raise ShapeError(f"SeriesAsImage expects (1, T·C + T, H, W) = (1, {steps * (bands + 1)}, H, W). Received "
                             f"shape {tuple(packed.shape)}.")
        x = packed[:, : steps * bands].reshape(1, steps, bands, *packed.shape[-2:])
        valid = packed[:, steps * bands:] > 0.5
        return self.model(x, valid, self.days.to(packed.device))

    def extra_repr(self) -> str:
        return f"bands={self.bands}, steps={self.steps}"


def pack_series(x: Tensor, valid: Tensor) -> Tensor:
    """``x (1, T, C, H, W)`` and ``valid (1, T, H, W)`` as :class:`SeriesAsImage`'s ``(1, T·C + T, H, W)`` input
    (``x``'s dtype; invalid pixel-dates keep their values: the network selects them away)."""
    if x.dim() != 5 or x.shape[0] != 1 or tuple(valid.shape) != (1, x.shape[1], *x.shape[-2:]):
        raise ShapeError(f"x must be (1, T, C, H, W) and valid (1, T, H, W) of the same T, H, W. Received x of shape "
                         f"{tuple(x.shape)}, valid of shape {tuple(valid.shape)}.")
    return torch.cat([x.reshape(1, -1, *x.shape[-2:]), valid.to(x.dtype)], 1)


def series_tile_geometry(model: nn.Module, bands: int, days: Tensor, *, check: bool = True,
                         probe_size: int = SERIES_PROBE_SIZE) -> TileGeometry:
    """The tile geometry (grid and halo, in pixels) of a series network for series of ``len(days)`` dates.

    The network is traced as :class:`SeriesAsImage` by :func:`~cnnkit.predict.tile_geometry` on a
    ``probe_size``-pixel series of those dates, and (``check``) the geometry verified on a random probe series run
    whole and in tiles. A network with a ``size_multiple`` attribute (UTAE) gets its grid at least that. For a
    ConvLSTM the halo depends on T (the module documentation says why): compute one geometry per number of dates.

    Raises:
        UnsupportedError: an op no halo can make exact, or the probe check found a difference.
    """
    check_int(bands, "bands")
    image = SeriesAsImage(model, bands, days).eval()
    geometry = tile_geometry(image, image.steps * (bands + 1), probe_size=probe_size, check=check)
    declared = getattr(model, "size_multiple", 1)
    if isinstance(declared, int) and any(m % declared for m in geometry.multiple):
        multiple = tuple(math.lcm(m, declared) for m in geometry.multiple)
        halo = tuple(math.ceil(h / m) * m for h, m in zip(geometry.halo, multiple))
        geometry = TileGeometry(multiple, halo, geometry.scale, geometry.reach, geometry.ops)
    return geometry


class SeriesGeometries:
    """The tile geometries of one series network, per number of dates, for a run over many series.

    Each new T is traced (cheap: one pass on a small probe); the probe check — a random series run whole and in tiles,
    the costly part (seconds to a minute for a U-TAE-sized network and tens of dates) — runs once per distinct
    ``(multiple, halo)``: series of other lengths whose trace gives a geometry already checked reuse it (every UTAE
    length does; each ConvLSTM length with ``kernel_size > 1`` is checked, its halo growing with T).

    Examples:
        >>> from cnnkit.models import SeriesSegNet
        >>> geometries = SeriesGeometries(SeriesSegNet(2, 3, width=4, hidden=4).eval(), bands=2)
        >>> geometries(torch.arange(4)).halo, geometries(torch.arange(9)).halo, geometries.checks
        ((6, 6), (11, 11), 2)
    """

    def __init__(self, model: nn.Module, bands: int) -> None:
        self.model, self.bands = model, check_int(bands, "bands")
        self._by_steps: dict[int, TileGeometry] = {}
        self._checked: set[tuple] = set()
        self.checks = 0

    def __call__(self, days: Tensor) -> TileGeometry:
        days = torch.as_tensor(days).reshape(1, -1)
        steps = days.shape[1]
        if steps not in self._by_steps:
            geometry = series_tile_geometry(self.model, self.bands, days, check=False)
            if (geometry.multiple, geometry.halo) not in self._checked:
                geometry = series_tile_geometry(self.model, self.bands, days, check=True)
                self._checked.add((geometry.multiple, geometry.halo))
                self.checks += 1
            self._by_steps[steps] = geometry
        return self._by_steps[steps]


def tiled_series_forward(model: nn.Module, x: Tensor, valid: Tensor, days: Tensor, *, tile,
                         geometry: TileGeometry | None = None) -> Tensor:
    """``model(x, valid, days)`` computed tile by tile in space, all dates in each tile; equal to the whole.

    Args:
        model: A series network in eval mode.
        x: ``(1, T, C, H, W)`` standardised series (any H, W).
        valid: ``(1, T, H, W)`` bool.
        days: ``(1, T)`` or ``(T,)`` acquisition days.
        tile: Interior side of a tile in pixels (int or ``(rows, cols)``), rounded up to the network's grid.
        geometry: From :func:`series_tile_geometry` for this network and this number of dates (found if ``None``).

    Returns:
        The logits ``(1, K, H, W)``.

    The series is padded at the bottom and right to the grid with invalid pixels — what UTAE does to a whole series
    itself, and what a ConvLSTM (grid 1) never needs — and each window is packed for :class:`SeriesAsImage` as it
    is read and moved to the network's device, so the packed copy never exists for the whole series and the series
    may stay in host memory while the network runs on a GPU.
    """
    if not isinstance(x, Tensor) or x.dim() != 5 or x.shape[0] != 1:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ShapeError(f"x must be one series (1, T, C, H, W). Received {got}.")
    steps, bands, height, width = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    if not isinstance(valid, Tensor) or tuple(valid.shape) != (1, steps, height, width):
        got = tuple(valid.shape) if isinstance(valid, Tensor) else type(valid).__name__
        raise ShapeError(f"valid must be (1, T, H, W) = {(1, steps, height, width)}. Received {got}.")
    days = torch.as_tensor(days).reshape(1, -1)
    if days.shape[1] != steps:
        raise ShapeError(f"days must hold one day per date ({steps}). Received shape {tuple(days.shape)}.")
    if geometry is None:
        geometry = series_tile_geometry(model, bands, days)
    valid = valid.bool()
    return tiled_series_windows(model, lambda rows, cols: (x[0, ..., rows, cols], valid[0, ..., rows, cols]),
                                (height, width), bands, days, tile=tile, geometry=geometry)


def tiled_series_windows(model: nn.Module, read, size: tuple[int, int], bands: int, days: Tensor, *, tile,
                         geometry: TileGeometry | None = None) -> Tensor:
    """:func:`tiled_series_forward` of a series read window by window: only each tile's window and halo of every
    date is ever in memory.

    Args:
        model: A series network in eval mode.
        read: Called with ``(rows, cols)`` slices (which may run past the bottom and right edges: cut them there);
            returns that window's ``(x (T, C, h, w) standardised, valid (T, h, w) bool)`` — e.g.
            :meth:`cnnkit.data.series.SeriesWindows.read`, standardised.
        size: The series' ``(H, W)``.
        bands: ``C``.
        days: ``(1, T)`` or ``(T,)`` acquisition days.
        tile, geometry: As :func:`tiled_series_forward` takes them.

    Returns:
        The logits ``(1, K, H, W)``, equal to the whole series' (the same tiles as :func:`tiled_series_forward`).
    """
    days = torch.as_tensor(days).reshape(1, -1)
    if geometry is None:
        geometry = series_tile_geometry(model, bands, days)
    height, width = size
    image = SeriesAsImage(model, bands, days).eval()
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    pads = [-side % m for side, m in zip((height, width), geometry.multiple)]
    canvas = (height + pads[0], width + pads[1])

    def window(window: tuple[slice, slice]) -> Tensor:
        rows, cols = window
        part_x, part_valid = read(rows, cols)
        part_x, part_valid = part_x[None], part_valid[None].bool()
        if part_x.dim() != 5 or part_x.shape[1:3] != (days.shape[1], bands) or tuple(part_valid.shape) != (
                1, part_x.shape[1], *part_x.shape[-2:]):
            raise ShapeError(f"read must return x (T, C, h, w) = ({days.shape[1]}, {bands}, h, w) and valid (T, h, w) "
                             f"of the same window. Received x of shape {tuple(part_x.shape[1:])}, valid of shape "
                             f"{tuple(part_valid.shape[1:])}.")
        short = (rows.stop - rows.start - part_x.shape[-2], cols.stop - cols.start - part_x.shape[-1])
        if any(short):  # the canvas's padding: invalid pixels, as the network pads a whole series
            part_x = F.pad(part_x, (0, short[1], 0, short[0]))
            part_valid = F.pad(part_valid, (0, short[1], 0, short[0]))
        return pack_series(part_x, part_valid).to(device)

    out = tiled_forward(image, window, geometry, tile=tile, size=canvas)
    return out[..., :height, :width]
