"""Keras compatibility: weight layouts, and Keras model files in, PyTorch modules out.

* weight layouts (:func:`to_keras`, :func:`from_keras`, :func:`keras_shapes`, :func:`register_layout`,
  :func:`find_layout`),
  re-exported from the ground floor's :mod:`cnnkit.layouts`, the one place that knows each Keras layout.
* :func:`load` — read a ``.keras`` archive or legacy ``.h5`` file with ``zipfile``, ``json`` and ``h5py``
  alone (no TensorFlow, nothing unpickled, no code from the file run) and build the equivalent PyTorch
  module plus a report of every layout conversion (:mod:`cnnkit.keras.convert`).
* :func:`save_safetensors` — write a module's weights as safetensors.

See ``docs/keras.md``.
"""

from cnnkit.layouts import (
    KerasLayout,
    find_layout,
    from_keras,
    has_keras_layout,
    keras_shapes,
    register_layout,
    to_keras,
)

__all__ = [
    "MAX_BYTES",
    "MAX_LAYER_PARAMS",
    "ConversionReport",
    "KerasFileError",
    "KerasLayout",
    "KerasModel",
    "LayerConversion",
    "LoadedModel",
    "find_layout",
    "from_keras",
    "has_keras_layout",
    "keras_shapes",
    "load",
    "register_layout",
    "save_safetensors",
    "supported_layers",
    "to_keras",
]

# The converter builds cnnkit.nn modules (floor 2) and pulls in h5py: imported on first use.
_LAZY = {
    "MAX_BYTES": "cnnkit.keras.convert",
    "MAX_LAYER_PARAMS": "cnnkit.keras.convert",
    "ConversionReport": "cnnkit.keras.convert",
    "KerasModel": "cnnkit.keras.convert",
    "LayerConversion": "cnnkit.keras.convert",
    "LoadedModel": "cnnkit.keras.convert",
    "load": "cnnkit.keras.convert",
    "supported_layers": "cnnkit.keras.convert",
    "KerasFileError": "cnnkit.keras.reader",
    "save_safetensors": "cnnkit.keras.export",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cnnkit.keras' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
