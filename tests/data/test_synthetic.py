"""The demo's generated scenes at the smallest size the generator allows."""

from __future__ import annotations

import math

import torch

from cnnkit.data import SyntheticLandCover
from cnnkit.masking import IGNORE_INDEX


def test_the_smallest_scenes_are_generated():
    data = SyntheticLandCover(40, seed=3, min_size=8, max_size=8)  # 8 px scenes crashed in the unlabelled rectangle
    for (image, label), cloud in zip(data, data.clouds):
        assert image.shape == (5, 8, 8) and label.shape == (8, 8)
        assert torch.equal(image[-1] == 0, cloud)  # the validity band is zero exactly under clouds
        assert bool((label[cloud] == IGNORE_INDEX).all())


# --- SyntheticTextures: classes that differ by texture only -----------------------------------------------------


def test_textures_have_one_mean_colour_and_one_spread_in_every_class():
    from cnnkit.data.synthetic import SyntheticTextures

    data = SyntheticTextures(12, seed=1, size=48, noise=0.1, amplitude=0.2, mean=0.5)
    images, labels = torch.stack(data.images).double(), torch.stack(data.labels)
    assert sorted(torch.unique(labels).tolist()) == [0, 1, 2, 3, 4]
    for c in range(5):
        values = images.permute(1, 0, 2, 3)[:, labels == c]  # (bands, pixels of class c)
        # a pixel is 0.5 ± 0.2 half the time each, plus N(0, 0.1²): mean 0.5, std sqrt(0.2² + 0.1²)
        se = (0.2**2 + 0.1**2) ** 0.5 / values.shape[1] ** 0.5 * 8  # generous: stripes make pixels correlated
        torch.testing.assert_close(values.mean(1), torch.full((3,), 0.5, dtype=torch.float64), atol=se, rtol=0)
        torch.testing.assert_close(values.std(1), torch.full((3,), (0.2**2 + 0.1**2) ** 0.5, dtype=torch.float64),
                                   atol=0.01, rtol=0)
        # without the noise, exactly half of the class's pixels are bright
        bright = ((images[:, 0] - 0.5) > 0)[labels == c].double().mean()
        assert abs(float(bright) - 0.5) < 0.06


def test_textures_are_the_patterns_by_hand_and_deterministic_by_seed():
    from cnnkit.data.synthetic import SyntheticTextures, texture_pattern

    data = SyntheticTextures(3, seed=7, size=48, bands=2, noise=0.0, amplitude=0.25, mean=0.4)
    again = SyntheticTextures(3, seed=7, size=48, bands=2, noise=0.0, amplitude=0.25, mean=0.4)
    other = SyntheticTextures(3, seed=8, size=48, bands=2, noise=0.0, amplitude=0.25, mean=0.4)
    assert all(torch.equal(a, b) for a, b in zip(data.images + data.labels, again.images + again.labels))
    assert not torch.equal(data.labels[0], other.labels[0])
    checked = {3: 0, 4: 0}
    for image, label in data:
        t = torch.round((image[0] - 0.4) / 0.25)  # the ±1 pattern
        assert torch.equal(image[0], image[1]) and bool((t.abs() == 1).all())

        def same(c, dy, dx, t=t, label=label):  # class-c pixel pairs (dy, dx) apart: equal (True) or opposite
            a, b = t[: 48 - dy, : 48 - dx], t[dy:, dx:]
            both = (label[: 48 - dy, : 48 - dx] == c) & (label[dy:, dx:] == c)
            return a[both] == b[both]

        assert bool(same(1, 0, 1).all()) and not bool(same(1, 2, 0).any())  # horizontal, period 4: 2 px flip
        assert bool(same(2, 1, 0).all()) and not bool(same(2, 0, 3).any())  # vertical, period 6: 3 px flip
        for c in (3, 4):  # discs and squares: one checkerboard of 4-px cells, the same phase for both
            assert not bool(same(c, 0, 4).any()) and not bool(same(c, 4, 0).any()) and bool(same(c, 4, 4).all())
        objects = (label == 3) | (label == 4)
        assert any(torch.equal(t[objects], texture_pattern("checkerboard", 48, 48, (py, px))[objects])
                   for py in range(8) for px in range(8))
        # shapes by hand: each square fills its bounding box, each disc π/4 of it (objects never touch)
        for c, fill, tolerance in ((3, math.pi / 4, 0.12), (4, 1.0, 0.0)):
            for blob in _components(label == c):
                ys, xs = zip(*blob)
                box = (max(ys) - min(ys) + 1) * (max(xs) - min(xs) + 1)
                assert abs(len(blob) / box - fill) <= tolerance, (c, len(blob) / box)
                checked[c] += 1
    assert checked[3] >= 2 and checked[4] >= 2
    # hand values of the patterns
    assert texture_pattern("vertical stripes", 1, 7).tolist() == [[1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 1.0]]
    assert texture_pattern("checkerboard", 5, 2, phase=(2, 3)).tolist() == [
        [1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, 1.0], [-1.0, 1.0]]


def _components(mask: torch.Tensor) -> list[set[tuple[int, int]]]:
    """The 4-connected components of mask's pixels (flood fill by hand)."""
    points = {tuple(p) for p in torch.nonzero(mask).tolist()}
    blobs = []
    while points:
        todo, blob = [next(iter(points))], set()
        while todo:
            y, x = todo.pop()
            if (y, x) in blob or (y, x) not in points:
                continue
            blob.add((y, x))
            todo += [(y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)]
        points -= blob
        blobs.append(blob)
    return blobs
