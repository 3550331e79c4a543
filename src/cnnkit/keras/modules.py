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

Weight layouts are not handled here: they live in :mod:`cnnkit.keras.layouts`, reached through the
``nn.Linear`` / ``nn.Conv*d`` / ``nn.LSTM`` / ``cnnkit.nn`` base classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit._checks import check_choice
from cnnkit.errors import ShapeError
from cnnkit.explainers.layers import conv_report
from cnnkit.explainers.registry import register_explainer
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
    ``nn.LSTM`` layout of :mod:`cnnkit.keras.layouts` (Keras's single bias becomes ``bias_ih``).

    Examples:
        >>> KerasLSTM(3, 5, return_sequences=True)(torch.zeros(2, 3, 7)).shape
        torch.Size([2, 5, 7])
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, return_sequences: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias=bias, batch_first=True, device=device, dtype=dtype)
        self.return_sequences = bool(return_sequences)

    def forward(self, input: Tensor) -> Tensor:  # type: ignore[override]
        out, _ = super().forward(input.transpose(1, 2))
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


_MERGES: dict[str, Callable[[list[Tensor]], Tensor]] = {
    "add": lambda ts: torch.stack(ts).sum(0),
    "subtract": lambda ts: ts[0] - ts[1],
    "multiply": lambda ts: torch.stack(ts).prod(0),
    "average": lambda ts: torch.stack(ts).mean(0),
    "maximum": lambda ts: torch.stack(ts).amax(0),
    "minimum": lambda ts: torch.stack(ts).amin(0),
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
