"""Keras's default initialisers, on PyTorch tensors and modules.

The tensor functions follow ``torch.nn.init`` (in place, trailing underscore, an optional
``torch.Generator``); the numbers follow Keras 3 (``keras/src/initializers/random_initializers.py``):

==================  ==================================================  =====================
function            distribution                                        scale from the fans
==================  ==================================================  =====================
glorot_uniform_     uniform on [-limit, limit]                          limit = √(6/(fan_in+fan_out))
glorot_normal_      normal truncated at ±2σ, σ = s/0.87962566103423978  s = √(2/(fan_in+fan_out))
he_uniform_         uniform on [-limit, limit]                          limit = √(6/fan_in)
he_normal_          normal truncated at ±2σ, σ = s/0.87962566103423978  s = √(2/fan_in)
lecun_uniform_      uniform on [-limit, limit]                          limit = √(3/fan_in)
lecun_normal_       normal truncated at ±2σ, σ = s/0.87962566103423978  s = √(1/fan_in)
orthogonal_         QR of a Gaussian matrix, Keras's flattening         (no fans)
==================  ==================================================  =====================

0.87962566103423978 is the standard deviation of a standard normal truncated to [-2, 2], so the
*truncated* samples have standard deviation ``s`` exactly.

:func:`keras_` walks a model and gives every module it knows Keras's layer defaults. Other layers
register theirs with :func:`register_initializer`; lookup walks ``type(module).__mro__``
(:class:`cnnkit._registry.TypeRegistry`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from cnnkit._checks import check_choice, is_int
from cnnkit._registry import TypeRegistry
from cnnkit.errors import ArgumentTypeError, ShapeError, UnsupportedError

__all__ = [
    "Initializer",
    "fans",
    "find_initializer",
    "glorot_normal_",
    "glorot_uniform_",
    "he_normal_",
    "he_uniform_",
    "keras_",
    "keras_embedding_uniform_",
    "lecun_normal_",
    "lecun_uniform_",
    "orthogonal_",
    "register_initializer",
]

LAYOUTS = ("torch", "keras")
# Standard deviation of N(0, 1) truncated to [-2, 2]; Keras divides by it so that the truncated
# samples keep the requested standard deviation.
_TRUNCATED_STD = 0.87962566103423978
_EMBEDDING_LIMIT = 0.05

Initializer = Callable[[nn.Module, "torch.Generator | None"], None]
_INITIALIZERS = TypeRegistry[Initializer]("initializer")


# --------------------------------------------------------------------------------------------- fans


def fans(shape: Sequence[int] | torch.Size, layout: str = "torch") -> tuple[int, int]:
    """Return ``(fan_in, fan_out)`` of a weight of ``shape``, receptive field included.

    Every kernel dimension multiplies both fans (Keras's ``compute_fans``; PyTorch's
    ``_calculate_fan_in_and_fan_out`` agrees for torch layouts):

    - ``layout="torch"``, weight ``(out, in, *k)``: ``fan_in = in·prod(k)``, ``fan_out = out·prod(k)``.
      A ``Linear`` weight ``(out, in)`` gives ``(in, out)``; an LSTM ``weight_ih`` ``(4H, in)`` gives
      ``(in, 4H)``, the fans Keras computes on its ``(in, 4H)`` kernel.
    - ``layout="keras"``, kernel ``(*k, in, out)``: ``fan_in = in·prod(k)``, ``fan_out = out·prod(k)``.
      A ``Dense`` kernel ``(in, out)`` gives ``(in, out)``.

    Transposed convolutions. PyTorch stores ``ConvTranspose`` weights as ``(in, out/groups, *k)`` and
    Keras stores ``Conv2DTranspose`` kernels as ``(kh, kw, out, in)``. Both libraries apply the rule
    above to those shapes *as stored*, so both call ``out·prod(k)`` the fan-in and ``in·prod(k)`` the
    fan-out. cnnkit does the same (no special case): ``fans(convT.weight.shape)`` equals Keras's fans of
    the matching kernel, so every initialiser draws from the distribution Keras would use. Glorot only
    needs ``fan_in + fan_out`` and is unaffected; He and LeCun scale by ``out·prod(k)``, as in Keras.

    Args:
        shape: The weight's shape, at least 2 dimensions.
        layout: ``"torch"`` (output dimension first) or ``"keras"`` (output dimension last).

    Returns:
        ``(fan_in, fan_out)`` as Python integers.

    Raises:
        ShapeError: ``shape`` has fewer than 2 dimensions (a bias or a scalar has no fans; Keras would
            use ``shape[0]`` for both, PyTorch raises too) or is not a tuple of non-negative integers,
            or ``layout`` is unknown.

    Examples:
        >>> fans((32, 3, 5, 5))  # torch Conv2d(3, 32, 5).weight
        (75, 800)
        >>> fans((5, 5, 3, 32), layout="keras")  # Keras Conv2D(32, 5) kernel on 3 channels
        (75, 800)
        >>> fans((4800, 2000))  # torch Linear(2000, 4800).weight
        (2000, 4800)
    """
    check_choice(layout, LAYOUTS, "layout")
    dims = tuple(shape) if isinstance(shape, (Sequence, torch.Size)) and not isinstance(shape, str) else None
    if dims is None or not all(is_int(d) and d >= 0 for d in dims):
        raise ShapeError(f"shape must be a tuple of non-negative integers. Received shape={shape!r}.")
    if len(dims) < 2:
        raise ShapeError(
            "fan_in and fan_out are undefined for a tensor with fewer than 2 dimensions "
            f"(a bias or a scalar). Received shape={dims!r}."
        )
    if layout == "torch":
        out_dim, in_dim, kernel = dims[0], dims[1], dims[2:]
    else:
        kernel, in_dim, out_dim = dims[:-2], dims[-2], dims[-1]
    receptive_field = math.prod(kernel)
    return int(in_dim * receptive_field), int(out_dim * receptive_field)


# ------------------------------------------------------------------------------------------ drawing


def _check_tensor(tensor: object, name: str) -> Tensor:
    if not isinstance(tensor, Tensor):
        raise ArgumentTypeError(f"{name} expects a torch.Tensor. Received {type(tensor).__name__}.")
    if isinstance(tensor, nn.parameter.UninitializedTensorMixin):
        raise UnsupportedError(
            f"{name} cannot initialise an uninitialised (lazy) parameter; run one forward pass first."
        )
    if not tensor.is_floating_point():
        raise UnsupportedError(f"{name} needs a floating-point tensor. Received dtype={tensor.dtype}.")
    return tensor


def _scratch(tensor: Tensor, generator: torch.Generator | None) -> Tensor:
    """An empty tensor to draw into: on the generator's device, in float32 or float64.

    Drawing in float32 makes half-precision tensors work everywhere (truncated normal and QR need it),
    and drawing on the generator's device lets a CPU generator initialise a CUDA tensor.
    """
    device = tensor.device if generator is None else generator.device
    dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    return torch.empty(tensor.shape, dtype=dtype, device=device)


def _target(tensor: Tensor, generator: torch.Generator | None) -> Tensor:
    """``tensor`` itself when it can be drawn into directly, else a :func:`_scratch` tensor."""
    same_device = generator is None or generator.device == tensor.device
    if same_device and tensor.dtype in (torch.float32, torch.float64):
        return tensor
    return _scratch(tensor, generator)


def _uniform_(tensor: Tensor, limit: float, generator: torch.Generator | None) -> Tensor:
    with torch.no_grad():
        target = _target(tensor, generator)
        target.uniform_(-limit, limit, generator=generator)
        return tensor if target is tensor else tensor.copy_(target)


def _truncated_normal_(tensor: Tensor, scale: float, generator: torch.Generator | None) -> Tensor:
    """Keras's ``truncated_normal`` variance scaling: σ = √scale / 0.8796…, cut at ±2σ."""
    std = math.sqrt(scale) / _TRUNCATED_STD
    with torch.no_grad():
        target = _target(tensor, generator)
        nn.init.trunc_normal_(target, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std, generator=generator)
        return tensor if target is tensor else tensor.copy_(target)


def _fan_in(tensor: Tensor, layout: str) -> float:
    return max(1.0, float(fans(tensor.shape, layout)[0]))


def _fan_avg(tensor: Tensor, layout: str) -> float:
    fan_in, fan_out = fans(tensor.shape, layout)
    return max(1.0, (fan_in + fan_out) / 2.0)


# ------------------------------------------------------------------------------ tensor initialisers


# The Args and Returns that the six variance-scaling initialisers share, written once.
_VARIANCE_SCALING_ARGS = """Args:
        tensor: A floating-point tensor with at least 2 dimensions.
        layout: ``"torch"`` if ``tensor`` is a PyTorch weight (output dimension first), ``"keras"`` if it
            is laid out like a Keras kernel (output dimension last).
        generator: Optional random generator; ``None`` uses the global one.

    Returns:
        ``tensor``."""


def _variance_scaling_doc(fn: Callable) -> Callable:
    """Put the shared Args and Returns in place of ``{args}`` in ``fn``'s docstring."""
    if fn.__doc__:  # None under python -OO
        fn.__doc__ = fn.__doc__.replace("{args}", _VARIANCE_SCALING_ARGS)
    return fn


@_variance_scaling_doc
def glorot_uniform_(tensor: Tensor, layout: str = "torch", *, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``tensor`` in place from U(-limit, limit), ``limit = √(6/(fan_in+fan_out))`` (Keras's default).

    This is Keras's default ``kernel_initializer`` for ``Dense``, ``Conv*D``, ``Conv*DTranspose`` and
    the input kernel of ``LSTM``/``GRU``. The fans include the receptive field (see :func:`fans`).

    {args}

    Examples:
        >>> conv = nn.Conv2d(3, 32, 5)  # fan_in 3·25 = 75, fan_out 32·25 = 800
        >>> w = glorot_uniform_(conv.weight, generator=torch.Generator().manual_seed(0))
        >>> limit = (6 / (75 + 800)) ** 0.5
        >>> round(limit, 4), bool(w.abs().max() <= limit)
        (0.0828, True)

    References:
        X. Glorot and Y. Bengio, "Understanding the difficulty of training deep feedforward neural
        networks", AISTATS 2010.
    """
    _check_tensor(tensor, "glorot_uniform_")
    return _uniform_(tensor, math.sqrt(3.0 / _fan_avg(tensor, layout)), generator)


@_variance_scaling_doc
def glorot_normal_(tensor: Tensor, layout: str = "torch", *, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``tensor`` from Keras's Glorot normal: truncated at ±2σ, standard deviation √(2/(fan_in+fan_out)).

    Keras draws from N(0, σ²) with ``σ = √(2/(fan_in+fan_out)) / 0.87962566103423978`` and re-draws
    values beyond 2σ, so the samples' standard deviation is ``√(2/(fan_in+fan_out))`` and
    ``|w| ≤ 2σ``. (``torch.nn.init.xavier_normal_`` draws an untruncated normal instead.)

    {args}

    Examples:
        >>> w = glorot_normal_(torch.empty(256, 128), generator=torch.Generator().manual_seed(0))
        >>> sigma = (2 / (128 + 256)) ** 0.5 / 0.87962566103423978
        >>> bool(w.abs().max() <= 2 * sigma)
        True

    References:
        X. Glorot and Y. Bengio, "Understanding the difficulty of training deep feedforward neural
        networks", AISTATS 2010.
    """
    _check_tensor(tensor, "glorot_normal_")
    return _truncated_normal_(tensor, 1.0 / _fan_avg(tensor, layout), generator)


@_variance_scaling_doc
def he_uniform_(tensor: Tensor, layout: str = "torch", *, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``tensor`` from U(-limit, limit), ``limit = √(6/fan_in)`` (Keras's ``he_uniform``).

    {args}

    Examples:
        >>> w = he_uniform_(torch.empty(64, 16, 3, 3), generator=torch.Generator().manual_seed(0))
        >>> bool(w.abs().max() <= (6 / (16 * 9)) ** 0.5)
        True

    References:
        K. He, X. Zhang, S. Ren and J. Sun, "Delving deep into rectifiers", ICCV 2015.
    """
    _check_tensor(tensor, "he_uniform_")
    return _uniform_(tensor, math.sqrt(6.0 / _fan_in(tensor, layout)), generator)


@_variance_scaling_doc
def he_normal_(tensor: Tensor, layout: str = "torch", *, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``tensor`` from Keras's ``he_normal``: truncated at ±2σ, standard deviation √(2/fan_in).

    {args}

    Examples:
        >>> w = he_normal_(torch.empty(64, 16, 3, 3), generator=torch.Generator().manual_seed(0))
        >>> bool(w.abs().max() <= 2 * (2 / (16 * 9)) ** 0.5 / 0.87962566103423978)
        True

    References:
        K. He, X. Zhang, S. Ren and J. Sun, "Delving deep into rectifiers", ICCV 2015.
    """
    _check_tensor(tensor, "he_normal_")
    return _truncated_normal_(tensor, 2.0 / _fan_in(tensor, layout), generator)


@_variance_scaling_doc
def lecun_uniform_(tensor: Tensor, layout: str = "torch", *, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``tensor`` from U(-limit, limit), ``limit = √(3/fan_in)`` (Keras's ``lecun_uniform``).

    {args}

    Examples:
        >>> w = lecun_uniform_(torch.empty(10, 300), generator=torch.Generator().manual_seed(0))
        >>> bool(w.abs().max() <= 0.1)  # √(3/300)
        True

    References:
        Y. LeCun, L. Bottou, G. Orr and K.-R. Müller, "Efficient BackProp", 1998.
    """
    _check_tensor(tensor, "lecun_uniform_")
    return _uniform_(tensor, math.sqrt(3.0 / _fan_in(tensor, layout)), generator)


@_variance_scaling_doc
def lecun_normal_(tensor: Tensor, layout: str = "torch", *, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``tensor`` from Keras's ``lecun_normal``: truncated at ±2σ, standard deviation √(1/fan_in).

    {args}

    Examples:
        >>> w = lecun_normal_(torch.empty(10, 100), generator=torch.Generator().manual_seed(0))
        >>> bool(w.abs().max() <= 2 * 0.1 / 0.87962566103423978)
        True

    References:
        G. Klambauer, T. Unterthiner, A. Mayr and S. Hochreiter, "Self-normalizing neural networks",
        NeurIPS 2017.
    """
    _check_tensor(tensor, "lecun_normal_")
    return _truncated_normal_(tensor, 1.0 / _fan_in(tensor, layout), generator)


def orthogonal_(
    tensor: Tensor, gain: float = 1.0, layout: str = "torch", *, generator: torch.Generator | None = None
) -> Tensor:
    """Fill ``tensor`` with Keras's ``Orthogonal(gain)``, the default LSTM/GRU recurrent initialiser.

    Keras flattens its kernel to a matrix ``M`` of shape ``(prod(shape[:-1]), shape[-1])``, QR-decomposes
    a standard normal matrix of shape ``(max(rows, cols), min(rows, cols))``, fixes the signs with
    ``sign(diag(R))``, and transposes if ``rows < cols``. So ``M`` has orthonormal rows when it is wide
    (``M Mᵀ = I``) and orthonormal columns when it is tall (``Mᵀ M = I``), times ``gain``.

    With ``layout="torch"`` the same is done on the Keras view of the tensor: a weight ``(out, in, *k)``
    is treated as the Keras kernel ``(*k, in, out)`` (for a 2-D weight, its transpose). An LSTM's
    ``weight_hh`` ``(4H, H)`` thus becomes the transpose of an orthogonal Keras recurrent kernel
    ``(H, 4H)``: ``weight_hhᵀ`` has orthonormal rows. This differs from ``torch.nn.init.orthogonal_``,
    which flattens ``(shape[0], prod(shape[1:]))``.

    Args:
        tensor: A floating-point tensor with at least 2 dimensions.
        gain: Factor applied to the orthogonal matrix.
        layout: ``"torch"`` or ``"keras"``, as in :func:`glorot_uniform_`.
        generator: Optional random generator.

    Returns:
        ``tensor``.

    Raises:
        ShapeError: ``tensor`` has fewer than 2 dimensions or ``layout`` is unknown.

    Examples:
        >>> kernel = orthogonal_(torch.empty(8, 32), layout="keras", generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(kernel @ kernel.T, torch.eye(8), atol=1e-5)  # (H, 4H) with H = 8
        True

    References:
        A. M. Saxe, J. L. McClelland and S. Ganguli, "Exact solutions to the nonlinear dynamics of learning
        in deep linear neural networks", arXiv:1312.6120, 2013.
    """
    _check_tensor(tensor, "orthogonal_")
    check_choice(layout, LAYOUTS, "layout")
    if tensor.dim() < 2:
        raise ShapeError(
            f"orthogonal_ needs a tensor with at least 2 dimensions. Received shape={tuple(tensor.shape)!r}."
        )
    n = tensor.dim()
    # torch (out, in, *k) -> Keras (*k, in, out), and back.
    to_keras = (*range(2, n), 1, 0) if layout == "torch" else tuple(range(n))
    back = tuple(sorted(range(n), key=lambda i: to_keras[i]))
    keras_shape = tuple(tensor.shape[i] for i in to_keras)
    rows, cols = math.prod(keras_shape[:-1]), keras_shape[-1]
    with torch.no_grad():
        scratch = _scratch(tensor, generator)
        if scratch.numel() == 0:
            return tensor
        a = torch.randn(
            (max(rows, cols), min(rows, cols)), dtype=scratch.dtype, device=scratch.device, generator=generator
        )
        q, r = torch.linalg.qr(a)
        # Keras multiplies by sign(diag(R)); a zero diagonal (probability 0) would zero a column, so use ±1.
        q = q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(q.dtype)
        if rows < cols:
            q = q.T
        values = (gain * q).reshape(keras_shape).permute(back)
        return tensor.copy_(values)


def keras_embedding_uniform_(tensor: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``tensor`` from U(-0.05, 0.05), Keras's default ``Embedding`` initialiser (``"uniform"``).

    Args:
        tensor: A floating-point tensor (any shape).
        generator: Optional random generator.

    Returns:
        ``tensor``.

    Examples:
        >>> w = keras_embedding_uniform_(torch.empty(1000, 64), generator=torch.Generator().manual_seed(0))
        >>> bool(w.abs().max() <= 0.05)
        True
    """
    _check_tensor(tensor, "keras_embedding_uniform_")
    return _uniform_(tensor, _EMBEDDING_LIMIT, generator)


# -------------------------------------------------------------------------------------- the registry


def register_initializer(*types: type) -> Callable[[Initializer], Initializer]:
    """Decorator: use the function as the Keras initialisation of modules of ``types`` (and subclasses).

    The function is called as ``fn(module, generator)`` under ``torch.no_grad()`` and sets the module's
    *own* parameters and buffers; :func:`keras_` visits submodules separately. A later registration for
    the same type replaces the earlier one; the nearest registered class in ``type(module).__mro__``
    wins, so a subclass can refine its base's rule.

    Args:
        *types: One or more ``nn.Module`` subclasses.

    Returns:
        A decorator that registers the function and returns it unchanged.

    Raises:
        UnsupportedError: No type is given, or one is not a subclass of ``nn.Module``.

    Examples:
        >>> class Scale(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.alpha = nn.Parameter(torch.empty(4))
        >>> @register_initializer(Scale)
        ... def _scale_keras(module, generator):
        ...     module.alpha.fill_(1.0)
        >>> keras_(nn.Sequential(Scale())).get_parameter("0.alpha").tolist()
        [1.0, 1.0, 1.0, 1.0]
    """
    if not types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
        raise UnsupportedError(
            f"register_initializer expects one or more nn.Module subclasses. Received types={types!r}."
        )
    return _INITIALIZERS.registering(*types)


def find_initializer(module: nn.Module) -> Initializer | None:
    """The initialiser registered for ``module``'s class or its nearest registered base class, or ``None``."""
    return _INITIALIZERS.find(module)


def keras_(model: nn.Module, *, generator: torch.Generator | None = None) -> nn.Module:
    """Give every known module in ``model`` Keras's default initialisation, in place; return ``model``.

    ===================================  ============================================================
    module (and subclasses)              Keras default applied
    ===================================  ============================================================
    Linear, Conv1d/2d/3d,                weight ← :func:`glorot_uniform_` (fans from the torch layout,
    ConvTranspose1d/2d/3d                equal to Keras's fans of the matching kernel); bias ← 0
    Embedding                            weight ← U(-0.05, 0.05); the ``padding_idx`` row stays 0
    LSTM (every layer and direction)     weight_ih ← glorot_uniform (fan_in = in, fan_out = 4H);
                                         weight_hh ← orthogonal on Keras's whole (H, 4H) recurrent
                                         kernel, transposed; bias_ih ← [0, 1, 0, 0] per gate block
                                         (forget gate = 1), bias_hh ← 0, so their sum is Keras's bias
    GRU, RNN                             weight_ih ← glorot_uniform; weight_hh ← orthogonal on (H, 3H)
                                         resp. (H, H); biases ← 0
    BatchNorm1d/2d/3d, SyncBatchNorm,    weight ← 1, bias ← 0 (if affine); running statistics reset
    InstanceNorm1d/2d/3d, GroupNorm,     (mean 0, variance 1, count 0) where they are tracked
    LayerNorm
    ===================================  ============================================================

    GRU gates are ordered (r, z, n) in PyTorch and (z, r, h) in Keras; both initialisers are
    invariant under reordering gate blocks, so only the layout of loaded weights would care (see
    ``cnnkit.layouts``). Modules of other types are left unchanged; register more with
    :func:`register_initializer`.

    Args:
        model: Any ``nn.Module``; it and all its submodules are visited.
        generator: Optional random generator, for reproducible weights.

    Returns:
        ``model`` itself, for chaining.

    Raises:
        UnsupportedError: ``model`` is not an ``nn.Module``, a known module still has lazy parameters, or
            an LSTM has ``proj_size > 0`` (no Keras equivalent).

    Examples:
        >>> model = nn.Sequential(nn.Conv2d(3, 32, 5), nn.BatchNorm2d(32), nn.LSTM(32, 16))
        >>> keras_(model, generator=torch.Generator().manual_seed(0)) is model
        True
        >>> bool(model[0].weight.abs().max() <= (6 / (75 + 800)) ** 0.5), model[0].bias.abs().sum().item()
        (True, 0.0)
        >>> (model[2].bias_ih_l0 + model[2].bias_hh_l0).view(4, 16).mean(dim=1).tolist()  # i, f, g, o
        [0.0, 1.0, 0.0, 0.0]

    References:
        X. Glorot and Y. Bengio, "Understanding the difficulty of training deep feedforward neural
        networks", AISTATS 2010. A. M. Saxe, J. L. McClelland and S. Ganguli, "Exact solutions to the
        nonlinear dynamics of learning in deep linear neural networks", arXiv:1312.6120, 2013.
        R. Jozefowicz, W. Zaremba and I. Sutskever, "An empirical exploration of recurrent network
        architectures", ICML 2015 (unit forget bias).
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"keras_ expects an nn.Module. Received {type(model).__name__}.")
    with torch.no_grad():
        for module in model.modules():
            initializer = find_initializer(module)
            if initializer is not None:
                initializer(module, generator)
    return model


# ---------------------------------------------------------------------------- built-in initialisers


def _zero_(bias: Tensor | None) -> None:
    if bias is not None:
        _check_tensor(bias, "keras_")
        bias.zero_()


@register_initializer(
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d
)
def _dense_or_conv(module: nn.Module, generator: torch.Generator | None) -> None:
    glorot_uniform_(module.weight, generator=generator)
    _zero_(module.bias)


@register_initializer(nn.Embedding)
def _embedding(module: nn.Embedding, generator: torch.Generator | None) -> None:
    keras_embedding_uniform_(module.weight, generator=generator)
    if module.padding_idx is not None:
        # PyTorch's pad vector never receives a gradient and starts at zero; keep that meaning.
        module.weight[module.padding_idx].zero_()


@register_initializer(nn.LSTM, nn.GRU, nn.RNN)
def _recurrent(module: nn.RNNBase, generator: torch.Generator | None) -> None:
    if getattr(module, "proj_size", 0):
        raise UnsupportedError(
            f"Cannot give {type(module).__name__} Keras's initialisation: an LSTM with proj_size > 0 has no "
            f"Keras equivalent. Received proj_size={module.proj_size}."
        )
    hidden = module.hidden_size
    for layer in range(module.num_layers):
        for suffix in ("", "_reverse")[: 2 if module.bidirectional else 1]:
            name = f"l{layer}{suffix}"
            glorot_uniform_(getattr(module, f"weight_ih_{name}"), generator=generator)
            orthogonal_(getattr(module, f"weight_hh_{name}"), generator=generator)
            if module.bias:
                getattr(module, f"bias_ih_{name}").zero_()
                getattr(module, f"bias_hh_{name}").zero_()
                if isinstance(module, nn.LSTM):  # gates (i, f, g, o): unit forget bias, added once
                    getattr(module, f"bias_ih_{name}")[hidden : 2 * hidden] = 1.0


@register_initializer(
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.GroupNorm,
    nn.LayerNorm,
)
def _normalization(module: nn.Module, generator: torch.Generator | None) -> None:
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if weight is not None:
        _check_tensor(weight, "keras_")
        weight.fill_(1.0)
    _zero_(bias)
    if getattr(module, "track_running_stats", False) and module.running_mean is not None:
        module.reset_running_stats()
