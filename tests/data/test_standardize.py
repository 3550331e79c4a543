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
    with pytest.raises(ShapeError, match=r"^item 1: dataset images must all have 2 bands"):
        band_statistics([items[0], (torch.zeros(3, 2, 2), None)])


# -- one streaming pass (#30) -----------------------------------------------------------------------------------------


def test_one_streaming_pass_over_a_folder_equals_the_in_memory_computation(tmp_path):
    """Band statistics, class counts, class weights and no-data counts of a TIFF folder read one item at a time
    equal numpy's over all pixels held at once (float64), and the inverse-frequency weights computed by hand."""
    import tifffile

    from cnnkit.data import SegmentationFolder, data_statistics

    rng = np.random.default_rng(3)
    (tmp_path / "images").mkdir(), (tmp_path / "masks").mkdir()
    images, labels = [], []
    for k in range(5):
        h, w = rng.integers(3, 9, size=2)
        image = rng.normal(500.0, 80.0, size=(3, h, w)).astype(np.float32)
        image[rng.random((3, h, w)) < 0.1] = np.nan
        label = rng.integers(0, 3, size=(h, w)).astype(np.uint8)
        label[rng.random((h, w)) < 0.2] = 9  # unlabelled through ignore_index
        tifffile.imwrite(tmp_path / "images" / f"{k}.tif", image, photometric="minisblack", planarconfig="separate")
        tifffile.imwrite(tmp_path / "masks" / f"{k}.tif", label)
        images.append(image), labels.append(label)
    found = data_statistics(SegmentationFolder(tmp_path, ignore_index=9), num_classes=3, weighting="inverse_frequency")
    valid = [~np.isnan(x).any(0) for x in images]
    pixels = np.concatenate([x[:, v] for x, v in zip(images, valid)], axis=1).astype(np.float64)
    np.testing.assert_allclose(found.mean.numpy(), pixels.mean(1), rtol=1e-12)
    np.testing.assert_allclose(found.std.numpy(), pixels.std(1), rtol=1e-9)
    counted = np.concatenate([y[v & (y != 9)] for y, v in zip(labels, valid)])
    counts = np.bincount(counted, minlength=3)
    assert found.class_counts.tolist() == counts.tolist()
    np.testing.assert_allclose(found.class_weight.numpy(), counts.sum() / (3 * counts), rtol=1e-6)
    assert found.items == 5 and found.pixels == sum(y.size for y in labels)
    assert found.missing == sum(int((~v).sum()) for v in valid)
    assert found.unlabelled == sum(int((v & (y == 9)).sum()) for y, v in zip(labels, valid))
    assert found.without_data == ()
    label = labels[3].copy()
    label[0, 0] = 7
    tifffile.imwrite(tmp_path / "masks" / "3.tif", label)  # one class too many, among five masks: named
    with pytest.raises(ShapeError, match=r"^item 3 \(.*images.3\.tif, .*masks.3\.tif\): labels must be class indices "
                                         r"in \[0, 3\) or -100 \(num_classes=3\)\. Received a label 7\."):
        data_statistics(SegmentationFolder(tmp_path, ignore_index=9), num_classes=3)


def test_the_pass_does_not_depend_on_order_or_chunks():
    """Merged chunks, in any order, give the one-pass statistics bit for bit (exact sums of float64 item sums)."""
    from cnnkit.data import StatisticsPass

    items = _images(11, 9, 2)
    items[4] = (torch.full_like(items[4][0], float("nan")), items[4][1])  # an item without any data

    def one_pass(chunk):
        running = StatisticsPass(num_classes=4, nodata=-9999.0)
        for index, (image, label) in chunk:
            running.update(image, label, index)
        return running

    whole = one_pass(enumerate(items)).compute()
    indexed = list(enumerate(items))
    for cut, order in (([3, 7], [2, 1, 0]), ([1], [1, 0]), ([5, 6, 8], [2, 0, 3, 1])):
        parts = [indexed[a:b] for a, b in zip([0, *cut], [*cut, len(items)])]
        merged = one_pass([])
        for k in order:
            merged.merge(one_pass(parts[k]))
        result = merged.compute()
        assert torch.equal(result.mean, whole.mean) and torch.equal(result.std, whole.std)
        assert torch.equal(result.class_counts, whole.class_counts) and result.missing == whole.missing
        assert (result.items, result.pixels, result.unlabelled) == (whole.items, whole.pixels, whole.unlabelled)
        assert result.without_data == whole.without_data == (4,)
    backwards = one_pass(reversed(indexed)).compute()
    assert torch.equal(backwards.mean, whole.mean) and torch.equal(backwards.std, whole.std)
    assert backwards.without_data == (4,)
    unnumbered = StatisticsPass(num_classes=4, nodata=-9999.0)  # positions, shifted past the items merged before
    unnumbered.update(*items[4])
    assert one_pass(indexed[:4]).merge(unnumbered).compute().without_data == (4,)
    with pytest.raises(ShapeError, match=r"same num_classes and nodata.*num_classes=3, nodata=-9999.0 into "
                                         r"num_classes=4, nodata=-9999.0"):
        one_pass(indexed).merge(StatisticsPass(num_classes=3, nodata=-9999.0))
    labels_only = StatisticsPass()
    labels_only.update(torch.ones(1, 1, 3), torch.tensor([[0, -100, -100]]))
    assert labels_only.compute().unlabelled == 2  # counted without num_classes too
    with pytest.raises(ShapeError, match=r"labels must be class indices in \[0, 2\).*Received a label [23]"):
        from cnnkit.data import data_statistics

        data_statistics(items, num_classes=2)


def test_a_label_beyond_the_classes_names_ignore_index():
    """cnnkit train counts classes in data_statistics' pass: a label >= num_classes (a 255 "not labelled") is refused
    naming the item and suggesting ignore_index, as the count it replaced did; a negative one without the hint."""
    from cnnkit.data import data_statistics

    image = torch.ones(1, 2, 2)
    with pytest.raises(ShapeError, match=r"item 1: labels must be class indices in \[0, 3\) or -100 "
                                         r"\(num_classes=3\)\. Received a label 255\. If 255 marks pixels without a "
                                         r"label, pass ignore_index=255"):
        data_statistics([(image, torch.zeros(2, 2, dtype=torch.long)), (image, torch.tensor([[0, 255], [1, 2]]))],
                        num_classes=3)
    with pytest.raises(ShapeError, match=r"Received a label -3\.$"):
        data_statistics([(image, torch.tensor([[0, -3], [1, 2]]))], num_classes=3)
