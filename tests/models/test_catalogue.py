"""describe_models rows against smp's own counts, and the training defaults table."""

from __future__ import annotations

import warnings

import pytest
import torch

from cnnkit.models import FAMILY_DEFAULTS, describe_models, training_defaults
from cnnkit.models.spec import FAMILIES

smp = pytest.importorskip("segmentation_models_pytorch")


def test_rows_count_what_smp_builds():
    rows = describe_models(6, 3, encoders=["resnet18"])
    by_name = {(r.library, r.architecture): r for r in rows}
    assert {name for library, name in by_name if library == "cnnkit"} == {"TinySegNet", "TinyResNet", "SeriesSegNet",
                                                                                "UTAE"}
    for cls in smp.MODEL_ARCHITECTURES_MAPPING.values():
        row = by_name["smp", cls.__name__]
        assert row.encoder == "resnet18"
        if cls.__name__ == "DPT":  # a ViT decoder: the row says why it has no count
            assert row.parameters is None and "could not be built" in row.note
            continue
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            reference = cls("resnet18", encoder_weights=None, in_channels=6, classes=3)
        assert row.parameters == sum(p.numel() for p in reference.parameters()), cls.__name__
        assert row.note == ""
        assert row.family == "convolutional"  # on a ResNet, Segformer's decoder too


def test_defaults_table():
    assert set(FAMILY_DEFAULTS) == set(FAMILIES)
    for row in FAMILY_DEFAULTS.values():
        assert row.optimizer == "adamw" and 0 < row.lr <= 1e-2 and row.schedule in ("cosine", None)
        assert 0 < row.encoder_lr_factor <= 1 and row.warmup_epochs >= 0
    with pytest.raises(TypeError):
        FAMILY_DEFAULTS["cnnkit"] = FAMILY_DEFAULTS["transformer"]  # read-only


def test_cnnkit_defaults_are_what_the_applications_use_today():
    from cnnkit.app.settings import KIND_DEFAULTS, TrainSettings

    tiny = training_defaults({"library": "cnnkit", "architecture": "TinySegNet"})
    # lr=None takes the family's rate: for TinySegNet the 0.01 the demo has always trained with, and the images'
    # cosine schedule is that family's; the series' constant rate is the ConvLSTM family's
    assert TrainSettings().lr is None and (tiny.lr, tiny.schedule) == (0.01, KIND_DEFAULTS["images"]["scheduler"])
    recurrent = training_defaults({"library": "cnnkit", "architecture": "SeriesSegNet"})
    assert (recurrent.lr, recurrent.schedule) == (0.01, KIND_DEFAULTS["series"]["scheduler"])
    assert training_defaults({"library": "smp", "architecture": "Unet", "encoder": "resnet18"}).lr == 1e-3
    for spec in ({"library": "smp", "architecture": "Segformer", "encoder": "mit_b0"},
                 {"library": "smp", "architecture": "Unet", "encoder": "mit_b2"},
                 {"library": "smp", "architecture": "DPT", "encoder": "tu-vit_tiny_patch16_224"}):
        assert training_defaults(spec) == FAMILY_DEFAULTS["transformer"]
