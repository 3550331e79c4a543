"""Keras-compatible initialisation: Keras's default weights for PyTorch modules.

``keras_(model)`` gives every ``Linear``, convolution, ``Embedding``, ``LSTM``/``GRU``/``RNN`` and
normalisation layer the initialisation Keras would give its counterpart (Glorot-uniform kernels, zero
biases, orthogonal recurrent kernels, unit forget bias, …). The individual initialisers work on tensors
like ``torch.nn.init``. See ``docs/init.md`` and :mod:`cnnkit.init.keras`.

Examples:
    >>> import torch
    >>> from torch import nn
    >>> from cnnkit.init import fans, keras_
    >>> fans(nn.Conv2d(3, 32, 5).weight.shape)
    (75, 800)
    >>> model = keras_(nn.Sequential(nn.Conv2d(3, 32, 5), nn.ReLU()), generator=torch.Generator().manual_seed(0))
    >>> bool(model[0].weight.abs().max() <= (6 / (75 + 800)) ** 0.5)
    True
"""

from cnnkit.init import keras
from cnnkit.init.keras import *  # noqa: F403  (the public names, listed once: cnnkit.init.keras.__all__)

__all__ = list(keras.__all__)
