"""Scores → labels → colours → overlay → legend → PNG, against hand values and matplotlib's palette."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.errors import ShapeError
from cnnkit.render import (
    DEFAULT_PALETTE,
    colorize,
    default_palette,
    image_to_rgb,
    legend,
    overlay,
    probabilities_to_labels,
    save_png,
)

# -- palette -------------------------------------------------------------------------------------------


def test_default_palette_is_tab10_then_light_tab20_companions():
    matplotlib = pytest.importorskip("matplotlib")
    tab20 = np.round(255 * np.asarray(matplotlib.colormaps["tab20"].colors)).astype(int)
    expected = np.concatenate([tab20[0::2], tab20[1::2]])  # tab20 interleaves dark/light pairs
    assert np.array_equal(np.asarray(DEFAULT_PALETTE), expected)
    assert len(set(DEFAULT_PALETTE)) == 20


def test_default_palette_cycles():
    assert np.array_equal(default_palette(45)[23], DEFAULT_PALETTE[3])
    with pytest.raises(ShapeError, match=r"num_classes must be an integer >= 0. Received num_classes=-1"):
        default_palette(-1)


# -- probabilities_to_labels ----------------------------------------------------------------------------


def test_labels_equal_argmax_of_softmax_computed_by_hand():
    logits = torch.randn(2, 5, 3, 4)
    labels = probabilities_to_labels(logits)
    exp = logits.exp()
    probs = exp / exp.sum(1, keepdim=True)
    for n in range(2):
        for i in range(3):
            for j in range(4):
                values = probs[n, :, i, j].tolist()
                assert labels[n, i, j].item() == values.index(max(values))
    assert labels.dtype == torch.long and labels.shape == (2, 3, 4)
    # probabilities give the same labels, and channels-last scores work with dim=-1
    assert torch.equal(probabilities_to_labels(probs, from_logits=False), labels)
    assert torch.equal(probabilities_to_labels(logits.permute(0, 2, 3, 1), dim=-1), labels)


def test_threshold_marks_uncertain_pixels():
    probs = torch.tensor([[0.7, 0.4], [0.2, 0.35], [0.1, 0.25]])[None, :, None, :]  # (1, 3, 1, 2)
    out = probabilities_to_labels(probs, from_logits=False, threshold=0.5, ignore_index=255)
    assert out.tolist() == [[[0, 255]]]


def test_probabilities_to_labels_errors():
    with pytest.raises(ShapeError, match=r"must be probabilities in \[0, 1\] summing to 1"):
        probabilities_to_labels(torch.randn(1, 3, 2, 2), from_logits=False)
    with pytest.raises(ShapeError, match=r"scores must not be empty"):
        probabilities_to_labels(torch.zeros(0, 3, 2, 2))
    with pytest.raises(ShapeError, match=r"floating-point"):
        probabilities_to_labels(torch.zeros(1, 3, 2, 2, dtype=torch.long))
    with pytest.raises(ShapeError, match=r"dim must index an axis of scores. Received dim=4"):
        probabilities_to_labels(torch.zeros(1, 3, 2, 2), dim=4)
    with pytest.raises(ShapeError, match=r"threshold must be a number in \(0, 1\]. Received threshold=2"):
        probabilities_to_labels(torch.zeros(1, 3, 2, 2), threshold=2)
    with pytest.raises(ShapeError, match=r"NaN"):
        probabilities_to_labels(torch.full((1, 3, 2, 2), float("nan")))


# -- colorize -------------------------------------------------------------------------------------------


def test_colorize_hand_values_and_ignore_color():
    labels = torch.tensor([[0, 1], [255, 3]])
    out = colorize(labels, ignore_index=255, ignore_color=(9, 8, 7))
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out.tolist() == [[[31, 119, 180], [255, 127, 14]], [[9, 8, 7], [214, 39, 40]]]


def test_class_colours_are_stable_across_images_with_different_class_sets():
    a = colorize(np.array([[3, 0, 0]]))
    b = colorize(torch.tensor([[[7, 3], [12, 12]]]))  # batch of one, other classes present
    assert a[0, 0].tolist() == b[0, 0, 1].tolist() == [214, 39, 40]
    assert colorize(np.array([[23]]))[0, 0].tolist() == [214, 39, 40]  # cycles every 20


def test_colorize_custom_palette_and_errors():
    pal = [(0, 0, 0), (10, 20, 30)]
    assert colorize(np.array([[1, 0]]), palette=pal).tolist() == [[[10, 20, 30], [0, 0, 0]]]
    with pytest.raises(ShapeError, match=r"custom palette is not cycled\). Received label 2 with a palette of 2"):
        colorize(np.array([[2]]), palette=pal)
    with pytest.raises(ShapeError, match=r"palette must be a non-empty sequence of RGB triples"):
        colorize(np.array([[0]]), palette=[(0, 0)])
    with pytest.raises(ShapeError, match=r"labels must hold integer class indices"):
        colorize(torch.zeros(2, 2))
    with pytest.raises(ShapeError, match=r"labels must be >= 0 except for ignore_index=None. Received a label -1"):
        colorize(np.array([[-1, 0]]))
    with pytest.raises(ShapeError, match=r"labels must not be empty"):
        colorize(np.zeros((0, 3), dtype=int))
    with pytest.raises(ShapeError, match=r"labels must have shape \(..., H, W\)"):
        colorize(np.zeros(3, dtype=int))
    with pytest.raises(ShapeError, match=r"ignore_color must be 3 integers in \[0, 255\]"):
        colorize(np.array([[0]]), ignore_color=(0, 0, 300))


# -- image_to_rgb -----------------------------------------------------------------------------------------


def test_uint8_images_pass_through_unchanged():
    img = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    assert np.array_equal(image_to_rgb(img), img.permute(0, 2, 3, 1).numpy())


def test_minmax_per_band_by_hand_and_band_choice():
    img = torch.zeros(6, 1, 3)
    img[4] = torch.tensor([[1.0, 2.0, 5.0]])   # → R: 0, 255·1/4, 255
    img[2] = torch.tensor([[-1.0, -1.0, 1.0]])  # → G: 0, 0, 255
    img[0] = torch.tensor([[7.0, 7.0, 7.0]])    # constant → 0
    out = image_to_rgb(img, bands=(4, 2, 0))
    assert out.tolist() == [[[0, 0, 0], [64, 0, 0], [255, 255, 0]]]
    grey = image_to_rgb(img, bands=(4,))
    assert grey[..., 0].tolist() == grey[..., 2].tolist() == [[0, 64, 255]]


def test_percentile_stretch_matches_numpy_percentile():
    x = np.arange(101, dtype=np.float64).reshape(1, 1, 101)
    x[0, 0, 100] = 1e6  # a hot pixel
    out = image_to_rgb(np.repeat(x, 3, axis=0), normalize="percentile", percentiles=(2, 98))
    lo, hi = np.percentile(x, 2), np.percentile(x, 98)
    expected = np.clip(np.round(255 * (x[0, 0] - lo) / (hi - lo)), 0, 255)
    assert out[0, :, 0].tolist() == expected.tolist()
    assert out[0, 50, 0] == round(255 * (50 - lo) / (hi - lo))


def test_nan_pixels_render_as_no_data_and_errors():
    img = torch.tensor([[[0.0, float("nan"), 2.0]]])
    assert image_to_rgb(img).tolist() == [[[0, 0, 0], [255, 255, 255], [255, 255, 255]]]  # NaN: NODATA_COLOR
    for normalize in ("minmax", "percentile"):  # ±inf is missing too, and stretches nothing (+inf blacked out all)
        inf = torch.tensor([[[0.0, 1.0, 2.0, float("inf"), -float("inf")]]])
        drawn = image_to_rgb(inf, normalize=normalize)[0]
        assert drawn[:3].tolist() == image_to_rgb(inf[..., :3], normalize=normalize)[0].tolist()
        assert drawn[3:].tolist() == [[255, 255, 255]] * 2
    assert overlay(inf, torch.zeros(1, 5, dtype=torch.long))[0, 3:].tolist() == [[255, 255, 255]] * 2
    with pytest.raises(ShapeError, match=r"bands must be given for an image with 2 channels"):
        image_to_rgb(torch.zeros(2, 2, 2))
    with pytest.raises(ShapeError, match=r"bands must be 1 or 3 channel indices in \[0, 3\].*bands=\(0, 1, 9\)"):
        image_to_rgb(torch.zeros(4, 2, 2), bands=(0, 1, 9))
    with pytest.raises(ShapeError, match=r"image must have shape \(C, H, W\) or \(N, C, H, W\)"):
        image_to_rgb(torch.zeros(2, 2))
    with pytest.raises(ShapeError, match=r"Unknown normalize 'zscore'"):
        image_to_rgb(torch.zeros(3, 2, 2), normalize="zscore")
    with pytest.raises(ShapeError, match=r"image must not be empty"):
        image_to_rgb(torch.zeros(3, 0, 2))


# -- overlay -----------------------------------------------------------------------------------------------


def test_overlay_leaves_unlabelled_pixels_byte_identical():
    gen = torch.Generator().manual_seed(1)
    img = torch.randint(0, 256, (2, 3, 8, 9), dtype=torch.uint8, generator=gen)
    labels = torch.randint(-1, 4, (2, 8, 9), generator=gen)
    out = overlay(img, labels, alpha=0.6, ignore_index=-1)
    rgb = img.permute(0, 2, 3, 1).numpy()
    ignored = (labels == -1).numpy()
    assert ignored.any() and (~ignored).any()
    assert out[ignored].tobytes() == rgb[ignored].tobytes()
    # labelled pixels: round(0.4·rgb + 0.6·colour), computed here pixel by pixel
    n, i, j = np.argwhere(~ignored)[0]
    colour = np.asarray(DEFAULT_PALETTE[labels[n, i, j]])
    assert out[n, i, j].tolist() == np.round(0.4 * rgb[n, i, j] + 0.6 * colour).astype(int).tolist()


def test_overlay_multiband_float_keeps_the_rgb_rendering_outside_classes():
    img = torch.rand(5, 4, 4) * 1000
    labels = torch.full((4, 4), 255)
    labels[1:3, 1:3] = 2
    out = overlay(img, labels, ignore_index=255, bands=(3, 1, 0), alpha=1.0)
    x = img.double().numpy()[[3, 1, 0]]
    lo, hi = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
    manual = np.round(255 * (x - lo) / (hi - lo)).astype(np.uint8).transpose(1, 2, 0)
    outside = (labels == 255).numpy()
    assert out[outside].tobytes() == manual[outside].tobytes()
    assert (out[1:3, 1:3] == np.asarray(DEFAULT_PALETTE[2], dtype=np.uint8)).all()  # alpha=1: pure colour


def test_overlay_alpha_zero_is_the_image_and_errors():
    img = torch.randint(0, 256, (3, 4, 4), dtype=torch.uint8)
    labels = torch.randint(0, 3, (4, 4))
    assert np.array_equal(overlay(img, labels, alpha=0.0), img.permute(1, 2, 0).numpy())
    with pytest.raises(ShapeError, match=r"labels must have the image's batch and spatial shape \(4, 4\). "
                                         r"Received labels with shape \(4, 5\)"):
        overlay(img, torch.zeros(4, 5, dtype=torch.long))
    with pytest.raises(ShapeError, match=r"alpha must be a number in \[0, 1\]. Received alpha=1.5"):
        overlay(img, labels, alpha=1.5)


# -- legend, save_png -----------------------------------------------------------------------------------------


def test_legend_rows_have_the_class_colours():
    img = legend({3: "car", 7: "tree"}, ignore_name="unlabelled", ignore_color=(1, 2, 3), swatch=10)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[0] == 4 + 3 * 14
    assert img[6, 6].tolist() == [214, 39, 40]       # class 3, whatever else is listed
    assert img[6 + 14, 6].tolist() == [127, 127, 127]  # class 7
    assert img[6 + 28, 6].tolist() == [1, 2, 3]       # the ignore row
    assert (img[:, -1] == 255).all()                  # white background
    with pytest.raises(ShapeError, match=r"class_names must name at least one class"):
        legend([])
    with pytest.raises(ShapeError, match=r"swatch must be an integer >= 4. Received swatch=2"):
        legend(["a"], swatch=2)


def test_save_png_round_trip(tmp_path):
    arr = colorize(torch.tensor([[0, 1, 2], [3, 4, 5]]))
    path = save_png(arr, tmp_path / "mask.png")
    assert np.array_equal(np.asarray(Image.open(path)), arr)
    with pytest.raises(ShapeError, match=r"array must be uint8.*Received dtype float32"):
        save_png(np.zeros((2, 2, 3), np.float32), tmp_path / "x.png")
    with pytest.raises(ShapeError, match=r"array must have shape \(H, W\), \(H, W, 3\) or \(H, W, 4\)"):
        save_png(np.zeros((2, 2, 2), np.uint8), tmp_path / "x.png")


# -- no data: one colour in every picture (#26) ------------------------------------------------------------------


def test_no_data_has_one_colour_in_every_picture_and_unlabelled_another():
    """NaN in the image or validity 0: NODATA_COLOR (white) at exactly those pixels of the composite, the overlay,
    the coloured mask, the three panels and the legend's row; unlabelled pixels with data: UNLABELLED_COLOR."""
    from cnnkit.render import (
        CORRECT_COLOR,
        NODATA_COLOR,
        UNLABELLED_COLOR,
        WRONG_COLOR,
        confidence_panel,
        error_panel,
        label_panel,
    )

    assert NODATA_COLOR == (255, 255, 255) and UNLABELLED_COLOR == (0, 0, 0)
    special = [NODATA_COLOR, UNLABELLED_COLOR, CORRECT_COLOR, WRONG_COLOR]
    assert len(set(special)) == 4 and not set(special) & set(DEFAULT_PALETTE)
    image = torch.rand(4, 5, 6, generator=torch.Generator().manual_seed(0)) * 100  # 4 bands: (0, 1, 2) are drawn
    image[1, 0, :3] = float("nan")   # no data in a drawn band
    image[3, 4, 5] = float("nan")    # in a band that is not drawn: still data in these pictures
    labels = torch.arange(30).reshape(5, 6) % 3
    labels[2, :] = -100              # unlabelled, with data
    labels[0, 0] = -100              # no data and no label: no data wins
    missing = np.zeros((5, 6), bool)
    missing[0, :3] = True
    valid = ~missing
    pictures = {
        "image_to_rgb": image_to_rgb(image),
        "overlay": overlay(image, labels, ignore_index=-100),
        "overlay(valid)": overlay(image.nan_to_num(7.0), labels, ignore_index=-100, valid=valid),
        "colorize(valid)": colorize(labels, ignore_index=-100, valid=valid),
        "label_panel": label_panel(labels, valid),
        "error_panel": error_panel(labels, torch.zeros(5, 6, dtype=torch.long), valid),
        "confidence_panel": confidence_panel(torch.full((3, 5, 6), 1 / 3), valid),
    }
    for name, picture in pictures.items():
        is_nodata = (picture == NODATA_COLOR).all(axis=-1)
        np.testing.assert_array_equal(is_nodata, missing, err_msg=name)  # there, and nowhere else
    for name in ("colorize(valid)", "label_panel", "error_panel"):
        np.testing.assert_array_equal((pictures[name] == UNLABELLED_COLOR).all(axis=-1),
                                      (labels == -100).numpy() & valid, err_msg=name)
    # the batched composite and overlay agree with the single ones
    assert np.array_equal(image_to_rgb(image[None])[0], pictures["image_to_rgb"])
    assert np.array_equal(overlay(image[None], labels[None], ignore_index=-100)[0], pictures["overlay"])
    key = legend(["a", "b"], ignore_name="unlabelled", nodata_name="no data", swatch=10)
    assert key[6 + 2 * 14, 6].tolist() == list(UNLABELLED_COLOR) and key[6 + 3 * 14, 6].tolist() == list(NODATA_COLOR)
    assert key[4 + 3 * 14, 4].tolist() == [0, 0, 0]  # the white swatch is framed on the white page


def test_public_names_of_cnnkit_render():
    import cnnkit.render as render

    expected = {"DEFAULT_PALETTE", "NODATA_COLOR", "UNLABELLED_COLOR",
                "activation_grid", "colorize", "default_palette", "filter_grid", "image_to_rgb",
                "legend", "overlay", "probabilities_to_labels", "save_png", "signed_to_rgb", "tile_images"}
    assert expected <= set(render.__all__)
    assert all(hasattr(render, name) for name in render.__all__)
