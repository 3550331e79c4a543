"""Keras's recurrent layers on channels-first sequences ``(N, F, T)``: ``GRU`` (both ``reset_after``),
``SimpleRNN``, ``Bidirectional`` (every merge mode but ``None``) and ``TimeDistributed``.

``GRU`` and ``SimpleRNN`` keep Keras's weight layout as their parameters (``kernel (F, k·H)``,
``recurrent_kernel (H, k·H)``, ``bias``) and run Keras's step equations in a loop over time, so that
``reset_after=False`` (Keras 2's default, which ``nn.GRU`` cannot express) and Keras 2's ``hard_sigmoid``
are exact. A layer with ``go_backwards`` reads the sequence from the end and returns its outputs in that
order, as Keras does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cnnkit.keras.modules.activations import activation as activation_fn
from cnnkit.layouts import KerasLayout, register_layout

__all__ = ["KerasBidirectional", "KerasGRU", "KerasSimpleRNN", "TimeDistributed"]


class _KerasRNN(nn.Module):
    gates = 1

    def __init__(self, input_size: int, units: int, bias: bool = True, *, activation: str = "tanh",
                 recurrent_activation: str = "sigmoid", return_sequences: bool = False, go_backwards: bool = False,
                 bias_rows: int = 1) -> None:
        super().__init__()
        self.input_size, self.units = input_size, units
        k = self.gates * units
        self.kernel = nn.Parameter(torch.empty(input_size, k))
        self.recurrent_kernel = nn.Parameter(torch.empty(units, k))
        self.bias = nn.Parameter(torch.empty((bias_rows, k) if bias_rows > 1 else (k,))) if bias else None
        self.activation, self.recurrent_activation = activation, recurrent_activation
        self._act, self._rec = activation_fn(activation), activation_fn(recurrent_activation)
        self.return_sequences, self.go_backwards = bool(return_sequences), bool(go_backwards)

    def step(self, x: Tensor, h: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, input: Tensor) -> Tensor:
        x = input.transpose(1, 2)  # (N, T, F)
        if self.go_backwards:
            x = x.flip(1)
        h = x.new_zeros(x.shape[0], self.units)
        outs = []
        for t in range(x.shape[1]):
            h = self.step(x[:, t], h)
            outs.append(h)
        if not self.return_sequences:
            return h
        return torch.stack(outs, 2) if outs else x.new_zeros(x.shape[0], self.units, 0)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.units}, activation={self.activation!r}"
        if self.gates > 1:
            text += f", recurrent_activation={self.recurrent_activation!r}"
        return text + f", return_sequences={self.return_sequences}" + (
            ", go_backwards=True" if self.go_backwards else "")


class KerasSimpleRNN(_KerasRNN):
    """Keras ``SimpleRNN``: ``h = activation(x·kernel + h·recurrent_kernel + bias)``.

    Examples:
        >>> KerasSimpleRNN(3, 4, return_sequences=True)(torch.zeros(2, 3, 5)).shape
        torch.Size([2, 4, 5])
    """

    def step(self, x: Tensor, h: Tensor) -> Tensor:
        out = x @ self.kernel + h @ self.recurrent_kernel
        return self._act(out if self.bias is None else out + self.bias)


class KerasGRU(_KerasRNN):
    """Keras ``GRU``, gates ``z, r, h`` in Keras's column order; ``reset_after`` as in Keras.

    ``reset_after=True`` (Keras 3's default, a ``(2, 3H)`` bias: input and recurrent):
    ``h̃ = act(x·W_h + b_h + r ⊙ (h·U_h + b'_h))``; ``reset_after=False`` (Keras 2's default):
    ``h̃ = act(x·W_h + b_h + (r ⊙ h)·U_h)``. Then ``h = z ⊙ h_prev + (1 − z) ⊙ h̃``.

    Examples:
        >>> KerasGRU(3, 4, reset_after=False)(torch.zeros(2, 3, 5)).shape
        torch.Size([2, 4])
    """

    gates = 3

    def __init__(self, input_size: int, units: int, bias: bool = True, *, reset_after: bool = True, **kwargs):
        super().__init__(input_size, units, bias, bias_rows=2 if reset_after and bias else 1, **kwargs)
        self.reset_after = bool(reset_after)

    def step(self, x: Tensor, h: Tensor) -> Tensor:
        H = self.units
        xw = x @ self.kernel
        b_in = b_rec = None
        if self.bias is not None:
            b_in, b_rec = (self.bias[0], self.bias[1]) if self.bias.dim() == 2 else (self.bias, None)
            xw = xw + b_in
        xz, xr, xh = xw[:, :H], xw[:, H:2 * H], xw[:, 2 * H:]
        if self.reset_after:
            hu = h @ self.recurrent_kernel
            if b_rec is not None:
                hu = hu + b_rec
            z = self._rec(xz + hu[:, :H])
            r = self._rec(xr + hu[:, H:2 * H])
            cand = self._act(xh + r * hu[:, 2 * H:])
        else:
            u = self.recurrent_kernel
            z = self._rec(xz + h @ u[:, :H])
            r = self._rec(xr + h @ u[:, H:2 * H])
            cand = self._act(xh + (r * h) @ u[:, 2 * H:])
        return z * h + (1 - z) * cand

    def extra_repr(self) -> str:
        return super().extra_repr() + f", reset_after={self.reset_after}"


_IDENTITY = KerasLayout(
    lambda m: type(m).__name__.removeprefix("Keras"),
    lambda m, s: {k: v for k, v in s.items() if v is not None},
    lambda m, a: dict(a),
)
register_layout(KerasSimpleRNN, KerasGRU, layout=_IDENTITY)

_MERGE_MODES = ("concat", "sum", "mul", "ave")


class KerasBidirectional(nn.Module):
    """Keras ``Bidirectional``: a forward and a backward (``go_backwards``) layer, outputs merged.

    The backward layer's sequence output is put back in time order before merging; ``concat`` joins on
    the feature axis (dim 1).
    """

    def __init__(self, forward_layer: nn.Module, backward_layer: nn.Module, merge_mode: str,
                 return_sequences: bool) -> None:
        super().__init__()
        self.forward_layer, self.backward_layer = forward_layer, backward_layer
        self.merge_mode, self.return_sequences = merge_mode, bool(return_sequences)

    def forward(self, input: Tensor) -> Tensor:
        a = self.forward_layer(input)
        b = self.backward_layer(input)
        if self.return_sequences:
            b = b.flip(2)
        if self.merge_mode == "concat":
            return torch.cat([a, b], 1)
        if self.merge_mode == "sum":
            return a + b
        if self.merge_mode == "mul":
            return a * b
        return (a + b) / 2

    def extra_repr(self) -> str:
        return f"merge_mode={self.merge_mode!r}"


class TimeDistributed(nn.Module):
    """Keras ``TimeDistributed(layer)``: ``layer`` on every time step of ``(N, C, T, *S)`` (time is dim 2).

    Examples:
        >>> TimeDistributed(nn.Conv2d(3, 5, 3))(torch.zeros(2, 3, 4, 8, 8)).shape
        torch.Size([2, 5, 4, 6, 6])
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, input: Tensor) -> Tensor:
        n, t = input.shape[0], input.shape[2]
        out = self.layer(input.movedim(2, 1).flatten(0, 1))
        return out.unflatten(0, (n, t)).movedim(1, 2)
