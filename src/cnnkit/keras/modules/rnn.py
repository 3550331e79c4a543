"""Keras's ``LSTM`` and ``ConvLSTM2D`` over torch's ``nn.LSTM`` and cnnkit's ``ConvLSTM2d``, on channels-first
sequences. (``GRU``, ``SimpleRNN``, ``Bidirectional`` and ``TimeDistributed``, which run Keras's own step
equations, are in :mod:`cnnkit.keras.recurrent`.)"""

from __future__ import annotations

from torch import Tensor, nn

from cnnkit.nn import ConvLSTM2d

__all__ = ["KerasConvLSTM2d", "KerasLSTM"]


class KerasLSTM(nn.LSTM):
    """Keras ``LSTM`` (tanh/sigmoid, one layer) on channels-first sequences ``(N, F, T)``.

    Returns ``(N, H, T)`` (``return_sequences=True``) or the last step ``(N, H)``. Weights go through the
    ``nn.LSTM`` layout of :mod:`cnnkit.layouts` (Keras's single bias becomes ``bias_ih``).

    Examples:
        >>> import torch
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
        >>> import torch
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
