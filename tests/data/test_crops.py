"""RareClassCrops: the share of crops centred on the rare class matches the requested ratio, and the rare
pixel share in crops matches an exact expectation enumerated here over every pixel, offset and window."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.utils.data import DataLoader

import cnnkit.data as data
from cnnkit import ShapeError
from cnnkit.data import RareClassCrops

SIZE, CROP, BLOB = 40, 16, 3


def blob_dataset(num_images=12, seed=0):
    """Images SIZE×SIZE: class 2 in the top 10 rows, a BLOB×BLOB square of rare class 1 away from the edges."""
    g = torch.Generator().manual_seed(seed)
    items, blobs = [], []
    for _ in range(num_images):
        label = torch.zeros(SIZE, SIZE, dtype=torch.long)
        label[:10] = 2
        top, left = (int(v) for v in torch.randint(CROP // 2, SIZE - CROP // 2 - BLOB + 1, (2,), generator=g))
        label[top : top + BLOB, left : left + BLOB] = 1
        items.append((torch.randn(2, SIZE, SIZE, generator=g), label))
        blobs.append((top, left))
    return items, blobs


def rare_pixels_in_window(blob, start):
    (top, left), (y0, x0) = blob, start
    rows = max(0, min(top + BLOB, y0 + CROP) - max(top, y0))
    cols = max(0, min(left + BLOB, x0 + CROP) - max(left, x0))
    return rows * cols


def expected_rare_share(blob, ratio, jitter):
    """Exact mean share of rare pixels in a crop, from the documented rule, by enumeration."""
    highest = SIZE - CROP
    top, left = blob
    targeted = []
    for py, px in itertools.product(range(top, top + BLOB), range(left, left + BLOB)):
        for dy, dx in itertools.product(range(-jitter, jitter + 1), repeat=2):
            start = (min(max(py + dy - CROP // 2, 0), highest), min(max(px + dx - CROP // 2, 0), highest))
            targeted.append(rare_pixels_in_window(blob, start))
    random = [rare_pixels_in_window(blob, s) for s in itertools.product(range(highest + 1), repeat=2)]
    mean = ratio * sum(targeted) / len(targeted) + (1 - ratio) * sum(random) / len(random)
    return mean / CROP**2


def test_share_of_crops_centred_on_the_rare_class_matches_the_ratio():
    items, _ = blob_dataset()
    ratio, per_image = 0.3, 100
    crops = RareClassCrops(items, CROP, {1: ratio}, jitter=0, num_crops=per_image,
                           generator=torch.Generator().manual_seed(1))
    centred = sum(int(crops[i][1][CROP // 2, CROP // 2] == 1) for i in range(len(crops)))
    # Random crops land their centre on the blob with probability BLOB² / (positions) too.
    p_random = BLOB**2 / (SIZE - CROP + 1) ** 2
    expected = ratio + (1 - ratio) * p_random
    n = len(crops)
    assert abs(centred / n - expected) < 4 * math.sqrt(expected * (1 - expected) / n)


def test_rare_pixel_share_rises_to_the_enumerated_expectation():
    items, blobs = blob_dataset()
    ratio, jitter, per_image = 0.5, 3, 60
    crops = RareClassCrops(items, CROP, {1: ratio}, jitter=jitter, num_crops=per_image,
                           generator=torch.Generator().manual_seed(2))
    shares = torch.tensor([float((crops[i][1] == 1).float().mean()) for i in range(len(crops))], dtype=torch.float64)
    expected = sum(expected_rare_share(b, ratio, jitter) for b in blobs) / len(blobs)
    full_image_share = BLOB**2 / SIZE**2
    assert expected > 4 * full_image_share  # what cropping buys: 0.023 instead of 0.0056 here
    tolerance = 4 * float(shares.std()) / math.sqrt(len(shares))
    assert abs(float(shares.mean()) - expected) < tolerance


def test_every_targeted_crop_holds_its_pixel_and_absent_class_falls_back_to_random():
    items, _ = blob_dataset(num_images=3)
    crops = RareClassCrops(items, CROP, {1: 1.0}, jitter=7, num_crops=30, generator=torch.Generator().manual_seed(3))
    assert all(bool((crops[i][1] == 1).any()) for i in range(len(crops)))
    without = [(img, torch.where(lab == 1, 0, lab)) for img, lab in items]
    fallback = RareClassCrops(without, CROP, {1: 1.0}, num_crops=5)
    for i in range(len(fallback)):
        start, chosen = fallback.window(without[i // 5][1], i)
        assert chosen is None
        assert all(0 <= s <= SIZE - CROP for s in start)


def test_crops_are_the_image_region_and_reproducible():
    items, _ = blob_dataset(num_images=2)
    a = RareClassCrops(items, (12, 8), {1: 0.5, 2: 0.2}, num_crops=4, generator=torch.Generator().manual_seed(5))
    b = RareClassCrops(items, (12, 8), {1: 0.5, 2: 0.2}, num_crops=4, generator=torch.Generator().manual_seed(5))
    for i in reversed(range(len(a))):  # access order does not matter
        image, label = a[i]
        assert image.shape == (2, 12, 8) and label.shape == (12, 8)
        assert torch.equal(image, b[i][0]) and torch.equal(label, b[i][1])
        (y, x), _ = a.window(items[i // 4][1], i)
        assert torch.equal(image, items[i // 4][0][:, y : y + 12, x : x + 8])
        assert torch.equal(label, items[i // 4][1][y : y + 12, x : x + 8])
    before = [a[i][1] for i in range(len(a))]
    a.set_epoch(1)
    assert any(not torch.equal(before[i], a[i][1]) for i in range(len(a)))


def test_small_images_are_padded_with_ignore_labels():
    image = torch.randn(3, 5, 3)
    label = torch.ones(5, 3, dtype=torch.long)
    crops = RareClassCrops([(image, label)], (8, 4), {1: 1.0})
    patch, target = crops[0]
    assert torch.equal(patch[:, :5, :3], image) and patch[:, 5:].abs().sum() == 0 and patch[:, :, 3:].abs().sum() == 0
    assert torch.equal(target[:5, :3], label)
    assert (target[5:] == -100).all() and (target[:, 3:] == -100).all()


@pytest.mark.parametrize(("image_shape", "crop"), [((2, 30), 8), ((2, 6, 20, 20), (4, 8, 8))])
def test_one_and_three_spatial_axes(image_shape, crop):
    label = torch.zeros(image_shape[1:], dtype=torch.long)
    label[(slice(0, 1),) * len(image_shape[1:])] = 1  # rare class in the corner: clamping needed
    crops = RareClassCrops([(torch.randn(image_shape), label)], crop, {1: 1.0}, num_crops=5)
    for i in range(len(crops)):
        image, target = crops[i]
        k = (crop,) if isinstance(crop, int) else crop
        assert image.shape == (2, *k) and target.shape == k
        assert (target == 1).any()


def test_works_with_a_data_loader():
    items, _ = blob_dataset(num_images=2)
    loader = DataLoader(RareClassCrops(items, CROP, {1: 0.5}, num_crops=3), batch_size=4)
    images, labels = next(iter(loader))
    assert images.shape == (4, 2, CROP, CROP) and labels.shape == (4, CROP, CROP)


def test_errors():
    items, _ = blob_dataset(num_images=1)
    with pytest.raises(ShapeError, match=r"class_ratios must sum to at most 1.*summing to 1.2"):
        RareClassCrops(items, 8, {1: 0.7, 2: 0.5})
    with pytest.raises(ShapeError, match=r"class_ratios values must be probabilities in \[0, 1\]"):
        RareClassCrops(items, 8, {1: -0.1})
    with pytest.raises(ShapeError, match=r"class_ratios keys must be class indices >= 0"):
        RareClassCrops(items, 8, {"road": 0.5})
    with pytest.raises(ShapeError, match=r"jitter must be at most \(crop_size - 1\) // 2 = 3 per axis.*jitter=4"):
        RareClassCrops(items, 8, {1: 0.5}, jitter=4)
    with pytest.raises(ShapeError, match=r"crop_size must be a tuple of 2 integers >= 1\. Received crop_size=\(8, 0\)"):
        RareClassCrops(items, (8, 0), {1: 0.5})
    with pytest.raises(ShapeError, match=r"num_crops must be an integer >= 1\. Received num_crops=0"):
        RareClassCrops(items, 8, {1: 0.5}, num_crops=0)
    with pytest.raises(ShapeError, match=r"crop_size must have one entry per spatial axis.*\(8, 8, 8\) and a label of "
                       r"shape \(40, 40\)"):
        RareClassCrops(items, (8, 8, 8), {1: 0.5})[0]
    with pytest.raises(ShapeError, match=r"must share the spatial size\. Received image \(2, 40, 40\) and label "
                       r"\(40, 39\)"):
        RareClassCrops([(items[0][0], items[0][1][:, 1:])], 8, {1: 0.5})[0]
    with pytest.raises(ShapeError, match=r"label must hold integer classes\. Received dtype torch.float32"):
        RareClassCrops([(items[0][0], items[0][1].float())], 8, {1: 0.5})[0]
    with pytest.raises(IndexError, match=r"index must be an integer in \[0, 1\)\. Received index=1"):
        RareClassCrops(items, 8, {1: 0.5})[1]


def test_public_names():
    assert {"RareClassCrops", "SegmentationFolder"} <= set(data.__all__)
