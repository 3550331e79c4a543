"""What a PaddedBatch goes through in practice: DataLoader workers (pickling), writes that skip torch's version
counter (NumPy, ``.data``), sizes changed after the batch was made, and a module run per sample that fails in
another way than a refusal. Each test compares with each sample run alone or checks that nothing was learned."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from cnnkit.errors import UnsupportedError
from cnnkit.masking import collate_padded, masked, pad_batch


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 3, 3)).double().eval()


def _alone(net, image):
    with torch.no_grad():
        return net(image[None])[0]


def test_a_padded_batch_pickles_and_crosses_dataloader_workers():
    batch = pad_batch([torch.randn(2, 5, 6), torch.randn(2, 3, 4)])
    again = pickle.loads(pickle.dumps(batch))
    assert torch.equal(again.data, batch.data) and torch.equal(again.sizes, batch.sizes)
    data = [(torch.randn(2, 4 + i, 5), i) for i in range(4)]
    loader = DataLoader(data, batch_size=2, collate_fn=collate_padded, num_workers=1)
    assert [tuple(images.sizes[:, 0].tolist()) for images, _ in loader] == [(4, 5), (6, 7)]


@pytest.mark.parametrize("write", ["numpy", "data"])
def test_padding_written_behind_the_version_counter_changes_no_valid_output(write):
    net = _net()
    images = [torch.randn(2, 10, 12, dtype=torch.float64), torch.randn(2, 6, 8, dtype=torch.float64)]
    batch = pad_batch(images)
    if write == "numpy":
        batch.data.numpy()[1, :, 7:, :] = 5.0  # the second sample's padding, through NumPy
    else:
        batch.data.data[1, :, 7, 9] = float("nan")  # a NaN in its padding, through .data
    with torch.no_grad():
        out = masked(net)(batch).unpad()
    for got, image in zip(out, images):
        torch.testing.assert_close(got, _alone(net, image), rtol=1e-10, atol=1e-12)


def test_sizes_changed_after_pad_batch_are_the_ones_used():
    net = _net()
    images = [torch.randn(2, 10, 12, dtype=torch.float64), torch.randn(2, 10, 12, dtype=torch.float64)]
    batch = pad_batch(images)
    batch.sizes = torch.tensor([[10, 12], [6, 7]])  # the second sample is now its top-left 6 × 7
    with torch.no_grad():
        out = masked(net)(batch).unpad()
    torch.testing.assert_close(out[1], _alone(net, images[1][:, :6, :7]), rtol=1e-10, atol=1e-12)


class _Attention(nn.Module):
    """Attention over positions after a strided conv: refused on the canvas, then run per sample."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, stride=2, padding=1)

    def forward(self, x):
        y = self.conv(x)
        n, c, h, w = y.shape
        q = y.flatten(2)
        return (q @ (q.transpose(1, 2) @ q).softmax(-1).transpose(1, 2)).view(n, c, h, w)


class _Sum(nn.Module):
    def __init__(self):
        super().__init__()
        self.att, self.down = _Attention(), nn.Conv2d(2, 2, 3, stride=2, padding=1)

    def forward(self, x):
        return self.att(x) + self.down(x)


def test_a_module_run_per_sample_that_fails_otherwise_keeps_nothing_and_names_the_refusal():
    runner = masked(_Sum().eval())
    batch = pad_batch([torch.randn(2, 9, 9), torch.randn(2, 6, 6)], multiple_of=8)
    for _ in range(2):
        with warnings.catch_warnings(), pytest.raises(UnsupportedError, match="per sample failed too"):
            warnings.simplefilter("ignore")
            with torch.no_grad():
                runner(batch)
        assert runner.per_sample_modules == ()  # nothing learned from a call that failed
