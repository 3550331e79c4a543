"""Keras compatibility: weight layouts today; reading ``.keras``/``.h5`` files is planned (issue 7)."""

from cnnkit.keras.layouts import (
    KerasLayout,
    from_keras,
    has_keras_layout,
    keras_shapes,
    register_layout,
    to_keras,
)

__all__ = ["KerasLayout", "from_keras", "has_keras_layout", "keras_shapes", "register_layout", "to_keras"]
