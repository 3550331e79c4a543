"""Builders by name: which networks a spec may name, and which keyword arguments each builder accepts.

One table per library of a :class:`~cnnkit.models.ModelSpec`:

- ``cnnkit``: :data:`MODELS`, cnnkit's own networks (:class:`~cnnkit.models.TinySegNet`,
  :class:`~cnnkit.models.TinyResNet`, :class:`~cnnkit.models.SeriesSegNet`, :class:`~cnnkit.models.utae.UTAE`).
- ``smp``: every architecture the installed segmentation-models-pytorch exports (each subclass of its
  ``SegmentationModel``), on any of its encoders or on a timm model as ``tu-<name>``. Read from smp and timm
  when asked (importing them takes seconds; ``import cnnkit.models`` does not), never kept by hand.
- ``user``: builders registered in this process with :func:`register`. A run folder can only *name* one: cnnkit
  never imports code named in a file. A builder registered with ``reads_files=True`` (the converted Keras network
  of :mod:`cnnkit.keras.network`) also takes ``root``, the folder its spec's files lie in (a run folder), given to
  :func:`resolve`.

Arguments are checked against the builder's own signature and type annotations before it is called: a name the
builder does not take, a ``true`` where an ``int`` is annotated, a list where a ``str`` is, are refused with the
accepted names. segmentation-models-pytorch's ``**kwargs`` (handed to timm, which can read checkpoint files
named in them) are not reachable from a spec.
"""

from __future__ import annotations

import collections.abc
import inspect
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from cnnkit._registry import NameRegistry
from cnnkit.errors import ArgumentTypeError, ShapeError, UnsupportedError
from cnnkit.models.series import SeriesSegNet
from cnnkit.models.spec import FAMILIES, MAX_WIDTH, ModelSpec, _short, closest_names, parse_spec
from cnnkit.models.tiny import TinyResNet, TinySegNet
from cnnkit.models.utae import UTAE

__all__ = [
    "MODELS",
    "Builder",
    "check_encoder",
    "family_of",
    "list_architectures",
    "list_encoders",
    "register",
    "resolve",
    "size_multiple_of",
    "smp_architectures",
    "spec_for",
]

MODELS: NameRegistry[Callable[..., nn.Module]] = NameRegistry("cnnkit network")
"""cnnkit's networks by name (a ``Mapping``: ``MODELS["TinySegNet"](in_channels=4, num_classes=5)``)."""
for _network in (TinySegNet, TinyResNet, SeriesSegNet, UTAE):
    MODELS.register(_network.__name__, _network)

_CNNKIT_FAMILIES = {"TinySegNet": "cnnkit", "TinyResNet": "cnnkit", "SeriesSegNet": "cnnkit-series",
                    "UTAE": "attention-series"}


@dataclass(frozen=True)
class _Registered:
    builder: Callable[..., nn.Module]
    family: str
    reads_files: bool = False
    multiple_of: Callable[[Mapping[str, Any]], int] | None = None


_USER: NameRegistry[_Registered] = NameRegistry("registered network")

# Set by build() from the data and the spec, so never in a spec's args.
_SET_BY_BUILD = ("in_channels", "num_classes", "classes", "encoder_name", "encoder_weights")
_REFUSED_SMP = {
    "activation": "cnnkit's losses and predict take logits; the activation must stay None",
    "aux_params": "it adds a second, image-level output that cnnkit's training and predict do not take",
}


def register(name: str, builder: Callable[..., nn.Module], *, family: str = "convolutional",
             reads_files: bool = False, multiple_of: Callable[[Mapping[str, Any]], int] | None = None) -> None:
    """Register a network builder of your own under ``name`` (library ``"user"`` in a spec).

    The builder is called as ``builder(in_channels=..., num_classes=..., **spec.args)`` and returns an
    ``nn.Module``; its arguments are checked against its signature and annotations like cnnkit's own. A run
    trained with it records only the name: ``cnnkit predict`` (or :func:`cnnkit.models.build`) in another
    process needs the same ``register`` call there first, since cnnkit never imports code named in a file.

    Args:
        name: The name specs use (not one of cnnkit's own networks; a later registration replaces one).
        builder: A class or function taking ``in_channels`` and ``num_classes`` as keywords.
        family: The row of :data:`~cnnkit.models.FAMILY_DEFAULTS` its training starts from.
        reads_files: The builder reads files its spec's arguments name (a network's architecture): it is also
            called with ``root=``, the folder those files lie in (the run folder :func:`resolve` was given, or
            ``None``), and must read nothing outside it.
        multiple_of: What heights and widths the network needs to be multiples of, from a spec's ``args``
            (:func:`size_multiple_of`); ``None``: any size.

    Examples:
        >>> from torch import nn
        >>> def pointwise(in_channels: int, num_classes: int, bias: bool = True) -> nn.Module:
        ...     return nn.Conv2d(in_channels, num_classes, 1, bias=bias)
        >>> register("Pointwise", pointwise)
        >>> spec_for("Pointwise", args={"bias": False})
        ModelSpec(library='user', architecture='Pointwise', encoder=None, args={'bias': False})
    """
    if not isinstance(name, str) or not name:
        raise ArgumentTypeError(f"name must be a non-empty string. Received name={name!r}.")
    if name in MODELS:
        raise ShapeError(f"{name!r} is one of cnnkit's own networks ({', '.join(MODELS)}); register yours under "
                         "another name.")
    if not callable(builder):
        raise ArgumentTypeError(f"builder must be a class or function returning an nn.Module. Received "
                                f"{type(builder).__name__}.")
    if family not in FAMILIES:
        raise ShapeError(f"Unknown family {family!r}. Expected one of {FAMILIES!r}.")
    if not isinstance(reads_files, bool):
        raise ArgumentTypeError(f"reads_files must be True or False. Received reads_files={reads_files!r}.")
    if multiple_of is not None and not callable(multiple_of):
        raise ArgumentTypeError(f"multiple_of must be a function of a spec's args, or None. Received "
                                f"{type(multiple_of).__name__}.")
    _USER.register(name, _Registered(builder, family, reads_files, multiple_of))


def size_multiple_of(spec: ModelSpec | Mapping[str, Any]) -> int:
    """What heights and widths a registered network needs to be multiples of: its registration's ``multiple_of``
    applied to the spec's args (checked: an integer from 1 to 4096), else 1. For another library: 1 (its rule
    lives with the training pipeline).

    Examples:
        >>> register("Strided", lambda in_channels, num_classes, stride=2: nn.Conv2d(in_channels, num_classes, 1),
        ...          multiple_of=lambda args: args.get("stride", 2) ** 2)
        >>> size_multiple_of({"library": "user", "architecture": "Strided", "args": {"stride": 4}})
        16
    """
    spec = parse_spec(spec)
    if spec.library != "user":
        return 1
    resolve(spec)  # not registered here: the error says what to do
    rule = _USER[spec.architecture].multiple_of
    if rule is None:
        return 1
    value = rule(spec.args)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WIDTH:
        raise ShapeError(f"{spec.label()}: the size multiple its registration gives for args {_short(spec.args)} "
                         f"must be an integer from 1 to {MAX_WIDTH}. Received {_short(value)}.")
    return value


def smp_architectures() -> dict[str, type[nn.Module]]:
    """segmentation-models-pytorch's architectures by class name, in smp's own order (imports smp).

    Every class smp exports that derives from its ``SegmentationModel``: Unet, UnetPlusPlus, MAnet, Linknet,
    FPN, PSPNet, DeepLabV3, DeepLabV3Plus, PAN and, in smp 0.6, UPerNet, Segformer and DPT.
    """
    import segmentation_models_pytorch as smp
    from segmentation_models_pytorch.base import SegmentationModel

    found = {}
    for attribute in smp.__all__:
        value = getattr(smp, attribute, None)
        if isinstance(value, type) and issubclass(value, SegmentationModel):
            found[value.__name__] = value
    return found


def list_encoders() -> list[str]:
    """smp's own encoder names (imports smp). Any timm model is an encoder too, as ``tu-<timm name>``."""
    import segmentation_models_pytorch as smp

    return list(smp.encoders.get_encoder_names())


def list_architectures(*, smp: bool = True) -> dict[str, list[str]]:
    """The names a spec may use, per library: ``{"cnnkit": [...], "smp": [...], "user": [...]}`` (imports smp
    unless ``smp=False``, which leaves its list empty).

    Examples:
        >>> list_architectures(smp=False)["cnnkit"]
        ['TinySegNet', 'TinyResNet', 'SeriesSegNet', 'UTAE']
    """
    return {"cnnkit": list(MODELS), "smp": list(smp_architectures()) if smp else [], "user": sorted(_USER)}


def check_encoder(encoder: str, name: str = "encoder") -> str:
    """``encoder`` if smp knows it (or timm, for ``tu-<name>``); else an error with the closest names.

    Examples:
        >>> check_encoder("resnet18")
        'resnet18'
        >>> check_encoder("resnet_18")
        Traceback (most recent call last):
        ...
        cnnkit.errors.UnsupportedError: Unknown encoder 'resnet_18'. Closest: ['resnet18', ...]. ...
    """
    if encoder.startswith("tu-"):
        import timm

        if timm.is_model(encoder[3:]):
            return encoder
        known = ["tu-" + model for model in timm.list_models()]
        hint = "timm's models (timm.list_models()), as tu-<name>"
    else:
        known = list_encoders()
        if encoder in known:
            return encoder
        hint = f"smp's encoders ({len(known)}: cnnkit.models.list_encoders()) or any of timm's as tu-<name>"
    raise UnsupportedError(f"Unknown {name} {encoder!r}. Closest: {closest_names(encoder, known)}. Expected one "
                           f"of {hint}.")


def spec_for(architecture: str, *, encoder: str | None = None, args: Mapping[str, Any] | None = None) -> ModelSpec:
    """A checked :class:`~cnnkit.models.ModelSpec` from names, the library found from the architecture.

    Looked up in cnnkit's networks, then the registered ones, then smp's architectures (for these ``encoder``
    defaults to smp's own default, ``resnet34`` for most). This is what a command line's ``--model ARCH
    [--encoder NAME] [--model-args JSON]`` turns into.

    Examples:
        >>> spec_for("TinySegNet", args={"width": 8})
        ModelSpec(library='cnnkit', architecture='TinySegNet', encoder=None, args={'width': 8})
        >>> spec_for("FPN", encoder="mobilenet_v2").to_dict()
        {'library': 'smp', 'architecture': 'FPN', 'encoder': 'mobilenet_v2', 'args': {}}
        >>> spec_for("Unte")
        Traceback (most recent call last):
        ...
        cnnkit.errors.UnsupportedError: Unknown architecture 'Unte'. Closest: ['UTAE', 'Unet']. Expected one of (...).
    """
    if not isinstance(architecture, str) or not architecture:
        raise ShapeError(f"architecture must be a non-empty string. Received architecture={_short(architecture)}.")
    data: dict[str, Any] = {"architecture": architecture, "args": dict(args or {})}
    if architecture in MODELS:
        data["library"] = "cnnkit"
    elif architecture in _USER:
        data["library"] = "user"
    else:
        networks = smp_architectures()
        if architecture not in networks:
            known = [*MODELS, *sorted(_USER), *networks]
            raise UnsupportedError(f"Unknown architecture {architecture!r}. Closest: "
                                   f"{closest_names(architecture, known)}. Expected one of {tuple(known)!r}.")
        data["library"] = "smp"
        if encoder is None:
            encoder = inspect.signature(networks[architecture]).parameters["encoder_name"].default
    if encoder is not None:
        data["encoder"] = encoder
    spec = parse_spec(data)
    resolve(spec)
    return spec


@dataclass(frozen=True)
class Builder:
    """A spec whose names exist and whose arguments fit: call it to build the network.

    ``builder(in_channels, num_classes)`` builds on the current default device; smp networks take
    ``encoder_weights`` (smp's own argument: ``None`` for random weights, a weight name to download). A builder
    registered with ``reads_files=True`` is also given ``root``, the folder its spec's files lie in.
    """

    spec: ModelSpec
    function: Callable[..., nn.Module]
    root: str | os.PathLike | None = None
    reads_files: bool = False

    def __call__(self, in_channels: int, num_classes: int, *, encoder_weights: Any = None) -> nn.Module:
        args = dict(self.spec.args)
        if self.spec.library == "smp":
            return self.function(encoder_name=self.spec.encoder, encoder_weights=encoder_weights,
                                 in_channels=in_channels, classes=num_classes, **args)
        if self.reads_files:
            args["root"] = self.root
        return self.function(in_channels=in_channels, num_classes=num_classes, **args)


def resolve(spec: ModelSpec | Mapping[str, Any], *, root: str | os.PathLike | None = None) -> Builder:
    """The :class:`Builder` of ``spec``, after checking every name and argument (imports smp for ``smp``).

    ``root`` is the folder the spec's files lie in (a run folder, where its weights are read): given to a builder
    registered with ``reads_files=True``, unused by the others.

    Raises:
        UnsupportedError: an unknown architecture or encoder (with the closest names), or a ``user`` network
            not registered in this process (with what to do).
        ShapeError: an argument the builder does not take, or one that does not fit its annotation.

    Examples:
        >>> resolve({"library": "cnnkit", "architecture": "TinySegNet", "args": {"width": True}})
        Traceback (most recent call last):
        ...
        cnnkit.errors.ShapeError: spec['args']['width'] must be int (TinySegNet's annotation). Received True.
    """
    spec = parse_spec(spec)
    if spec.library == "cnnkit":
        if spec.architecture not in MODELS:
            raise UnsupportedError(f"Unknown cnnkit network {spec.architecture!r}. Closest: "
                                   f"{closest_names(spec.architecture, MODELS)}. Expected one of {tuple(MODELS)!r}.")
        function = MODELS[spec.architecture]
        _check_args(function, spec.args, spec.architecture, reserved=_SET_BY_BUILD, refused={}, open_kwargs=False)
    elif spec.library == "user":
        if spec.architecture not in _USER:
            near = closest_names(spec.architecture, _USER)
            raise UnsupportedError(
                f"The spec names the network {spec.architecture!r} of library 'user': a builder registered with "
                "cnnkit.models.register in the Python process that trained it, not registered in this one"
                + (f" (registered here: {near})" if near else "")
                + ". cnnkit never imports code named in a file: import the module that defines the builder and call "
                f"cnnkit.models.register({spec.architecture!r}, builder) in the process that builds or predicts "
                "(for cnnkit predict: a Python script that registers it, then calls cnnkit's predict functions)."
            )
        registered = _USER[spec.architecture]
        function = registered.builder
        reserved = (*_SET_BY_BUILD, "root") if registered.reads_files else _SET_BY_BUILD
        _check_args(function, spec.args, spec.architecture, reserved=reserved, refused={}, open_kwargs=True)
        return Builder(spec, function, root, registered.reads_files)
    else:
        networks = smp_architectures()
        if spec.architecture not in networks:
            raise UnsupportedError(f"Unknown smp architecture {spec.architecture!r}. Closest: "
                                   f"{closest_names(spec.architecture, networks)}. Expected one of "
                                   f"{tuple(networks)!r}.")
        check_encoder(spec.encoder, "encoder")
        function = networks[spec.architecture]
        _check_args(function, spec.args, spec.architecture, reserved=_SET_BY_BUILD, refused=_REFUSED_SMP,
                    open_kwargs=False)
    return Builder(spec, function)


def family_of(spec: ModelSpec | Mapping[str, Any]) -> str:
    """The training family of a spec's network: a key of :data:`~cnnkit.models.FAMILY_DEFAULTS`.

    cnnkit's image networks are ``"cnnkit"``, its ConvLSTM series network (SeriesSegNet) ``"cnnkit-series"``, its
    temporal-attention one (UTAE) ``"attention-series"``. An
    smp network is ``"transformer"`` when its encoder is one: DPT (always on a ViT) and any architecture on smp's Mix
    Transformer encoders (``mit_b0`` … ``mit_b5``, SegFormer's own, read from smp's table of them); every other
    smp network is ``"convolutional"`` (a timm transformer as ``tu-`` encoder of a convolutional decoder too:
    give it a lower learning rate yourself). A registered builder has the family it was registered with.

    Examples:
        >>> family_of({"library": "smp", "architecture": "Segformer", "encoder": "mit_b0"})
        'transformer'
        >>> family_of({"library": "smp", "architecture": "Segformer", "encoder": "resnet34"})
        'convolutional'
    """
    spec = parse_spec(spec)
    if spec.library == "cnnkit":
        return _CNNKIT_FAMILIES.get(spec.architecture, "cnnkit")
    if spec.library == "user":
        resolve(spec)  # not registered here: the error says what to do
        return _USER[spec.architecture].family
    from segmentation_models_pytorch.encoders.mix_transformer import mix_transformer_encoders

    return "transformer" if spec.architecture == "DPT" or spec.encoder in mix_transformer_encoders \
        else "convolutional"


# -- arguments against signatures ---------------------------------------------------------------------------


def _check_args(function: Callable, args: Mapping[str, Any], label: str, *, reserved: tuple[str, ...],
                refused: Mapping[str, str], open_kwargs: bool) -> None:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin without a signature: nothing more to check here
        return
    named = {n: p for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_kwargs = open_kwargs and any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    hints = _hints(function)
    accepted = [n for n in named if n not in reserved and n not in refused]
    for key, value in args.items():
        where = f"spec['args'][{key!r}]"
        if key in reserved:
            raise ShapeError(f"{where} is set by cnnkit.models.build (in_channels and num_classes from the data, the "
                             "encoder from spec['encoder']), not in args.")
        if key in refused and value is not None:
            raise ShapeError(f"{where} must be left out: {refused[key]}. Received {_short(value)}.")
        if key not in named:
            if takes_kwargs:
                continue
            raise ShapeError(f"{label} takes no argument {key!r}. Closest: {closest_names(key, accepted)}. "
                             f"Accepted: {tuple(accepted)!r}.")
        hint = hints.get(key, inspect.Parameter.empty)
        if hint is inspect.Parameter.empty:
            default = named[key].default
            hint = inspect.Parameter.empty if default is inspect.Parameter.empty or default is None \
                else type(default)
        if hint is not inspect.Parameter.empty and not _fits(value, hint):
            raise ShapeError(f"{where} must be {_hint_text(hint)} ({label}'s annotation). Received {_short(value)}.")


def _hints(function: Callable) -> dict[str, Any]:
    target = function.__init__ if isinstance(function, type) else function
    try:
        return typing.get_type_hints(target)
    except Exception:  # an annotation that does not evaluate in its module: judge by defaults instead
        return {}


_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Iterable, collections.abc.Collection)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a type annotation (Any, None, bool, int, float, str, Union, Optional, Literal,
    sequences and mappings of those); an annotation that JSON cannot satisfy (Callable, a class) does not fit."""
    if hint is Any or hint is object:
        return True
    if hint is None or hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    origin, parameters = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(_fits(value, option) for option in parameters)
    if origin is typing.Literal:
        return any(value == option and type(value) is type(option) for option in parameters)
    if hint in _SEQUENCES or origin in _SEQUENCES:
        if not isinstance(value, (list, tuple)):
            return False
        if not parameters:
            return True
        if origin is tuple and not (len(parameters) == 2 and parameters[1] is Ellipsis):
            return len(value) == len(parameters) and all(_fits(v, p) for v, p in zip(value, parameters))
        return all(_fits(v, parameters[0]) for v in value)
    if hint in _MAPPINGS or origin in _MAPPINGS:
        if not isinstance(value, Mapping):
            return False
        return len(parameters) != 2 or all(_fits(v, parameters[1]) for v in value.values())
    if isinstance(hint, type):
        return isinstance(value, hint)
    return False


def _hint_text(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("collections.abc.", "").replace("NoneType", "None")
