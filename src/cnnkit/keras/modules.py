"""PyTorch modules with Keras semantics on channels-first tensors, built by :func:`cnnkit.keras.load`.

Every tensor between layers is in PyTorch's layout: Keras's last (channel) axis moved to position 1 for
tensors of rank 3 and more (``(N, H, W, C)`` → ``(N, C, H, W)``, ``(N, T, F)`` → ``(N, F, T)``,
``(N, T, H, W, C)`` → ``(N, C, T, H, W)``); rank-2 tensors ``(N, F)`` are the same in both. The modules
here are what a Keras layer does, written for that layout:

* :class:`KerasConv1d` / :class:`KerasConv2d` (``nn.Conv1d/2d`` subclasses): TensorFlow's ``"same"``
  padding also with stride > 1 (odd zero at the end), ``"causal"``, and the layer's activation.
* :class:`KerasDense` (``nn.Linear`` subclass): acts on the channel axis (dim 1) of channels-first
  tensors, like Keras's ``Dense`` on the last axis.
* :class:`KerasPool`: max/average pooling with TensorFlow's ``"same"`` rule: max pads with ``-inf``,
  average divides by the number of real (unpadded) inputs in each window.
* :class:`ChannelsLastFlatten` / :class:`ChannelsLastReshape`: flatten/reshape in Keras's (channels-last)
  order, so that a following ``Dense`` sees its inputs in the order its kernel expects.

Weight layouts are not handled here: they live in :mod:`cnnkit.layouts`, reached through the
``nn.Linear`` / ``nn.Conv*d`` / ``nn.LSTM`` / ``cnnkit.nn`` base classes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit._checks import check_choice
from cnnkit.errors import ShapeError
from cnnkit.explainers.layers import conv_report
from cnnkit.explainers.registry import register_explainer
from cnnkit.layouts import KerasLayout, register_layout
from cnnkit.nn import ConvLSTM2d, LocallyConnected1d, LocallyConnected2d
from cnnkit.shapes import tf_same_padding

__all__ = [
    "ACTIVATIONS",
    "ChannelsLastFlatten",
    "ChannelsLastReshape",
    "Concatenate",
    "GlobalPool",
    "KerasActivation",
    "KerasConv1d",
    "KerasConv2d",
    "KerasConvLSTM2d",
    "KerasDense",
    "KerasEmbedding",
    "KerasLSTM",
    "KerasLocallyConnected1d",
    "KerasLocallyConnected2d",
    "KerasPool",
    "KerasReLU",
    "Merge",
    "activation",
]


def _hard_sigmoid_keras2(t: Tensor) -> Tensor:
    return (t * 0.2 + 0.5).clamp(0.0, 1.0)


# Keras activation name → function on a channels-first tensor (softmax over the channel axis, dim 1).
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "linear": lambda t: t,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softmax": lambda t: F.softmax(t, dim=1),
    "log_softmax": lambda t: F.log_softmax(t, dim=1),
    "elu": F.elu,
    "selu": F.selu,
    "gelu": F.gelu,  # Keras's default approximate=False
    "swish": F.silu,
    "silu": F.silu,
    "softplus": F.softplus,
    "softsign": F.softsign,
    "hard_sigmoid": F.hardsigmoid,  # Keras 3: relu6(x + 3) / 6
    "hard_sigmoid_keras2": _hard_sigmoid_keras2,  # Keras 2: clip(0.2·x + 0.5, 0, 1)
    "hard_silu": F.hardswish,
    "hard_swish": F.hardswish,
    "relu6": F.relu6,
    "leaky_relu": lambda t: F.leaky_relu(t, 0.2),  # Keras's default negative_slope
    "mish": F.mish,
    "exponential": torch.exp,
}


def activation(name: str) -> Callable[[Tensor], Tensor]:
    """The function of Keras activation ``name`` for channels-first tensors.

    Examples:
        >>> activation("hard_sigmoid")(torch.tensor([1.0])), activation("hard_sigmoid_keras2")(torch.tensor([1.0]))
        (tensor([0.6667]), tensor([0.7000]))
    """
    return ACTIVATIONS[check_choice(name, tuple(ACTIVATIONS), "activation")]


def _to_channels_last(t: Tensor) -> Tensor:
    return t.movedim(1, -1) if t.dim() >= 3 else t


def _to_channels_first(t: Tensor) -> Tensor:
    return t.movedim(-1, 1) if t.dim() >= 3 else t


class KerasActivation(nn.Module):
    """Keras's ``Activation(name)`` (also the ``activation`` argument of Dense, Conv*D …).

    Examples:
        >>> KerasActivation("softmax")(torch.zeros(1, 4, 2)).sum(1)
        tensor([[1., 1.]])
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.fn = activation(name)
        self.name = name

    def forward(self, input: Tensor) -> Tensor:
        return self.fn(input)

    def extra_repr(self) -> str:
        return repr(self.name)


class KerasReLU(nn.Module):
    """Keras's ``ReLU(max_value, negative_slope, threshold)``: ``x`` for ``x ≥ threshold``, else
    ``negative_slope·(x − threshold)``, then capped at ``max_value``.

    Examples:
        >>> KerasReLU(max_value=1.0, negative_slope=0.1, threshold=0.5)(torch.tensor([-0.5, 0.7, 3.0]))
        tensor([-0.1000,  0.7000,  1.0000])
    """

    def __init__(self, max_value: float | None = None, negative_slope: float = 0.0, threshold: float = 0.0):
        super().__init__()
        self.max_value = None if max_value is None else float(max_value)
        self.negative_slope = float(negative_slope)
        self.threshold = float(threshold)

    def forward(self, input: Tensor) -> Tensor:
        out = torch.where(input >= self.threshold, input, self.negative_slope * (input - self.threshold))
        return out if self.max_value is None else out.clamp(max=self.max_value)

    def extra_repr(self) -> str:
        return f"max_value={self.max_value}, negative_slope={self.negative_slope}, threshold={self.threshold}"


class _ActivationMixin:
    """The Keras ``activation`` argument, applied after the layer's own op."""

    def _set_activation(self, name: str) -> None:
        self.activation = name
        self._act = activation(name)

    def _activation_repr(self) -> str:
        return "" if self.activation == "linear" else f", activation={self.activation!r}"


class KerasDense(_ActivationMixin, nn.Linear):
    """Keras ``Dense``: ``nn.Linear`` on the channel axis, then the activation.

    On a rank-2 input ``(N, in_features)`` this is ``nn.Linear``; on a channels-first ``(N, C, *S)`` input
    it acts on dim 1 (Keras's last axis) and returns ``(N, out_features, *S)``.

    Examples:
        >>> KerasDense(5, 3, activation="relu")(torch.zeros(2, 5, 7)).shape
        torch.Size([2, 3, 7])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, activation: str = "linear",
                 device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._set_activation(activation)

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() < 2 or input.shape[1] != self.in_features:
            raise ShapeError(
                f"KerasDense expects input (N, {self.in_features}) or (N, {self.in_features}, …) with the "
                f"features on dim 1. Received input of shape {tuple(input.shape)}."
            )
        out = _to_channels_first(super().forward(_to_channels_last(input)))
        return self._act(out)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._activation_repr()


class _KerasConv(_ActivationMixin):
    """Keras padding (``"valid"``, ``"same"`` with any stride, ``"causal"``) and activation for nn.Conv."""

    def _set_keras_padding(self, padding: str) -> None:
        self.keras_padding = padding

    def _pad(self, input: Tensor) -> Tensor:
        if self.keras_padding == "valid" or self.padding == "same":
            return input
        if self.keras_padding == "causal":
            pads = [(self.dilation[0] * (self.kernel_size[0] - 1), 0)]
        else:
            pads = [tf_same_padding(int(s), k, st, d) for s, k, st, d in
                    zip(input.shape[2:], self.kernel_size, self.stride, self.dilation)]
        return F.pad(input, [p for pair in reversed(pads) for p in pair])

    def forward(self, input: Tensor) -> Tensor:
        return self._act(super().forward(self._pad(input)))

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.keras_padding in ("causal",) or (self.keras_padding == "same" and self.padding != "same"):
            text += f", keras_padding={self.keras_padding!r}"
        return text + self._activation_repr()


@register_explainer(_KerasConv)
def _explain_keras_conv(module, input_shape: tuple[int, ...]):
    """A Keras convolution is explained with Keras's padding rule (zeros added in ``forward``)."""
    return conv_report(module, input_shape, module.keras_padding)


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


class KerasEmbedding(nn.Embedding):
    """Keras ``Embedding``: integer (or integral float) ids ``(N, *S)`` → ``(N, D, *S)`` channels first.

    Examples:
        >>> KerasEmbedding(10, 4)(torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 4, 3])
    """

    def forward(self, input: Tensor) -> Tensor:
        if input.is_floating_point():
            input = input.long()
        return _to_channels_first(super().forward(input))


class KerasLSTM(nn.LSTM):
    """Keras ``LSTM`` (tanh/sigmoid, one layer) on channels-first sequences ``(N, F, T)``.

    Returns ``(N, H, T)`` (``return_sequences=True``) or the last step ``(N, H)``. Weights go through the
    ``nn.LSTM`` layout of :mod:`cnnkit.layouts` (Keras's single bias becomes ``bias_ih``).

    Examples:
        >>> KerasLSTM(3, 5, return_sequences=True)(torch.zeros(2, 3, 7)).shape
        torch.Size([2, 5, 7])
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, return_sequences: bool = False,
                 go_backwards: bool = False, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias=bias, batch_first=True, device=device, dtype=dtype)
        self.return_sequences = bool(return_sequences)
        self.go_backwards = bool(go_backwards)

    def forward(self, input: Tensor) -> Tensor:  # type: ignore[override]
        x = input.transpose(1, 2)
        out, _ = super().forward(x.flip(1) if self.go_backwards else x)
        return out.transpose(1, 2) if self.return_sequences else out[:, -1]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", return_sequences={self.return_sequences}"


class KerasConvLSTM2d(ConvLSTM2d):
    """Keras ``ConvLSTM2D`` on channels-first sequences ``(N, C, T, H, W)``.

    Returns ``(N, F, T, H', W')`` (``return_sequences=True``) or the last state ``h`` ``(N, F, H', W')``.

    Examples:
        >>> KerasConvLSTM2d(2, 3, 3)(torch.zeros(1, 2, 4, 6, 6)).shape
        torch.Size([1, 3, 6, 6])
    """

    def __init__(self, *args, return_sequences: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.return_sequences = bool(return_sequences)

    def forward(self, input: Tensor) -> Tensor:  # type: ignore[override]
        out, (h, _) = super().forward(input.transpose(1, 2))
        return out.transpose(1, 2) if self.return_sequences else h[-1]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", return_sequences={self.return_sequences}"


class KerasPool(nn.Module):
    """Keras ``MaxPooling*D`` / ``AveragePooling*D`` with ``padding="same"`` (TensorFlow's rule).

    The input is padded with ``tf_same_padding`` amounts (odd one at the end); max pooling pads with
    ``-inf`` so padding never wins, average pooling divides each window's sum by its number of real
    inputs (padding is not counted), as TensorFlow does.

    Examples:
        >>> KerasPool("average", 2, 2, 2)(torch.ones(1, 1, 3, 3))
        tensor([[[[1., 1.],
                  [1., 1.]]]])
    """

    def __init__(self, mode: str, ndim: int, kernel_size: Sequence[int] | int, stride: Sequence[int] | int):
        super().__init__()
        self.mode = check_choice(mode, ("max", "average"), "mode")
        self.ndim = ndim
        self.kernel_size = tuple(kernel_size) if isinstance(kernel_size, Sequence) else (kernel_size,) * ndim
        self.stride = tuple(stride) if isinstance(stride, Sequence) else (stride,) * ndim

    def forward(self, input: Tensor) -> Tensor:
        pads = [tf_same_padding(int(s), k, st) for s, k, st in zip(input.shape[2:], self.kernel_size, self.stride)]
        flat = [p for pair in reversed(pads) for p in pair]
        if self.mode == "max":
            padded = F.pad(input, flat, value=-math.inf)
            return (F.max_pool1d if self.ndim == 1 else F.max_pool2d)(padded, self.kernel_size, self.stride)
        pool = F.avg_pool1d if self.ndim == 1 else F.avg_pool2d
        sums = pool(F.pad(input, flat), self.kernel_size, self.stride)
        ones = torch.ones((1, 1, *input.shape[2:]), dtype=input.dtype, device=input.device)
        counts = pool(F.pad(ones, flat), self.kernel_size, self.stride)
        return sums / counts

    def extra_repr(self) -> str:
        return f"{self.mode!r}, kernel_size={self.kernel_size}, stride={self.stride}, padding='same'"


class GlobalPool(nn.Module):
    """Keras ``GlobalMax/AveragePooling*D``: ``(N, C, *S)`` → ``(N, C)`` (or ``(N, C, 1, …)`` with keepdims).

    Examples:
        >>> GlobalPool("max", 1)(torch.arange(6.0).reshape(1, 2, 3))
        tensor([[2., 5.]])
    """

    def __init__(self, mode: str, ndim: int, keepdims: bool = False) -> None:
        super().__init__()
        self.mode = check_choice(mode, ("max", "average"), "mode")
        self.ndim = ndim
        self.keepdims = bool(keepdims)

    def forward(self, input: Tensor) -> Tensor:
        dims = tuple(range(2, 2 + self.ndim))
        if self.mode == "max":
            return input.amax(dims, keepdim=self.keepdims)
        return input.mean(dims, keepdim=self.keepdims)

    def extra_repr(self) -> str:
        return f"{self.mode!r}, ndim={self.ndim}" + (", keepdims=True" if self.keepdims else "")


class ChannelsLastFlatten(nn.Module):
    """Keras ``Flatten``: ``(N, C, *S)`` is permuted to ``(N, *S, C)`` before flattening (Keras's order).

    Examples:
        >>> x = torch.arange(8.0).reshape(1, 2, 2, 2)        # (N, C, H, W)
        >>> ChannelsLastFlatten()(x)
        tensor([[0., 4., 1., 5., 2., 6., 3., 7.]])
    """

    def forward(self, input: Tensor) -> Tensor:
        return _to_channels_last(input).flatten(1)


class ChannelsLastReshape(nn.Module):
    """Keras ``Reshape(target_shape)``: reshaped in channels-last order, returned channels first.

    Examples:
        >>> ChannelsLastReshape((2, 3, 4))(torch.zeros(5, 24)).shape        # Keras (5, 2, 3, 4)
        torch.Size([5, 4, 2, 3])
    """

    def __init__(self, target_shape: Sequence[int]) -> None:
        super().__init__()
        self.target_shape = tuple(int(s) for s in target_shape)

    def forward(self, input: Tensor) -> Tensor:
        return _to_channels_first(_to_channels_last(input).reshape(input.shape[0], *self.target_shape))

    def extra_repr(self) -> str:
        return repr(self.target_shape)


class Concatenate(nn.Module):
    """Keras ``Concatenate``, on the torch dimension ``dim`` (the Keras axis mapped to channels first)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        return torch.cat(list(inputs), self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def _fold(fn):
    return lambda ts: functools.reduce(fn, ts)


# Broadcasting over axes of size 1, as Keras 3's merge layers.
_MERGES: dict[str, Callable[[list[Tensor]], Tensor]] = {
    "add": _fold(torch.add),
    "subtract": lambda ts: ts[0] - ts[1],
    "multiply": _fold(torch.mul),
    "average": lambda ts: functools.reduce(torch.add, ts) / len(ts),
    "maximum": _fold(torch.maximum),
    "minimum": _fold(torch.minimum),
}


class Merge(nn.Module):
    """Keras ``Add`` / ``Subtract`` / ``Multiply`` / ``Average`` / ``Maximum`` / ``Minimum`` (same shapes).

    Examples:
        >>> Merge("add")([torch.ones(2), torch.ones(2)])
        tensor([2., 2.])
    """

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = check_choice(op, tuple(_MERGES), "op")

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        return _MERGES[self.op](list(inputs))

    def extra_repr(self) -> str:
        return repr(self.op)


# --- layers the keras.applications families use --------------------------------------------------


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


def _channel_view(t: Tensor, rank: int) -> Tensor:
    """A per-channel vector (C,) shaped to broadcast over a channels-first tensor of ``rank``."""
    return t.reshape(1, -1, *(1,) * (rank - 2)) if rank >= 3 else t.reshape(1, -1)


class Rescaling(nn.Module):
    """Keras ``Rescaling``: ``input · scale + offset`` (scalars, or one value per channel).

    Examples:
        >>> Rescaling(1 / 255, 0.0)(torch.full((1, 3, 1, 1), 255.0)).flatten()
        tensor([1., 1., 1.])
    """

    def __init__(self, scale, offset) -> None:
        super().__init__()
        # Plain numbers, not buffers: the converter builds modules on the meta device.
        self.scale = tuple(float(v) for v in (scale if isinstance(scale, (list, tuple)) else [scale]))
        self.offset = tuple(float(v) for v in (offset if isinstance(offset, (list, tuple)) else [offset]))

    def forward(self, input: Tensor) -> Tensor:
        dtype = input.dtype if input.is_floating_point() else torch.get_default_dtype()
        scale = torch.tensor(self.scale, dtype=dtype, device=input.device)
        offset = torch.tensor(self.offset, dtype=dtype, device=input.device)
        if scale.numel() > 1:
            scale = _channel_view(scale, input.dim())
        if offset.numel() > 1:
            offset = _channel_view(offset, input.dim())
        return input.to(dtype) * scale + offset

    def extra_repr(self) -> str:
        return f"scale={self.scale}, offset={self.offset}"


class KerasNormalization(nn.Module):
    """Keras ``Normalization`` on the channel axis: ``(x − mean) / max(√variance, ε)`` (``invert``: the inverse).

    ``mean`` and ``variance`` (and Keras's sample ``count``, unused) are buffers, one value per channel or one
    for all; ``ε`` is Keras's ``backend.epsilon()`` (1e-7).

    Examples:
        >>> KerasNormalization(2)(torch.ones(1, 2, 3)).shape
        torch.Size([1, 2, 3])
    """

    def __init__(self, channels: int, invert: bool = False, epsilon: float = 1e-7) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("variance", torch.ones(channels))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.invert, self.epsilon = bool(invert), float(epsilon)

    def forward(self, input: Tensor) -> Tensor:
        mean = _channel_view(self.mean, input.dim()) if self.mean.numel() > 1 else self.mean
        std = _channel_view(self.variance, input.dim()) if self.variance.numel() > 1 else self.variance
        std = std.sqrt().clamp(min=self.epsilon)
        return mean + input * std if self.invert else (input - mean) / std

    def extra_repr(self) -> str:
        return f"channels={self.mean.numel()}" + (", invert=True" if self.invert else "")


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
        return input * _channel_view(self.gamma, input.dim())


_SCALAR_OPS = {"add": torch.add, "subtract": torch.sub, "multiply": torch.mul, "divide": torch.div}


class ScalarOp(nn.Module):
    """A Keras 3 ``keras.ops`` call with one constant (``x + 3``, ``x * (1/6)``, ``3 - x`` …) in a functional graph.

    Examples:
        >>> ScalarOp("subtract", 1.0, tensor_first=False)(torch.tensor([3.0]))
        tensor([-2.])
    """

    def __init__(self, op: str, value: float, tensor_first: bool = True) -> None:
        super().__init__()
        self.op = check_choice(op, tuple(_SCALAR_OPS), "op")
        self.value, self.tensor_first = float(value), bool(tensor_first)

    def forward(self, input: Tensor) -> Tensor:
        fn = _SCALAR_OPS[self.op]
        if self.tensor_first:
            return fn(input, self.value)
        return fn(torch.full_like(input, self.value), input)

    def extra_repr(self) -> str:
        return f"{self.op!r}, {self.value!r}" + ("" if self.tensor_first else ", tensor_first=False")


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
        x = _to_channels_last(input)
        return _to_channels_first(F.layer_norm(x, (self.channels,), self.weight, self.bias, self.eps))

    def extra_repr(self) -> str:
        return f"{self.kind!r}, {self.channels}, eps={self.eps}" + (
            f", groups={self.groups}" if self.kind == "group" else "")


class KerasPReLU(nn.Module):
    """Keras ``PReLU``: ``max(x, 0) + alpha · min(x, 0)``, ``alpha`` of Keras's shape (channels-last, shared
    axes of size 1), moved to channels first.

    Examples:
        >>> KerasPReLU((1, 1, 3))(torch.zeros(1, 3, 2, 2)).shape
        torch.Size([1, 3, 2, 2])
    """

    def __init__(self, alpha_shape: Sequence[int]) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.empty(tuple(alpha_shape)))

    def forward(self, input: Tensor) -> Tensor:
        alpha = self.alpha
        if alpha.dim() >= 2:
            alpha = alpha.movedim(-1, 0)
        return F.relu(input) - alpha * F.relu(-input)


class KerasELU(nn.Module):
    """Keras ``ELU(alpha)``: ``x`` for ``x > 0``, else ``alpha·(exp(x) − 1)``."""

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, input: Tensor) -> Tensor:
        return F.elu(input, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class UpSample(nn.Module):
    """Keras ``UpSampling1D/2D``: repeat (``"nearest"``) or bilinear (half-pixel centres) by ``size``.

    Examples:
        >>> UpSample((2,), "nearest")(torch.tensor([[[1.0, 2.0]]]))
        tensor([[[1., 1., 2., 2.]]])
    """

    def __init__(self, size: Sequence[int], interpolation: str = "nearest") -> None:
        super().__init__()
        self.size = tuple(size)
        self.interpolation = check_choice(interpolation, ("nearest", "bilinear"), "interpolation")

    def forward(self, input: Tensor) -> Tensor:
        if self.interpolation == "nearest":
            x = input
            for i, s in enumerate(self.size):
                x = x.repeat_interleave(s, dim=2 + i)
            return x
        out = [int(n) * s for n, s in zip(input.shape[2:], self.size)]
        return F.interpolate(input, size=out, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}, interpolation={self.interpolation!r}"


class Crop(nn.Module):
    """Keras ``Cropping1D/2D``: ``(before, after)`` rows removed per spatial axis.

    Examples:
        >>> Crop(((1, 0),))(torch.arange(3.0).reshape(1, 1, 3))
        tensor([[[1., 2.]]])
    """

    def __init__(self, cropping: Sequence[tuple[int, int]]) -> None:
        super().__init__()
        self.cropping = tuple(tuple(p) for p in cropping)

    def forward(self, input: Tensor) -> Tensor:
        index = [slice(lo, int(n) - hi) for (lo, hi), n in zip(self.cropping, input.shape[2:])]
        return input[(slice(None), slice(None), *index)]

    def extra_repr(self) -> str:
        return f"cropping={self.cropping}"


class KerasPermute(nn.Module):
    """Keras ``Permute(dims)`` (1-based, batch excluded) applied in Keras's channels-last layout."""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = tuple(dims)

    def forward(self, input: Tensor) -> Tensor:
        x = _to_channels_last(input).permute(0, *self.dims)
        return _to_channels_first(x.contiguous())

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class KerasSequential(nn.Module):
    """A Sequential model nested inside a functional one (ConvNeXt's stem): its layers in order."""

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleDict(layers)

    def forward(self, input: Tensor) -> Tensor:
        for layer in self.layers.values():
            input = layer(input)
        return input


class Identity(nn.Module):
    """A layer that does nothing at inference (``GaussianNoise``, ``GaussianDropout``, ``ActivityRegularization``)."""

    def __init__(self, keras_class: str = "") -> None:
        super().__init__()
        self.keras_class = keras_class

    def forward(self, input: Tensor) -> Tensor:
        return input

    def extra_repr(self) -> str:
        return repr(self.keras_class) if self.keras_class else ""


# --- their weight layouts --------------------------------------------------------------------------

def _depthwise_to_keras(m, s):
    k = s["weight"].shape[2:]
    kernel = s["weight"].reshape(m.in_channels, m.depth_multiplier, *k).permute(*range(2, 2 + len(k)), 0, 1)
    return {"depthwise_kernel": kernel, **({"bias": s["bias"]} if s.get("bias") is not None else {})}


def _depthwise_to_torch(m, a):
    kernel = a["depthwise_kernel"]  # (*k, C, M)
    n = kernel.dim() - 2
    weight = kernel.permute(n, n + 1, *range(n)).reshape(m.in_channels * m.depth_multiplier, 1, *kernel.shape[:n])
    return {"weight": weight, **({"bias": a["bias"]} if "bias" in a else {})}


def _separable_to_keras(m, s):
    n = len(m.kernel_size)
    dw = _depthwise_to_keras(m, {"weight": s["depthwise_weight"]})["depthwise_kernel"]
    pw = s["pointwise_weight"].permute(*range(2, 2 + n), 1, 0)
    out = {"depthwise_kernel": dw, "pointwise_kernel": pw}
    if s.get("bias") is not None:
        out["bias"] = s["bias"]
    return out


def _separable_to_torch(m, a):
    n = len(m.kernel_size)
    out = {"depthwise_weight": _depthwise_to_torch(m, {"depthwise_kernel": a["depthwise_kernel"]})["weight"],
           "pointwise_weight": a["pointwise_kernel"].permute(n + 1, n, *range(n))}
    if "bias" in a:
        out["bias"] = a["bias"]
    return out


def _transpose_to_keras(m, s):
    n = len(m.kernel_size)
    out = {"kernel": s["weight"].permute(*range(2, 2 + n), 1, 0)}  # (in, out, *k) → (*k, out, in)
    if s.get("bias") is not None:
        out["bias"] = s["bias"]
    return out


def _transpose_to_torch(m, a):
    n = len(m.kernel_size)
    out = {"weight": a["kernel"].permute(n + 1, n, *range(n))}
    if "bias" in a:
        out["bias"] = a["bias"]
    return out


def _renamed(cls_name: str, pairs: Sequence[tuple[str, str]]):
    """A layout that only renames (torch name, Keras name) pairs."""
    return KerasLayout(lambda m: cls_name,
                       lambda m, s: {k: s[t] for t, k in pairs if s.get(t) is not None},
                       lambda m, a: {t: a[k] for t, k in pairs if k in a})


register_layout(KerasDepthwiseConv, layout=KerasLayout(lambda m: "DepthwiseConv", _depthwise_to_keras,
                                                       _depthwise_to_torch))
register_layout(KerasSeparableConv, layout=KerasLayout(lambda m: "SeparableConv", _separable_to_keras,
                                                       _separable_to_torch))
register_layout(KerasConvTranspose, layout=KerasLayout(lambda m: "ConvTranspose", _transpose_to_keras,
                                                       _transpose_to_torch))
register_layout(KerasNormalization, layout=_renamed("Normalization", [("mean", "mean"), ("variance", "variance"),
                                                                      ("count", "count")]))
register_layout(ChannelScale, layout=_renamed("LayerScale", [("gamma", "gamma")]))
register_layout(ChannelsLastNorm, layout=_renamed("LayerNormalization", [("weight", "gamma"), ("bias", "beta")]))
register_layout(KerasPReLU, layout=_renamed("PReLU", [("alpha", "alpha")]))


class ScaledSum(nn.Module):
    """``inputs[0] + scale · inputs[1]`` (InceptionResNetV2's ``CustomScaleLayer``)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        return inputs[0] + self.scale * inputs[1]

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
