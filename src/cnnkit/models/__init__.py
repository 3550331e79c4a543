"""Networks by name: cnnkit's small ones, segmentation-models-pytorch's architectures on any encoder, and builders
of the user's own, built safely from the JSON spec a run folder stores.

- :mod:`~cnnkit.models.tiny`, :mod:`~cnnkit.models.series`, :mod:`~cnnkit.models.utae`: cnnkit's networks
  (:class:`TinySegNet`, :class:`TinyResNet`, :class:`SeriesSegNet`, :class:`UTAE`): small enough to train in
  seconds on a CPU, exact on padded batches.
- :mod:`~cnnkit.models.spec`: the spec (``{"library", "architecture", "encoder", "args"}``) and its form checks,
  torch-free.
- :mod:`~cnnkit.models.registry`: the names a spec may use (:data:`MODELS`, smp's architectures and encoders,
  :func:`register`), each argument checked against its builder's signature.
- :mod:`~cnnkit.models.factory`: :func:`build`, on the meta device first (parameter budget, output shape,
  weights header), then for real.
- :mod:`~cnnkit.models.weights`: weights files as untrusted input (:func:`read_header`,
  :func:`check_state_dict`, :func:`load_weights`).
- :mod:`~cnnkit.models.stem`: a pretrained RGB first layer adapted to any bands (:func:`adapt_stem`).
- :mod:`~cnnkit.models.pretrained`: ``weights="imagenet"`` through smp's and timm's download and cache.
- :mod:`~cnnkit.models.defaults`: training defaults per family (:data:`FAMILY_DEFAULTS`).
- :mod:`~cnnkit.models.catalogue`: :func:`describe_models`, rows for a ``cnnkit models`` table.

segmentation-models-pytorch and timm are imported only when a spec or a listing needs them. See docs/models.md.

Examples:
    >>> import torch
    >>> spec = spec_for("TinySegNet", args={"width": 8})
    >>> net = build(spec, in_channels=5, num_classes=3)
    >>> net(torch.zeros(2, 5, 32, 32)).shape
    torch.Size([2, 3, 32, 32])
"""

from cnnkit.models.catalogue import ModelRow, describe_models
from cnnkit.models.defaults import FAMILY_DEFAULTS, TrainingDefaults, training_defaults
from cnnkit.models.factory import build, count_parameters
from cnnkit.models.registry import (
    MODELS,
    check_encoder,
    family_of,
    list_architectures,
    list_encoders,
    register,
    resolve,
    spec_for,
)
from cnnkit.models.series import SeriesSegNet
from cnnkit.models.spec import MAX_CHANNELS, MAX_CLASSES, MAX_PARAMETERS, ModelSpec, parse_spec
from cnnkit.models.stem import COLOURS, adapt_stem, adapted_stem_weight, stem_convolutions
from cnnkit.models.tiny import TinyResNet, TinySegNet
from cnnkit.models.utae import UTAE
from cnnkit.models.weights import StateDictDiff, check_state_dict, load_weights, read_header, regular_file

__all__ = [
    "COLOURS",
    "FAMILY_DEFAULTS",
    "MAX_CHANNELS",
    "MAX_CLASSES",
    "MAX_PARAMETERS",
    "MODELS",
    "UTAE",
    "ModelRow",
    "ModelSpec",
    "SeriesSegNet",
    "StateDictDiff",
    "TinyResNet",
    "TinySegNet",
    "TrainingDefaults",
    "adapt_stem",
    "adapted_stem_weight",
    "build",
    "check_encoder",
    "check_state_dict",
    "count_parameters",
    "describe_models",
    "family_of",
    "list_architectures",
    "list_encoders",
    "load_weights",
    "parse_spec",
    "read_header",
    "register",
    "regular_file",
    "resolve",
    "spec_for",
    "stem_convolutions",
    "training_defaults",
]
