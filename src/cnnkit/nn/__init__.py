"""Layers PyTorch lacks: locally connected (unshared-weight) convolutions, convolutional LSTMs, and
partial convolutions for missing data (defined in :mod:`cnnkit.masking`, exported here too).

Each layer registers its Keras weight layout (:func:`cnnkit.keras.to_keras`) and its Keras initialisation
(:func:`cnnkit.init.keras_`) in the tables below it; how each is explained (:func:`cnnkit.explain`) is
registered from above, by :mod:`cnnkit.explainers.cnnkit_layers`. See ``docs/nn.md``.
"""

from cnnkit.masking.partial_conv import PartialConv1d, PartialConv2d, PartialConv3d, partial_conv
from cnnkit.nn.conv_lstm import ConvLSTM1d, ConvLSTM2d, conv_lstm_nd
from cnnkit.nn.locally_connected import (
    LocallyConnected1d,
    LocallyConnected2d,
    locally_connected1d,
    locally_connected2d,
    locally_connected_nd,
)
from cnnkit.nn.temporal_attention import LTAE2d, TemporalAttention

__all__ = [
    "ConvLSTM1d",
    "ConvLSTM2d",
    "LTAE2d",
    "LocallyConnected1d",
    "LocallyConnected2d",
    "PartialConv1d",
    "PartialConv2d",
    "PartialConv3d",
    "TemporalAttention",
    "conv_lstm_nd",
    "locally_connected1d",
    "locally_connected2d",
    "locally_connected_nd",
    "partial_conv",
]
