"""CNN → packed sequence → LSTM on a padded batch, against running every sample alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnkit.errors import ShapeError, UnsupportedError
from cnnkit.masking.batch import extent_mask, pad_batch
from cnnkit.masking.bridge import feature_sizes, from_packed_sequence, to_packed_sequence


def scan_cnn() -> nn.Sequential:
    """Exact on a top-left anchored padded batch by construction: no padding, so every valid output
    position only reads valid inputs (stride 2 and pooling included)."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2), nn.Tanh(),
        nn.MaxPool2d(2),
    )


def run_masked(cnn: nn.Sequential, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Run layer by layer, zeroing everything outside each sample's extent after every layer."""
    x, sizes = batch.data, batch.sizes
    for layer in cnn:
        x = layer(x)
        sizes = feature_sizes(sizes, [layer])
        x = x * extent_mask(sizes, x.shape[2:])
    return x, sizes


def scans(heights, width=16, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(channels, h, width, generator=g) for h in heights]


def test_feature_sizes_match_the_shapes_of_per_sample_runs():
    cnn = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, (5, 3), stride=(2, 1)),
        nn.MaxPool2d(2, ceil_mode=True), nn.AvgPool2d(3, stride=2, padding=1), nn.Conv2d(2, 2, 3, padding="same"),
        nn.ConvTranspose2d(2, 2, 2, stride=2), nn.Dropout2d(0.1), nn.AdaptiveAvgPool2d((None, 1)),
    ).eval()
    heights_widths = [(40, 16), (23, 17), (64, 9), (31, 31)]
    got = feature_sizes(torch.tensor(heights_widths), cnn)
    for size, out in zip(heights_widths, got.tolist()):
        assert tuple(cnn(torch.zeros(1, 1, *size)).shape[2:]) == tuple(out)
    assert got.dtype == torch.long


def test_feature_sizes_from_specs_hand_computed():
    # 33 → (33 + 2 − 3) + 1 = 33 → floor((33 − 3)/2) + 1 = 16 → floor((16 − 2)/2) + 1 = 8
    assert feature_sizes([(33, 16), (20, 16)], [(3, 1, 1), (3, 2), (2, 2)]).tolist() == [[8, 3], [4, 3]]
    assert feature_sizes([10, 7], [(3, 1, 0, 2)]).tolist() == [[6], [3]]  # dilation 2 spans 5


def test_feature_sizes_errors():
    with pytest.raises(UnsupportedError, match="does not know how Upsample changes spatial sizes"):
        feature_sizes([(8, 8)], nn.Sequential(nn.Conv2d(1, 1, 3), nn.Upsample(scale_factor=2)))
    with pytest.raises(ShapeError, match=r"sample 1 of size \(4, 16\) has size \(2, 14\) before layer 1"):
        feature_sizes([(9, 16), (4, 16)], nn.Sequential(nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3)))
    with pytest.raises(ShapeError, match=r"each layer must be a conv/pool module or a \(kernel_size"):
        feature_sizes([(9, 16)], ["conv"])
    with pytest.raises(ShapeError, match="sizes must be positive"):
        feature_sizes([(0, 16)], [(3,)])


def test_variable_height_scans_through_cnn_and_lstm_equal_per_sample_runs():
    torch.manual_seed(0)
    cnn, lstm = scan_cnn(), nn.LSTM(6 * 3, 10, batch_first=True)
    images = scans([40, 23, 64, 31, 18])
    batch = pad_batch(images)
    features, sizes = run_masked(cnn, batch)
    assert sizes[:, 1].unique().tolist() == [3]  # constant width 16 → 14 → 6 → 3
    packed = to_packed_sequence(features, sizes, dim="height")
    out, (h_n, c_n) = lstm(packed)
    padded, lengths = from_packed_sequence(out)
    assert lengths.tolist() == sizes[:, 0].tolist()
    assert padded.shape == (5, 10, int(sizes[:, 0].max()))
    for n, image in enumerate(images):
        alone = cnn(image[None])  # (1, 6, H_n', 3)
        assert tuple(alone.shape[2:]) == tuple(sizes[n].tolist())
        rows = alone[0].permute(1, 0, 2).reshape(alone.shape[2], -1)  # one row = 6 channels × 3 columns
        seq, (h_ref, c_ref) = lstm(rows[None])
        torch.testing.assert_close(h_n[:, n], h_ref[:, 0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c_n[:, n], c_ref[:, 0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(padded[n, :, : lengths[n]], seq[0].T, rtol=1e-5, atol=1e-5)
        assert (padded[n, :, lengths[n]:] == 0).all()
    # gradients reach the valid features only
    features.retain_grad()
    h_n.sum().backward()
    assert (features.grad * ~extent_mask(sizes, features.shape[2:])).abs().sum() == 0
    assert features.grad.abs().sum() > 0


@pytest.mark.parametrize("reduce", ["mean", "max"])
@pytest.mark.parametrize("dim", ["height", "width"])
def test_pooled_steps_use_valid_positions_only(reduce, dim):
    features = torch.randn(3, 4, 9, 7) * 10  # garbage outside the extents, on purpose
    sizes = torch.tensor([[9, 7], [5, 2], [1, 4]])
    padded, lengths = from_packed_sequence(to_packed_sequence(features, sizes, dim=dim, reduce=reduce))
    time = 0 if dim == "height" else 1
    assert lengths.tolist() == sizes[:, time].tolist()
    for n, (h, w) in enumerate(sizes.tolist()):
        valid = features[n, :, :h, :w]
        other = -1 if dim == "height" else -2
        want = valid.mean(other) if reduce == "mean" else valid.amax(other)  # (C, steps)
        torch.testing.assert_close(padded[n, :, : lengths[n]], want)


def test_width_sequences_flatten_channels_and_height():
    features = torch.randn(2, 3, 4, 6)
    packed = to_packed_sequence(features, [(4, 6), (4, 2)], dim="width")
    padded, lengths = from_packed_sequence(packed)
    assert lengths.tolist() == [6, 2]
    for n, w in enumerate([6, 2]):
        for t in range(w):
            want = torch.stack([features[n, c, :, t] for c in range(3)]).flatten()  # index c·H + h
            torch.testing.assert_close(padded[n, :, t], want)


def test_one_dimensional_features():
    features = torch.randn(2, 5, 7)
    packed = to_packed_sequence(features, [7, 3])
    padded, lengths = from_packed_sequence(packed, total_length=9)
    assert padded.shape == (2, 5, 9) and lengths.tolist() == [7, 3]
    torch.testing.assert_close(padded[1, :, :3], features[1, :, :3])
    assert (padded[1, :, 3:] == 0).all()


def test_bridge_errors():
    features = torch.randn(2, 3, 8, 6)
    with pytest.raises(ShapeError, match=r"same valid width. Received widths \[6, 4\].*reduce='mean' or 'max'"):
        to_packed_sequence(features, [(8, 6), (5, 4)])
    with pytest.raises(ShapeError, match=r"Unknown dim 'depth'. Expected one of \('height', 'width'\)"):
        to_packed_sequence(features, [(8, 6), (5, 6)], dim="depth")
    with pytest.raises(ShapeError, match="Unknown reduce 'sum'"):
        to_packed_sequence(features, [(8, 6), (5, 6)], reduce="sum")
    with pytest.raises(ShapeError, match=r"spatial size \(8, 6\)\. Received sizes\[1\]=\(9, 6\)"):
        to_packed_sequence(features, [(8, 6), (9, 6)])
    with pytest.raises(ShapeError, match=r"sizes must have shape \(N, D\) = \(2, 2\)"):
        to_packed_sequence(features, [(8, 6)])
    with pytest.raises(ShapeError, match=r"features must be a tensor \(N, C, H, W\) or \(N, C, L\)"):
        to_packed_sequence(torch.randn(2, 8), [(8,), (3,)])
    with pytest.raises(ShapeError, match=r"packed must be a torch\.nn\.utils\.rnn\.PackedSequence\. Received Tensor"):
        from_packed_sequence(features)


def test_feature_sizes_reads_the_op_catalogue():
    # The bridge used a private list that lacked Softsign, Tanhshrink, Threshold, LogSigmoid (summary's explainers
    # knew them): both now read cnnkit._ops.
    from cnnkit import _ops

    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Softsign(), nn.Tanhshrink(), nn.Threshold(0.1, 0.0), nn.MaxPool2d(2))
    assert feature_sizes([(9, 12)], net).tolist() == [[3, 5]]
    assert all(isinstance(m, _ops.SHAPE_KEEPING_MODULES) for m in list(net)[1:4])
