"""PyTorch modules with Keras semantics on channels-first tensors, built by :func:`cnnkit.keras.load`.

Every tensor between layers is in PyTorch's layout: Keras's last (channel) axis moved to position 1 for
tensors of rank 3 and more (``(N, H, W, C)`` → ``(N, C, H, W)``, ``(N, T, F)`` → ``(N, F, T)``,
``(N, T, H, W, C)`` → ``(N, C, T, H, W)``); rank-2 tensors ``(N, F)`` are the same in both. The modules
are what a Keras layer does, written for that layout, one file per family of Keras layers:

==================  ==========================================================================================
file                modules
==================  ==========================================================================================
``activations``     :func:`activation` (the ``activation`` argument), ``KerasActivation``, ``KerasReLU``,
                    ``KerasPReLU``, ``KerasELU``
``core``            ``KerasDense`` (``nn.Linear`` on the channel axis), ``KerasEmbedding``, ``KerasSequential``,
                    ``Identity``, ``ScalarOp``
``convolutional``   ``KerasConv1d/2d`` (``nn.Conv1d/2d`` with TensorFlow's ``"same"`` and ``"causal"``),
                    ``KerasDepthwiseConv``, ``KerasSeparableConv``, ``KerasConvTranspose``,
                    ``KerasLocallyConnected1d/2d``
``pooling``         ``KerasPool`` (TensorFlow's ``"same"``: max pads with ``-inf``, average counts real inputs),
                    ``GlobalPool``
``reshaping``       ``ChannelsLastFlatten`` / ``ChannelsLastReshape`` / ``KerasPermute`` (Keras's order),
                    ``UpSample``, ``Crop``
``merging``         ``Concatenate``, ``Merge``, ``ScaledSum``
``normalization``   ``ChannelsLastNorm`` (layer and group normalisation), ``ChannelScale`` (``LayerScale``)
``preprocessing``   ``Rescaling``, ``KerasNormalization``
``rnn``             ``KerasLSTM``, ``KerasConvLSTM2d`` (GRU and SimpleRNN: :mod:`cnnkit.keras.recurrent`)
==================  ==========================================================================================

These files hold behaviour only. The Keras weight layouts of the modules that have no torch base class with
one are registered in :mod:`cnnkit.keras.layouts`, and how a Keras convolution is explained in
:mod:`cnnkit.keras.explainers`; importing this package imports both, so the registrations are in place
whenever a module exists.
"""

from cnnkit.keras import explainers as _explainers  # noqa: F401  (registers how Keras convolutions are explained)
from cnnkit.keras import layouts as _layouts  # noqa: F401  (registers the weight layouts of these modules)
from cnnkit.keras.modules.activations import (
    ACTIVATIONS,
    KerasActivation,
    KerasELU,
    KerasPReLU,
    KerasReLU,
    activation,
)
from cnnkit.keras.modules.convolutional import (
    KerasConv1d,
    KerasConv2d,
    KerasConvTranspose,
    KerasDepthwiseConv,
    KerasLocallyConnected1d,
    KerasLocallyConnected2d,
    KerasSeparableConv,
    keras_pad,
)
from cnnkit.keras.modules.core import Identity, KerasDense, KerasEmbedding, KerasSequential, ScalarOp
from cnnkit.keras.modules.merging import Concatenate, Merge, ScaledSum
from cnnkit.keras.modules.normalization import ChannelScale, ChannelsLastNorm
from cnnkit.keras.modules.pooling import GlobalPool, KerasPool
from cnnkit.keras.modules.preprocessing import KerasNormalization, Rescaling
from cnnkit.keras.modules.reshaping import ChannelsLastFlatten, ChannelsLastReshape, Crop, KerasPermute, UpSample
from cnnkit.keras.modules.rnn import KerasConvLSTM2d, KerasLSTM

__all__ = [
    "ACTIVATIONS",
    "ChannelScale",
    "ChannelsLastFlatten",
    "ChannelsLastNorm",
    "ChannelsLastReshape",
    "Concatenate",
    "Crop",
    "GlobalPool",
    "Identity",
    "KerasActivation",
    "KerasConv1d",
    "KerasConv2d",
    "KerasConvLSTM2d",
    "KerasConvTranspose",
    "KerasDense",
    "KerasDepthwiseConv",
    "KerasELU",
    "KerasEmbedding",
    "KerasLSTM",
    "KerasLocallyConnected1d",
    "KerasLocallyConnected2d",
    "KerasNormalization",
    "KerasPReLU",
    "KerasPermute",
    "KerasPool",
    "KerasReLU",
    "KerasSeparableConv",
    "KerasSequential",
    "Merge",
    "Rescaling",
    "ScalarOp",
    "ScaledSum",
    "UpSample",
    "activation",
    "keras_pad",
]
