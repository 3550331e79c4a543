"""cnnkit.keras.load against Keras's own outputs (fixtures from scripts/make_keras_fixtures.py).

Keras and TensorFlow are not needed: the fixtures hold the models, sample inputs and the outputs Keras
computed (JAX backend, TensorFlow semantics); the LocallyConnected fixtures' outputs come from a plain
numpy reference in the script.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import cnnkit
import cnnkit.keras as ck
from cnnkit.errors import ShapeError
from cnnkit.keras import modules as M

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = ["classifier", "text_cnn", "conv2d_same", "conv1d_stack", "activations", "lstm", "conv_lstm"]
CASES = [(m, ext) for m in MODELS for ext in (".keras", ".h5")] + [("lc2d", ".h5"), ("lc1d_functional", ".h5")]


@pytest.mark.parametrize(("name", "ext"), CASES, ids=[f"{m}{e}" for m, e in CASES])
def test_channels_last_matches_keras(name, ext, keras_outputs):
    model, report = ck.load(FIXTURES / f"{name}{ext}", channels_last_input=True)
    keras_outputs.check_channels_last(model, report, FIXTURES / f"{name}.npz")


@pytest.mark.parametrize("name", [*MODELS, "lc2d"])
def test_channels_first_matches_keras(name, keras_outputs):
    ext = ".h5" if name == "lc2d" else ".keras"
    model, _ = ck.load(FIXTURES / f"{name}{ext}")
    keras_outputs.check_channels_first(model, FIXTURES / f"{name}.npz")


def test_keras_and_h5_give_the_same_weights():
    a, _ = ck.load(FIXTURES / "conv2d_same.keras")
    b, _ = ck.load(FIXTURES / "conv2d_same.h5")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)


def test_text_cnn_structure_and_report():
    model, report = ck.load(FIXTURES / "text_cnn.keras")
    convs = [m for m in model.modules() if isinstance(m, M.KerasConv1d)]
    assert sorted(c.kernel_size[0] for c in convs) == [2, 3, 4]
    assert isinstance(model.layers["embedding"], nn.Embedding)
    assert [layer.keras_class for layer in report.layers].count("GlobalMaxPooling1D") == 3
    emb = next(layer for layer in report.layers if layer.keras_class == "Embedding")
    assert emb.keras_weights == {"embeddings": (30, 6)} and emb.torch_weights == {"weight": (30, 6)}
    tokens = torch.randint(0, 30, (5, 12))
    assert model(tokens).shape == (5, 3)


def test_report_names_every_layout_conversion():
    _, report = ck.load(FIXTURES / "classifier.keras")
    text = str(report)
    conv, bn = report.layers[1], report.layers[2]  # InputLayer has no entry: layers[0] is the conv
    assert report.layers[0].keras_class == "Conv2D"
    assert report.layers[0].keras_weights["kernel"] == (3, 3, 3, 4)
    assert report.layers[0].torch_weights["weight"] == (4, 3, 3, 3)
    assert conv.keras_class == "BatchNormalization"
    assert "momentum 0.9" in text and "torch momentum 0.1" in text and "epsilon 0.01" in text
    assert bn.keras_class == "MaxPooling2D"
    assert "permuted to (N, *S, C) before flattening" in text
    assert "transposed" in text
    assert report.num_params == sum(p.numel() for p in ck.load(FIXTURES / "classifier.keras").module.parameters())


def test_batch_norm_momentum_and_eps_are_converted():
    model, _ = ck.load(FIXTURES / "classifier.keras")
    bn = model.layers["batch_normalization"]
    assert isinstance(bn, nn.BatchNorm2d)
    assert bn.momentum == pytest.approx(0.1) and bn.eps == pytest.approx(1e-2)


def test_tf_same_padding_with_stride_is_asymmetric():
    model, report = ck.load(FIXTURES / "conv2d_same.keras")
    conv = model.layers["conv2d"]
    assert conv.stride == (2, 2) and conv.padding == (0, 0) and conv.keras_padding == "same"
    notes = next(layer.notes for layer in report.layers if layer.name == "conv2d")
    assert any("odd one at the end" in n for n in notes)
    # Independent reference: 9 → 5 outputs needs 2 zeros, split (1, 1); an 8-wide input needs 1, at the end.
    x = torch.randn(1, 2, 8, 8)
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 1, 0, 1)), conv.weight, conv.bias, stride=2)
    torch.testing.assert_close(conv(x), ref)


def test_same_pooling_matches_hand_computed_values():
    x = torch.tensor([[[1.0, -2.0, 3.0, -4.0]]])  # size 4, pool 3, stride 2 → pads (0, 1)
    mx = M.KerasPool("max", 1, 3, 2)(-x.abs() - 1)
    assert mx.tolist() == [[[-2.0, -4.0]]]  # padding (-inf) never wins, even over negatives
    av = M.KerasPool("average", 1, 3, 2)(x)
    assert av.tolist() == [[[pytest.approx(2 / 3), pytest.approx(-0.5)]]]  # (3 − 4) / 2: the pad is not counted


def test_flatten_keeps_keras_order():
    x = torch.arange(12.0).reshape(1, 2, 3, 2)  # (N, H, W, C) Keras
    flat = M.ChannelsLastFlatten()(x.movedim(-1, 1))
    assert flat.tolist() == x.reshape(1, -1).tolist()


def test_seed_dense_shows_both_layouts():
    model, report = ck.load(FIXTURES / "seed_dense.keras")
    s = cnnkit.summary(model, (2000,))
    row = next(r for r in s.rows if r.weights)
    assert row.weights["weight"] == (4800, 2000) and row.keras_weights["kernel"] == (2000, 4800)
    assert s.total_params == 2000 * 4800 + 4800
    text = str(cnnkit.explain(model.layers["dense"], (2000,)))
    assert "weight (4800, 2000)" in text and "kernel (2000, 4800)" in text
    assert report.layers[0].keras_weights["kernel"] == (2000, 4800)


def test_seed_conv1d_shows_both_layouts():
    model, _ = ck.load(FIXTURES / "seed_conv1d.keras")
    s = cnnkit.summary(model, (300, 40))
    row = next(r for r in s.rows if r.weights)
    assert row.weights["weight"] == (111, 300, 5) and row.keras_weights["kernel"] == (5, 300, 111)
    assert row.output_shape == ((1, 111, 36),)
    text = str(cnnkit.explain(model.layers["conv1d"], (300, 40)))
    assert "kernel (5, 300, 111)" in text and "weight (111, 300, 5)" in text


def test_every_required_layer_class_is_covered_by_a_fixture():
    seen = set()
    for name, ext in CASES:
        seen |= {layer.keras_class for layer in ck.load(FIXTURES / f"{name}{ext}").report.layers}
    required = {"Conv1D", "Conv2D", "Dense", "Embedding", "LocallyConnected1D", "LocallyConnected2D", "LSTM",
                "ConvLSTM2D", "BatchNormalization", "MaxPooling1D", "MaxPooling2D", "AveragePooling1D",
                "AveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalAveragePooling1D",
                "GlobalAveragePooling2D", "Flatten", "Concatenate", "Add", "Dropout", "Activation", "ReLU",
                "Softmax", "Reshape", "ZeroPadding1D", "ZeroPadding2D"}
    assert required <= seen, required - seen
    assert required <= set(ck.supported_layers())


def test_safetensors_round_trip(tmp_path):
    model, _ = ck.load(FIXTURES / "conv_lstm.keras")
    path = ck.save_safetensors(model, tmp_path / "w.safetensors", metadata={"source": "conv_lstm.keras"})
    fresh, _ = ck.load(FIXTURES / "conv_lstm.keras")
    for p in fresh.parameters():
        p.data.zero_()
    fresh.load_state_dict(load_file(path))
    x = torch.randn(2, 2, 4, 6, 6)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_state_dict_round_trip_and_gradients():
    model, _ = ck.load(FIXTURES / "classifier.keras")
    clone, _ = ck.load(FIXTURES / "classifier.keras")
    clone.load_state_dict(model.state_dict())
    model.train()
    x = torch.randn(4, 3, 10, 10, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in model.parameters())


def test_wrong_input_shape_names_the_input_and_layout():
    model, _ = ck.load(FIXTURES / "classifier.keras")
    with pytest.raises(ShapeError, match=r"input 'input_layer' must have shape \(N, 3, 10, 10\).*channels-first"):
        model(torch.zeros(1, 10, 10, 3))
    with pytest.raises(ShapeError, match="takes 1 input tensor"):
        model(torch.zeros(1, 3, 10, 10), torch.zeros(1))


def test_multiple_inputs_and_outputs_in_torch_layout():
    model, report = ck.load(FIXTURES / "conv2d_same.keras")
    assert model.input_shapes == ((2, 9, 9), (4, 5, 5))
    head, maps = model(torch.zeros(3, 2, 9, 9), torch.zeros(3, 4, 5, 5))
    assert head.shape == (3, 2) and maps.shape == (3, 10, 1, 1)
    assert report.input_shapes == ((9, 9, 2), (5, 5, 4))


def test_hard_sigmoid_follows_the_files_keras_version():
    _, report = ck.load(FIXTURES / "lc2d.h5")  # Keras 2.15 file
    assert report.keras_version == "2.15.0"
    assert any("Keras 2's definition" in n for layer in report.layers for n in layer.notes)
    assert M.activation("hard_sigmoid")(torch.tensor(2.0)).item() == pytest.approx(5 / 6)


def test_no_tensorflow_or_keras_is_imported():
    ck.load(FIXTURES / "text_cnn.h5")
    assert "tensorflow" not in sys.modules and "keras" not in sys.modules


def test_public_names():
    for name in ["load", "save_safetensors", "LoadedModel", "ConversionReport", "LayerConversion", "KerasModel",
                 "KerasFileError", "MAX_LAYER_PARAMS", "supported_layers", "to_keras", "from_keras",
                 "keras_shapes", "register_layout", "KerasLayout", "has_keras_layout"]:
        assert name in ck.__all__ and getattr(ck, name) is not None
    assert issubclass(ck.KerasFileError, ValueError) and issubclass(ck.KerasFileError, cnnkit.CnnkitError)
    assert math.isclose(ck.MAX_LAYER_PARAMS, 1e9)
