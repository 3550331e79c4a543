"""Sharing a prediction among ranks: the plan (read groups, balance, tile owners) and the tiles each rank runs —
together the very numbers :meth:`Predictor.predict_scene` writes in one process (bit for bit, every window)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from cnnkit.errors import ShapeError
from cnnkit.models import TinySegNet
from cnnkit.predict.predictor import Predictor, Preprocessing
from cnnkit.predict.scene import open_scene
from cnnkit.predict.sharding import balance, image_groups, predict_tiles, scene_tiles, tile_owner


def test_image_groups_are_the_groups_predict_files_reads():
    assert image_groups(21, 2) == [range(0, 8), range(8, 16), range(16, 21)]
    assert image_groups(16, 1) == [range(0, 4), range(4, 8), range(8, 12), range(12, 16)]
    assert image_groups(0, 8) == []
    with pytest.raises(ShapeError, match=r"batch_size must be an integer >= 1\. Received batch_size=0"):
        image_groups(3, 0)


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_balance_gives_every_item_once_and_is_as_even_as_the_greedy_rule(world):
    costs = [float(c) for c in np.random.default_rng(world).integers(1, 1000, 23)]
    shares = balance(costs, world)
    assert len(shares) == world
    assert sorted(itertools.chain(*shares)) == list(range(23))
    assert all(share == sorted(share) for share in shares)
    assert balance(costs, world) == shares  # deterministic
    loads = [sum(costs[i] for i in share) for share in shares]
    # the greedy rule (costliest first, to the least loaded) keeps max - min within the largest single cost
    assert max(loads) - min(loads) <= max(costs)


def test_balance_by_hand():
    # costs 5, 1, 4, 2, 3 at indices 0..4; costliest first: 5 (i0) → r0 [5, 0]; 4 (i2) → r1 [5, 4];
    # 3 (i4) → r1 [5, 7]; 2 (i3) → r0 [7, 7]; 1 (i1) → r0 on the tie [8, 7]
    assert balance([5, 1, 4, 2, 3], 2) == [[0, 1, 3], [2, 4]]
    assert balance([1.0], 3) == [[0], [], []]
    with pytest.raises(ShapeError, match=r"costs must be finite and >= 0. Received costs=\[1.0, -2.0\]"):
        balance([1, -2], 2)
    with pytest.raises(ShapeError, match=r"world_size must be an integer >= 1\. Received world_size=0"):
        balance([1], 0)


def test_tile_owner_deals_round_the_ranks():
    assert [tile_owner(i, 3) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(ShapeError, match="index must be an integer >= 0"):
        tile_owner(-1, 2)


def _predictor() -> Predictor:
    torch.manual_seed(0)
    model = TinySegNet(5, 4, width=8)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    prep = Preprocessing(mean=(100.0, 90.0, 110.0, 95.0), std=(40.0, 30.0, 35.0, 45.0), nodata=-9999.0, multiple_of=4)
    return Predictor(model.eval(), prep, ("a", "b", "c", "d"))


def test_ranks_tiles_are_the_numbers_of_predict_scene(tmp_path):
    """Every rank's tiles (3 ranks, 20 tiles: uneven shares), put together, equal what predict_scene writes in one
    process, bit for bit; and the windows each tile covers are disjoint and cover the scene."""
    rng = np.random.default_rng(1)
    image = rng.normal(100, 40, (4, 70, 53)).astype(np.float32)
    image[1, 5:20, 7:9] = np.nan
    image[:, 30:34, 10:20] = -9999
    tifffile.imwrite(tmp_path / "s.tif", image, photometric="minisblack", planarconfig="separate")
    predictor = _predictor()
    scene = open_scene(tmp_path / "s.tif", bands=4)
    probabilities = np.zeros((70, 53, 4), np.float32)
    confidence = np.zeros((70, 53), np.float32)
    tiles_run = []
    labels, counts = predictor.predict_scene(scene, tile=16, probabilities_out=probabilities, confidence_out=confidence,
                                             on_tile=tiles_run.append)
    plan = scene_tiles(predictor, scene, 16)
    assert len(plan) == len(tiles_run) == 5 * 4  # canvas 72 × 56 in 16-px tiles

    got = {"labels": np.full((70, 53), -1, np.int16), "probabilities": np.full_like(probabilities, -1.0),
           "confidence": np.full_like(confidence, -1.0), "raw": np.full_like(image, -1.0)}
    total, seen, world = np.zeros(4, np.int64), [], 3
    for rank in range(world):
        for result in predict_tiles(predictor, scene, tile=16, owned=lambda i, r=rank: tile_owner(i, world) == r,
                                    probabilities=True, confidence=True):
            assert tile_owner(result.index, world) == rank
            seen.append(result.index)
            rows, cols = result.rows, result.cols
            assert (got["labels"][rows, cols] == -1).all(), "windows overlap"
            got["labels"][rows, cols] = result.labels
            got["probabilities"][rows, cols] = result.probabilities
            got["confidence"][rows, cols] = result.confidence
            got["raw"][:, rows, cols] = result.raw
            total += result.class_pixels
    scene.close()
    assert sorted(seen) == list(range(len(plan)))
    assert np.array_equal(got["labels"], labels)
    assert got["probabilities"].tobytes() == probabilities.tobytes()
    assert got["confidence"].tobytes() == confidence.tobytes()
    assert np.array_equal(got["raw"], image, equal_nan=True)  # the pixels the overlay's preview is drawn from
    assert np.array_equal(total, counts.numpy())
    assert (got["labels"][30:34, 10:20] == 255).all() and len(np.unique(labels)) >= 3
