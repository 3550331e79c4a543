"""How the converter's Keras convolutions are explained (:func:`cnnkit.explain`, :func:`cnnkit.summary`).

A Keras ``Conv1D/2D`` (:class:`cnnkit.keras.modules.KerasConv1d` / ``KerasConv2d``) adds TensorFlow's zeros in
``forward`` instead of through ``nn.Conv*d``'s ``padding``, so it is explained with Keras's padding rule. The
registration lives here, on the Keras floor, because the explainers (floor 3) must not import ``cnnkit.keras``;
:mod:`cnnkit.keras.modules` imports this file.
"""

from __future__ import annotations

from cnnkit.explainers.layers import conv_report
from cnnkit.explainers.registry import LayerReport, register_explainer
from cnnkit.keras.modules.convolutional import _KerasConv

__all__: list[str] = []


@register_explainer(_KerasConv)
def _explain_keras_conv(module, input_shape: tuple[int, ...]) -> LayerReport:
    """A Keras convolution is explained with Keras's padding rule (zeros added in ``forward``)."""
    return conv_report(module, input_shape, module.keras_padding)
