"""Where every Keras weight layout is known, in one place.

PyTorch and Keras store the same numbers in different orders. For each supported module type a
:class:`KerasLayout` converts the module's tensors to the arrays that Keras's ``layer.get_weights()``
returns (:func:`to_keras`) and back (:func:`from_keras`). :func:`keras_shapes` runs the same conversion
on shape-only ("meta") tensors, so that :func:`cnnkit.explainers` reports Keras shapes from the very code
that converts the numbers.

=====================  ==================================  ==========================================
torch module           torch tensor (layout)               Keras weight (layout)
=====================  ==================================  ==========================================
Linear                 weight (out, in)                    kernel (in, out)
Conv1d/2d/3d           weight (out, in/groups, *k)         kernel (*k, in/groups, out)
ConvTranspose1d/2d/3d  weight (in, out/groups, *k)         kernel (*k, out/groups, in)
Embedding              weight (num, dim)                   embeddings (num, dim)
BatchNorm1d/2d/3d      weight, bias, running_mean/var      gamma, beta, moving_mean, moving_variance
LSTM (per layer/dir.)  weight_ih (4H, in), weight_hh       kernel (in, 4H), recurrent_kernel (H, 4H),
                       (4H, H), bias_ih + bias_hh          bias (4H); gates i, f, c(g), o in both
=====================  ==================================  ==========================================

Other layers (``cnnkit.nn.LocallyConnected2d``, ``ConvLSTM2d``) register their own layout with
:func:`register_layout`; lookup walks ``type(module).__mro__`` (:class:`cnnkit._registry.TypeRegistry`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cnnkit._registry import TypeRegistry
from cnnkit.errors import ShapeError, UnsupportedError

__all__ = [
    "KerasLayout", "find_layout", "from_keras", "has_keras_layout", "keras_shapes", "register_layout", "to_keras",
]

State = Mapping[str, Tensor]


@dataclass(frozen=True)
class KerasLayout:
    """How one module type's tensors map to Keras weights.

    Attributes:
        keras_class: Name of the Keras layer class for a module (a function of the module).
        to_keras: ``(module, state) -> {keras_name: tensor}``; ``state`` maps the module's parameter and
            buffer names to tensors (possibly on the meta device).
        to_torch: ``(module, arrays) -> {torch_name: tensor}`` for ``module.load_state_dict``.
    """

    keras_class: Callable[[nn.Module], str]
    to_keras: Callable[[nn.Module, State], dict[str, Tensor]]
    to_torch: Callable[[nn.Module, State], dict[str, Tensor]]


_LAYOUTS = TypeRegistry[KerasLayout]("Keras weight layout")


def register_layout(*types: type, layout: KerasLayout) -> None:
    """Register ``layout`` for modules of ``types`` (and their subclasses)."""
    _LAYOUTS.register(*types, value=layout)


def find_layout(module: nn.Module) -> KerasLayout | None:
    """The layout registered for ``module``'s class or its nearest registered base class, or ``None``.

    A registered layout may still be refused for one module (an LSTM with ``proj_size > 0``): see
    :func:`has_keras_layout`.

    Examples:
        >>> conv = nn.Conv2d(3, 8, 3)
        >>> find_layout(conv).keras_class(conv), find_layout(nn.ReLU())
        ('Conv2D', None)
    """
    return _LAYOUTS.find(module)


def has_keras_layout(module: nn.Module) -> bool:
    """Whether cnnkit knows the Keras layout of ``module``'s own weights."""
    return find_layout(module) is not None and not _refusal(module)


def _refusal(module: nn.Module) -> str | None:
    if isinstance(module, nn.LSTM) and module.proj_size:
        return "an LSTM with proj_size > 0 has no Keras equivalent"
    return None


def _layout(module: nn.Module) -> KerasLayout:
    layout = _LAYOUTS.require(module)
    reason = _refusal(module)
    if reason:
        raise UnsupportedError(f"{type(module).__name__}: {reason}.")
    return layout


def _own_state(module: nn.Module) -> dict[str, Tensor]:
    state = dict(module.named_parameters(recurse=False))
    state.update((k, v) for k, v in module.named_buffers(recurse=False) if v is not None)
    return state


def to_keras(module: nn.Module) -> dict[str, Tensor]:
    """The module's weights as Keras stores them (``layer.get_weights()`` order and shapes).

    Examples:
        >>> {k: tuple(v.shape) for k, v in to_keras(nn.Linear(2000, 4800)).items()}
        {'kernel': (2000, 4800), 'bias': (4800,)}
    """
    with torch.no_grad():
        arrays = _layout(module).to_keras(module, _own_state(module))
        # Copies, as Keras's get_weights() gives: changing them never changes the module.
        return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in arrays.items()}


def keras_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Shapes of :func:`to_keras`'s arrays, computed without touching the data.

    Examples:
        >>> keras_shapes(nn.Conv1d(300, 111, 5))
        {'kernel': (5, 300, 111), 'bias': (111,)}
    """
    meta = {k: torch.empty(v.shape, device="meta", dtype=v.dtype) for k, v in _own_state(module).items()}
    return {k: tuple(v.shape) for k, v in _layout(module).to_keras(module, meta).items()}


def from_keras(module: nn.Module, arrays: Mapping[str, object]) -> dict[str, Tensor]:
    """Convert Keras arrays (name → array-like) to this module's state-dict entries.

    Every array's shape is checked against the module before anything is returned.

    Examples:
        >>> lin = nn.Linear(3, 2)
        >>> lin.load_state_dict(from_keras(lin, to_keras(lin))) is not None
        True
    """
    layout = _layout(module)
    tensors = {k: torch.as_tensor(v) for k, v in arrays.items()}
    expected = keras_shapes(module)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ShapeError(
            f"{type(module).__name__} expects Keras weights {sorted(expected)}. "
            f"Missing: {missing}; unexpected: {extra}."
        )
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ShapeError(
                f"Keras weight {name!r} of {type(module).__name__} must have shape {shape}. "
                f"Received shape {tuple(tensors[name].shape)}."
            )
    state = _own_state(module)
    out = layout.to_torch(module, tensors)
    return {k: v.to(dtype=state[k].dtype) for k, v in out.items()}


# --- the layouts -------------------------------------------------------------------------------------

def _with_bias(module: nn.Module, state: State, out: dict[str, Tensor]) -> dict[str, Tensor]:
    if state.get("bias") is not None:
        out["bias"] = state["bias"]
    return out


def _conv_perm(ndim: int) -> tuple[int, ...]:
    # (A, B, *k) -> (*k, B, A)
    return (*range(2, ndim + 2), 1, 0)


def _conv_inverse_perm(ndim: int) -> tuple[int, ...]:
    # (*k, B, A) -> (A, B, *k)
    return (ndim + 1, ndim, *range(ndim))


def _conv_to_keras(module, state):
    w = state["weight"]
    return _with_bias(module, state, {"kernel": w.permute(_conv_perm(w.dim() - 2))})


def _conv_to_torch(module, arrays):
    k = arrays["kernel"]
    out = {"weight": k.permute(_conv_inverse_perm(k.dim() - 2))}
    if "bias" in arrays:
        out["bias"] = arrays["bias"]
    return out


def _conv_class(module: nn.Module) -> str:
    n = len(module.kernel_size)
    return f"Conv{n}D" + ("Transpose" if isinstance(module, nn.modules.conv._ConvTransposeNd) else "")


register_layout(
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    layout=KerasLayout(_conv_class, _conv_to_keras, _conv_to_torch),
)


def _linear_to_torch(module, arrays):
    out = {"weight": arrays["kernel"].t()}
    if "bias" in arrays:
        out["bias"] = arrays["bias"]
    return out


register_layout(
    nn.Linear,
    layout=KerasLayout(
        lambda m: "Dense",
        lambda m, s: _with_bias(m, s, {"kernel": s["weight"].t()}),
        _linear_to_torch,
    ),
)

register_layout(
    nn.Embedding,
    layout=KerasLayout(
        lambda m: "Embedding",
        lambda m, s: {"embeddings": s["weight"]},
        lambda m, a: {"weight": a["embeddings"]},
    ),
)

_BN_NAMES = (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
             ("running_var", "moving_variance"))


register_layout(
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    layout=KerasLayout(
        lambda m: "BatchNormalization",
        lambda m, s: {k: s[t] for t, k in _BN_NAMES if s.get(t) is not None},
        lambda m, a: {t: a[k] for t, k in _BN_NAMES if k in a},
    ),
)


def _lstm_suffixes(module: nn.LSTM) -> list[tuple[str, str]]:
    """(torch suffix, Keras prefix) for each layer and direction."""
    out = []
    for layer in range(module.num_layers):
        for reverse in range(2 if module.bidirectional else 1):
            suffix = f"_l{layer}" + ("_reverse" if reverse else "")
            prefix = "" if module.num_layers == 1 and not module.bidirectional else (
                f"layer{layer}_{'backward' if reverse else 'forward'}/"
            )
            out.append((suffix, prefix))
    return out


def _lstm_to_keras(module, state):
    out = {}
    for suffix, prefix in _lstm_suffixes(module):
        out[prefix + "kernel"] = state["weight_ih" + suffix].t()
        out[prefix + "recurrent_kernel"] = state["weight_hh" + suffix].t()
        if module.bias:
            # Keras keeps one bias; PyTorch adds two.
            out[prefix + "bias"] = state["bias_ih" + suffix] + state["bias_hh" + suffix]
    return out


def _lstm_to_torch(module, arrays):
    out = {}
    for suffix, prefix in _lstm_suffixes(module):
        out["weight_ih" + suffix] = arrays[prefix + "kernel"].t()
        out["weight_hh" + suffix] = arrays[prefix + "recurrent_kernel"].t()
        if module.bias:
            out["bias_ih" + suffix] = arrays[prefix + "bias"]
            out["bias_hh" + suffix] = torch.zeros_like(arrays[prefix + "bias"])
    return out


register_layout(nn.LSTM, layout=KerasLayout(lambda m: "LSTM", _lstm_to_keras, _lstm_to_torch))
