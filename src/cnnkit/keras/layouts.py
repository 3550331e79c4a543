"""The Keras weight layouts of the converter's own modules (:mod:`cnnkit.keras.modules`).

Most modules of :mod:`cnnkit.keras.modules` subclass a torch or cnnkit layer whose layout the ground floor's
:mod:`cnnkit.layouts` (or :mod:`cnnkit.nn`) already registers (``nn.Linear``, ``nn.Conv*d``, ``nn.LSTM``,
``LocallyConnected*d``, ``ConvLSTM2d`` …). The modules below have no such base class; their layouts are
registered here, with :func:`cnnkit.layouts.register_layout`, when :mod:`cnnkit.keras.modules` is imported.

=====================  ===========================================  ============================================
module                 torch tensors                                Keras weights
=====================  ===========================================  ============================================
KerasDepthwiseConv     weight (C·M, 1, *k), bias                    depthwise_kernel (*k, C, M), bias
KerasSeparableConv     depthwise_weight (C·M, 1, *k),               depthwise_kernel (*k, C, M),
                       pointwise_weight (out, C·M, *1), bias        pointwise_kernel (*1, C·M, out), bias
KerasConvTranspose     weight (in, out, *k), bias                   kernel (*k, out, in), bias
KerasNormalization     mean, variance, count                        mean, variance, count
ChannelScale           gamma                                        gamma (``LayerScale``)
ChannelsLastNorm       weight, bias                                 gamma, beta
KerasPReLU             alpha                                        alpha
=====================  ===========================================  ============================================
"""

from __future__ import annotations

from collections.abc import Sequence

from cnnkit.keras.modules.activations import KerasPReLU
from cnnkit.keras.modules.convolutional import KerasConvTranspose, KerasDepthwiseConv, KerasSeparableConv
from cnnkit.keras.modules.normalization import ChannelScale, ChannelsLastNorm
from cnnkit.keras.modules.preprocessing import KerasNormalization
from cnnkit.layouts import KerasLayout, register_layout

__all__: list[str] = []


def _depthwise_to_keras(m, s):
    k = s["weight"].shape[2:]
    kernel = s["weight"].reshape(m.in_channels, m.depth_multiplier, *k).permute(*range(2, 2 + len(k)), 0, 1)
    return {"depthwise_kernel": kernel, **({"bias": s["bias"]} if s.get("bias") is not None else {})}


def _depthwise_to_torch(m, a):
    kernel = a["depthwise_kernel"]  # (*k, C, M)
    n = kernel.dim() - 2
    weight = kernel.permute(n, n + 1, *range(n)).reshape(m.in_channels * m.depth_multiplier, 1, *kernel.shape[:n])
    return {"weight": weight, **({"bias": a["bias"]} if "bias" in a else {})}


def _separable_to_keras(m, s):
    n = len(m.kernel_size)
    dw = _depthwise_to_keras(m, {"weight": s["depthwise_weight"]})["depthwise_kernel"]
    pw = s["pointwise_weight"].permute(*range(2, 2 + n), 1, 0)
    out = {"depthwise_kernel": dw, "pointwise_kernel": pw}
    if s.get("bias") is not None:
        out["bias"] = s["bias"]
    return out


def _separable_to_torch(m, a):
    n = len(m.kernel_size)
    out = {"depthwise_weight": _depthwise_to_torch(m, {"depthwise_kernel": a["depthwise_kernel"]})["weight"],
           "pointwise_weight": a["pointwise_kernel"].permute(n + 1, n, *range(n))}
    if "bias" in a:
        out["bias"] = a["bias"]
    return out


def _transpose_to_keras(m, s):
    n = len(m.kernel_size)
    out = {"kernel": s["weight"].permute(*range(2, 2 + n), 1, 0)}  # (in, out, *k) → (*k, out, in)
    if s.get("bias") is not None:
        out["bias"] = s["bias"]
    return out


def _transpose_to_torch(m, a):
    n = len(m.kernel_size)
    out = {"weight": a["kernel"].permute(n + 1, n, *range(n))}
    if "bias" in a:
        out["bias"] = a["bias"]
    return out


def _renamed(cls_name: str, pairs: Sequence[tuple[str, str]]):
    """A layout that only renames (torch name, Keras name) pairs."""
    return KerasLayout(lambda m: cls_name,
                       lambda m, s: {k: s[t] for t, k in pairs if s.get(t) is not None},
                       lambda m, a: {t: a[k] for t, k in pairs if k in a})


register_layout(KerasDepthwiseConv, layout=KerasLayout(lambda m: "DepthwiseConv", _depthwise_to_keras,
                                                       _depthwise_to_torch))
register_layout(KerasSeparableConv, layout=KerasLayout(lambda m: "SeparableConv", _separable_to_keras,
                                                       _separable_to_torch))
register_layout(KerasConvTranspose, layout=KerasLayout(lambda m: "ConvTranspose", _transpose_to_keras,
                                                       _transpose_to_torch))
register_layout(KerasNormalization, layout=_renamed("Normalization", [("mean", "mean"), ("variance", "variance"),
                                                                      ("count", "count")]))
register_layout(ChannelScale, layout=_renamed("LayerScale", [("gamma", "gamma")]))
register_layout(ChannelsLastNorm, layout=_renamed("LayerNormalization", [("weight", "gamma"), ("bias", "beta")]))
register_layout(KerasPReLU, layout=_renamed("PReLU", [("alpha", "alpha")]))
