"""Network specs as untrusted input: every tampered form refused with a CnnkitError that names the field and the
rule, before anything is built; names and arguments checked against the builders' own signatures."""

from __future__ import annotations

import json

import pytest

import cnnkit.models as models
from cnnkit.errors import CnnkitError
from cnnkit.models import ModelSpec, parse_spec, resolve, spec_for
from cnnkit.models.spec import MAX_JSON_DEPTH


def _deep(levels: int) -> list:
    """A list nested ``levels`` deep, built without recursion."""
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


TAMPERED_FORMS = [
    (None, "must be an object"),
    (["Unet"], "must be an object"),
    ({"library": "smp", "architecture": "Unet", "encoder": "resnet18", "code": "import os"}, "keys no spec has"),
    ({"library": "pickle", "architecture": "Unet"}, "library'] must be one of"),
    ({"library": "cnnkit", "architecture": ["TinySegNet"]}, "architecture'] must be a non-empty string"),
    ({"library": "cnnkit", "architecture": ""}, "architecture'] must be a non-empty string"),
    ({"library": "cnnkit", "architecture": "x" * 10_000}, "at most 200 characters"),
    ({"library": "smp", "architecture": "Unet"}, "encoder'] must name an encoder"),
    ({"library": "smp", "architecture": "Unet", "encoder": 18}, "encoder'] must be a non-empty string"),
    ({"library": "cnnkit", "architecture": "TinySegNet", "encoder": "resnet18"}, "only for library 'smp'"),
    ({"library": "cnnkit", "architecture": "TinySegNet", "args": [16]}, "args'] must be an object"),
    ({"library": "cnnkit", "architecture": "TinySegNet", "args": {"width": float("nan")}}, "finite number"),
    ({"library": "cnnkit", "architecture": "TinySegNet", "args": {"width": float("inf")}}, "finite number"),
    ({"library": "cnnkit", "architecture": "TinySegNet", "args": {"width": 100_000}}, "from -4096 to 4096"),
    ({"library": "cnnkit", "architecture": "TinySegNet", "args": {"width": 10**5000}}, "too long to print"),
    ({"library": "cnnkit", "architecture": "TinySegNet", "args": {"width": _deep(200_000)}}, "nested deeper"),
    ({"library": "cnnkit", "architecture": "TinySegNet", "args": {"width": list(range(100))}}, "has 100 items"),
    ({"library": "cnnkit", "architecture": "TinySegNet", "args": {"width": "w" * 1000}}, "at most 200 characters"),
    ({"library": "cnnkit", "architecture": "TinySegNet", "args": {"width": {1: 2}}}, "non-empty string keys"),
    ({"library": "cnnkit", "architecture": "TinySegNet", "args": {"width": object()}}, "must be a JSON value"),
]


@pytest.mark.parametrize(("data", "words"), TAMPERED_FORMS)
def test_tampered_forms_are_refused_with_the_rule(data, words):
    with pytest.raises(CnnkitError, match=words):
        parse_spec(data)


def test_depth_limit_is_exact():
    parse_spec({"library": "cnnkit", "architecture": "TinySegNet", "args": {"a": _deep(MAX_JSON_DEPTH - 1)}})
    with pytest.raises(CnnkitError, match="nested deeper"):
        parse_spec({"library": "cnnkit", "architecture": "TinySegNet", "args": {"a": _deep(MAX_JSON_DEPTH)}})


def test_round_trip_through_json():
    spec = ModelSpec("smp", "Unet", "resnet18", {"decoder_channels": [64, 32, 16, 8, 4]})
    again = parse_spec(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.label() == "Unet/resnet18"
    assert parse_spec(spec) == spec


TAMPERED_ARGUMENTS = [
    ({"library": "cnnkit", "architecture": "TinySegNet", "args": {"width": True}}, r"must be int \(TinySegNet"),
    ({"library": "cnnkit", "architecture": "TinySegNet", "args": {"width": 16.0}}, r"must be int \(TinySegNet"),
    ({"library": "cnnkit", "architecture": "TinySegNet", "args": {"widht": 16}}, r"no argument 'widht'.*'width'"),
    ({"library": "cnnkit", "architecture": "TinySegNet", "args": {"num_classes": 3}}, "set by cnnkit.models.build"),
    ({"library": "cnnkit", "architecture": "TinyResNet", "args": {"features_only": 1}}, "must be bool"),
    ({"library": "cnnkit", "architecture": "TinySegNt"}, r"Unknown cnnkit network 'TinySegNt'.*'TinySegNet'"),
    ({"library": "smp", "architecture": "Unte", "encoder": "resnet18"}, r"Unknown smp architecture.*'Unet'"),
    ({"library": "smp", "architecture": "Unet", "encoder": "resnet_18"}, r"Unknown encoder 'resnet_18'.*'resnet18'"),
    ({"library": "smp", "architecture": "Unet", "encoder": "tu-resnet_18"}, r"Unknown encoder.*'tu-resnet18'"),
    ({"library": "smp", "architecture": "Unet", "encoder": "resnet18", "args": {"decoder_channels": 16}},
     r"decoder_channels'\] must be Sequence\[int\]"),
    ({"library": "smp", "architecture": "Unet", "encoder": "resnet18", "args": {"decoder_channels": [16, True]}},
     r"must be Sequence\[int\]"),
    ({"library": "smp", "architecture": "Unet", "encoder": "resnet18", "args": {"encoder_weights": "imagenet"}},
     "set by cnnkit.models.build"),
    ({"library": "smp", "architecture": "Unet", "encoder": "resnet18", "args": {"activation": "softmax"}},
     "take logits"),
    ({"library": "smp", "architecture": "Unet", "encoder": "resnet18", "args": {"aux_params": {"classes": 2}}},
     "second, image-level output"),
    # smp hands **kwargs to timm.create_model, which reads checkpoint files named in them: not reachable.
    ({"library": "smp", "architecture": "Unet", "encoder": "tu-resnet18", "args": {"checkpoint_path": "/etc/x"}},
     "takes no argument 'checkpoint_path'"),
    ({"library": "smp", "architecture": "DeepLabV3Plus", "encoder": "resnet18", "args": {"encoder_output_stride": 4}},
     r"must be Literal\[8, 16\]"),
    ({"library": "smp", "architecture": "FPN", "encoder": "resnet18", "args": {"decoder_dropout": "0.2"}},
     "must be float"),
]


@pytest.mark.parametrize(("data", "words"), TAMPERED_ARGUMENTS)
def test_names_and_arguments_are_checked_against_the_builders(data, words):
    with pytest.raises(CnnkitError, match=words):
        resolve(data)


def test_accepted_arguments_reach_the_builder():
    builder = resolve({"library": "smp", "architecture": "Unet", "encoder": "resnet18",
                       "args": {"decoder_channels": [32, 16, 8, 8, 4], "decoder_attention_type": None}})
    assert builder.spec.args["decoder_channels"] == [32, 16, 8, 8, 4]
    # an int where a float is annotated is a number; a Literal takes exactly its values
    resolve({"library": "smp", "architecture": "DeepLabV3Plus", "encoder": "resnet18",
             "args": {"encoder_output_stride": 8, "decoder_aspp_dropout": 0}})
    # Union[bool, str, Dict[str, Any]]: each form fits
    for norm in (False, "instancenorm", {"type": "layernorm"}):
        resolve({"library": "smp", "architecture": "Unet", "encoder": "resnet18", "args": {"decoder_use_norm": norm}})


def test_unregistered_user_network_says_what_to_do():
    with pytest.raises(CnnkitError, match=r"'NoSuchNet' of library 'user'.*cnnkit.models.register\('NoSuchNet', "
                                          r"builder\) in the process"):
        resolve({"library": "user", "architecture": "NoSuchNet"})


def test_spec_for_finds_the_library_and_suggests_names():
    assert spec_for("TinySegNet").library == "cnnkit"
    unet = spec_for("Unet")
    assert (unet.library, unet.encoder) == ("smp", "resnet34")  # smp's own default encoder
    with pytest.raises(CnnkitError, match=r"Closest: \['Unet'"):
        spec_for("unet")


def test_public_names():
    assert {"build", "spec_for", "parse_spec", "ModelSpec", "register", "check_state_dict", "read_header",
            "load_weights", "adapt_stem", "adapted_stem_weight", "training_defaults", "FAMILY_DEFAULTS",
            "describe_models", "MODELS", "TinySegNet", "TinyResNet", "SeriesSegNet"} <= set(models.__all__)
    for name in models.__all__:
        assert hasattr(models, name), name
