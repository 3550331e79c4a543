"""Keras's convolutions: ``Conv1D/2D`` (TensorFlow's ``"same"`` and ``"causal"`` padding), ``DepthwiseConv``,
``SeparableConv``, ``Conv*DTranspose`` (TensorFlow's crop) and Keras 2's ``LocallyConnected1D/2D``, each followed
by the layer's activation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit.keras.modules.activations import _ActivationMixin
from cnnkit.nn import LocallyConnected1d, LocallyConnected2d
from cnnkit.shapes import tf_same_padding

__all__ = [
    "KerasConv1d",
    "KerasConv2d",
    "KerasConvTranspose",
    "KerasDepthwiseConv",
    "KerasLocallyConnected1d",
    "KerasLocallyConnected2d",
    "KerasSeparableConv",
    "keras_pad",
]


def keras_pad(input: Tensor, padding: str, kernel_size: Sequence[int], stride: Sequence[int],
              dilation: Sequence[int]) -> Tensor:
    """Zeros Keras's ``padding`` adds before a convolution (``"valid"``, ``"same"``, ``"causal"``)."""
    if padding == "valid":
        return input
    if padding == "causal":
        pads = [(dilation[0] * (kernel_size[0] - 1), 0)]
    else:
        pads = [tf_same_padding(int(s), k, st, d) for s, k, st, d in
                zip(input.shape[2:], kernel_size, stride, dilation)]
    return F.pad(input, [p for pair in reversed(pads) for p in pair])


class _KerasConv(_ActivationMixin):
    """Keras padding (``"valid"``, ``"same"`` with any stride, ``"causal"``) and activation for nn.Conv."""

    def _set_keras_padding(self, padding: str) -> None:
        self.keras_padding = padding

    def _pad(self, input: Tensor) -> Tensor:
        if self.padding == "same":  # torch pads by itself (see _conv_padding)
            return input
        return keras_pad(input, self.keras_padding, self.kernel_size, self.stride, self.dilation)

    def forward(self, input: Tensor) -> Tensor:
        return self._act(super().forward(self._pad(input)))

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.keras_padding in ("causal",) or (self.keras_padding == "same" and self.padding != "same"):
            text += f", keras_padding={self.keras_padding!r}"
        return text + self._activation_repr()


def _conv_padding(padding: str, kernel_size, stride: Sequence[int], dilation) -> str | int:
    # Stride 1 and an even number of zeros: torch's own "same" pads as TensorFlow does. Otherwise F.pad
    # in forward (torch would also have to copy the input for uneven zeros).
    n = len(stride)
    kernel = tuple(kernel_size) if isinstance(kernel_size, Sequence) else (kernel_size,) * n
    dil = tuple(dilation) if isinstance(dilation, Sequence) else (dilation,) * n
    even = all(d * (k - 1) % 2 == 0 for k, d in zip(kernel, dil))
    return "same" if padding == "same" and all(s == 1 for s in stride) and even else 0


class KerasConv2d(_KerasConv, nn.Conv2d):
    """Keras ``Conv2D``: ``nn.Conv2d`` with TensorFlow's padding rules and the layer's activation.

    ``padding="same"`` with stride > 1 (or an odd number of zeros) adds ``tf_same_padding`` zeros (the
    odd one at the end) with ``F.pad`` at run time, so the output has ``ceil(H / stride)`` rows as in Keras.

    Examples:
        >>> KerasConv2d(3, 4, 3, stride=2, padding="same")(torch.zeros(1, 3, 9, 8)).shape
        torch.Size([1, 4, 5, 4])
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding="valid", dilation=1,
                 groups=1, bias=True, *, activation="linear", device=None, dtype=None) -> None:
        stride = tuple(stride) if isinstance(stride, Sequence) else (stride,) * 2
        torch_padding = _conv_padding(padding, kernel_size, stride, dilation)
        super().__init__(in_channels, out_channels, kernel_size, stride, torch_padding, dilation, groups, bias,
                         device=device, dtype=dtype)
        self._set_keras_padding(padding)
        self._set_activation(activation)


class KerasConv1d(_KerasConv, nn.Conv1d):
    """Keras ``Conv1D`` (padding ``"valid"``, ``"same"``, ``"causal"``); see :class:`KerasConv2d`.

    Examples:
        >>> KerasConv1d(300, 111, 5)(torch.zeros(1, 300, 40)).shape
        torch.Size([1, 111, 36])
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding="valid", dilation=1,
                 groups=1, bias=True, *, activation="linear", device=None, dtype=None) -> None:
        stride = tuple(stride) if isinstance(stride, Sequence) else (stride,)
        torch_padding = _conv_padding(padding, kernel_size, stride, dilation)
        super().__init__(in_channels, out_channels, kernel_size, stride, torch_padding, dilation, groups, bias,
                         device=device, dtype=dtype)
        self._set_keras_padding(padding)
        self._set_activation(activation)


class KerasDepthwiseConv(_ActivationMixin, nn.Module):
    """Keras ``DepthwiseConv1D/2D``: each input channel convolved with ``depth_multiplier`` filters.

    Output channel ``c·depth_multiplier + m`` is input channel ``c`` with filter ``m`` (Keras's order).
    Keras's ``depthwise_kernel (*k, C, M)`` is ``weight (C·M, 1, *k)``.

    Examples:
        >>> KerasDepthwiseConv(3, 2, (3, 3), padding="same")(torch.zeros(1, 3, 5, 5)).shape
        torch.Size([1, 6, 5, 5])
    """

    def __init__(self, in_channels: int, depth_multiplier: int, kernel_size: Sequence[int], stride=None,
                 padding: str = "valid", dilation=None, bias: bool = True, *, activation: str = "linear") -> None:
        super().__init__()
        n = len(kernel_size)
        self.in_channels, self.depth_multiplier = in_channels, depth_multiplier
        self.out_channels = in_channels * depth_multiplier
        self.groups = in_channels
        self.kernel_size = tuple(kernel_size)
        self.stride = tuple(stride) if stride is not None else (1,) * n
        self.dilation = tuple(dilation) if dilation is not None else (1,) * n
        self.keras_padding = padding
        self.padding = 0
        self.weight = nn.Parameter(torch.empty(self.out_channels, 1, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(self.out_channels)) if bias else None
        self._set_activation(activation)

    def forward(self, input: Tensor) -> Tensor:
        conv = F.conv1d if len(self.kernel_size) == 1 else F.conv2d
        x = keras_pad(input, self.keras_padding, self.kernel_size, self.stride, self.dilation)
        return self._act(conv(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, depth_multiplier={self.depth_multiplier}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, keras_padding={self.keras_padding!r}" + self._activation_repr())


class KerasSeparableConv(_ActivationMixin, nn.Module):
    """Keras ``SeparableConv1D/2D``: a depthwise convolution, then a 1×1 convolution with the bias.

    Examples:
        >>> KerasSeparableConv(3, 4, 1, (3, 3), padding="same")(torch.zeros(1, 3, 5, 5)).shape
        torch.Size([1, 4, 5, 5])
    """

    def __init__(self, in_channels: int, out_channels: int, depth_multiplier: int, kernel_size: Sequence[int],
                 stride=None, padding: str = "valid", dilation=None, bias: bool = True, *,
                 activation: str = "linear") -> None:
        super().__init__()
        n = len(kernel_size)
        self.in_channels, self.out_channels, self.depth_multiplier = in_channels, out_channels, depth_multiplier
        self.kernel_size = tuple(kernel_size)
        self.stride = tuple(stride) if stride is not None else (1,) * n
        self.dilation = tuple(dilation) if dilation is not None else (1,) * n
        self.keras_padding = padding
        mid = in_channels * depth_multiplier
        self.depthwise_weight = nn.Parameter(torch.empty(mid, 1, *self.kernel_size))
        self.pointwise_weight = nn.Parameter(torch.empty(out_channels, mid, *(1,) * n))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self._set_activation(activation)

    def forward(self, input: Tensor) -> Tensor:
        conv = F.conv1d if len(self.kernel_size) == 1 else F.conv2d
        x = keras_pad(input, self.keras_padding, self.kernel_size, self.stride, self.dilation)
        x = conv(x, self.depthwise_weight, None, self.stride, 0, self.dilation, self.in_channels)
        return self._act(conv(x, self.pointwise_weight, self.bias))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, depth_multiplier={self.depth_multiplier}, kernel_size="
                f"{self.kernel_size}, stride={self.stride}, keras_padding={self.keras_padding!r}"
                + self._activation_repr())


class KerasConvTranspose(_ActivationMixin, nn.Module):
    """Keras ``Conv1DTranspose/Conv2DTranspose`` (``padding``, ``output_padding``, ``dilation_rate``).

    The full transposed convolution, then TensorFlow's crop: the output has Keras's length ``O`` per axis
    (``deconv_output_length``) and starts ``pad_before`` into the full result, where ``pad_before`` is the
    padding a forward convolution from ``O`` to the input length would add first. Positions past the full
    result (``"valid"`` with stride > kernel) are zeros plus the bias, as in Keras.

    Examples:
        >>> KerasConvTranspose(2, 3, (3, 3), (2, 2), "same")(torch.zeros(1, 2, 4, 5)).shape
        torch.Size([1, 3, 8, 10])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Sequence[int], stride: Sequence[int],
                 padding: str = "valid", output_padding: Sequence[int] | None = None, dilation=None,
                 bias: bool = True, *, activation: str = "linear") -> None:
        super().__init__()
        n = len(kernel_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.dilation = tuple(dilation) if dilation is not None else (1,) * n
        self.keras_padding = padding
        self.output_padding = None if output_padding is None else tuple(output_padding)
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self._set_activation(activation)

    def output_size(self, size: int, i: int) -> int:
        """Keras's ``deconv_output_length`` for axis ``i``."""
        k = (self.kernel_size[i] - 1) * self.dilation[i] + 1
        s = self.stride[i]
        if self.output_padding is None:
            return size * s + max(k - s, 0) if self.keras_padding == "valid" else size * s
        pad = 0 if self.keras_padding == "valid" else k // 2
        return (size - 1) * s + k - 2 * pad + self.output_padding[i]

    def forward(self, input: Tensor) -> Tensor:
        conv = F.conv_transpose1d if len(self.kernel_size) == 1 else F.conv_transpose2d
        full = conv(input, self.weight, None, self.stride, 0, 0, 1, self.dilation)
        index = []
        pads = []
        for i, size in enumerate(input.shape[2:]):
            out = self.output_size(int(size), i)
            k = (self.kernel_size[i] - 1) * self.dilation[i] + 1
            before = 0 if self.keras_padding == "valid" else max((int(size) - 1) * self.stride[i] + k - out, 0) // 2
            have = full.shape[2 + i] - before
            index.append(slice(before, before + min(out, have)))
            pads.append((0, max(out - have, 0)))
        out = full[(slice(None), slice(None), *index)]
        if any(p[1] for p in pads):
            out = F.pad(out, [p for pair in reversed(pads) for p in pair])
        if self.bias is not None:
            out = out + self.bias.view(1, -1, *(1,) * len(self.kernel_size))
        return self._act(out)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"keras_padding={self.keras_padding!r}, output_padding={self.output_padding}"
                + self._activation_repr())


class _ThenActivation(_ActivationMixin):
    """A cnnkit layer (the next base class) followed by the Keras layer's ``activation``."""

    def __init__(self, *args, activation: str = "linear", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._set_activation(activation)

    def forward(self, input: Tensor) -> Tensor:
        return self._act(super().forward(input))

    def extra_repr(self) -> str:
        return super().extra_repr() + self._activation_repr()


class KerasLocallyConnected2d(_ThenActivation, LocallyConnected2d):
    """Keras 2 ``LocallyConnected2D`` (implementation 1): :class:`cnnkit.nn.LocallyConnected2d` + activation."""


class KerasLocallyConnected1d(_ThenActivation, LocallyConnected1d):
    """Keras 2 ``LocallyConnected1D``: :class:`cnnkit.nn.LocallyConnected1d` + activation."""
