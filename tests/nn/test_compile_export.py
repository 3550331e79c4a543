"""torch.compile(fullgraph=True), torch.export and torch.library.opcheck for LocallyConnected and ConvLSTM.

LocallyConnected1d/2d run the registered operators ``cnnkit::locally_connected`` and its two gradients:
compiled and exported modules are compared with nn.Conv1d/2d holding the same filters at every position
(an independent reference), and the C kernel must be what runs inside the compiled graph where it can be
built. ConvLSTM2d is plain torch: compiled and exported it must equal itself run eagerly (its numbers are
held to references in test_conv_lstm.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import cnnkit._native as native
import cnnkit.nn._lc_torch as torch_path
from cnnkit.nn import ConvLSTM2d, LocallyConnected1d, LocallyConnected2d

TOL = {"rtol": 1e-4, "atol": 1e-5}
_TORCH_FUNCTIONS = ("forward", "grad_weight", "grad_input")  # of cnnkit.nn._lc_torch


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def kernel_only(monkeypatch):
    """The pure-torch functions raise while the test runs (skips where the C kernel cannot be built)."""
    if native.load("nn.locally_connected") is None:
        pytest.skip(f"C kernel unavailable: {native.status('nn.locally_connected')}")

    def refuse(*args, **kwargs):
        raise AssertionError("the pure-torch path ran where the C kernel was expected")

    for name in _TORCH_FUNCTIONS:
        monkeypatch.setattr(torch_path, name, refuse)


def shared(conv: nn.Module, lc_type, input_size, padding):
    """A LocallyConnected layer holding ``conv``'s filters at every position (Keras patch order)."""
    n = conv.weight.dim() - 2
    lc = lc_type(conv.in_channels, conv.out_channels, conv.kernel_size, input_size, padding=padding)
    kernel = conv.weight.detach().permute(*range(2, n + 2), 1, 0).reshape(-1, conv.out_channels)
    with torch.no_grad():
        lc.weight.copy_(kernel.expand(math.prod(lc.output_size), *kernel.shape))
        lc.bias.copy_(conv.bias.detach().view(-1, *(1,) * n).expand_as(lc.bias))
    return lc


def _cases():
    return [
        (nn.Conv2d(3, 5, 3, padding=1), LocallyConnected2d, (4, 3, 7, 6), 1),
        (nn.Conv1d(2, 6, 4), LocallyConnected1d, (3, 2, 11), "valid"),
    ]


def _conv_reference(conv, x):
    """Conv output and the gradient of sum(out²) with respect to the input."""
    x = x.detach().requires_grad_()
    out = conv(x)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    return out.detach(), grad


@pytest.mark.parametrize("case", range(2), ids=["2d", "1d"])
def test_compile_fullgraph_runs_the_kernel_and_equals_conv(case, kernel_only):
    conv, lc_type, shape, padding = _cases()[case]
    lc = shared(conv, lc_type, shape[2:], padding)
    x = torch.randn(shape, requires_grad=True)
    compiled = torch.compile(lc, fullgraph=True)
    out = compiled(x)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    want, want_grad = _conv_reference(conv, x)
    torch.testing.assert_close(out, want, **TOL)
    torch.testing.assert_close(grad, want_grad, **TOL)


def test_compile_fullgraph_on_the_torch_path_float64():
    # Other dtypes (and devices) run the op's pure-torch functions inside the same operator.
    conv, lc_type, shape, padding = _cases()[0]
    conv, lc = conv.double(), shared(conv, lc_type, shape[2:], padding).double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    out = torch.compile(lc, fullgraph=True)(x)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    want, want_grad = _conv_reference(conv, x)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", range(2), ids=["2d", "1d"])
def test_export_with_a_dynamic_batch_equals_conv(case):
    conv, lc_type, shape, padding = _cases()[case]
    lc = shared(conv, lc_type, shape[2:], padding)
    batch = torch.export.Dim("batch", min=2, max=64)
    program = torch.export.export(lc, (torch.randn(shape),), dynamic_shapes=({0: batch},))
    assert any("cnnkit.locally_connected" in str(node.target) for node in program.graph.nodes)
    for n in (shape[0], 9):
        x = torch.randn(n, *shape[1:])
        torch.testing.assert_close(program.module()(x), conv(x).detach(), **TOL)


def test_opcheck_passes_for_the_three_operators():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 6, 5, requires_grad=True)  # already padded
    weight = torch.randn(4 * 3, 3 * 3 * 2, 7, requires_grad=True)  # output 4 × 3, kernel 3 × 3, stride (1, 1)
    bias = torch.randn(7, 4, 3, requires_grad=True)
    geometry = ([3, 3], [1, 1], [1, 1])
    for args in [(x, weight, bias, *geometry, [4, 3]), (x, weight, None, *geometry, [4, 3])]:
        torch.library.opcheck(torch.ops.cnnkit.locally_connected.default, args)
    grad = torch.randn(3, 7, 4, 3)
    _, x_cl = torch.ops.cnnkit.locally_connected(x.detach(), weight.detach(), bias.detach(), *geometry, [4, 3])
    torch.library.opcheck(torch.ops.cnnkit.locally_connected_grad_weight.default,
                          (grad, x_cl, list(x.shape), *geometry))
    torch.library.opcheck(torch.ops.cnnkit.locally_connected_grad_input.default,
                          (grad, weight.detach(), list(x.shape), *geometry))


def test_meta_device_gives_shapes():
    lc = LocallyConnected2d(3, 5, 3, input_size=(7, 6), stride=2, device="meta")
    out = lc(torch.empty(4, 3, 7, 6, device="meta"))
    assert out.device.type == "meta" and out.shape == (4, 5, 3, 2)


def _conv_lstm_case():
    torch.manual_seed(0)
    layer = ConvLSTM2d(2, 3, 3, padding="same").double()
    x = torch.randn(2, 3, 2, 5, 4, dtype=torch.float64)
    mask = torch.ones(2, 3, 5, 4, dtype=torch.bool)
    mask[1, 2:] = False  # the second series is one step shorter
    return layer, x, mask


def test_conv_lstm2d_compiles_fullgraph_and_exports():
    layer, x, _ = _conv_lstm_case()
    want, (h, c) = layer(x)
    got, (h1, c1) = torch.compile(layer, fullgraph=True)(x)
    torch.testing.assert_close((got, h1, c1), (want, h, c), rtol=1e-10, atol=1e-12)
    program = torch.export.export(layer, (x,))
    got, (h2, c2) = program.module()(x)
    torch.testing.assert_close((got, h2, c2), (want, h, c), rtol=1e-10, atol=1e-12)


def _other_mask(mask):
    """Another validity pattern of the same shape: a graph traced on ``mask`` must not have baked it in."""
    other = torch.ones_like(mask)
    other[0, 1, 1:, :2] = False  # a cloud on one date of the first series
    other[1, 1:] = False  # the second series now two steps shorter
    return other


def test_conv_lstm2d_with_a_mask_compiles_fullgraph():
    layer, x, mask = _conv_lstm_case()
    compiled = torch.compile(layer, fullgraph=True)
    for m in (mask, _other_mask(mask)):
        cloudy = x.masked_fill(~m.unsqueeze(2), float("nan"))  # invalid pixels hold NaN, as clouds do
        want, (h, c) = layer(cloudy, mask=m)
        got, (h1, c1) = compiled(cloudy, mask=m)
        assert torch.isfinite(got).all()
        torch.testing.assert_close((got, h1, c1), (want, h, c), rtol=1e-10, atol=1e-12)


def test_conv_lstm2d_with_a_mask_exports():
    layer, x, mask = _conv_lstm_case()
    program = torch.export.export(layer, (x,), {"mask": mask})
    for m in (mask, _other_mask(mask)):
        want, (h, c) = layer(x, mask=m)
        got, (h1, c1) = program.module()(x, mask=m)
        torch.testing.assert_close((got, h1, c1), (want, h, c), rtol=1e-10, atol=1e-12)
