"""cnnkit: convolutional networks on real-world data.

The most used names are here; each domain has its own package: ``cnnkit.shapes``, ``cnnkit.explainers``,
``cnnkit.masking``, ``cnnkit.nn``, ``cnnkit.init``, ``cnnkit.keras``, ``cnnkit.losses``, ``cnnkit.metrics``,
``cnnkit.data``, ``cnnkit.render``, ``cnnkit.inspect``, ``cnnkit.train`` (imported on demand: it loads Lightning).
"""

from cnnkit import data, errors, explainers, init, inspect, keras, losses, masking, nn, render, shapes
from cnnkit.errors import CnnkitError, ShapeError, UnsupportedError
from cnnkit.explainers import Explanation, Summary, explain, register_explainer, summary
from cnnkit.losses import PixelCrossEntropy, class_weights, pixel_cross_entropy
from cnnkit.masking import PaddedBatch, collate_padded, masked, pad_batch
from cnnkit.shapes import conv_output_size, conv_transpose_output_size, pool_output_size

__version__ = "0.1.0"

__all__ = [
    "CnnkitError",
    "Explanation",
    "PaddedBatch",
    "PixelCrossEntropy",
    "ShapeError",
    "Summary",
    "UnsupportedError",
    "class_weights",
    "collate_padded",
    "conv_output_size",
    "conv_transpose_output_size",
    "data",
    "errors",
    "explain",
    "explainers",
    "init",
    "inspect",
    "keras",
    "losses",
    "masked",
    "masking",
    "nn",
    "pad_batch",
    "pixel_cross_entropy",
    "pool_output_size",
    "register_explainer",
    "render",
    "shapes",
    "summary",
]
