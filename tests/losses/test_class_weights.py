"""Class weights against the issue's hand figures and against plain-Python counting loops."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from cnnkit import ShapeError
from cnnkit.losses import CLASS_WEIGHT_METHODS, class_weights

TOY = torch.tensor([[0, 0, 0, 1], [0, 0, 2, 2]])  # two images (rows), 3 classes


def test_toy_figures_from_the_issue():
    torch.testing.assert_close(class_weights(TOY, 3, "median_frequency"), torch.tensor([0.8, 2.0, 1.0]))
    torch.testing.assert_close(class_weights(TOY, 3, "inverse_frequency"), torch.tensor([8 / 15, 8 / 3, 4 / 3]))
    torch.testing.assert_close(
        class_weights(TOY, 3), torch.tensor([0.5333, 2.6667, 1.3333]), atol=5e-5, rtol=0
    )


def test_toy_enet_and_effective_number_by_hand():
    enet = [1 / math.log(1.02 + p) for p in (5 / 8, 1 / 8, 2 / 8)]
    torch.testing.assert_close(class_weights(TOY, 3, "enet"), torch.tensor(enet))
    beta = 0.9
    raw = [(1 - beta) / (1 - beta**n) for n in (5, 1, 2)]
    expected = [3 * r / sum(raw) for r in raw]
    torch.testing.assert_close(class_weights(TOY, 3, "effective_number", beta=beta), torch.tensor(expected))


@pytest.mark.parametrize("method", CLASS_WEIGHT_METHODS)
def test_streaming_equals_one_shot(method):
    one_shot = class_weights(TOY, 3, method)
    assert torch.equal(class_weights(iter(TOY), 3, method), one_shot)
    assert torch.equal(class_weights([row for row in TOY], 3, method), one_shot)
    # A generator is consumed once, never stored.
    assert torch.equal(class_weights((row for row in TOY), 3, method), one_shot)


def reference(maps, num_classes, method, ignore=(-100,), beta=0.999):
    """Weights from plain-Python counting over a list of label maps (nested lists)."""
    counts = [0] * num_classes
    image_pixels = [0] * num_classes
    for image in maps:
        pixels = [v for v in _flatten(image) if v not in ignore]
        for c in set(pixels):
            image_pixels[c] += len(pixels)
        for v in pixels:
            counts[v] += 1
    total = sum(counts)
    present = [c for c in range(num_classes) if counts[c] > 0]
    out = [0.0] * num_classes
    if method == "inverse_frequency":
        for c in present:
            out[c] = total / (num_classes * counts[c])
    elif method == "median_frequency":
        freq = {c: counts[c] / image_pixels[c] for c in present}
        med = statistics.median(freq.values())
        for c in present:
            out[c] = med / freq[c]
    elif method == "enet":
        for c in present:
            out[c] = 1 / math.log(1.02 + counts[c] / total)
    else:
        raw = {c: (1 - beta) / (1 - beta ** counts[c]) for c in present}
        for c in present:
            out[c] = raw[c] * num_classes / sum(raw.values())
    return torch.tensor(out)


def _flatten(x):
    if isinstance(x, list):
        for item in x:
            yield from _flatten(item)
    else:
        yield x


@pytest.mark.parametrize("method", CLASS_WEIGHT_METHODS)
@pytest.mark.parametrize("spatial", [(9,), (5, 6), (2, 3, 4)])
def test_random_maps_against_loops_with_ignored_and_absent_classes(method, spatial):
    g = torch.Generator().manual_seed(len(spatial))
    # Skewed classes 0..4 of 6 (class 5 never occurs), some -100 and some 255 pixels.
    probs = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03])
    labels = torch.multinomial(probs, 7 * math.prod(spatial), replacement=True, generator=g).view(7, *spatial)
    noise = torch.rand(labels.shape, generator=g)
    labels = torch.where(noise < 0.1, -100, torch.where(noise > 0.93, 255, labels))
    labels[3] = 255  # an image without any counted pixel
    got = class_weights(labels, 6, method, ignore_index=255, beta=0.99)
    expected = reference(labels.tolist(), 6, method, ignore=(-100, 255), beta=0.99)
    torch.testing.assert_close(got, expected)
    assert got[5] == 0 and torch.isfinite(got).all()
    torch.testing.assert_close(class_weights(iter(labels), 6, method, ignore_index=255, beta=0.99), got)


def test_effective_number_sums_to_num_classes_and_beta_zero_is_uniform():
    labels = torch.tensor([[0, 0, 0, 1, 1, 2]])
    assert class_weights(labels, 4, "effective_number").sum().item() == pytest.approx(4.0)
    torch.testing.assert_close(class_weights(labels, 3, "effective_number", beta=0.0), torch.ones(3))


def test_images_of_different_sizes_stream():
    maps = [torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 0, 0]]), torch.tensor([[2]])]
    got = class_weights(maps, 3, "median_frequency")
    torch.testing.assert_close(got, reference([m.tolist() for m in maps], 3, "median_frequency"))


def test_errors():
    with pytest.raises(
        ShapeError,
        match=r"Unknown method 'median'\. Expected one of \('inverse_frequency', 'median_frequency', 'enet', "
        r"'effective_number'\)",
    ):
        class_weights(TOY, 3, "median")
    with pytest.raises(ShapeError, match=r"labels values must be class indices in \[0, 2\).*Received a value 2"):
        class_weights(TOY, 2)
    with pytest.raises(ShapeError, match=r"labels\[1\] values must be class indices in \[0, 2\)"):
        class_weights(iter(TOY), 2)
    with pytest.raises(ShapeError, match=r"labels must hold integer class labels\. Received dtype torch.float32"):
        class_weights(TOY.float(), 3)
    with pytest.raises(ShapeError, match=r"num_classes must be an integer >= 1\. Received num_classes=0"):
        class_weights(TOY, 0)
    with pytest.raises(ShapeError, match=r"beta must be a number in \[0, 1\)\. Received beta=1"):
        class_weights(TOY, 3, "effective_number", beta=1)
    with pytest.raises(ShapeError, match=r"labels contain no counted pixel"):
        class_weights(torch.full((2, 3), -100), 3)
    with pytest.raises(ShapeError, match=r"labels must yield label-map tensors\. Received tuple at labels\[0\]"):
        class_weights([(torch.zeros(3, 2, 2), torch.zeros(2, 2, dtype=torch.long))], 3)
