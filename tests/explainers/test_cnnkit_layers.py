"""The explainers of cnnkit's own layers (explainers/cnnkit_layers.py): registered from above, so cnnkit.nn never
imports cnnkit.explainers, and in place whenever explain or summary can run."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import cnnkit
from cnnkit.errors import ShapeError
from cnnkit.explainers import cnnkit_layers, find_explainer
from cnnkit.nn import ConvLSTM1d, ConvLSTM2d, LocallyConnected1d, LocallyConnected2d

# A fresh process: importing cnnkit.nn loads no explainer; explain, imported afterwards, still finds the
# registered explainers of cnnkit.nn (no "no explainer is registered" measurement).
_FRESH = """
import sys
import cnnkit.nn as n
assert not any(m.startswith("cnnkit.explainers") for m in sys.modules), sorted(sys.modules)
import cnnkit
from cnnkit.errors import ShapeError
e = cnnkit.explain(n.LocallyConnected2d(4, 4, 3, input_size=(6, 6)), (4, 6, 6))
c = cnnkit.explain(n.ConvLSTM2d(3, 5, 3), (4, 3, 8, 8))
print(e.geometry, e.num_params, c.output_shape, any("no explainer" in s for s in e.steps + c.steps))
"""


def test_nn_imports_no_explainer_and_explain_still_finds_them():
    done = subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "((3, 3), (1, 1), (1, 1)) 2368 (4, 5, 8, 8) False"  # 16·36·4 + 16·4


@pytest.mark.parametrize("module", [
    LocallyConnected1d(2, 3, 3, input_size=7), LocallyConnected2d(2, 3, 3, input_size=5),
    ConvLSTM1d(2, 3, 3), ConvLSTM2d(2, 3, 3),
], ids=lambda m: type(m).__name__)
def test_each_layer_has_its_explainer(module):
    expected = cnnkit_layers._conv_lstm if "ConvLSTM" in type(module).__name__ else cnnkit_layers._locally_connected
    assert find_explainer(module) is expected


@pytest.mark.parametrize(
    ("module", "input_shape"),
    [
        (LocallyConnected2d(3, 8, (3, 2), input_size=(9, 7), stride=(2, 1), padding="same", bias=False), (3, 9, 7)),
        (LocallyConnected1d(4, 6, 3, input_size=10, dilation=2), (4, 10)),
        (ConvLSTM2d(3, 5, (3, 1), num_layers=2, bidirectional=True, stride=2), (4, 3, 9, 8)),
        (ConvLSTM1d(2, 4, 3, bias=False, padding="same"), (6, 2, 11)),
    ],
)
def test_explained_shape_and_count_equal_the_layer_run(module, input_shape):
    # Independent references: the layer's forward on a batch of one, and its own parameters.
    e = cnnkit.explain(module, input_shape)
    with torch.no_grad():
        out = module(torch.zeros(1, *input_shape))
    out = out[0] if isinstance(out, tuple) else out
    assert e.output_shape == tuple(out.shape[1:])
    assert e.num_params == sum(p.numel() for p in module.parameters())
    assert e.steps[-1 if "ConvLSTM" in e.layer else -2].endswith(f"{e.num_params:,}")
    assert e.keras_weights == {k: tuple(v.shape) for k, v in cnnkit.keras.to_keras(module).items()}


def test_locally_connected_init_line_uses_keras_fans():
    lc = LocallyConnected2d(4, 4, 3, input_size=(6, 6))
    (line,) = [s for s in cnnkit.explain(lc, (4, 6, 6)).steps if s.startswith("init:")]
    # Keras's fans of the (16, 36, 4) kernel count the 16 positions: fan_in 36·16, fan_out 4·16.
    assert f"√(6/({36 * 16}+{4 * 16}))" in line and f"U(±{math.sqrt(6 / (36 * 16 + 4 * 16)):.4g})" in line


def test_a_channels_last_shape_gets_the_channels_first_one_to_try():
    layer = cnnkit.nn.LocallyConnected2d(4, 8, 3, input_size=(6, 6))
    with pytest.raises(ShapeError, match=r"looks channels-last .* Try input_shape=\(4, 6, 6\)"):
        cnnkit.explain(layer, (6, 6, 4))
