"""explain(): shapes against real torch runs, weights against the seeds' hand-computed figures."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import cnnkit
from cnnkit import ShapeError, explain
from cnnkit.explainers import LayerReport, register_explainer


def run_shape(module: nn.Module, shape: tuple[int, ...], dtype=torch.float32) -> tuple[int, ...]:
    """The reference: what torch returns for one sample (batch of 2, eval mode)."""
    module.eval()
    with torch.no_grad():
        if isinstance(module, nn.RNNBase):  # unbatched input (L, H_in); a batch would go in dim 1
            return tuple(module(torch.zeros(shape, dtype=dtype))[0].shape)
        out = module(torch.zeros((2, *shape), dtype=dtype))
    out = out[0] if isinstance(out, tuple) else out
    return tuple(out.shape[1:])


# --- the seeds -----------------------------------------------------------------------------------------


def test_seed_conv2d_32_filters_5x5_on_32x32x3():
    e = explain(nn.Conv2d(3, 32, 5), (3, 32, 32))
    assert e.output_shape == (32, 28, 28)
    assert e.weights == {"weight": (32, 3, 5, 5), "bias": (32,)}
    assert e.keras_weights == {"kernel": (5, 5, 3, 32), "bias": (32,)}
    assert e.num_params == 32 * 3 * 5 * 5 + 32 == 2432
    text = str(e)
    assert "32·(3·5·5) + 32 biases = 2,432" in text
    # The seed's glorot_uniform limit sqrt(6/(fan_in+fan_out)), fans including the 5×5 field.
    assert f"{math.sqrt(6 / (75 + 800)):.4g}" in text


def test_seed_theano_valid_and_full():
    assert explain(nn.Conv2d(1, 20, 5), (1, 28, 28)).output_shape == (20, 24, 24)
    assert explain(nn.Conv2d(1, 20, 5, padding=4), (1, 28, 28)).output_shape == (20, 32, 32)


def test_seed_conv1d_111_filters_over_300_channels():
    e = explain(nn.Conv1d(300, 111, 5), (300, 300))
    assert e.weights["weight"] == (111, 300, 5)
    assert e.keras_weights == {"kernel": (5, 300, 111), "bias": (111,)}
    assert e.output_shape == (111, 296)  # "300 − 5 + 1 = 296" along the sequence


def test_seed_dense_2000_to_4800():
    e = explain(nn.Linear(2000, 4800), (2000,))
    assert e.weights["weight"] == (4800, 2000)
    assert e.keras_weights["kernel"] == (2000, 4800)
    assert e.output_shape == (4800,)
    assert "(4800, 2000)" in str(e) and "(2000, 4800)" in str(e)


def test_seed_locally_connected_6x6x4_four_filters_3x3():
    from cnnkit.nn import LocallyConnected2d

    e = explain(LocallyConnected2d(4, 4, 3, input_size=(6, 6)), (4, 6, 6))
    assert e.keras_weights == {"kernel": (16, 36, 4), "bias": (4, 4, 4)}
    assert e.output_shape == (4, 4, 4)
    assert e.num_params == (4 * 4) * (3 * 3 * 4 * 4) + (4 * 4) * 4
    assert "(4·4 patches) × (3·3·4 inputs) × 4 filters" in str(e)


def test_keras_docs_locally_connected_32x32x3_64_filters():
    from cnnkit.nn import LocallyConnected2d

    e = explain(LocallyConnected2d(3, 64, 3, input_size=(32, 32)), (3, 32, 32))
    assert e.num_params == (30 * 30) * (3 * 3 * 3 * 64) + (30 * 30) * 64


# --- shapes against torch ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3),
    cin=st.integers(1, 4),
    groups=st.sampled_from([1, 2]),
    cout_per_group=st.integers(1, 3),
    k=st.integers(1, 4),
    s=st.integers(1, 3),
    d=st.integers(1, 2),
    p=st.integers(0, 2),
    size=st.integers(6, 12),
    bias=st.booleans(),
)
def test_conv_output_shape_and_params_match_torch(n, cin, groups, cout_per_group, k, s, d, p, size, bias):
    conv_cls = [nn.Conv1d, nn.Conv2d, nn.Conv3d][n - 1]
    cin *= groups
    m = conv_cls(cin, cout_per_group * groups, k, stride=s, padding=p, dilation=d, groups=groups, bias=bias)
    shape = (cin, *([size] * n))
    if size + 2 * p < d * (k - 1) + 1:  # torch refuses too; we must say why
        with pytest.raises(RuntimeError):
            run_shape(m, shape)
        with pytest.raises(ShapeError, match="output would be empty"):
            explain(m, shape)
        return
    e = explain(m, shape)
    assert e.output_shape == run_shape(m, shape)
    assert e.num_params == sum(p.numel() for p in m.parameters())
    assert e.keras_weights["kernel"] == (*([k] * n), cin // groups, cout_per_group * groups)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3),
    k=st.integers(1, 4),
    s=st.integers(1, 3),
    p=st.integers(0, 2),
    size=st.integers(6, 12),
    ceil=st.booleans(),
    kind=st.sampled_from(["max", "avg"]),
)
def test_pool_output_shape_matches_torch(n, k, s, p, size, ceil, kind):
    p = min(p, k // 2)
    cls = {"max": [nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d], "avg": [nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d]}
    m = cls[kind][n - 1](k, stride=s, padding=p, ceil_mode=ceil)
    shape = (2, *([size] * n))
    assert explain(m, shape).output_shape == run_shape(m, shape)


@pytest.mark.parametrize(
    ("module", "shape"),
    [
        (nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1), (4, 7, 9)),
        (nn.ConvTranspose1d(4, 6, 4, stride=3, dilation=2), (4, 5)),
        (nn.AdaptiveAvgPool2d(1), (8, 7, 5)),
        (nn.AdaptiveMaxPool2d((3, None)), (8, 7, 5)),
        (nn.BatchNorm2d(8), (8, 7, 5)),
        (nn.BatchNorm1d(8), (8,)),
        (nn.GroupNorm(2, 8), (8, 7, 5)),
        (nn.Dropout2d(0.2), (8, 7, 5)),
        (nn.ReLU(), (8, 7, 5)),
        (nn.Softmax(dim=1), (5, 4, 4)),
        (nn.Flatten(), (64, 5, 5)),
        (nn.Flatten(2), (64, 5, 5)),
        (nn.Unflatten(1, (4, 16)), (64,)),
        (nn.ZeroPad2d((1, 2, 3, 4)), (3, 5, 5)),
        (nn.Upsample(scale_factor=2), (3, 5, 6)),
        (nn.Upsample(size=(9, 11), mode="bilinear"), (3, 5, 6)),
        (nn.Linear(8, 3), (5, 8)),
        (nn.LSTM(10, 20, num_layers=2, bidirectional=True), (7, 10)),
        (nn.LSTM(10, 20, proj_size=5), (7, 10)),
        (nn.Conv2d(3, 8, 4, padding="same"), (3, 9, 10)),
        (nn.Conv2d(3, 8, 3, padding="valid", stride=2), (3, 9, 10)),
        (nn.MaxPool2d(3, stride=2, padding=1, dilation=2), (3, 11, 12)),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else str(v),
)
def test_layer_output_shapes_match_torch(module, shape):
    assert explain(module, shape).output_shape == run_shape(module, shape)


def test_embedding_shape_matches_torch():
    m = nn.Embedding(100, 16)
    assert explain(m, (7,)).output_shape == tuple(m(torch.zeros(2, 7, dtype=torch.long)).shape[1:])


def test_lstm_keras_weights_and_param_counts():
    m = nn.LSTM(10, 20)
    e = explain(m, (7, 10))
    assert e.keras_weights == {"kernel": (10, 80), "recurrent_kernel": (20, 80), "bias": (80,)}
    assert e.num_params == 4 * 20 * (10 + 20 + 2)
    # Keras stores one bias: 4·H·(in + H + 1) numbers.
    assert sum(math.prod(s) for s in e.keras_weights.values()) == 4 * 20 * (10 + 20 + 1)


def test_lstm_with_projection_says_no_keras_equivalent():
    e = explain(nn.LSTM(10, 20, proj_size=5), (7, 10))
    assert e.keras_weights == {}
    assert "no Keras equivalent" in str(e)


def test_flatten_explains_channel_order():
    text = str(explain(nn.Flatten(), (64, 5, 5)))
    assert "64·5·5 = 1,600" in text and "(H, W, C)" in text


def test_sequential_chains_shapes_and_collects_weights():
    net = nn.Sequential(nn.Conv2d(1, 32, 5, padding="same"), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(32 * 14 * 14, 10))
    e = explain(net, (1, 28, 28))
    assert e.output_shape == run_shape(net, (1, 28, 28)) == (10,)
    assert e.num_params == sum(p.numel() for p in net.parameters())
    assert e.weights["4.weight"] == (10, 6272)
    assert e.keras_weights["4/kernel"] == (6272, 10)


def test_unregistered_module_is_measured_and_says_so():
    class Twice(nn.Module):
        def forward(self, x):
            return torch.cat([x, x], dim=1)

    e = explain(Twice(), (3, 4))
    assert e.output_shape == (6, 4)
    assert "measured" in str(e)


def test_register_explainer_for_a_new_type_and_its_subclass():
    class Halve(nn.Module):
        def forward(self, x):
            return x[:, ::2]

    class HalveMore(Halve):
        pass

    @register_explainer(Halve)
    def _halve(module, shape):
        return LayerReport((math.ceil(shape[0] / 2), *shape[1:]), ["keeps every other channel"], "pointwise")

    assert explain(HalveMore(), (5, 3)).output_shape == (3, 3)
    assert "keeps every other channel" in str(explain(Halve(), (5, 3)))


# --- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "shape", "match"),
    [
        (nn.Conv2d(3, 8, 3), (32, 32), r"Conv2d expects input_shape \(C, H, W\).*Received input_shape=\(32, 32\)"),
        (nn.Conv2d(3, 8, 3), (4, 32, 32), r"in_channels=3.*Received input_shape\[0\]=4"),
        (nn.Conv2d(3, 8, 5), (3, 4, 4), r"output would be empty.*size=\(4, 4\), kernel_size=\(5, 5\)"),
        (nn.Linear(8, 3), (5, 7), r"in_features=8.*Received input_shape=\(5, 7\)"),
        (nn.Conv2d(3, 8, 3), (3, -1, 4), r"input_shape must be .*Received input_shape=\(3, -1, 4\)"),
        (nn.Conv2d(3, 8, 3), (), r"input_shape must be"),
        (nn.BatchNorm2d(8), (4, 3, 3), r"num_features=8"),
        (nn.LSTM(10, 20), (7, 11), r"input_size=10"),
    ],
)
def test_bad_input_names_argument_and_value(module, shape, match):
    with pytest.raises(ShapeError, match=match):
        explain(module, shape)


@pytest.mark.parametrize(
    ("name", "module", "shape"),
    [
        ("error_conv2d_channels_last", nn.Conv2d(5, 32, 3), (128, 128, 5)),
        ("error_conv1d_channels_last", nn.Conv1d(4, 8, 3), (100, 4)),
        ("error_batchnorm_channels_last", nn.BatchNorm2d(3), (32, 32, 3)),
    ],
)
def test_a_channels_last_shape_gets_the_channels_first_one_golden(golden, name, module, shape):
    with pytest.raises(ShapeError) as info:
        explain(module, shape)
    golden(f"explainers/golden/{name}.txt", str(info.value) + "\n")


@pytest.mark.parametrize("shape", [(4, 32, 32), (32, 32, 4), (5, 32, 5)])
def test_no_channels_last_hint_unless_only_the_last_entry_fits(shape):
    """(4, 32, 32) and (32, 32, 4) hold no 5 at the end; (5, 32, 5) holds 5 first and last, and only its first
    entry is checked (Conv2d(5, …) accepts it, so this case proves the check reads input_shape[0])."""
    module = nn.Conv2d(5, 8, 3)
    if shape[0] == 5:
        explain(module, shape)
        return
    with pytest.raises(ShapeError, match="in_channels=5") as info:
        explain(module, shape)
    assert str(info.value).endswith(f"Received input_shape[0]={shape[0]} (input_shape={shape}).")


def test_not_a_module():
    with pytest.raises(TypeError, match=r"module must be a torch\.nn\.Module"):
        explain("Conv2d", (3, 8, 8))


# --- golden text -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "module", "shape"),
    [
        ("conv2d_seed", nn.Conv2d(3, 32, 5), (3, 32, 32)),
        ("conv1d_seed", nn.Conv1d(300, 111, 5), (300, 300)),
        ("dense_seed", nn.Linear(2000, 4800), (2000,)),
        ("conv2d_same_stride2", nn.Conv2d(3, 8, 3, stride=2, padding=1, groups=1), (3, 28, 28)),
        ("lstm", nn.LSTM(10, 20), (7, 10)),
        ("batchnorm", nn.BatchNorm2d(8), (8, 4, 4)),
    ],
)
def test_explain_text_golden(golden, name, module, shape):
    golden(f"explainers/golden/{name}.txt", str(explain(module, shape)) + "\n")


def test_public_names_are_exported():
    for name in ["explain", "conv_output_size", "pool_output_size", "conv_transpose_output_size", "ShapeError",
                 "register_explainer", "Explanation"]:
        assert name in cnnkit.__all__ and hasattr(cnnkit, name)


@pytest.mark.parametrize("padding", ["same", "causal", "valid"])
def test_keras_convolutions_are_explained_with_keras_padding(padding):
    from cnnkit.keras.modules import KerasConv1d, KerasConv2d

    layers = [(KerasConv1d(3, 4, 4, stride=2, padding=padding), (3, 11))]
    if padding != "causal":
        layers.append((KerasConv2d(3, 4, 3, stride=2, padding=padding), (3, 9, 8)))
    for layer, shape in layers:
        assert explain(layer, shape).output_shape == run_shape(layer, shape)
