"""cnnkit: convolutional networks on real-world data."""

from cnnkit import errors, shapes
from cnnkit.errors import CnnkitError, ShapeError, UnsupportedError
from cnnkit.explain import Explanation, explain, register_explainer
from cnnkit.shapes import conv_output_size, conv_transpose_output_size, pool_output_size

__version__ = "0.1.0"

__all__ = [
    "CnnkitError",
    "Explanation",
    "ShapeError",
    "UnsupportedError",
    "conv_output_size",
    "conv_transpose_output_size",
    "errors",
    "explain",
    "pool_output_size",
    "register_explainer",
    "shapes",
]
