"""Tiles whose result is identical to the whole-image result.

A fully convolutional network computes each output pixel from a bounded window of the input (its receptive
field) on a fixed grid (its total stride). Cut a scene into tiles, give each tile a **halo** of input at
least as wide as that window, start every tile on the grid, and keep only each tile's interior: every kept
pixel saw exactly the inputs it sees in the whole scene, at the same grid phase, so the tiled result *is* the
whole-image result (up to float rounding of the convolution algorithm) — no overlap blending, no seams.

:func:`tile_geometry` finds the grid and the halo by tracing one forward pass: every windowed op (convolution,
pooling, transposed convolution, interpolation, padding) adds its reach, measured at the resolution it runs
at. The reach follows from where wrong values can enter: outside the tile a convolution sees zero padding
instead of data, and each op carries that error inward — a convolution or pooling window ``k`` with dilation
``d``, left padding ``p`` and stride ``s`` by ``max(p + s − 1, (k − 1)·d − p)`` of its input pixels, a
transposed convolution by ``((k − 1)·d + output_padding + 1) / s``, interpolation by 1 (nearest), 2 (linear)
or 3 (cubic), explicit padding by its width — each times the scene pixels per pixel where it runs; the halo
is the sum, rounded up to the stride. Ops for which no halo can be enough — global or adaptive pooling,
attention, train-mode statistics, circular padding — are refused with the op's name. The trace is then
*checked*: a probe scene is run whole and tiled, and any difference is an error, so an op the trace did not
know (a spatial softmax, a Linear over the width axis) cannot give a silent wrong answer.

Examples:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(8, 2, 3, padding=1),
    ...                     nn.Upsample(scale_factor=2)).eval()
    >>> geometry = tile_geometry(net, in_channels=3)
    >>> geometry.multiple, geometry.halo
    ((2, 2), (6, 6))
    >>> scene = torch.randn(1, 3, 50, 38)
    >>> tiled = tiled_forward(net, scene, geometry, tile=16)
    >>> bool(torch.allclose(tiled, net(scene), atol=1e-5))
    True
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode, get_testing_overrides
from torch.utils.weak import WeakIdKeyDictionary

from cnnkit._checks import check_int
from cnnkit.errors import ShapeError, UnsupportedError

__all__ = ["Tile", "TileGeometry", "plan_tiles", "tile_geometry", "tiled_forward"]


@dataclass(frozen=True)
class TileGeometry:
    """Where tiles may start and how much context each needs, in input pixels per spatial dimension.

    Attributes:
        multiple: The network's total stride: tile origins and the padded scene are multiples of it.
        halo: Input pixels added on each side of a tile (a multiple of ``multiple``); every output pixel
            farther than this from a tile's edge equals the whole-image result.
        scale: Output size / input size (1 for a segmentation network at full resolution).
        reach: The summed reach of every windowed op before rounding (the halo's derivation).
        ops: One line per windowed op: what it is and how much it adds.
    """

    multiple: tuple[int, ...]
    halo: tuple[int, ...]
    scale: tuple[Fraction, ...]
    reach: tuple[Fraction, ...]
    ops: tuple[str, ...] = ()

    def explain(self) -> str:
        """The halo's derivation in words."""
        lines = [f"total stride {self.multiple}, halo {self.halo} input pixels (reach {tuple(map(float, self.reach))}"
                 f" rounded up to the stride)"]
        return "\n".join(lines + [f"  {op}" for op in self.ops])


@dataclass(frozen=True)
class Tile:
    """One tile: the input window it reads and the output window it writes (``(start, stop)`` per dimension).

    ``crop`` is where the output window lies inside the tile's own output.
    """

    read: tuple[tuple[int, int], ...]
    write: tuple[tuple[int, int], ...]
    crop: tuple[tuple[int, int], ...]

    @property
    def read_slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in self.read)

    @property
    def write_slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in self.write)

    @property
    def crop_slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in self.crop)


# --------------------------------------------------------------------------------------------------
# tracing the windowed ops
# --------------------------------------------------------------------------------------------------

_CONV = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_CONV_T = {F.conv_transpose1d: 1, F.conv_transpose2d: 2, F.conv_transpose3d: 3}
_POOL = {
    F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3,
    F.lp_pool1d: 1, F.lp_pool2d: 2, torch.max_pool1d: 1, torch.max_pool2d: 2, torch.max_pool3d: 3,
    torch.avg_pool1d: 1, F.max_pool1d_with_indices: 1, F.max_pool2d_with_indices: 2, F.max_pool3d_with_indices: 3,
}
_ADAPTIVE = {
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, torch.adaptive_avg_pool1d, torch.adaptive_max_pool1d,
    F.adaptive_max_pool1d_with_indices, F.adaptive_max_pool2d_with_indices, F.adaptive_max_pool3d_with_indices,
}
_GLOBAL = {
    F.scaled_dot_product_attention: "attention mixes every position with every other",
    F.multi_head_attention_forward: "attention mixes every position with every other",
    F.instance_norm: "instance normalisation uses statistics of the whole image",
    F.group_norm: "group normalisation uses statistics of the whole image",
    F.fold: "fold sums overlapping blocks whose layout depends on the whole image",
}
_INTERPOLATE_REACH = {"nearest": 1, "nearest-exact": 1, "linear": 2, "bilinear": 2, "trilinear": 2, "bicubic": 3}


@cache
def _signature(func: Callable) -> inspect.Signature:
    override = get_testing_overrides().get(func)
    try:
        return inspect.signature(override if override is not None else func)
    except (TypeError, ValueError):  # pragma: no cover - every traced op has one of the two
        raise UnsupportedError(f"Cannot read the arguments of {func!r}.") from None


def _bind(func: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    bound = _signature(func).bind(*args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


def _padding(value, kernel: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[int, ...]:
    """Left padding per dimension of a conv/pool (``'same'`` pads (k − 1)·d // 2 on the left)."""
    if value == "valid":
        return (0,) * len(kernel)
    if value == "same":
        return tuple((k - 1) * d // 2 for k, d in zip(kernel, dilation))
    return _tuple(value, len(kernel))


def _tuple(value, n: int) -> tuple[int, ...]:
    if value is None:
        return (1,) * n
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value) if len(value) == n else (int(value[0]),) * n
    return (int(value),) * n


class _Tracer(TorchFunctionMode):
    """Records every windowed op's reach (in scene pixels) and every resolution seen."""

    def __init__(self, size: tuple[int, ...], module_of: Callable[[], str]):
        super().__init__()
        self.size = size
        self.module_of = module_of
        self.reach = [Fraction(0)] * len(size)
        self.ratios: set[Fraction] = set()
        self.ops: list[str] = []
        self.padded = WeakIdKeyDictionary()  # padded tensor → its size before padding

    def _ratio(self, tensor: Tensor, n: int) -> tuple[Fraction, ...]:
        """Scene pixels per pixel of ``tensor`` (a padded tensor counts at the size it had before padding)."""
        spatial = self.padded.get(tensor, tuple(tensor.shape))[-n:]
        ratio = tuple(Fraction(s, max(t, 1)) for s, t in zip(self.size[-n:], spatial))
        self.ratios.update(ratio)
        return ratio

    def _add(self, name: str, reach: tuple[Fraction, ...]) -> None:
        self.reach = [r + a for r, a in zip(self.reach, reach)]
        where = self.module_of()
        self.ops.append(f"{name}{f' in {where}' if where else ''}: +{tuple(float(r) for r in reach)} px")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        n = len(self.size)
        where = self.module_of()
        if func in _GLOBAL:
            raise UnsupportedError(f"Tiles cannot reproduce {func.__name__}{f' in {where}' if where else ''}: "
                                   f"{_GLOBAL[func]}. Run the whole image instead (no --max-pixels).")
        if func in _ADAPTIVE:
            raise UnsupportedError(
                f"Tiles cannot reproduce {func.__name__}{f' in {where}' if where else ''}: its windows depend on "
                "the whole image's size (global or adaptive pooling). Run the whole image instead, or use a "
                "fully convolutional network.")
        if func in (F.batch_norm, torch.batch_norm):
            bound = _bind(func, args, kwargs)
            if bound["training"]:
                raise UnsupportedError(f"Tiles cannot reproduce batch_norm in training mode"
                                       f"{f' in {where}' if where else ''}: its statistics come from the whole batch. "
                                       "Call model.eval() first.")
        out = func(*args, **kwargs)
        if func in _CONV or func in _POOL or func is F.unfold:
            dims = _CONV.get(func) or _POOL.get(func) or 2
            bound = _bind(func, args, kwargs)
            x = bound["input"]
            if func in _CONV:
                kernel = tuple(bound["weight"].shape[-dims:])
                stride, dilation = _tuple(bound["stride"], dims), _tuple(bound["dilation"], dims)
            else:
                kernel = _tuple(bound["kernel_size"], dims)
                stride = _tuple(bound.get("stride") or kernel, dims)
                dilation = _tuple(bound.get("dilation", 1), dims)
            ratio = self._ratio(x, dims)
            if isinstance(out, Tensor):
                self._ratio(out, dims)
            elif isinstance(out, tuple):
                self._ratio(out[0], dims)
            padding = _padding(bound.get("padding", 0), kernel, dilation)
            self._add(f"{func.__name__} k={kernel} s={stride} d={dilation} p={padding}",
                      tuple(max(p + s - 1, (k - 1) * d - p, 0) * r
                            for k, s, d, p, r in zip(kernel, stride, dilation, padding, ratio)))
        elif func in _CONV_T:
            dims = _CONV_T[func]
            bound = _bind(func, args, kwargs)
            kernel = tuple(bound["weight"].shape[-dims:])
            stride, dilation = _tuple(bound["stride"], dims), _tuple(bound["dilation"], dims)
            extra = _tuple(bound["output_padding"], dims)
            ratio = self._ratio(bound["input"], dims)
            self._ratio(out, dims)
            self._add(f"{func.__name__} k={kernel} s={stride}",
                      tuple(((k - 1) * d + e + 1) * r / s
                            for k, s, d, e, r in zip(kernel, stride, dilation, extra, ratio)))
        elif func is F.interpolate:
            bound = _bind(func, args, kwargs)
            x = bound["input"]
            dims = x.ndim - 2
            if bound["mode"] not in _INTERPOLATE_REACH:
                raise UnsupportedError(f"Tiles cannot reproduce interpolate(mode={bound['mode']!r})"
                                       f"{f' in {where}' if where else ''}: each output averages a window that "
                                       "depends on the whole image's size.")
            if bound["align_corners"]:
                raise UnsupportedError(f"Tiles cannot reproduce interpolate(align_corners=True)"
                                       f"{f' in {where}' if where else ''}: its sampling grid is anchored to the "
                                       "image's corners, so it depends on the whole image's size.")
            ratio = self._ratio(x, dims)
            self._ratio(out, dims)
            self._add(f"interpolate({bound['mode']})", tuple(_INTERPOLATE_REACH[bound["mode"]] * r for r in ratio))
        elif func is F.pad:
            bound = _bind(func, args, kwargs)
            if bound["mode"] == "circular":
                raise UnsupportedError(f"Tiles cannot reproduce circular padding{f' in {where}' if where else ''}: "
                                       "it wraps the image's far edge around.")
            pads = list(bound["pad"])
            x = bound["input"]
            dims = min(len(pads) // 2, n)
            if dims:
                ratio = self._ratio(x, dims)
                widths = [max(abs(pads[2 * i]), abs(pads[2 * i + 1])) for i in range(dims)][::-1]
                reach = (Fraction(0),) * (n - dims) + tuple(w * r for w, r in zip(widths, ratio))
                self._add(f"pad({bound['mode']}) {pads}", reach)
                if isinstance(out, Tensor):
                    self.padded[out] = self.padded.get(x, tuple(x.shape))
        return out


def _module_names(model: nn.Module) -> tuple[Callable[[], str], list]:
    """A function returning the dotted path of the module running now, and the hooks that keep it."""
    stack: list[str] = []
    handles = []

    def enter(name):
        def hook(module, args):
            stack.append(name)
        return hook

    def leave(module, args, output):
        stack.pop()

    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave, always_call=True))
    return (lambda: stack[-1] if stack else ""), handles


def _output(value: Any) -> Tensor:
    """The tensor a network returns: itself, or ``out`` of torchvision's segmentation dicts."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, dict) and isinstance(value.get("out"), Tensor):
        return value["out"]
    raise UnsupportedError(f"Tiled prediction needs a network returning one tensor (or a dict with 'out'). "
                           f"Received an output of type {type(value).__name__}.")


def _round_up(value: int | Fraction, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


def tile_geometry(
    model: nn.Module,
    in_channels: int,
    *,
    ndim: int = 2,
    probe_size: int = 256,
    check: bool = True,
    rtol: float = 1e-4,
) -> TileGeometry:
    """Find the grid (total stride) and halo that make tiles of ``model``'s input exact.

    Args:
        model: A fully convolutional network in eval mode; its output has the input's spatial size or a fixed
            fraction of it (``(N, C, H·f, W·f)``).
        in_channels: Channels of the input.
        ndim: Spatial dimensions (2 for images).
        probe_size: Side of the traced input (a power of two, so that every stride divides it).
        check: Verify on a random probe scene, run whole and tiled, that the tiled result equals the whole one.
        rtol: The check's tolerance, relative to the largest output magnitude.

    Returns:
        A :class:`TileGeometry`.

    Raises:
        UnsupportedError: The network has an op no halo can make exact (named, with its module), or the check
            found a difference.
    """
    check_int(in_channels, "in_channels")
    check_int(ndim, "ndim")
    check_int(probe_size, "probe_size", 8)
    if model.training:
        raise UnsupportedError("Tiled prediction needs the network in eval mode (train-mode BatchNorm and dropout "
                               "depend on the batch). Call model.eval() first.")
    parameter = next(iter(model.parameters()), None)
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    device = parameter.device if parameter is not None else torch.device("cpu")
    size = (probe_size,) * ndim
    module_of, handles = _module_names(model)
    tracer = _Tracer(size, module_of)
    try:
        with torch.no_grad(), tracer:
            out = _output(model(torch.zeros(1, in_channels, *size, dtype=dtype, device=device)))
    finally:
        for handle in handles:
            handle.remove()
    if out.ndim != ndim + 2:
        raise UnsupportedError(f"Tiled prediction needs a dense output (N, C, {'H, W' if ndim == 2 else '...'}). "
                               f"Received an output of shape {tuple(out.shape)} for an input of {size}.")
    scale = tuple(Fraction(o, s) for o, s in zip(out.shape[-ndim:], size))
    bad = [r for r in tracer.ratios if r.denominator != 1 and r.numerator != 1]
    if bad:
        raise UnsupportedError(f"Tiled prediction needs layers that change sizes by whole factors; a layer scales "
                               f"by 1/{bad[0]}.")
    stride = 1
    for r in tracer.ratios | {1 / s for s in scale}:
        if r >= 1:
            stride = math.lcm(stride, int(r))
    multiple = (stride,) * ndim
    halo = tuple(_round_up(r, stride) for r in tracer.reach)
    geometry = TileGeometry(multiple, halo, scale, tuple(tracer.reach), tuple(tracer.ops))
    if check:
        _check(model, in_channels, geometry, dtype, device, rtol)
    return geometry


def _check(model, in_channels, geometry: TileGeometry, dtype, device, rtol) -> None:
    """Run a random probe scene whole and in small tiles; refuse the geometry if they differ."""
    generator = torch.Generator().manual_seed(0)
    tile = tuple(max(2 * m, h) for m, h in zip(geometry.multiple, geometry.halo))
    tile = tuple(_round_up(t, m) for t, m in zip(tile, geometry.multiple))
    size = tuple(2 * t + m for t, m in zip(tile, geometry.multiple))  # three tiles a side, the last one short
    scene = torch.randn(1, in_channels, *size, generator=generator).to(dtype=dtype, device=device)
    with torch.no_grad():
        whole = _output(model(scene))
    tiled = tiled_forward(model, scene, geometry, tile=tile)
    scale = float(whole.abs().max()) or 1.0
    error = float((whole - tiled).abs().max()) / scale
    if not error <= rtol:
        raise UnsupportedError(
            f"Tiles do not reproduce this network's whole-image result (largest difference {error:.2g} of the "
            f"output's scale on a probe of {size}, halo {geometry.halo}): some op sees beyond its window (a "
            "spatial softmax or mean, a Linear over a spatial axis, attention). Run the whole image instead.")


# --------------------------------------------------------------------------------------------------
# planning and running tiles
# --------------------------------------------------------------------------------------------------


def plan_tiles(size, geometry: TileGeometry, tile) -> list[Tile]:
    """Cut a scene of ``size`` (a multiple of ``geometry.multiple``) into tiles of at most ``tile`` output... input
    pixels per side, each with its halo clipped at the scene's border.

    Args:
        size: The scene's spatial size, a multiple of the total stride.
        geometry: From :func:`tile_geometry`.
        tile: Interior side of a tile in input pixels (int or one per dimension), rounded up to the stride.

    Examples:
        >>> g = TileGeometry((4, 4), (8, 8), (Fraction(1), Fraction(1)), (Fraction(8), Fraction(8)))
        >>> [t.read for t in plan_tiles((20, 12), g, 12)]
        [((0, 20), (0, 12)), ((4, 20), (0, 12))]
    """
    n = len(geometry.multiple)
    size = tuple(int(s) for s in size)
    tile = (tile,) * n if isinstance(tile, int) else tuple(tile)
    if len(size) != n or len(tile) != n:
        raise ShapeError(f"size and tile must have {n} entries. Received size={size}, tile={tile}.")
    for s, m in zip(size, geometry.multiple):
        if s < 1 or s % m:
            raise ShapeError(f"The scene's size must be a positive multiple of the network's total stride {m}: pad "
                             f"it first. Received size={size}.")
    tile = tuple(_round_up(check_int(t, "tile"), m) for t, m in zip(tile, geometry.multiple))
    axes = []
    for s, t, h, f in zip(size, tile, geometry.halo, geometry.scale):
        spans = []
        for start in range(0, s, t):
            stop = min(start + t, s)
            read = (max(0, start - h), min(s, stop + h))
            write = (int(start * f), int(stop * f))
            crop = (int((start - read[0]) * f), int((stop - read[0]) * f))
            spans.append((read, write, crop))
        axes.append(spans)
    tiles = []
    for index in itertools.product(*[range(len(a)) for a in axes]):
        parts = [axes[d][i] for d, i in enumerate(index)]
        tiles.append(Tile(tuple(p[0] for p in parts), tuple(p[1] for p in parts), tuple(p[2] for p in parts)))
    return tiles


def tiled_forward(
    model: nn.Module,
    scene: Tensor | Callable[[tuple[slice, ...]], Tensor],
    geometry: TileGeometry,
    *,
    tile,
    size=None,
    write: Callable[[tuple[slice, ...], Tensor], None] | None = None,
    on_tile: Callable[[Tile], None] | None = None,
) -> Tensor | None:
    """Run ``model`` over a scene tile by tile; the result equals ``model(scene)``.

    Args:
        model: The network (eval mode) that ``geometry`` was found for.
        scene: Either a tensor ``(1, C, *size)``, or a function that reads the input window given as a tuple of
            slices and returns ``(1, C, *window)`` (so a scene larger than memory is read piece by piece).
        geometry: From :func:`tile_geometry`.
        tile: Interior side of a tile in input pixels (int or one per dimension).
        size: The scene's spatial size; needed when ``scene`` is a function.
        write: Where each tile's output goes: called with the output window's slices and the ``(1, K, *window)``
            output. Without it the whole output is assembled and returned.
        on_tile: Called after each tile (a progress bar).

    Returns:
        The assembled output ``(1, K, *size·scale)``, or ``None`` when ``write`` is given.
    """
    if isinstance(scene, Tensor):
        if size is None:
            size = tuple(scene.shape[2:])
        tensor = scene

        def read(window):
            return tensor[(slice(None), slice(None), *window)]
    else:
        if size is None:
            raise ShapeError("size is needed when scene is a reading function. Received size=None.")
        read = scene
    result = None
    with torch.no_grad():
        for t in plan_tiles(size, geometry, tile):
            out = _output(model(read(t.read_slices)))
            piece = out[(slice(None), slice(None), *t.crop_slices)]
            if write is not None:
                write(t.write_slices, piece)
            else:
                if result is None:
                    full = tuple(int(s * f) for s, f in zip(size, geometry.scale))
                    result = out.new_zeros(out.shape[0], out.shape[1], *full)
                result[(slice(None), slice(None), *t.write_slices)] = piece
            if on_tile is not None:
                on_tile(t)
    return result
