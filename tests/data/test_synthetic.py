"""The demo's generated scenes at the smallest size the generator allows."""

from __future__ import annotations

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

    data = SyntheticTextures(3, seed=7, size=32, bands=2, noise=0.0, amplitude=0.25, mean=0.4)
    again = SyntheticTextures(3, seed=7, size=32, bands=2, noise=0.0, amplitude=0.25, mean=0.4)
    other = SyntheticTextures(3, seed=8, size=32, bands=2, noise=0.0, amplitude=0.25, mean=0.4)
    assert all(torch.equal(a, b) for a, b in zip(data.images + data.labels, again.images + again.labels))
    assert not torch.equal(data.labels[0], other.labels[0])
    for image, label in data:
        t = torch.round((image[0] - 0.4) / 0.25)  # the ±1 pattern
        assert torch.equal(image[0], image[1]) and bool((t.abs() == 1).all())

        def same(c, dy, dx, t=t, label=label):  # class-c pixel pairs (dy, dx) apart: equal (True) or opposite
            a, b = t[: 32 - dy, : 32 - dx], t[dy:, dx:]
            both = (label[: 32 - dy, : 32 - dx] == c) & (label[dy:, dx:] == c)
            return a[both] == b[both]

        assert bool(same(1, 0, 1).all()) and not bool(same(1, 1, 0).all())   # horizontal: constant along x
        assert bool(same(2, 1, 0).all()) and not bool(same(2, 0, 1).all())   # vertical: constant along y
        assert not bool(same(3, 0, 3).any()) and not bool(same(3, 3, 0).any())  # diagonal, period 6: 3 px flip
        both = (label[1:, :-1] == 3) & (label[:-1, 1:] == 3)
        assert bool((t[1:, :-1] == t[:-1, 1:])[both].all())                     # constant along x + y
        assert not bool(same(4, 0, 4).any()) and not bool(same(4, 4, 0).any())  # 4-px checker cells
    # hand values of the patterns
    assert texture_pattern(2, 1, 6).tolist() == [[1.0, 1.0, -1.0, -1.0, 1.0, 1.0]]
    assert texture_pattern(3, 2, 4, phase=(0, 1)).tolist() == [[1.0, 1.0, -1.0, -1.0], [1.0, -1.0, -1.0, -1.0]]
