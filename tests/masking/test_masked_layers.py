"""cnnkit's own layers under masked(): PartialConv*d and ConvLSTM1d/2d on a padded batch give each sample's result
alone (float64, 1e-10): outputs, updated masks, weight gradients. References: each sample run alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnkit.masking import PartialConv1d, PartialConv2d, masked, pad_batch
from cnnkit.nn import ConvLSTM1d, ConvLSTM2d


class PartialNet(nn.Module):
    def __init__(self, d=2, multi_channel=False, stride=2):
        super().__init__()
        conv = PartialConv2d if d == 2 else PartialConv1d
        self.p1 = conv(2, 3, 3, padding=1, multi_channel=multi_channel)
        self.p2 = conv(3, 2, 3, stride=stride, padding=1)

    def forward(self, x, mask):
        y, m = self.p1(x, mask)
        y, m = self.p2(torch.relu(y), m if m.shape[1] == 1 else m[:, :1])
        return y, m


@pytest.mark.parametrize("d, multi_channel, stride", [(2, False, 2), (2, True, 1), (1, False, 2)])
def test_partial_conv_equals_each_sample_alone(d, multi_channel, stride):
    torch.manual_seed(0)
    net = PartialNet(d, multi_channel, stride).double()
    sizes = [(7, 5), (4, 9), (6, 6)] if d == 2 else [(9,), (4,), (7,)]
    images = [torch.randn(2, *s, dtype=torch.float64) for s in sizes]
    holes = [torch.rand(2 if multi_channel else 1, *s) > 0.3 for s in sizes]
    batch = pad_batch(images)
    mask = pad_batch([h.double() for h in holes]).data.bool()
    out, seen = masked(net)(batch, mask)
    grads = {k: torch.autograd.grad(out.data.square().sum(), p, retain_graph=True)[0]
             for k, p in net.named_parameters()}
    want = {k: torch.zeros_like(p) for k, p in net.named_parameters()}
    for n, (x, h) in enumerate(zip(images, holes)):
        y, m = net(x[None], h[None])
        got = out.unpad()[n]
        torch.testing.assert_close(got, y[0], rtol=1e-10, atol=1e-12)
        assert torch.equal(seen.unpad()[n], m[0])
        for k, g in zip(want, torch.autograd.grad(y.square().sum(), list(net.parameters()))):
            want[k] += g
    for k in want:
        torch.testing.assert_close(grads[k], want[k], rtol=1e-10, atol=1e-12)


class Series(nn.Module):
    """(N, T·C, *S) → (N, T, C, *S) → ConvLSTM → last step → conv head."""

    def __init__(self, d=2, steps=3, channels=2, **lstm):
        super().__init__()
        self.steps, self.channels = steps, channels
        lstm_cls, conv = (ConvLSTM2d, nn.Conv2d) if d == 2 else (ConvLSTM1d, nn.Conv1d)
        self.lstm = lstm_cls(channels, 3, 3, **lstm)
        self.head = conv(3 * (2 if lstm.get("bidirectional") else 1), 2, 3, padding=1)

    def forward(self, x, mask=None):
        out, _ = self.lstm(x.unflatten(1, (self.steps, self.channels)), mask=mask)
        return self.head(out[:, -1])


@pytest.mark.parametrize("d, lstm", [
    (2, {}),
    (2, {"num_layers": 2, "bidirectional": True}),
    (2, {"stride": 2, "padding": 1}),
    (1, {"stride": 2, "padding": "valid"}),
])
def test_conv_lstm_equals_each_sample_alone(d, lstm):
    torch.manual_seed(1)
    net = Series(d, **lstm).double()
    sizes = [(7, 5), (4, 9), (6, 6)] if d == 2 else [(9,), (5,), (7,)]
    images = [torch.randn(6, *s, dtype=torch.float64) for s in sizes]
    out = masked(net)(pad_batch(images))
    loss = out.data.square().sum()
    got = torch.autograd.grad(loss, list(net.parameters()))
    want = [torch.zeros_like(p) for p in net.parameters()]
    for n, x in enumerate(images):
        y = net(x[None])
        torch.testing.assert_close(out.unpad()[n], y[0], rtol=1e-10, atol=1e-12)
        for w, g in zip(want, torch.autograd.grad(y.square().sum(), list(net.parameters()))):
            w += g
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_conv_lstm_with_a_step_mask():
    torch.manual_seed(2)
    net = Series(2).double()
    images = [torch.randn(6, 5, 4, dtype=torch.float64), torch.randn(6, 3, 6, dtype=torch.float64)]
    steps = torch.tensor([[True, True, False], [True, False, True]])
    out = masked(net)(pad_batch(images), steps)
    for n, x in enumerate(images):
        torch.testing.assert_close(out.unpad()[n], net(x[None], steps[n : n + 1])[0], rtol=1e-10, atol=1e-12)
