"""The demo command end to end, and the public API surface."""

from __future__ import annotations

import io

from rich.console import Console

import cnnkit
from cnnkit.app import run_demo


def test_demo_prints_the_seed_answers_and_a_summary():
    buffer = io.StringIO()
    run_demo(Console(file=buffer, width=160, color_system=None), height=32, width=48)
    text = buffer.getvalue()
    assert "output (20, 24, 24)" in text  # 28 − 5 + 1
    assert "output (20, 32, 32)" in text  # 28 + 5 − 1
    assert "kernel (5, 300, 111)" in text
    assert "kernel (2000, 4800)" in text
    assert "kernel (16, 36, 4), bias (4, 4, 4)" in text
    assert "TinySegNet on input (1, 4, 32, 48)" in text
    assert "Total params:" in text


def test_public_api_names():
    expected = {
        "CnnkitError", "Explanation", "ShapeError", "UnsupportedError", "conv_output_size",
        "conv_transpose_output_size", "errors", "explain", "pool_output_size", "register_explainer", "shapes",
        "summary", "Summary", "explainers", "keras", "init", "masking", "masked", "pad_batch", "PaddedBatch",
        "collate_padded", "nn", "losses", "data", "render", "inspect", "pixel_cross_entropy", "PixelCrossEntropy",
        "class_weights",
    }
    assert expected <= set(cnnkit.__all__)
    for name in cnnkit.__all__:
        assert hasattr(cnnkit, name), name
    assert {"conv_output_size", "tf_same_padding", "padding_amounts", "pool_output_size",
            "conv_transpose_output_size", "ReceptiveField", "receptive_fields"} <= set(cnnkit.shapes.__all__)
    assert {"explain", "summary", "register_explainer", "LayerReport"} <= set(cnnkit.explainers.__all__)
    from cnnkit import app, data, models, predict

    assert {"train_segmentation", "train_folder", "train_demo", "run_training_demo", "load_predictor",
            "predict_files", "SegmentationRun"} <= set(app.__all__)
    assert {"Predictor", "Preprocessing", "Prediction", "tile_geometry", "tiled_forward", "plan_tiles",
            "open_scene"} <= set(predict.__all__)
    assert {"SyntheticLandCover", "crop_series", "band_statistics"} <= set(data.__all__)
    assert {"TinySegNet", "SeriesSegNet", "MODELS"} <= set(models.__all__)
    for module in (app, predict, data, models):
        for name in module.__all__:
            assert hasattr(module, name), (module.__name__, name)


def test_readme_examples_run():
    import doctest
    from pathlib import Path

    readme = Path(__file__).parents[1] / "README.md"
    result = doctest.testfile(str(readme), module_relative=False,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 10 and result.failed == 0


def test_wrong_kinds_of_arguments_are_cnnkit_errors():
    """A list where a module is expected: a CnnkitError (and still a TypeError for code that catches that)."""
    import pytest

    from cnnkit.errors import ArgumentTypeError
    from cnnkit.render import legend

    for call in (lambda: cnnkit.explain([1], (3, 8, 8)), lambda: cnnkit.summary("net", (3, 8, 8)),
                 lambda: legend(5)):
        with pytest.raises(ArgumentTypeError, match="Received") as caught:
            call()
        assert isinstance(caught.value, (cnnkit.CnnkitError, TypeError))
