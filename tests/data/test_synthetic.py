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
