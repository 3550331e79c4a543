"""Keras compatibility: weight layouts, and Keras model files in, PyTorch modules out.

* :mod:`cnnkit.keras.layouts` — the one place that knows each Keras weight layout (:func:`to_keras`,
  :func:`from_keras`, :func:`keras_shapes`, :func:`register_layout`).
* :func:`load` — read a ``.keras`` archive or legacy ``.h5`` file with ``zipfile``, ``json`` and ``h5py``
  alone (no TensorFlow, nothing unpickled, no code from the file run) and build the equivalent PyTorch
  module plus a report of every layout conversion (:mod:`cnnkit.keras.convert`).
* :func:`save_safetensors` — write a module's weights as safetensors.

See ``docs/keras.md``.
"""

from cnnkit.keras.layouts import (
    KerasLayout,
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
    "from_keras",
    "has_keras_layout",
    "keras_shapes",
    "load",
    "register_layout",
    "save_safetensors",
    "supported_layers",
    "to_keras",
]

# The reader builds cnnkit.nn modules, and cnnkit.nn imports cnnkit.keras.layouts: import lazily.
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
