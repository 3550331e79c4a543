"""The weight layouts keras/layouts.py registers for the converter's own modules, and the explainer of
keras/explainers.py: in place as soon as cnnkit.keras.modules is imported, whatever is imported first."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import cnnkit
from cnnkit.keras import find_layout, from_keras, keras_shapes, to_keras
from cnnkit.keras import modules as M

CASES = {
    "DepthwiseConv": M.KerasDepthwiseConv(3, 2, (3, 2), padding="same"),
    "SeparableConv": M.KerasSeparableConv(3, 4, 2, (3, 3)),
    "ConvTranspose": M.KerasConvTranspose(2, 3, (3, 3), (2, 2), "same"),
    "Normalization": M.KerasNormalization(2),
    "LayerScale": M.ChannelScale(5),
    "LayerNormalization": M.ChannelsLastNorm("layer", 4, 1e-3),
    "PReLU": M.KerasPReLU((1, 1, 3)),
}


@pytest.mark.parametrize("keras_class", CASES)
def test_layout_round_trips_and_names_the_keras_class(keras_class):
    module = CASES[keras_class]
    torch.manual_seed(0)
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            t.copy_(torch.randint(-9, 9, t.shape))  # exact in any order of operations
    assert find_layout(module).keras_class(module) == keras_class
    arrays = to_keras(module)
    assert {k: tuple(v.shape) for k, v in arrays.items()} == keras_shapes(module)
    state = from_keras(module, arrays)
    for name, value in module.state_dict().items():
        assert torch.equal(state[name], value), name


def test_depthwise_kernel_is_keras_order():
    # Keras: output channel c·M + m is input channel c convolved with depthwise_kernel[..., c, m]. Reference:
    # one plain conv2d per (c, m) with that slice of a random Keras kernel.
    module = M.KerasDepthwiseConv(3, 2, (3, 2), bias=False)
    kernel = torch.randn(3, 2, 3, 2)  # (kh, kw, C, M)
    module.load_state_dict(from_keras(module, {"depthwise_kernel": kernel}))
    x = torch.randn(2, 3, 6, 5)
    expected = torch.cat([F.conv2d(x[:, c:c + 1], kernel[:, :, c, m].reshape(1, 1, 3, 2))
                          for c in range(3) for m in range(2)], dim=1)
    torch.testing.assert_close(module(x), expected)


# A fresh process per module imported first: the registrations must not depend on the import order.
_FIRST = """
import importlib, sys
importlib.import_module(sys.argv[1])
import cnnkit
from cnnkit.keras import has_keras_layout, modules as M
from cnnkit.explainers import find_explainer
print(has_keras_layout(M.KerasPReLU((1, 1, 3))), find_explainer(M.KerasConv2d(3, 4, 3)).__module__)
"""


@pytest.mark.parametrize("first", ["cnnkit.keras.layouts", "cnnkit.keras.explainers", "cnnkit.keras.modules.rnn",
                                   "cnnkit.keras.recurrent", "cnnkit.explainers"])
def test_registrations_whatever_is_imported_first(first):
    done = subprocess.run([sys.executable, "-c", _FIRST, first], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "cnnkit.keras.explainers"]


def test_keras_conv_is_explained_with_keras_padding():
    # Independent reference: the module's own forward (TensorFlow's "same" with stride 2: ceil(9/2), ceil(8/2)).
    conv = M.KerasConv2d(3, 4, 3, stride=2, padding="same")
    e = cnnkit.explain(conv, (3, 9, 8))
    assert e.output_shape == tuple(conv(torch.zeros(1, 3, 9, 8)).shape[1:]) == (4, 5, 4)
