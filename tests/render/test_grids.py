"""Filter / gradient / activation grids: known weights → known pixels, shared symmetric scale, sign colours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.errors import ShapeError, UnsupportedError
from cnnkit.render import activation_grid, filter_grid, signed_to_rgb, tile_images

RED, BLUE, WHITE, BLACK = [255, 0, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]


def test_single_channel_filters_hand_values_with_padding_and_shared_scale():
    # two 1-input-channel 2×2 filters; the shared scale is max |w| = 4 (from filter 1)
    w = torch.tensor([[[[1.0, -1.0], [0.0, 2.0]]], [[[4.0, -4.0], [-2.0, 0.0]]]])
    grid = filter_grid(w, padding=1, ncols=2)
    assert grid.shape == (4, 7, 3)
    # filter 0, t = w / 4 → 1/4: (255, 191, 191); −1/4: (191, 191, 255); 0: white; 1/2: (255, 128, 128)
    # (255·0.75 = 191.25 → 191; 255·0.5 = 127.5 → 128, ties to even)
    expected_f0 = [[[255, 191, 191], [191, 191, 255]], [WHITE, [255, 128, 128]]]
    expected_f1 = [[RED, BLUE], [[128, 128, 255], WHITE]]
    assert grid[1:3, 1:3].tolist() == expected_f0
    assert grid[1:3, 4:6].tolist() == expected_f1
    border = np.ones(grid.shape[:2], bool)
    border[1:3, 1:3] = border[1:3, 4:6] = False
    assert (grid[border] == 0).all()  # padding is pad_color, black by default


def test_rgb_filters_map_zero_to_mid_grey():
    w = torch.zeros(2, 3, 1, 2)
    w[0, 0, 0, 0] = 2.0    # red channel, +max → 255
    w[0, 1, 0, 0] = -2.0   # green channel, −max → 1
    w[1, 2, 0, 1] = 1.0    # blue channel, +max/2 → 128 + round(63.5) = 192
    grid = filter_grid(w, padding=0, ncols=2)
    assert grid.tolist() == [[[255, 1, 128], [128, 128, 128], [128, 128, 128], [128, 128, 192]]]


def test_explicit_scale_clips_and_all_zero_weights_are_white():
    w = torch.tensor([[[[3.0, -0.5]]]])
    assert filter_grid(w, scale=1.0, padding=0).tolist() == [[RED, [128, 128, 255]]]
    assert filter_grid(torch.zeros(1, 1, 1, 1), padding=0).tolist() == [[WHITE]]


def test_multi_channel_filters_one_row_per_filter_and_conv1d():
    w = torch.arange(2 * 4 * 3 * 3, dtype=torch.float32).reshape(2, 4, 3, 3) - 30
    grid = filter_grid(w, padding=1, zoom=2)
    assert grid.shape == (2 * (6 + 1) + 1, 4 * (6 + 1) + 1, 3)  # rows = filters, cols = input channels
    # tile (filter 1, channel 2), zoomed pixel (0, 0) is w[1, 2, 0, 0]
    top, left = 1 + 1 * 7, 1 + 2 * 7
    t = w[1, 2, 0, 0].item() / w.abs().max().item()
    fade = round(255 * (1 - t))
    assert grid[top, left].tolist() == grid[top + 1, left + 1].tolist() == [255, fade, fade]
    g1 = filter_grid(torch.tensor([[[1.0, 0.0, -1.0]]]), padding=0)  # Conv1d weight (1, 1, 3)
    assert g1.tolist() == [[RED, WHITE, BLUE]]


def test_weight_gradient_grid_equals_grid_of_hand_computed_gradient():
    conv = nn.Conv2d(1, 2, 2, bias=False)
    x = torch.randn(3, 1, 4, 4)
    target = torch.randn(3, 2, 3, 3)
    ((conv(x) * target).sum()).backward()
    # d/dw[o, 0, u, v] of Σ y·target = Σ_{n,i,j} target[n, o, i, j] · x[n, 0, i + u, j + v]
    manual = torch.zeros(2, 1, 2, 2)
    for o in range(2):
        for u in range(2):
            for v in range(2):
                manual[o, 0, u, v] = (target[:, o] * x[:, 0, u:u + 3, v:v + 3]).sum()
    torch.testing.assert_close(conv.weight.grad, manual)
    np.testing.assert_allclose(filter_grid(conv.weight.grad).astype(int), filter_grid(manual).astype(int), atol=1)


def test_activation_grid_hand_values_and_1d():
    a = torch.zeros(2, 2, 1, 2)
    a[1, 0, 0] = torch.tensor([1.0, -2.0])
    a[1, 1, 0] = torch.tensor([0.5, 0.0])
    grid = activation_grid(a, sample=1, padding=0, ncols=2)
    assert grid.tolist() == [[[255, 128, 128], BLUE, [255, 191, 191], WHITE]]
    seq = F.relu(torch.tensor([[[2.0, 1.0], [0.0, -1.0]]]))  # (N=1, C=2, L=2)
    assert activation_grid(seq, padding=0, ncols=1).tolist() == [[RED, [255, 128, 128]], [WHITE, WHITE]]


def test_signed_to_rgb_and_tile_layout():
    assert signed_to_rgb(np.array([4.0, -4.0, 0.0])).tolist() == [RED, BLUE, WHITE]
    tiles = np.zeros((5, 2, 3, 3), np.uint8)
    out = tile_images(tiles, ncols=2, padding=2, pad_color=(9, 9, 9))
    assert out.shape == (3 * (2 + 2) + 2, 2 * (3 + 2) + 2, 3)
    assert out[0, 0].tolist() == [9, 9, 9] and out[2, 2].tolist() == BLACK


def test_grid_errors():
    with pytest.raises(UnsupportedError, match=r"pass one depth slice.*Received weight with shape \(2, 1, 3, 3, 3\)"):
        filter_grid(torch.zeros(2, 1, 3, 3, 3))
    with pytest.raises(ShapeError, match=r"weight must be a conv weight of shape.*Received weight with shape \(4, 3\)"):
        filter_grid(torch.zeros(4, 3))
    with pytest.raises(ShapeError, match=r"rgb=True needs weights with in_channels == 3.*\(2, 1, 3, 3\)"):
        filter_grid(torch.zeros(2, 1, 3, 3), rgb=True)
    with pytest.raises(ShapeError, match=r"weight must be finite"):
        filter_grid(torch.full((1, 1, 2, 2), float("nan")))
    with pytest.raises(ShapeError, match=r"weight must not be empty"):
        filter_grid(torch.zeros(0, 1, 3, 3))
    with pytest.raises(ShapeError, match=r"scale must be a positive finite number.*Received scale=0"):
        filter_grid(torch.ones(1, 1, 2, 2), scale=0)
    with pytest.raises(ShapeError, match=r"zoom must be an integer >= 1. Received zoom=0"):
        filter_grid(torch.ones(1, 1, 2, 2), zoom=0)
    with pytest.raises(ShapeError, match=r"sample must index the batch of 2. Received sample=2"):
        activation_grid(torch.ones(2, 1, 2, 2), sample=2)
    with pytest.raises(ShapeError, match=r"activations must have shape \(N, C, H, W\) or \(N, C, L\)"):
        activation_grid(torch.ones(2, 2))


def test_annotated_grid_places_tiles_and_leaves_empty_cells_as_background():
    from cnnkit.render import annotated_grid

    tiles = np.stack([np.full((2, 3, 3), v, np.uint8) for v in (10, 20, 30)])  # 3 tiles of 2 × 3
    grid = annotated_grid(tiles, ncols=2, zoom=2, gap=1, background=(200, 200, 200))
    # cells of 6 × 4 px (zoom 2), gap 1: tile 1 at column 7, tile 2 on the second row at row 5
    assert grid.shape == (4 + 1 + 4, 6 + 1 + 6, 3)
    assert (grid[0:4, 0:6] == 10).all() and (grid[0:4, 7:13] == 20).all() and (grid[5:9, 0:6] == 30).all()
    assert (grid[5:9, 7:13] == 200).all()  # the missing 4th tile: background, not a black filler
    assert (grid[:, 6] == 200).all()  # the gap


def test_annotated_grid_writes_labels_and_a_colour_bar():
    from cnnkit.render import annotated_grid, colorbar

    tiles = np.full((2, 4, 4, 3), 255, np.uint8)
    plain = annotated_grid(tiles, 2, gap=2)
    labelled = annotated_grid(tiles, 2, gap=2, labels=["0", "1"], row_labels=["f0"], col_labels=["a", "b"],
                              scale=1.5)
    assert labelled.shape[0] > plain.shape[0] + 20 and labelled.shape[1] > plain.shape[1]
    assert (labelled < 100).any()  # ink
    bar = colorbar(1.5, width=101, height=6)
    row = bar[0]
    nonwhite = np.flatnonzero((row != 255).any(axis=1))
    left, right = row[nonwhite[0]], row[nonwhite[-1]]
    assert left.tolist() == [0, 0, 255] and right.tolist() == [255, 0, 0]  # -scale blue, +scale red
    with pytest.raises(ValueError, match=r"labels must hold 2 texts\. Received 1"):
        annotated_grid(tiles, 2, labels=["0"])
