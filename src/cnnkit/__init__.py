"""cnnkit: convolutional networks on real-world data."""

from cnnkit import errors, explainers, keras, shapes
from cnnkit.errors import CnnkitError, ShapeError, UnsupportedError
from cnnkit.explainers import Explanation, Summary, explain, register_explainer, summary
from cnnkit.shapes import conv_output_size, conv_transpose_output_size, pool_output_size

__version__ = "0.1.0"

__all__ = [
    "CnnkitError",
    "Explanation",
    "ShapeError",
    "Summary",
    "UnsupportedError",
    "conv_output_size",
    "conv_transpose_output_size",
    "errors",
    "explain",
    "explainers",
    "keras",
    "pool_output_size",
    "register_explainer",
    "shapes",
    "summary",
]
