"""Partial convolution: a convolution that only looks at valid (non-missing) input pixels.

For a *missing-data* mask (clouds, dead pixels, holes inside an image), as opposed to the padding of a
batch: each window's sum over valid inputs is rescaled by ``window size / valid count``, so a window that
sees half its inputs is not half as bright, and the output mask marks every window that saw anything.
Zero padding at the borders counts as missing, so borders are renormalised the same way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit._checks import check_bool, check_choice, check_int, is_int, ntuple
from cnnkit.errors import ShapeError, UnsupportedError
from cnnkit.masking.rules import register_masked_op
from cnnkit.masking.state import MaskedContext, masked_dispatch
from cnnkit.shapes import conv_output_size

__all__ = ["PartialConv1d", "PartialConv2d", "PartialConv3d", "partial_conv"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_LAYOUT = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}


def _check_mask(mask, input: Tensor, channels: tuple[int, ...], where: str) -> None:
    expected = [(input.shape[0], c, *input.shape[2:]) for c in channels]
    wanted = " or ".join(str(e) for e in expected)
    if not isinstance(mask, Tensor):
        raise ShapeError(f"{where}: mask must be a tensor of shape {wanted}. Received {type(mask).__name__}.")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise ShapeError(
            f"{where}: mask must be bool or floating point (nonzero = valid) of shape {wanted}. "
            f"Received mask of dtype {mask.dtype} and shape {tuple(mask.shape)}."
        )
    if tuple(mask.shape) not in expected:
        raise ShapeError(
            f"{where}: mask must have shape {wanted} for input of shape {tuple(input.shape)}. "
            f"Received mask of shape {tuple(mask.shape)}."
        )


def _tensors(input, mask, weight, bias=None, *args, **kwargs) -> tuple:
    return (input, mask, weight, bias)


@masked_dispatch(_tensors)
def partial_conv(
    input: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    *,
    multi_channel: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Partial convolution (Liu et al., 2018): convolve valid inputs only, renormalised per window.

    With ``m`` the 0/1 mask, ``count`` the number of valid entries in an output position's window and
    ``size`` the number of entries in the window (``k_1·…·k_D`` for a shared mask,
    ``k_1·…·k_D·C_in/groups`` for a per-channel mask):

    - ``output = conv(where(m, input, 0), weight) · size / count + bias`` where ``count > 0``,
    - ``output = 0`` (bias included) where ``count = 0``,
    - ``updated_mask = (count > 0)``.

    Zero padding is invalid input. Missing pixels are *selected* away (``torch.where``), never multiplied
    by 0, so NaN or inf stored under the mask (a cloud stored as NaN) changes no output and no gradient:
    the result equals the run with zeros there. NaN at valid pixels propagates as in ``F.conv2d``.

    Nothing is cached: the count is a convolution of the mask with a ones
    kernel, computed each call without gradient and in float32 (float64 for float64 input) even under
    autocast, so no window can divide by zero or round a count.

    Args:
        input: (N, C_in, *spatial) with 1 to 3 spatial dimensions.
        mask: (N, 1, *spatial), shared by all channels, or (N, C_in, *spatial), one per channel; bool or
            floating point, nonzero = valid (NaN counts as missing).
        weight: (C_out, C_in / groups, *kernel_size), as for ``F.conv2d``.
        bias: (C_out,) or ``None``.
        stride, dilation: Int or tuple, as for ``F.conv2d``.
        padding: Int, tuple, ``"valid"`` or ``"same"`` (stride 1), as for ``F.conv2d``; always zeros.
        groups: As for ``F.conv2d``; a per-channel mask is counted per group.
        multi_channel: ``True`` for a per-channel mask, ``False`` for a shared one; ``None`` (default)
            reads it from ``mask.shape[1]`` (1 → shared). It only matters for the updated mask's shape
            when ``C_in = 1``.

    Returns:
        ``(output, updated_mask)``: output (N, C_out, *out) in the conv's dtype; updated_mask in the
        mask's dtype, (N, 1, *out) for a shared mask and (N, C_out, *out) for a per-channel one.

    Shape:
        ``out_i = floor((in_i + 2·padding_i − dilation_i·(kernel_i − 1) − 1) / stride_i) + 1``, as
        :func:`cnnkit.shapes.conv_output_size` computes it.

    Examples:
        >>> x = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
        >>> m = torch.tensor([[[True, False, True, True]]])
        >>> y, m2 = partial_conv(x, m, torch.ones(1, 1, 3), padding=1)
        >>> y  # valid sums 1, 1+3, 3+4, 3+4 over valid counts 1, 2, 2, 2 (padding is invalid), × 3
        tensor([[[ 3.0000,  6.0000, 10.5000, 10.5000]]])
        >>> m2
        tensor([[[True, True, True, True]]])
        >>> partial_conv(x, torch.zeros(1, 1, 4), torch.ones(1, 1, 3), torch.ones(1))[0]  # nothing valid
        tensor([[[0., 0.]]])

    References:
        G. Liu, F. A. Reda, K. J. Shih, T.-C. Wang, A. Tao, B. Catanzaro: "Image Inpainting for Irregular
        Holes Using Partial Convolutions", ECCV 2018. https://arxiv.org/abs/1804.07723
    """
    if not isinstance(weight, Tensor) or weight.dim() not in (3, 4, 5):
        raise ShapeError(
            "weight must be a tensor (C_out, C_in / groups, *kernel_size) with 1 to 3 spatial dimensions. "
            f"Received shape {tuple(getattr(weight, 'shape', ()))}."
        )
    d = weight.dim() - 2
    if not isinstance(input, Tensor) or input.dim() != d + 2:
        raise ShapeError(
            f"input must be {_LAYOUT[d]} for a weight with {d} spatial dimensions. "
            f"Received input of shape {tuple(getattr(input, 'shape', ()))}."
        )
    if not is_int(groups) or groups < 1 or input.shape[1] != weight.shape[1] * groups \
            or weight.shape[0] % groups:
        raise ShapeError(
            "input channels must equal weight.shape[1] × groups, and weight.shape[0] must be divisible by "
            f"groups. Received input of shape {tuple(input.shape)}, weight of shape {tuple(weight.shape)}, "
            f"groups={groups!r}."
        )
    c_in, c_out = input.shape[1], weight.shape[0]
    if multi_channel is None:
        channels: tuple[int, ...] = (1, c_in)
    elif isinstance(multi_channel, bool):
        channels = (c_in,) if multi_channel else (1,)
    else:
        raise ShapeError(f"multi_channel must be a bool or None. Received multi_channel={multi_channel!r}.")
    _check_mask(mask, input, channels, "partial_conv")
    stride = ntuple(stride, d, "stride")
    dilation = ntuple(dilation, d, "dilation")
    if isinstance(padding, str):
        check_choice(padding, ("valid", "same"), "padding")
        if padding == "same" and any(s != 1 for s in stride):
            raise ShapeError(f"padding='same' needs stride 1, as in PyTorch. Received stride={stride}.")
    else:
        padding = ntuple(padding, d, "padding", minimum=0)
    conv = _CONV[d]
    valid = (mask != 0) & (mask == mask)  # nonzero = valid; a NaN in a float mask counts as missing
    # Selected, not multiplied: a NaN or inf under a missing pixel reaches neither the output nor a gradient.
    raw = conv(torch.where(valid, input, torch.zeros((), dtype=input.dtype, device=input.device)), weight, None,
               stride, padding, dilation, groups)

    shared = not multi_channel if multi_channel is not None else mask.shape[1] == 1
    kernel = tuple(weight.shape[2:])
    count_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    with torch.no_grad(), torch.autocast(input.device.type, enabled=False):
        if shared:
            ones = torch.ones((1, 1, *kernel), dtype=count_dtype, device=input.device)
            count = conv(valid.to(count_dtype), ones, None, stride, padding, dilation)
            window = math.prod(kernel)
        else:
            ones = torch.ones((groups, c_in // groups, *kernel), dtype=count_dtype, device=input.device)
            count = conv(valid.to(count_dtype), ones, None, stride, padding, dilation, groups)
            count = count.repeat_interleave(c_out // groups, dim=1)
            window = math.prod(kernel) * (c_in // groups)
        seen = count > 0.5  # counts are whole numbers
        scale = torch.where(seen, window / count.clamp(min=1.0), torch.zeros((), dtype=count_dtype))
    output = raw * scale.to(raw.dtype)
    if bias is not None:
        output = output + bias.to(raw.dtype).view(1, -1, *([1] * d)) * seen.to(raw.dtype)
    return output, seen.to(mask.dtype)


@register_masked_op(partial_conv)
def _partial_conv_masked(ctx: MaskedContext, func, args, kwargs):
    """Under :func:`cnnkit.masked`: the padding of a batch is missing data, as the zero padding of each sample alone
    is, so the mask is cut to each sample's extent and one batched call gives every sample its own result."""
    b = ctx.bind(func, args, kwargs)
    x, mask, weight, bias = b["input"], b["mask"], b["weight"], b.get("bias")
    if not ctx.is_padded(x) or ctx.is_padded(weight) or ctx.is_padded(bias):
        raise UnsupportedError("masked(): partial_conv needs the input padded and the weight and bias ordinary.")
    if ctx.spatial_axes(x) != tuple(range(2, x.dim())):
        raise UnsupportedError(f"masked(): partial_conv needs a padded input laid out (N, C, *spatial). Received "
                               f"spatial dimensions at {ctx.spatial_axes(x)} of shape {tuple(x.shape)}.")
    sizes = ctx.sizes(x)
    if ctx.is_padded(mask) and ctx.sizes(mask) != sizes:
        raise ShapeError(f"masked(): partial_conv's mask has extents {ctx.sizes(mask)}, its input {sizes}.")
    inside = ctx.mask(x)  # (N, 1, *canvas)
    if isinstance(mask, Tensor) and mask.dim() == x.dim():
        mask = mask & inside if mask.dtype == torch.bool else torch.where(inside, mask, 0)
    d = x.dim() - 2
    stride, padding, dilation = b.get("stride", 1), b.get("padding", 0), b.get("dilation", 1)
    out, seen = func(x, mask, weight, bias, stride, padding, dilation, b.get("groups", 1),
                     multi_channel=b.get("multi_channel"))
    kernel = tuple(weight.shape[2:])
    padding = padding if isinstance(padding, str) else ntuple(padding, d, "padding")
    geometry = (kernel, ntuple(stride, d, "stride"), padding, ntuple(dilation, d, "dilation"))
    out_sizes = tuple(tuple(conv_output_size(size, *geometry)) for size in sizes)
    return ctx.track(out, out_sizes), ctx.track(seen, out_sizes)


def _check_conv_args(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, d: int) -> None:
    """The constructor's arguments, checked here so that bad ones raise cnnkit's errors, not nn.ConvNd's."""
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        check_int(value, name)
    if in_channels % groups or out_channels % groups:
        raise ShapeError(
            f"in_channels and out_channels must be divisible by groups. Received in_channels={in_channels}, "
            f"out_channels={out_channels}, groups={groups}."
        )
    ntuple(kernel_size, d, "kernel_size")
    stride = ntuple(stride, d, "stride")
    ntuple(dilation, d, "dilation")
    if isinstance(padding, str):
        check_choice(padding, ("valid", "same"), "padding")
        if padding == "same" and any(s != 1 for s in stride):
            raise ShapeError(f"padding='same' needs stride 1, as in PyTorch. Received stride={stride}.")
    else:
        ntuple(padding, d, "padding", minimum=0)


class _PartialConvNd:
    """Shared body of :class:`PartialConv1d`, :class:`PartialConv2d` and :class:`PartialConv3d`."""

    _ndim: int

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        multi_channel: bool = False,
    ) -> None:
        if padding_mode != "zeros":
            raise ShapeError(
                f"{type(self).__name__} needs padding_mode='zeros': zero padding is the missing border that "
                f"partial convolution renormalises. Received padding_mode={padding_mode!r}."
            )
        if not isinstance(multi_channel, bool):
            raise ShapeError(f"multi_channel must be a bool. Received multi_channel={multi_channel!r}.")
        check_bool(bias, "bias")
        _check_conv_args(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, self._ndim)
        super().__init__(  # the nn.ConvNd next in the MRO stores the arguments
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
            device, dtype,
        )
        self.multi_channel = multi_channel

    def forward(self, input: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(output, updated_mask)``; see :func:`partial_conv`."""
        d = len(self.kernel_size)
        if not isinstance(input, Tensor) or input.dim() != d + 2 or input.shape[1] != self.in_channels:
            raise ShapeError(
                f"{type(self).__name__} expects input {_LAYOUT[d]} with C={self.in_channels}. "
                f"Received input of shape {tuple(getattr(input, 'shape', ()))}."
            )
        _check_mask(mask, input, (self.in_channels if self.multi_channel else 1,), type(self).__name__)
        return partial_conv(
            input, mask, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
            multi_channel=self.multi_channel,
        )

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text + ", multi_channel=True" if self.multi_channel else text


class PartialConv1d(_PartialConvNd, nn.Conv1d):
    """``nn.Conv1d`` that skips missing inputs: ``forward(input, mask) → (output, updated_mask)``.

    Same arguments as ``nn.Conv1d`` (``padding_mode`` must stay ``"zeros"``), plus ``multi_channel``:
    ``False`` for a mask (N, 1, L) shared by all channels, ``True`` for one mask per input channel
    (N, C_in, L). The math is :func:`partial_conv`.

    Examples:
        >>> conv = PartialConv1d(2, 3, 3, padding=1)
        >>> y, m = conv(torch.randn(4, 2, 10), torch.rand(4, 1, 10) > 0.3)
        >>> y.shape, m.shape
        (torch.Size([4, 3, 10]), torch.Size([4, 1, 10]))
    """

    _ndim = 1


class PartialConv2d(_PartialConvNd, nn.Conv2d):
    """``nn.Conv2d`` that skips missing inputs: ``forward(input, mask) → (output, updated_mask)``.

    Same arguments as ``nn.Conv2d`` (``padding_mode`` must stay ``"zeros"``), plus ``multi_channel``:
    ``False`` for a mask (N, 1, H, W) shared by all channels, ``True`` for one mask per input channel
    (N, C_in, H, W); the updated mask is then (N, C_out, H_out, W_out). The math is :func:`partial_conv`.

    Examples:
        >>> conv = PartialConv2d(6, 8, 3, padding="same", multi_channel=True)
        >>> conv
        PartialConv2d(6, 8, kernel_size=(3, 3), stride=(1, 1), padding=same, multi_channel=True)
        >>> y, m = conv(torch.randn(2, 6, 30, 30), torch.rand(2, 6, 30, 30) > 0.5)
        >>> y.shape, m.shape
        (torch.Size([2, 8, 30, 30]), torch.Size([2, 8, 30, 30]))

    References:
        Liu et al., "Image Inpainting for Irregular Holes Using Partial Convolutions", ECCV 2018.
    """

    _ndim = 2


class PartialConv3d(_PartialConvNd, nn.Conv3d):
    """``nn.Conv3d`` that skips missing inputs: ``forward(input, mask) → (output, updated_mask)``.

    Same arguments as ``nn.Conv3d`` (``padding_mode`` must stay ``"zeros"``), plus ``multi_channel``
    (mask (N, 1, D, H, W) or (N, C_in, D, H, W)). The math is :func:`partial_conv`.

    Examples:
        >>> conv = PartialConv3d(1, 2, 3, stride=2)
        >>> conv(torch.randn(1, 1, 7, 7, 7), torch.ones(1, 1, 7, 7, 7))[0].shape
        torch.Size([1, 2, 3, 3, 3])
    """

    _ndim = 3
