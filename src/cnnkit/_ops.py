"""The op catalogue: what each torch function and module does to positions, in one place.

Read by :func:`cnnkit.masked` (which ops may run on a padded batch and how), by
:func:`cnnkit.explainers.summary` (which ops keep a receptive field) and by the CNN→RNN bridge
(:func:`cnnkit.masking.feature_sizes`: which modules keep spatial sizes, and the window geometry of the
others). Every table is keyed by function object or module class, never by name.

* :data:`POINTWISE` — unary element-wise functions (each output position reads only the same input position).
* :data:`ZERO_PRESERVING` — the point-wise functions with ``f(0) == 0``.
* :data:`FINITE_PRESERVING` — point-wise functions finite wherever their input is (no overflow, pole or NaN).
* :data:`SINGULAR_AT_ZERO` — point-wise functions not finite (or not differentiable) at 0.
* :data:`ADD`, :data:`MUL`, :data:`DIV` — element-wise binary arithmetic (``+``/``−``, ``×``, ``/``).
* :data:`COPIES` — copies and conversions (``clone``, ``to``, ``contiguous`` …): same values, same positions.
* :data:`CONCAT` — concatenation.
* :data:`KEEPS_POSITIONS` — every function above plus normalisation over channels: the output at a position
  depends on the input at that same position only.
* :data:`METADATA` — attribute reads and queries that return no new tensor data (``x.shape``, ``x.grad_fn``).
* :data:`SHAPE_KEEPING_MODULES` — modules that keep every spatial size.
* :data:`POSITION_TIED` — modules whose weights are tied to positions (locally connected layers): a sample of
  another size has no meaningful output from them. Layers register here (:func:`register_position_tied`).
* :data:`PER_SAMPLE_MODULES` — modules whose ops are defined per sample but not on a padded canvas (attention over
  all spatial positions): ``masked()`` runs them once per group of samples of one extent
  (:func:`register_per_sample`).
* :func:`spatial_size_after` — the spatial size after a conv / transposed conv / pooling module (window
  geometry through :mod:`cnnkit.shapes`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cnnkit.shapes.arithmetic import conv_output_size, conv_transpose_output_size, pool_output_size

__all__ = [
    "ADD",
    "CONCAT",
    "COPIES",
    "DIV",
    "FINITE_PRESERVING",
    "KEEPS_POSITIONS",
    "METADATA",
    "MUL",
    "PER_SAMPLE_MODULES",
    "POINTWISE",
    "POSITION_TIED",
    "SHAPE_KEEPING_MODULES",
    "SINGULAR_AT_ZERO",
    "ZERO_PRESERVING",
    "functions",
    "register_per_sample",
    "register_position_tied",
    "spatial_size_after",
]


def functions(*names: str, namespaces=(torch, Tensor, F)) -> frozenset:
    """The function objects called ``name`` in each namespace that has one (``torch.relu``, ``Tensor.relu``, …).

    Examples:
        >>> len(functions("relu", namespaces=(torch, F)))
        2
    """
    found = set()
    for name in names:
        for namespace in namespaces:
            func = getattr(namespace, name, None)
            if func is not None:
                found.add(func)
    return frozenset(found)


ZERO_PRESERVING = functions(
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "selu_", "celu", "celu_", "gelu",
    "silu", "mish", "tanh", "tanh_", "hardtanh", "hardtanh_", "hardswish", "softsign", "tanhshrink", "neg",
    "neg_", "__neg__", "abs", "abs_", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "prelu", "square", "square_", "sign", "sign_",
    "hardshrink", "softshrink", "sin", "sin_", "tan", "asinh", "atanh", "erf", "expm1", "trunc", "floor",
    "ceil", "round", "__abs__", "nan_to_num", "nan_to_num_",
)
POINTWISE = ZERO_PRESERVING | functions(
    "sigmoid", "sigmoid_", "hardsigmoid", "softplus", "exp", "exp_", "log_sigmoid", "logsigmoid", "clamp",
    "clip", "clamp_", "clip_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_", "rrelu", "rrelu_",
    "threshold", "threshold_", "cos", "cos_", "sqrt", "sqrt_", "rsqrt", "rsqrt_", "reciprocal", "reciprocal_",
    "log", "log_", "log1p", "log2", "log10", "pow", "pow_", "__pow__", "erfc", "cosh", "sinh", "frac",
)
# Finite wherever their input is (no overflow, no pole, no NaN from a finite value): masked() skips the NaN/inf
# check of a tensor derived from checked ones through these (and through conv, pooling, batch norm, + and ×).
FINITE_PRESERVING = functions(
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "selu_", "celu", "celu_", "gelu",
    "silu", "mish", "tanh", "tanh_", "hardtanh", "hardtanh_", "hardswish", "softsign", "tanhshrink", "neg", "neg_",
    "__neg__", "abs", "abs_", "dropout", "dropout1d", "dropout2d", "dropout3d", "prelu", "sign", "sign_",
    "hardshrink", "softshrink", "sin", "sin_", "cos", "cos_", "erf", "trunc", "floor", "ceil", "round", "__abs__",
    "nan_to_num", "nan_to_num_", "sigmoid", "sigmoid_", "hardsigmoid", "softplus", "log_sigmoid", "logsigmoid",
    "rrelu", "rrelu_", "threshold", "threshold_",
)
# Not finite (or not differentiable) at 0 or for negatives: masked() gives the padded operand 1 outside the
# extents first (0 or garbage there would give inf/NaN, and 0 · inf = NaN in backward).
SINGULAR_AT_ZERO = functions(
    "sqrt", "sqrt_", "rsqrt", "rsqrt_", "reciprocal", "reciprocal_", "log", "log_", "log2", "log10", "pow",
    "pow_", "__pow__",
)
ADD = functions("add", "__add__", "__radd__", "add_", "__iadd__", "sub", "__sub__", "__rsub__", "sub_", "__isub__",
                "subtract")
MUL = functions("mul", "__mul__", "__rmul__", "mul_", "__imul__", "multiply")
DIV = functions("div", "__truediv__", "div_", "__itruediv__", "__rtruediv__", "divide", "true_divide")
COPIES = functions(
    "contiguous", "clone", "detach", "detach_", "to", "float", "double", "half", "bfloat16", "type_as", "cpu",
    "cuda", "requires_grad_", "type", "__deepcopy__",
)
CONCAT = functions("cat", "concat", "concatenate", namespaces=(torch,))
NORMALISE_CHANNELS = functions("batch_norm", namespaces=(torch, F))
KEEPS_POSITIONS = POINTWISE | ADD | MUL | DIV | COPIES | CONCAT | NORMALISE_CHANNELS | functions(
    "stack", namespaces=(torch,))

# Attribute reads (``x.shape`` arrives as ``Tensor.shape.__get__``) and queries that return metadata.
_PROPERTIES = (
    "shape", "dtype", "device", "ndim", "requires_grad", "is_cuda", "layout", "grad_fn", "grad", "names",
    "is_sparse", "is_quantized", "is_meta", "is_nested", "_version", "is_leaf", "itemsize", "nbytes", "T",
)
METADATA = frozenset(
    {getattr(Tensor, p).__get__ for p in _PROPERTIES if hasattr(getattr(Tensor, p, None), "__get__")}
) | functions(
    "size", "dim", "numel", "__len__", "is_floating_point", "is_complex", "element_size", "is_contiguous",
    "stride", "__format__", "__repr__", "data_ptr", "storage_offset", "get_device", "__hash__", "nelement",
    "ndimension", "has_names", "is_signed", "is_inference", namespaces=(torch, Tensor),
)

SHAPE_KEEPING_MODULES: tuple[type, ...] = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Threshold, nn.LogSigmoid, nn.Softmax, nn.LogSoftmax, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LocalResponseNorm,
)

# Modules whose weights are tied to positions, registered by the layers themselves (nn.locally_connected).
POSITION_TIED: list[type] = []


def register_position_tied(*classes: type) -> None:
    """Add module classes whose weights are tied to positions to :data:`POSITION_TIED` (``masked()`` refuses them).

    Examples:
        >>> from cnnkit.nn import LocallyConnected2d  # registers its base class on import
        >>> issubclass(LocallyConnected2d, tuple(POSITION_TIED))
        True
    """
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"register_position_tied takes nn.Module subclasses. Received {cls!r}.")
        if cls not in POSITION_TIED:
            POSITION_TIED.append(cls)


# Modules masked() runs per group of samples of one extent (cnnkit.masking.register_per_sample_module).
PER_SAMPLE_MODULES: list[type] = []


def register_per_sample(*classes: type) -> None:
    """Add module classes to :data:`PER_SAMPLE_MODULES` (``masked()`` runs them per group of one extent).

    Examples:
        >>> class Attention(nn.Module): ...
        >>> register_per_sample(Attention)
        >>> Attention in PER_SAMPLE_MODULES
        True
        >>> PER_SAMPLE_MODULES.remove(Attention)
    """
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"register_per_sample takes nn.Module subclasses. Received {cls!r}.")
        if cls not in PER_SAMPLE_MODULES:
            PER_SAMPLE_MODULES.append(cls)


def _target(output_size, n: int) -> tuple:
    return (output_size,) * n if isinstance(output_size, int) or output_size is None else tuple(output_size)


def spatial_size_after(module: nn.Module, size: tuple[int, ...]) -> tuple[int, ...] | None:
    """The spatial size after ``module`` for an input of spatial ``size``, or ``None`` if the catalogue has no rule.

    Conv, transposed conv, max/avg pooling follow :mod:`cnnkit.shapes`; adaptive pooling gives its target;
    :data:`SHAPE_KEEPING_MODULES` keep the size.

    Examples:
        >>> spatial_size_after(nn.Conv2d(1, 1, 3, stride=2), (9, 8))
        (4, 3)
        >>> spatial_size_after(nn.ReLU(), (9, 8))
        (9, 8)
    """
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return tuple(conv_transpose_output_size(size, module.kernel_size, module.stride, module.padding,
                                                module.output_padding, module.dilation))
    if isinstance(module, nn.modules.conv._ConvNd):
        return tuple(conv_output_size(size, module.kernel_size, module.stride, module.padding, module.dilation))
    if isinstance(module, nn.modules.pooling._MaxPoolNd):
        return tuple(pool_output_size(size, module.kernel_size, module.stride, module.padding, module.dilation,
                                      module.ceil_mode))
    if isinstance(module, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        return tuple(pool_output_size(size, module.kernel_size, module.stride, module.padding, 1, module.ceil_mode))
    if isinstance(module, (nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)):
        return tuple(s if t is None else int(t) for s, t in zip(size, _target(module.output_size, len(size))))
    if isinstance(module, SHAPE_KEEPING_MODULES):
        return tuple(size)
    return None
