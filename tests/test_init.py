"""Keras-compatible initialisation (cnnkit.init).

Every expected number is computed here by hand from Keras's formulas (fans typed out, limits from
``math.sqrt``) or by numpy / scipy, never by calling the code under test a second time.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import cnnkit.init
from cnnkit.errors import ShapeError, UnsupportedError
from cnnkit.init import (
    fans,
    glorot_normal_,
    glorot_uniform_,
    he_normal_,
    he_uniform_,
    keras_,
    keras_embedding_uniform_,
    lecun_normal_,
    lecun_uniform_,
    orthogonal_,
    register_initializer,
)

KERAS_TRUNCATED_STD = 0.87962566103423978  # std of N(0, 1) truncated to [-2, 2]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _values(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().double().flatten().numpy()


def _uniform_p(tensor: torch.Tensor, limit: float) -> float:
    """Kolmogorov–Smirnov p-value of the tensor's values (the first 200 000) against U(-limit, limit)."""
    return stats.kstest(_values(tensor)[:200_000], "uniform", args=(-limit, 2 * limit)).pvalue


def _assert_uniform(tensor: torch.Tensor, limit: float) -> None:
    values = np.abs(_values(tensor))
    assert values.max() <= limit * (1 + 1e-6)
    # n uniform draws all stay below (1 − ε)·limit with probability (1 − ε)^n ≈ exp(−ε·n) < 1e-9.
    assert values.max() >= (1 - max(0.01, 21 / values.size)) * limit
    assert _uniform_p(tensor, limit) > 1e-3


# ------------------------------------------------------------------------------------------- fans


@pytest.mark.parametrize(
    ("shape", "layout", "expected"),
    [
        ((4800, 2000), "torch", (2000, 4800)),  # Linear(2000, 4800).weight
        ((2000, 4800), "keras", (2000, 4800)),  # Dense kernel
        ((111, 300, 5), "torch", (300 * 5, 111 * 5)),  # Conv1d(300, 111, 5)
        ((5, 300, 111), "keras", (300 * 5, 111 * 5)),  # Conv1D kernel
        ((32, 3, 5, 5), "torch", (75, 800)),  # the seed: 32 filters 5×5 over 3 channels
        ((5, 5, 3, 32), "keras", (75, 800)),
        ((8, 2, 3, 3), "torch", (2 * 9, 8 * 9)),  # Conv2d(4, 8, 3, groups=2): in/groups = 2
        ((16, 8, 3, 3), "torch", (8 * 9, 16 * 9)),  # ConvTranspose2d(16, 8, 3): stored (in, out, k, k)
        ((3, 3, 8, 16), "keras", (8 * 9, 16 * 9)),  # Conv2DTranspose(8, 3) on 16 channels: (k, k, out, in)
        ((6, 4, 2, 3, 5), "torch", (4 * 30, 6 * 30)),  # Conv3d
        ((256, 32), "torch", (32, 256)),  # LSTM(32, 64).weight_ih_l0 (4H, in)
    ],
)
def test_fans_match_hand_values(shape, layout, expected):
    assert fans(shape, layout) == expected
    assert fans(torch.Size(shape), layout) == expected


def test_seed_answer_convolution2d_glorot_uniform_limit():
    # Keras Convolution2D(32, 5, 5) on 3 channels: fan_in = 3·5·5 = 75, fan_out = 32·5·5 = 800.
    conv = nn.Conv2d(3, 32, 5)
    assert fans(conv.weight.shape) == (75, 800)
    limit = math.sqrt(6 / (75 + 800))
    assert round(limit, 4) == 0.0828
    keras_(conv, generator=_gen())
    _assert_uniform(conv.weight, limit)


# ---------------------------------------------------------------------------------- glorot uniform


@pytest.mark.parametrize(
    ("module", "limit"),
    [
        (nn.Linear(2000, 4800), math.sqrt(6 / (2000 + 4800))),
        (nn.Conv1d(300, 111, 5), math.sqrt(6 / (1500 + 555))),
        (nn.Conv2d(3, 32, 5), math.sqrt(6 / (75 + 800))),
        (nn.ConvTranspose2d(16, 8, 3), math.sqrt(6 / (72 + 144))),
        (nn.Conv3d(8, 16, (1, 3, 3), groups=2), math.sqrt(6 / (4 * 9 + 16 * 9))),
    ],
    ids=["linear", "conv1d", "conv2d", "conv_transpose2d", "conv3d_groups"],
)
def test_keras_gives_glorot_uniform_kernels_and_zero_biases(module, limit):
    keras_(module, generator=_gen())
    _assert_uniform(module.weight, limit)
    assert torch.count_nonzero(module.bias) == 0


def test_lstm_input_kernels_use_keras_fans_per_layer():
    lstm = nn.LSTM(32, 64, num_layers=2, bidirectional=True)
    keras_(lstm, generator=_gen())
    # Keras kernel (in, 4H): fan_in = in, fan_out = 4H = 256; layer 1 sees both directions (2·64).
    for suffix in ("", "_reverse"):
        _assert_uniform(getattr(lstm, f"weight_ih_l0{suffix}"), math.sqrt(6 / (32 + 256)))
        _assert_uniform(getattr(lstm, f"weight_ih_l1{suffix}"), math.sqrt(6 / (128 + 256)))


def test_ks_test_rejects_a_wrong_limit():
    conv = keras_(nn.Conv1d(300, 111, 5), generator=_gen())
    right = math.sqrt(6 / (1500 + 555))
    assert _uniform_p(conv.weight, right) > 1e-3
    assert _uniform_p(conv.weight, 1.1 * right) < 1e-6
    assert _uniform_p(conv.weight, 0.95 * right) < 1e-6
    # PyTorch's own default (kaiming_uniform with a=√5, bound 1/√fan_in) is not what Keras does.
    torch_default = nn.Conv2d(3, 32, 5).weight
    assert _uniform_p(torch_default, math.sqrt(6 / (75 + 800))) < 1e-6


def test_glorot_uniform_keras_layout_and_dtype():
    kernel = torch.empty(5, 5, 3, 32, dtype=torch.float64)
    out = glorot_uniform_(kernel, "keras", generator=_gen())
    assert out is kernel and kernel.dtype == torch.float64
    _assert_uniform(kernel, math.sqrt(6 / (75 + 800)))


# ------------------------------------------------------------------------- the other initialisers


@pytest.mark.parametrize(
    ("fn", "limit"),
    [
        (he_uniform_, math.sqrt(6 / (16 * 9))),
        (lecun_uniform_, math.sqrt(3 / (16 * 9))),
        (glorot_uniform_, math.sqrt(6 / (16 * 9 + 64 * 9))),
    ],
)
def test_uniform_variants(fn, limit):
    weight = fn(torch.empty(64, 16, 3, 3), generator=_gen())
    _assert_uniform(weight, limit)


@pytest.mark.parametrize(
    ("fn", "std"),
    [
        (glorot_normal_, math.sqrt(2 / (300 + 500))),
        (he_normal_, math.sqrt(2 / 300)),
        (lecun_normal_, math.sqrt(1 / 300)),
    ],
)
def test_normal_variants_are_truncated_at_two_sigma_with_keras_std(fn, std):
    weight = fn(torch.empty(500, 300), generator=_gen())  # torch layout: fan_in 300, fan_out 500
    sigma = std / KERAS_TRUNCATED_STD
    values = _values(weight)
    assert np.abs(values).max() <= 2 * sigma * (1 + 1e-6)
    assert np.abs(values).max() >= 1.98 * sigma
    assert values.std() == pytest.approx(std, rel=0.01)
    assert abs(values.mean()) < 0.01 * std
    reference = stats.truncnorm(-2, 2, scale=sigma)
    assert stats.kstest(values, reference.cdf).pvalue > 1e-3
    # The untruncated normal (torch.nn.init.xavier_normal_) would fail the same test.
    assert stats.kstest(values, stats.norm(scale=std).cdf).pvalue < 1e-6


def test_truncation_constant_is_the_std_of_a_two_sigma_truncated_normal():
    assert stats.truncnorm(-2, 2).std() == pytest.approx(KERAS_TRUNCATED_STD, rel=1e-12)


def test_embedding_uniform_and_padding_row():
    embedding = keras_(nn.Embedding(1000, 32, padding_idx=0), generator=_gen())
    assert torch.count_nonzero(embedding.weight[0]) == 0
    _assert_uniform(embedding.weight[1:], 0.05)
    raw = keras_embedding_uniform_(torch.empty(20, 30), generator=_gen())
    assert raw.abs().max() <= 0.05


# ------------------------------------------------------------------------------------- orthogonal


def test_lstm_recurrent_kernel_is_orthogonal_as_a_whole_in_keras_layout():
    hidden = 8
    lstm = keras_(nn.LSTM(10, hidden, num_layers=2, bidirectional=True), generator=_gen())
    for name in ("weight_hh_l0", "weight_hh_l0_reverse", "weight_hh_l1", "weight_hh_l1_reverse"):
        keras_kernel = _values(getattr(lstm, name)).reshape(4 * hidden, hidden).T  # Keras (H, 4H)
        # Keras's Orthogonal on a wide (H, 4H) matrix gives orthonormal rows: K Kᵀ = I_H.
        np.testing.assert_allclose(keras_kernel @ keras_kernel.T, np.eye(hidden), atol=1e-5)
        # One orthogonal per gate block would give K Kᵀ = 4·I instead.
        gate_block = keras_kernel[:, hidden : 2 * hidden]
        assert not np.allclose(gate_block @ gate_block.T, np.eye(hidden), atol=1e-2)


def test_gru_and_rnn_recurrent_kernels():
    hidden = 6
    gru = keras_(nn.GRU(4, hidden), generator=_gen())
    keras_kernel = _values(gru.weight_hh_l0).reshape(3 * hidden, hidden).T
    np.testing.assert_allclose(keras_kernel @ keras_kernel.T, np.eye(hidden), atol=1e-5)
    _assert_uniform(gru.weight_ih_l0, math.sqrt(6 / (4 + 3 * hidden)))
    assert torch.count_nonzero(gru.bias_ih_l0) == 0 and torch.count_nonzero(gru.bias_hh_l0) == 0
    rnn = keras_(nn.RNN(4, hidden), generator=_gen())
    square = _values(rnn.weight_hh_l0).reshape(hidden, hidden)
    np.testing.assert_allclose(square.T @ square, np.eye(hidden), atol=1e-5)


def test_orthogonal_tall_conv_kernel_and_gain():
    weight = orthogonal_(torch.empty(4, 3, 2, 2), gain=2.0, generator=_gen())  # torch (out, in, kh, kw)
    keras_matrix = _values(weight).reshape(4, 3, 2, 2).transpose(2, 3, 1, 0).reshape(12, 4)  # (kh·kw·in, out)
    np.testing.assert_allclose(keras_matrix.T @ keras_matrix, 4.0 * np.eye(4), atol=1e-5)
    kernel = orthogonal_(torch.empty(5, 12, dtype=torch.float64), layout="keras", generator=_gen())
    matrix = kernel.numpy()
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(5), atol=1e-12)


# ---------------------------------------------------------------------------------------- biases


def test_lstm_unit_forget_bias_sums_to_keras_bias():
    hidden = 7
    lstm = nn.LSTM(5, hidden, num_layers=2, bidirectional=True)
    for p in lstm.parameters():
        p.data.fill_(3.0)
    keras_(lstm, generator=_gen())
    expected = np.concatenate([np.zeros(hidden), np.ones(hidden), np.zeros(2 * hidden)])  # gates i, f, g, o
    for layer in ("l0", "l0_reverse", "l1", "l1_reverse"):
        total = _values(getattr(lstm, f"bias_ih_{layer}")) + _values(getattr(lstm, f"bias_hh_{layer}"))
        np.testing.assert_array_equal(total, expected)
        assert torch.count_nonzero(getattr(lstm, f"bias_hh_{layer}")) == 0


def test_lstm_without_bias():
    lstm = keras_(nn.LSTM(5, 3, bias=False), generator=_gen())
    assert [name for name, _ in lstm.named_parameters()] == ["weight_ih_l0", "weight_hh_l0"]


@pytest.mark.parametrize(
    "norm",
    [
        nn.BatchNorm1d(6),
        nn.BatchNorm2d(6),
        nn.BatchNorm3d(6),
        nn.GroupNorm(2, 6),
        nn.LayerNorm(6),
        nn.InstanceNorm2d(6, affine=True, track_running_stats=True),
    ],
    ids=lambda m: type(m).__name__,
)
def test_normalisation_layers(norm):
    with torch.no_grad():
        for tensor in [*norm.parameters(), *norm.buffers()]:
            tensor.fill_(5)
    keras_(norm)
    assert torch.equal(norm.weight, torch.ones(6))
    assert torch.equal(norm.bias, torch.zeros(6))
    if getattr(norm, "running_mean", None) is not None:
        assert torch.equal(norm.running_mean, torch.zeros(6))
        assert torch.equal(norm.running_var, torch.ones(6))
        assert norm.num_batches_tracked.item() == 0


def test_norm_without_affine_and_stats_is_fine():
    norm = keras_(nn.BatchNorm2d(4, affine=False, track_running_stats=False))
    assert list(norm.state_dict()) == []


# ---------------------------------------------------------------------------------- the model walk


class _Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((3,), 7.0))
        self.register_buffer("count", torch.tensor(5))


class _CustomChild(_Custom):
    pass


def test_keras_returns_the_model_and_leaves_unknown_modules_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.PReLU(), _Custom(), nn.Sequential(nn.Linear(4, 2), nn.ReLU()))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert keras_(model, generator=_gen()) is model
    after = model.state_dict()
    for key in ("1.weight", "2.alpha", "2.count"):
        assert torch.equal(after[key], before[key])
    assert not torch.equal(after["0.weight"], before["0.weight"])
    assert not torch.equal(after["3.0.weight"], before["3.0.weight"])
    assert torch.count_nonzero(model[3][0].bias) == 0


def test_registered_initializer_is_used_for_the_class_and_its_subclass():
    class Registered(_Custom):
        pass

    class Child(Registered):
        pass

    calls = []

    @register_initializer(Registered)
    def _init(module, generator):
        calls.append((type(module).__name__, generator))
        module.alpha.fill_(1.0)

    gen = _gen()
    model = keras_(nn.Sequential(Registered(), Child(), _CustomChild()), generator=gen)
    assert calls == [("Registered", gen), ("Child", gen)]
    assert torch.equal(model[0].alpha, torch.ones(3))
    assert torch.equal(model[1].alpha, torch.ones(3))
    assert torch.equal(model[2].alpha, torch.full((3,), 7.0))  # not a subclass of Registered
    assert cnnkit.init.find_initializer(Child()) is _init


def test_nearest_registered_class_wins():
    class Base(_Custom):
        pass

    class Refined(Base):
        pass

    register_initializer(Base)(lambda module, generator: module.alpha.fill_(1.0))
    register_initializer(Refined)(lambda module, generator: module.alpha.fill_(2.0))
    model = keras_(nn.Sequential(Base(), Refined()))
    assert model[0].alpha.tolist() == [1.0] * 3
    assert model[1].alpha.tolist() == [2.0] * 3


def test_subclass_of_a_torch_layer_is_initialised_like_it():
    class MyConv(nn.Conv2d):
        pass

    conv = keras_(MyConv(3, 32, 5), generator=_gen())
    _assert_uniform(conv.weight, math.sqrt(6 / (75 + 800)))


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Embedding(10, 4), nn.LSTM(4, 5, num_layers=2), nn.GRU(4, 3)
    )


def test_generator_reproducibility():
    torch.manual_seed(1)
    first = keras_(_model(), generator=_gen(42)).state_dict()
    torch.manual_seed(2)  # different default weights and global state: must not matter
    second = keras_(_model(), generator=_gen(42)).state_dict()
    third = keras_(_model(), generator=_gen(43)).state_dict()
    for key, value in first.items():
        assert torch.equal(value, second[key]), key
    assert not torch.equal(first["0.weight"], third["0.weight"])
    assert not torch.equal(first["3.weight_hh_l1"], third["3.weight_hh_l1"])


def test_initialisers_record_no_autograd_history():
    linear = nn.Linear(3, 4)
    glorot_uniform_(linear.weight)  # a leaf that requires grad: fine, like torch.nn.init
    keras_(nn.Sequential(linear, nn.LSTM(4, 2)))
    assert linear.weight.requires_grad and linear.weight.grad_fn is None


def test_half_precision_tensor():
    weight = glorot_normal_(torch.empty(64, 32, dtype=torch.float16), generator=_gen())
    sigma = math.sqrt(2 / 96) / KERAS_TRUNCATED_STD
    assert weight.dtype == torch.float16
    assert weight.abs().max().item() <= 2 * sigma * 1.001
    orthogonal_(torch.empty(8, 4, dtype=torch.bfloat16))


# ---------------------------------------------------------------------------------------- errors


def test_one_dimensional_tensor_has_no_fans():
    with pytest.raises(ShapeError, match=r"fewer than 2 dimensions .* Received shape=\(5,\)"):
        glorot_uniform_(torch.empty(5))
    with pytest.raises(ShapeError, match="fewer than 2 dimensions"):
        he_normal_(torch.empty(()))
    with pytest.raises(ShapeError, match=r"at least 2 dimensions\. Received shape=\(5,\)"):
        orthogonal_(torch.empty(5))


def test_unknown_layout_lists_the_allowed_ones():
    with pytest.raises(ShapeError, match=r"Unknown layout 'tf'\. Expected one of \('torch', 'keras'\)\."):
        glorot_uniform_(torch.empty(3, 4), layout="tf")
    with pytest.raises(ShapeError, match=r"Unknown layout 'channels_last'"):
        fans((3, 4), "channels_last")
    with pytest.raises(ShapeError, match="Unknown layout"):
        orthogonal_(torch.empty(3, 4), layout="th")


def test_bad_inputs():
    with pytest.raises(ShapeError, match=r"shape must be a tuple of non-negative integers\. Received shape=\(3, -1\)"):
        fans((3, -1))
    with pytest.raises(UnsupportedError, match=r"floating-point tensor\. Received dtype=torch\.int64"):
        glorot_uniform_(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match=r"keras_ expects an nn\.Module\. Received Tensor"):
        keras_(torch.empty(3))
    with pytest.raises(UnsupportedError, match=r"nn\.Module subclasses"):
        register_initializer("Conv2d")
    with pytest.raises(UnsupportedError, match=r"proj_size > 0 has no Keras equivalent\. Received proj_size=2"):
        keras_(nn.LSTM(4, 5, proj_size=2))
    with pytest.raises(UnsupportedError, match="lazy"):
        keras_(nn.Sequential(nn.LazyLinear(3)))


def test_public_api():
    expected = {
        "fans", "glorot_uniform_", "glorot_normal_", "he_uniform_", "he_normal_", "lecun_uniform_",
        "lecun_normal_", "orthogonal_", "keras_embedding_uniform_", "keras_", "register_initializer",
    }
    assert expected <= set(cnnkit.init.__all__)
    for name in cnnkit.init.__all__:
        assert hasattr(cnnkit.init, name), name


def test_keras_reaches_the_cnnkit_layers_through_the_registry():
    from cnnkit.nn import ConvLSTM2d, LocallyConnected2d

    torch.manual_seed(0)
    model = nn.Sequential(LocallyConnected2d(4, 6, 3, input_size=(8, 8)), ConvLSTM2d(2, 5, 3))
    keras_(model)
    lc, lstm = model[0], model[1]
    # LocallyConnected2D kernel (L, K, out) = (36, 36, 6): Keras counts the 36 positions in both fans.
    limit = math.sqrt(6 / (36 * 36 + 36 * 6))
    assert lc.weight.abs().max() <= limit and lc.weight.abs().max() > 0.9 * limit
    assert torch.count_nonzero(lc.bias) == 0
    f = 5
    expected_bias = torch.cat([torch.zeros(f), torch.ones(f), torch.zeros(2 * f)])
    torch.testing.assert_close(lstm.bias_l0, expected_bias)
    # Recurrent kernel in Keras view (kh·kw·F, 4F) has orthonormal columns... it is tall: 45 × 20.
    view = lstm.weight_hh_l0.permute(2, 3, 1, 0).reshape(9 * f, 4 * f)
    torch.testing.assert_close(view.T @ view, torch.eye(4 * f), atol=1e-5, rtol=0)
