"""cnnkit: convolutional networks on real-world data.

The most used names are here; each domain has its own package: ``cnnkit.shapes``, ``cnnkit.explainers``,
``cnnkit.masking``, ``cnnkit.nn``, ``cnnkit.init``, ``cnnkit.keras``, ``cnnkit.losses``, ``cnnkit.metrics``,
``cnnkit.data``, ``cnnkit.render``, ``cnnkit.inspect``, ``cnnkit.predict``, ``cnnkit.train`` and the
applications ``cnnkit.app`` (these two load Lightning).

Names are imported on first use (``import cnnkit`` alone does not import torch), so the command line answers
``--help`` and ``--version`` at once.
"""

from __future__ import annotations

from cnnkit._lazy import lazy_names

__version__ = "0.1.0"

_SUBPACKAGES = ("data", "errors", "explainers", "init", "inspect", "keras", "losses", "masking", "nn", "render",
                "shapes")
_NAMES = {
    "CnnkitError": "cnnkit.errors",
    "ShapeError": "cnnkit.errors",
    "UnsupportedError": "cnnkit.errors",
    "Explanation": "cnnkit.explainers",
    "Summary": "cnnkit.explainers",
    "explain": "cnnkit.explainers",
    "register_explainer": "cnnkit.explainers",
    "summary": "cnnkit.explainers",
    "PixelCrossEntropy": "cnnkit.losses",
    "class_weights": "cnnkit.losses",
    "pixel_cross_entropy": "cnnkit.losses",
    "PaddedBatch": "cnnkit.masking",
    "collate_padded": "cnnkit.masking",
    "masked": "cnnkit.masking",
    "pad_batch": "cnnkit.masking",
    "conv_output_size": "cnnkit.shapes",
    "conv_transpose_output_size": "cnnkit.shapes",
    "pool_output_size": "cnnkit.shapes",
}

__all__ = sorted([*_SUBPACKAGES, *_NAMES])


__getattr__, __dir__ = lazy_names(__name__, _NAMES, globals(), _SUBPACKAGES)
