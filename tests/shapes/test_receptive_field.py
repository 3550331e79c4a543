"""``ReceptiveField`` / ``receptive_fields`` against receptive fields MEASURED on real torch layers.

Two independent measurements are used:

* gradients: a chain of convolutions with all-ones weights and average pools (every weight positive, so
  the gradient of one output position is non-zero exactly on the inputs it depends on);
* impulse responses: a batch of one-hot inputs through convolutions with all-ones weights and max pools
  (a max of non-negative values is positive exactly when one of them is), which also covers dilated
  max pooling, whose gradient only reaches the arg-max.

The field's size is the extent (last − first + 1) of the inputs that reach one central output position;
the jump is how far that set moves between neighbouring output positions. Inputs are made large enough
that the measured field never touches the border.
"""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cnnkit.errors import ShapeError
from cnnkit.shapes.arithmetic import ReceptiveField, receptive_fields

DTYPE = torch.float64


# --------------------------------------------------------------------------------------------------
# building and measuring chains
# --------------------------------------------------------------------------------------------------


@st.composite
def layer_specs(draw, kinds, ndim=1, max_layers=4, max_stride=3):
    """Layers as (kind, kernel, stride, dilation, padding), each a tuple with one entry per dimension."""
    layers = []
    for _ in range(draw(st.integers(1, max_layers))):
        kind = draw(st.sampled_from(kinds))
        kernel = tuple(draw(st.integers(1, 5)) for _ in range(ndim))
        stride = tuple(draw(st.integers(1, max_stride)) for _ in range(ndim))
        dilation = tuple(draw(st.integers(1, 3 if kind != "avg" else 1)) for _ in range(ndim))  # AvgPool: none
        if kind == "conv":
            padding = tuple(draw(st.integers(0, 2)) for _ in range(ndim))
        else:  # torch pools: padding at most half the kernel
            padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
        layers.append((kind, kernel, stride, dilation, padding))
    return layers


def _module(kind, kernel, stride, dilation, padding):
    ndim = len(kernel)
    if kind == "conv":
        conv = (nn.Conv1d, nn.Conv2d)[ndim - 1](1, 1, kernel, stride, padding, dilation, bias=False, dtype=DTYPE)
        with torch.no_grad():
            conv.weight.fill_(1.0)
        return conv
    if kind == "avg":
        return (nn.AvgPool1d, nn.AvgPool2d)[ndim - 1](kernel, stride, padding)
    return (nn.MaxPool1d, nn.MaxPool2d)[ndim - 1](kernel, stride, padding, dilation)


def _chain(layers) -> nn.Sequential:
    return nn.Sequential(*[_module(*layer) for layer in layers])


def _predicted(layers, ndim) -> list[ReceptiveField]:
    """The module's prediction, written as receptive_fields input: (kernel, stride, dilation)."""
    return receptive_fields([(k, s, d) for _, k, s, d, _ in layers], ndim=ndim)


def _input_length(rf: ReceptiveField, layers, axis: int) -> int:
    """Long enough that the fields of the central output positions sit well inside the input."""
    total_padding = sum(p[axis] for *_, p in layers)
    return 2 * rf.size[axis] + 8 * rf.jump[axis] + 2 * total_padding * rf.jump[axis] + 8


def _extent(mask: torch.Tensor) -> tuple[int, int]:
    idx = torch.nonzero(mask).flatten()
    assert idx.numel() > 0, "no input reaches this output position"
    return int(idx[0]), int(idx[-1])


def _gradient_field(net, shape, position) -> torch.Tensor:
    """|d out[position] / d x| > 0, as a boolean tensor of the spatial input shape."""
    x = torch.zeros(1, 1, *shape, dtype=DTYPE, requires_grad=True)
    out = net(x)
    out[(0, 0, *position)].backward()
    return x.grad[0, 0] != 0


# --------------------------------------------------------------------------------------------------
# 4. hypothesis: empirical fields of random chains
# --------------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(layers=layer_specs(kinds=("conv", "avg"), ndim=1))
def test_1d_chain_size_and_jump_match_gradients(layers):
    for depth in range(1, len(layers) + 1):  # every prefix of the chain: receptive_fields' whole list
        prefix = layers[:depth]
        rf = _predicted(layers, 1)[depth - 1]
        length = _input_length(rf, prefix, 0)
        net = _chain(prefix)
        n_out = net(torch.zeros(1, 1, length, dtype=DTYPE)).shape[-1]
        assert n_out >= 3
        c = n_out // 2
        first, last = _extent(_gradient_field(net, (length,), (c,)))
        assert first > 0 and last < length - 1, "the field touches the border: enlarge the input"
        assert last - first + 1 == rf.size[0]
        first_next, last_next = _extent(_gradient_field(net, (length,), (c + 1,)))
        assert first_next - first == rf.jump[0]
        assert last_next - last == rf.jump[0]


@settings(max_examples=120, deadline=None)
@given(layers=layer_specs(kinds=("conv", "avg"), ndim=2, max_layers=3, max_stride=2))
def test_2d_chain_size_and_jump_match_gradients(layers):
    rf = receptive_fields([(k, s, d) for _, k, s, d, _ in layers], ndim=2)[-1]
    shape = tuple(_input_length(rf, layers, axis) for axis in range(2))
    net = _chain(layers)
    out_shape = net(torch.zeros(1, 1, *shape, dtype=DTYPE)).shape[2:]
    centre = tuple(o // 2 for o in out_shape)
    field = _gradient_field(net, shape, centre)
    for axis in range(2):
        first, last = _extent(field.any(dim=1 - axis))
        assert first > 0 and last < shape[axis] - 1
        assert last - first + 1 == rf.size[axis]
        neighbour = list(centre)
        neighbour[axis] += 1
        first_next, _ = _extent(_gradient_field(net, shape, tuple(neighbour)).any(dim=1 - axis))
        assert first_next - first == rf.jump[axis]


@settings(max_examples=150, deadline=None)
@given(layers=layer_specs(kinds=("conv", "max"), ndim=1))
def test_1d_chain_with_max_pool_matches_impulse_response(layers):
    rf = _predicted(layers, 1)[-1]
    length = _input_length(rf, layers, 0)
    net = _chain(layers)
    impulses = torch.eye(length, dtype=DTYPE).unsqueeze(1)  # row j: a one at input position j
    with torch.no_grad():
        response = net(impulses)[:, 0, :]  # (input position, output position)
    assert response.shape[-1] >= 3
    c = response.shape[-1] // 2
    first, last = _extent(response[:, c] > 0)
    assert first > 0 and last < length - 1
    assert last - first + 1 == rf.size[0]
    first_next, last_next = _extent(response[:, c + 1] > 0)
    assert (first_next - first, last_next - last) == (rf.jump[0], rf.jump[0])


@settings(max_examples=200, deadline=None)
@given(layers=layer_specs(kinds=("conv",), ndim=2, max_layers=5))
def test_step_chain_equals_receptive_fields(layers):
    # ReceptiveField.step and receptive_fields are two spellings of the same recursion; check both
    # against the closed form size = 1 + Σ d_l·(k_l − 1)·J_(l−1), J_l = Π s.
    spec = [(k, s, d) for _, k, s, d, _ in layers]
    rf = ReceptiveField.identity(2)
    expected_size, jump = [1, 1], [1, 1]
    for (k, s, d), listed in zip(spec, receptive_fields(spec, ndim=2)):
        rf = rf.step(k, s, d)
        for axis in range(2):
            expected_size[axis] += d[axis] * (k[axis] - 1) * jump[axis]
            jump[axis] *= s[axis]
        assert rf == listed == ReceptiveField(tuple(expected_size), tuple(jump))


# --------------------------------------------------------------------------------------------------
# hand values from the literature
# --------------------------------------------------------------------------------------------------


def test_docstring_chain():
    assert [rf.size[0] for rf in receptive_fields([(3, 1), (3, 1), (2, 2), (3, 1)], ndim=1)] == [3, 5, 6, 10]
    assert ReceptiveField((1, 1), (1, 1)).step(3).step(2, 2).step(3) == ReceptiveField((8, 8), (2, 2))


def test_resnet_stem():
    # conv 7×7 stride 2, max pool 3×3 stride 2: 7 then 7 + 2·2 = 11, jump 4
    stem = receptive_fields([(7, 2), (3, 2)])
    assert stem == [ReceptiveField((7, 7), (2, 2)), ReceptiveField((11, 11), (4, 4))]


def test_alexnet():
    # conv1 11/4, pool1 3/2, conv2 5, pool2 3/2, conv3-5 3, pool5 3/2 (Araujo et al., Distill 2019 table)
    layers = [(11, 4), (3, 2), (5, 1), (3, 2), (3, 1), (3, 1), (3, 1), (3, 2)]
    fields = receptive_fields(layers, ndim=1)
    assert [rf.size[0] for rf in fields] == [11, 19, 51, 67, 99, 131, 163, 195]
    assert fields[-1].jump == (32,)


def test_vgg16():
    layers = []
    for convs in (2, 2, 3, 3, 3):
        layers += [(3, 1)] * convs + [(2, 2)]
    fields = receptive_fields(layers, ndim=1)
    assert fields[-2].size == (196,)  # conv5_3
    assert fields[-1] == ReceptiveField((212,), (32,))  # pool5


def test_wavenet_dilated_stack():
    # kernel 2, dilations 1, 2, 4, …, 512: one block sees 1024 samples
    fields = receptive_fields([(2, 1, 2**i) for i in range(10)], ndim=1)
    assert fields[-1] == ReceptiveField((1024,), (1,))


def test_identity_and_per_dimension_arguments():
    assert ReceptiveField.identity(3) == ReceptiveField((1, 1, 1), (1, 1, 1))
    assert ReceptiveField.identity(2).step((3, 5), (1, 2), (2, 1)) == ReceptiveField((5, 5), (1, 2))
    assert receptive_fields([], ndim=2) == []


# --------------------------------------------------------------------------------------------------
# exceptions
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [(3,), (3, 1, 1, 1), ()])
def test_layer_with_wrong_number_of_entries(layer):
    expected = "each layer must be (kernel_size, stride) or (kernel_size, stride, dilation). "
    with pytest.raises(ShapeError, match=re.escape(f"{expected}Received layers[1]={layer!r}.")):
        receptive_fields([(3, 1), layer], ndim=1)


def test_step_wrong_tuple_length_and_bad_values():
    rf = ReceptiveField.identity(2)
    with pytest.raises(ShapeError, match=r"kernel_size must be a tuple of 2 integers >= 1\. "
                                         r"Received kernel_size=\(3, 3, 3\)\."):
        rf.step((3, 3, 3))
    with pytest.raises(ShapeError, match=r"stride must be an integer >= 1\. Received stride=0\."):
        rf.step(3, 0)
    with pytest.raises(ShapeError, match=r"dilation must be .*Received dilation=True\."):
        rf.step(3, 1, True)
