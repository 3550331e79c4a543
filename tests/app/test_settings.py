"""One :class:`~cnnkit.app.TrainSettings` for images and series: the same run whether the settings come as an object
or as keyword arguments, unknown or inapplicable settings refused before anything is written, and one rule for
which network a kind of data takes (:func:`cnnkit.app.workflow.choose_network`)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cnnkit.app.settings import KIND_DEFAULTS, SETTING_NAMES, TrainSettings, settings_for
from cnnkit.app.timeseries import train_series
from cnnkit.app.train import train_segmentation
from cnnkit.data import CLASS_NAMES, SyntheticLandCover
from cnnkit.data.synthetic_series import crop_series
from cnnkit.errors import ShapeError

QUIET = {"progress": False, "epoch_lines": False, "log": lambda text: None}


def _images(count: int, seed: int):
    data = SyntheticLandCover(count, seed=seed, min_size=16, max_size=24)
    # sizes to a multiple of 4 (TinySegNet's), as Standardized(..., multiple_of=4) would give them
    return [(x[:, : x.shape[1] // 4 * 4, : x.shape[2] // 4 * 4], y[: y.shape[0] // 4 * 4, : y.shape[1] // 4 * 4])
            for x, y in data]


def _series(count: int, seed: int):
    return [(s, torch.isfinite(s).all(1), y) for s, y in crop_series(count, seed=seed, steps=(3, 4), sides=(12, 16))]


def _weights(run) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "model.safetensors")


def test_settings_object_and_keywords_train_the_same_network(tmp_path):
    train, heldout = _images(4, 0), _images(2, 1)
    options = {"epochs": 1, "batch_size": 2, "width": 4, "crop_size": 8, "seed": 3}
    by_keywords = train_segmentation(train, heldout, len(CLASS_NAMES), tmp_path / "a", **options, **QUIET)
    # an object with some fields, the rest as keywords over it
    mixed = train_segmentation(train, heldout, len(CLASS_NAMES), tmp_path / "b",
                               settings=TrainSettings(epochs=1, seed=3, **QUIET), batch_size=2, width=4, crop_size=8)
    first, other = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert first and other.keys() == first.keys()
    for name in first:
        assert torch.equal(first[name], other[name]), name
    assert by_keywords.mean_iou == mixed.mean_iou

def test_series_take_the_same_settings_object(tmp_path):
    settings = TrainSettings(epochs=1, batch_size=2, width=2, hidden=2, crop_size=8, seed=1, **QUIET)
    train, heldout = _series(3, 0), _series(2, 1)
    by_object = train_series(train, heldout, 5, tmp_path / "a", settings=settings, single_date_baseline=False)
    by_keywords = train_series(train, heldout, 5, tmp_path / "b", single_date_baseline=False,
                               **{f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
                                  if f.name != "single_date_baseline"})
    first, other = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert first.keys() == other.keys() and all(torch.equal(first[k], other[k]) for k in first)
    assert by_object.mean_iou == by_keywords.mean_iou
    # series defaults differ from images' where the kind says so
    assert settings_for("series", None, {}).epochs == KIND_DEFAULTS["series"]["epochs"] == 12
    assert settings_for("images", None, {}).epochs == KIND_DEFAULTS["images"]["epochs"] == 30
    # a schedule asked for is kept, whatever the kind's default: None is "constant", not "default"
    assert settings_for("images", None, {"scheduler": None}).scheduler is None
    assert settings_for("series", None, {"scheduler": "cosine"}).scheduler == "cosine"
    assert settings_for("images", None, {}).scheduler == "cosine" and settings_for("series", None, {}).scheduler is None


@pytest.mark.parametrize(("kind", "options", "message"), [
    ("images", {"epoch": 2}, "Unknown training setting 'epoch' (did you mean 'epochs'"),
    ("images", {"crops_per_series": 2}, "crops_per_series: not a setting for single images"),
    ("images", {"single_date_baseline": False}, "single_date_baseline: not a setting for single images"),
    ("series", {"devices": 2}, "devices: not a setting for image time series (a time-series run trains in one"),
    ("series", {"precision": "bf16-mixed"}, "Received precision='bf16-mixed'"),
    ("images", {"epochs": 0}, "epochs"),
    ("series", {"rare_share": 1.5}, "rare_share must be in [0, 1]. Received rare_share=1.5"),
    ("images", {"scheduler": "linear"}, "scheduler must be 'cosine' or None"),
    ("images", {"weighting": None}, "weighting=None"),
])
def test_bad_settings_are_refused_before_anything_is_written(kind, options, message, tmp_path):
    with pytest.raises(ShapeError) as caught:
        settings_for(kind, None, options)
    assert message in str(caught.value)
    out = tmp_path / "run"
    with pytest.raises(ShapeError) as through:
        if kind == "images":
            train_segmentation(_images(2, 0), _images(1, 1), len(CLASS_NAMES), out, **options, **QUIET)
        else:
            train_series(_series(2, 0), _series(1, 1), 5, out, **options, **QUIET)
    assert message in str(through.value) and not out.exists()


def test_num_classes_is_checked_for_both_kinds(tmp_path):
    with pytest.raises(ShapeError, match="num_classes"):
        train_segmentation(_images(2, 0), _images(1, 1), 1, tmp_path / "a", **QUIET)
    with pytest.raises(ShapeError, match="num_classes"):
        train_series(_series(2, 0), _series(1, 1), 1.5, tmp_path / "b", **QUIET)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_network_of_the_other_kind_is_refused_naming_it(tmp_path):
    with pytest.raises(ShapeError, match=r"UTAE reads image time series .* these are single images"):
        train_segmentation(_images(2, 0), _images(1, 1), len(CLASS_NAMES), tmp_path / "a", epochs=1, **QUIET,
                           model_spec={"library": "cnnkit", "architecture": "UTAE"})
    with pytest.raises(ShapeError, match=r"series family, such as SeriesSegNet. Received Unet/resnet18"):
        train_series(_series(2, 0), _series(1, 1), 5, tmp_path / "b", epochs=1, **QUIET,
                     model_spec={"library": "smp", "architecture": "Unet", "encoder": "resnet18"})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_every_setting_is_documented_once():
    doc = TrainSettings.__doc__
    for name in SETTING_NAMES:
        assert f"        {name}:" in doc or f", {name}" in doc or f"{name}, " in doc, name
