"""Keras weight layouts, checked by computing each layer the Keras way (channels-last numpy math)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnkit import ShapeError, UnsupportedError
from cnnkit.keras import from_keras, keras_shapes, to_keras


def test_dense_kernel_is_the_transpose_and_computes_the_same():
    lin = nn.Linear(7, 3)
    w = to_keras(lin)
    x = torch.randn(5, 7)
    keras_out = x.numpy() @ w["kernel"].numpy() + w["bias"].numpy()  # Keras: x·kernel + bias
    np.testing.assert_allclose(keras_out, lin(x).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_conv2d_kernel_computes_the_same_channels_last():
    conv = nn.Conv2d(3, 4, (2, 3), bias=True)
    k = to_keras(conv)["kernel"].numpy()  # (kh, kw, in, out)
    b = to_keras(conv)["bias"].numpy()
    x = torch.randn(1, 3, 5, 6)
    xl = x[0].permute(1, 2, 0).numpy()  # (H, W, C), as Keras holds it
    out = np.zeros((4, 4, 4))  # (5 − 2 + 1, 6 − 3 + 1, out)
    for i in range(4):
        for j in range(4):
            patch = xl[i:i + 2, j:j + 3, :]
            out[i, j] = np.tensordot(patch, k, axes=([0, 1, 2], [0, 1, 2])) + b
    np.testing.assert_allclose(out, conv(x)[0].permute(1, 2, 0).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_conv1d_seed_layout():
    assert keras_shapes(nn.Conv1d(300, 111, 5)) == {"kernel": (5, 300, 111), "bias": (111,)}


def test_lstm_keras_equations_reproduce_torch():
    torch.manual_seed(1)
    lstm = nn.LSTM(4, 3)
    w = {k: v.double().numpy() for k, v in to_keras(lstm).items()}
    x = torch.randn(6, 4)

    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    h = np.zeros(3)
    c = np.zeros(3)
    outs = []
    for t in range(6):
        z = x[t].double().numpy() @ w["kernel"] + h @ w["recurrent_kernel"] + w["bias"]
        i, f, g, o = np.split(z, 4)  # Keras gate order i, f, c, o
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        outs.append(h)
    np.testing.assert_allclose(np.stack(outs), lstm(x)[0].detach().double().numpy(), rtol=1e-5, atol=1e-6)


def test_batchnorm_names():
    bn = nn.BatchNorm2d(5)
    assert list(to_keras(bn)) == ["gamma", "beta", "moving_mean", "moving_variance"]


@pytest.mark.parametrize(
    "module",
    [nn.Linear(4, 3), nn.Conv1d(2, 3, 4), nn.Conv2d(2, 4, 3, groups=2), nn.Conv3d(2, 3, (1, 2, 3)),
     nn.ConvTranspose2d(2, 3, 3), nn.Embedding(10, 4), nn.BatchNorm1d(3),
     nn.LSTM(3, 5, num_layers=2, bidirectional=True), nn.Linear(4, 3, bias=False)],
    ids=lambda m: type(m).__name__,
)
def test_round_trip(module):
    reference = {k: v.clone() for k, v in module.state_dict().items() if v.dtype.is_floating_point}
    arrays = {k: v.numpy() for k, v in to_keras(module).items()}
    assert {k: a.shape for k, a in arrays.items()} == keras_shapes(module)
    for p in module.parameters():
        p.data.zero_()
    module.load_state_dict(from_keras(module, arrays), strict=False)
    if isinstance(module, nn.LSTM):
        # Keras has one bias: the sum of torch's two is what must survive.
        for k in [k for k in reference if k.startswith("bias_ih")]:
            other = k.replace("bias_ih", "bias_hh")
            torch.testing.assert_close(module.state_dict()[k] + module.state_dict()[other],
                                       reference[k] + reference[other])
        return
    for k, v in reference.items():
        torch.testing.assert_close(module.state_dict()[k], v)


def test_from_keras_checks_names_and_shapes():
    lin = nn.Linear(4, 3)
    with pytest.raises(ShapeError, match=r"'kernel' of Linear must have shape \(4, 3\). Received shape \(3, 4\)"):
        from_keras(lin, {"kernel": np.zeros((3, 4)), "bias": np.zeros(3)})
    with pytest.raises(ShapeError, match=r"Missing: \['bias'\]"):
        from_keras(lin, {"kernel": np.zeros((4, 3))})


def test_unknown_module_and_projection_are_refused():
    with pytest.raises(UnsupportedError, match="No Keras weight layout is known for GRU"):
        to_keras(nn.GRU(3, 4))
    with pytest.raises(UnsupportedError, match="proj_size"):
        keras_shapes(nn.LSTM(3, 4, proj_size=2))
