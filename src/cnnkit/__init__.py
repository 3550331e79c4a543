"""cnnkit: convolutional networks on real-world data.

The most used names are here; each domain has its own package: ``cnnkit.shapes``, ``cnnkit.explainers``,
``cnnkit.masking``, ``cnnkit.nn``, ``cnnkit.init``, ``cnnkit.keras``.
"""

from cnnkit import errors, explainers, init, keras, masking, nn, shapes
from cnnkit.errors import CnnkitError, ShapeError, UnsupportedError
from cnnkit.explainers import Explanation, Summary, explain, register_explainer, summary
from cnnkit.masking import PaddedBatch, collate_padded, masked, pad_batch
from cnnkit.shapes import conv_output_size, conv_transpose_output_size, pool_output_size

__version__ = "0.1.0"

__all__ = [
    "CnnkitError",
    "Explanation",
    "PaddedBatch",
    "ShapeError",
    "Summary",
    "UnsupportedError",
    "collate_padded",
    "conv_output_size",
    "conv_transpose_output_size",
    "errors",
    "explain",
    "explainers",
    "init",
    "keras",
    "masked",
    "masking",
    "nn",
    "pad_batch",
    "pool_output_size",
    "register_explainer",
    "shapes",
    "summary",
]
