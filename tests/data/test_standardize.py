"""Standardized and band_statistics against numpy computed by hand on generated images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnkit.data import Standardized, band_statistics
from cnnkit.errors import ShapeError


def _images(seed: int, count: int, bands: int):
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(count):
        h, w = rng.integers(1, 9, size=2)
        image = rng.normal(3.0, 2.0, size=(bands, h, w)).astype(np.float32)
        image[rng.random((bands, h, w)) < 0.1] = np.nan
        image[:, rng.random((h, w)) < 0.1] = -9999.0
        label = rng.integers(0, 4, size=(h, w))
        items.append((torch.from_numpy(image), torch.from_numpy(label)))
    return items


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), count=st.integers(1, 4), bands=st.integers(1, 3),
       multiple_of=st.sampled_from([1, 2, 4]))
def test_against_numpy(seed, count, bands, multiple_of):
    items = _images(seed, count, bands)
    valid = [~(np.isnan(x.numpy()) | (x.numpy() == -9999.0)).any(0) for x, _ in items]
    if not any(v.any() for v in valid):
        with pytest.raises(ShapeError, match="no pixel with data"):
            Standardized(items, nodata=-9999.0)
        return
    pixels = np.concatenate([x.numpy()[:, v] for (x, _), v in zip(items, valid)], axis=1).astype(np.float64)
    mean, std = pixels.mean(1), pixels.std(1)
    std[std == 0] = 1
    data = Standardized(items, nodata=-9999.0, multiple_of=multiple_of)
    np.testing.assert_allclose(data.mean.numpy(), mean, rtol=1e-9)
    np.testing.assert_allclose(data.std.numpy(), std, rtol=1e-7)
    assert data.in_channels == bands + 1 and len(data) == count
    for i, ((x, y), v) in enumerate(zip(items, valid)):
        image, label = data[i]
        h, w = y.shape
        H, W = -(-h // multiple_of) * multiple_of, -(-w // multiple_of) * multiple_of
        assert image.shape == (bands + 1, H, W) and label.shape == (H, W) and data.sizes[i] == (H, W)
        expected = np.where(v, (x.numpy() - mean[:, None, None]) / std[:, None, None], 0.0)
        np.testing.assert_allclose(image[:bands, :h, :w].numpy(), expected, rtol=1e-5, atol=1e-5)
        assert np.array_equal(image[bands, :h, :w].numpy(), v.astype(np.float32))
        assert np.array_equal(label[:h, :w].numpy(), np.where(v, y.numpy(), -100))
        assert (image[:, h:] == 0).all() and (image[:, :, w:] == 0).all()
        assert (label[h:] == -100).all() and (label[:, w:] == -100).all()


def test_given_statistics_are_used_and_checked():
    items = _images(0, 2, 2)
    data = Standardized(items, mean=[1.0, 2.0], std=[2.0, 4.0])
    x, _ = data[0]
    raw = items[0][0]
    ok = torch.isfinite(raw).all(0)
    assert torch.allclose(x[1][ok], ((raw[1] - 2.0) / 4.0)[ok])
    assert band_statistics([(torch.ones(2, 3, 3), None)])[1].tolist() == [1.0, 1.0]  # no spread: std 1
    with pytest.raises(ShapeError, match="mean and std must be given together"):
        Standardized(items, mean=[0.0, 0.0])
    with pytest.raises(ShapeError, match=r"std must be positive and as long as mean"):
        Standardized(items, mean=[0.0, 0.0], std=[1.0, 0.0])
    with pytest.raises(ShapeError, match=r"multiple_of must be an integer >= 1\. Received multiple_of=0"):
        Standardized(items, multiple_of=0)
    with pytest.raises(ShapeError, match=r"item 0: expected an image \(3, H, W\)"):
        Standardized(items, mean=[0.0] * 3, std=[1.0] * 3)[0]
    with pytest.raises(ShapeError, match="must all have 2 bands"):
        band_statistics([items[0], (torch.zeros(3, 2, 2), None)])
