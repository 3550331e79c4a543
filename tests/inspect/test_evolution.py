"""FilterEvolution on real data (scikit-learn's digits): filters start random and measurably change."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cnnkit.errors import ShapeError
from cnnkit.inspect import FilterEvolution

datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def digits():
    data = datasets.load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8) in [0, 1]
    y = torch.tensor(data.target)
    return x, y


def tiny_cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))


def test_filters_change_during_training_and_init_snapshot_is_exact(digits, tmp_path):
    torch.manual_seed(0)
    x, y = digits
    train_x, train_y, test_x, test_y = x[:1400], y[:1400], x[1400:], y[1400:]
    model = tiny_cnn()
    initial = copy.deepcopy(model.state_dict())
    evo = FilterEvolution(model, nn.Conv2d, every_n_steps=15)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        loss_before = F.cross_entropy(model(test_x), test_y).item()
    for _ in range(60):
        idx = torch.randint(0, len(train_x), (64,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(train_x[idx]), train_y[idx]).backward()
        opt.step()
        evo.step()
    with torch.no_grad():
        logits = model(test_x)
    assert F.cross_entropy(logits, test_y).item() < loss_before * 0.7  # it did learn something
    assert (logits.argmax(1) == test_y).float().mean() > 0.5

    assert evo.steps == [0, 15, 30, 45, 60] and evo.tags[0] == "init"
    assert evo.layers == ["0", "3"]
    # the snapshot at initialisation is exactly the initial weights, and not aliased to the live ones
    assert torch.equal(evo.history["0"][0], initial["0.weight"])
    assert torch.equal(evo.history["3"][0], initial["3.weight"])
    assert torch.equal(evo.history["0"][-1], model[0].weight.detach())
    # change metrics against a hand computation from the two state dicts
    change = evo.change("0")
    w0, w1 = initial["0.weight"].flatten(1), model[0].weight.detach().flatten(1)
    torch.testing.assert_close(change.relative_l2[-1], (w1 - w0).norm(dim=1) / w0.norm(dim=1))
    torch.testing.assert_close(change.cosine[-1], (w1 * w0).sum(1) / (w1.norm(dim=1) * w0.norm(dim=1)))
    assert (change.relative_l2[0] == 0).all() and torch.allclose(change.cosine[0], torch.ones(8))
    assert (change.relative_l2[-1] > 0.1).all()  # every first-layer filter moved measurably
    assert (change.cosine[-1] < 0.999).all()
    assert (change.relative_l2[2] > change.relative_l2[1] * 0.5).all()  # keeps moving, not one jump back

    # the strip image: 8 filters (rows) × 5 snapshots (columns), shared scale over the whole history
    image = evo.render("0", tmp_path / "evolution.png", zoom=3, padding=1)
    assert image.shape == (8 * (9 + 1) + 1, 5 * (9 + 1) + 1, 3)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "evolution.png")), image)
    history = torch.stack(evo.history["0"]).double()
    s = history.abs().max().item()
    for f, t in [(0, 0), (5, 4), (7, 2)]:
        value = history[t, f, 0, 0, 0].item() / s  # top-left weight of filter f at snapshot t
        fade = round(255 * (1 - abs(value)))
        expected = [255, fade, fade] if value >= 0 else [fade, fade, 255]
        assert image[1 + f * 10, 1 + t * 10].tolist() == expected
    deeper = evo.render("3", filters=[1, 2], zoom=1)  # 8 input channels side by side per tile
    assert deeper.shape == (2 * (3 + 1) + 1, 5 * (8 * 3 + 1) + 1, 3)


def test_rgb_and_linear_strips_by_hand():
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[1, 0] = 2.0  # filter 1, red channel
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(2, 3))
    evo = FilterEvolution(model, [conv, "2"], every_n_steps=1)
    with torch.no_grad():
        conv.weight[1, 0] = -1.0
        model[2].weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 0.5], [0.0, 0.0]]))
    evo.step()
    strip = evo.render("0", zoom=1, padding=0)  # 2 filters × 2 snapshots, RGB tiles, scale = 2
    assert strip.tolist() == [[[128, 128, 128], [128, 128, 128]], [[255, 128, 128], [64, 128, 128]]]
    lin = evo.render("2", zoom=1, padding=0, filters=[0])  # a Linear row as a 1 × 2 tile per snapshot
    assert lin.shape == (1, 4, 3) and lin[0, 2:].tolist() == [[255, 0, 0], [0, 0, 255]]


def test_state_dict_round_trip_and_manual_snapshots():
    model = tiny_cnn()
    evo = FilterEvolution(model, ["0"], every_n_steps=2)
    assert evo.step() is False and evo.step() is True
    evo.snapshot("after warm-up")
    other = FilterEvolution(model, "0")
    other.load_state_dict(evo.state_dict())
    assert other.steps == [0, 2, 2] and other.tags == ["init", "step 2", "after warm-up"]
    assert other.global_step == 2


def test_evolution_errors():
    model = tiny_cnn()
    with pytest.raises(ShapeError, match=r"layer '1' \(ReLU\) has \[\]"):
        FilterEvolution(model, ["1"])
    with pytest.raises(ShapeError, match=r"every_n_steps must be an integer >= 1. Received every_n_steps=0"):
        FilterEvolution(model, nn.Conv2d, every_n_steps=0)
    with pytest.raises(ShapeError, match=r"parameter 'bias' of layer '0' must have shape \(out_channels, …\)"):
        FilterEvolution(model, "0", param="bias")
    evo = FilterEvolution(model, "0")
    with pytest.raises(ShapeError, match=r"Unknown layer '3'; FilterEvolution follows \['0'\]"):
        evo.change("3")
    with pytest.raises(ShapeError, match=r"non-empty list of indices in \[0, 7\]. Received filters=\[8\]"):
        evo.render("0", filters=[8])
    with pytest.raises(ShapeError, match=r"state must hold the history of layers"):
        evo.load_state_dict({"history": {"9": []}})
