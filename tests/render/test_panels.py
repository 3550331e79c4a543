"""Opaque sample panels (labels, errors, confidence) against hand-written colours and a softmax by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnkit.render import (
    CORRECT_COLOR,
    NODATA_COLOR,
    UNLABELLED_COLOR,
    WRONG_COLOR,
    confidence_panel,
    error_panel,
    label_panel,
)

TAB10 = [(31, 119, 180), (255, 127, 14), (44, 160, 44)]  # matplotlib's tab10, written out


def test_label_panel_is_one_legend_colour_per_pixel():
    labels = torch.tensor([[0, 1, 2], [-100, 1, -100]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    out = label_panel(labels, valid)
    expected = [[TAB10[0], TAB10[1], TAB10[2]], [UNLABELLED_COLOR, TAB10[1], NODATA_COLOR]]
    assert out.dtype == np.uint8 and out.tolist() == [[list(c) for c in row] for row in expected]
    custom = label_panel(np.array([[1, 0]]), palette=[(1, 2, 3), (4, 5, 6)])
    assert custom.tolist() == [[[4, 5, 6], [1, 2, 3]]]


def test_error_panel_marks_right_wrong_unlabelled_and_no_data():
    true = np.array([[0, 1, -100, 2]])
    predicted = np.array([[0, 2, 1, 2]])
    valid = np.array([[1, 1, 1, 0]])
    assert error_panel(true, predicted, valid).tolist() == [[list(CORRECT_COLOR), list(WRONG_COLOR),
                                                             list(UNLABELLED_COLOR), list(NODATA_COLOR)]]
    with pytest.raises(ValueError, match=r"predicted must have the shape of true \(1, 4\)"):
        error_panel(true, predicted[:, :2])


def test_confidence_panel_is_the_top_probability_through_viridis():
    from matplotlib import colormaps

    logits = torch.tensor([[[2.0, 0.0]], [[0.0, 0.0]]])  # (K=2, 1, 2)
    p = logits.double().softmax(0)
    out = confidence_panel(p, valid=np.array([[True, False]]))
    top = float(torch.exp(torch.tensor(2.0)) / (torch.exp(torch.tensor(2.0)) + 1))  # by hand
    expected = np.round(255 * np.asarray(colormaps["viridis"](top)[:3])).astype(int).tolist()
    assert out[0, 0].tolist() == expected and out[0, 1].tolist() == list(NODATA_COLOR)
    with pytest.raises(ValueError, match=r"valid must have the labels' shape"):
        confidence_panel(p, valid=np.ones((2, 2)))
