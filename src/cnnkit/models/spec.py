"""Reading a network spec: the JSON a run manifest stores to name its network, checked as untrusted input.

A spec names a network by library, architecture and (for segmentation-models-pytorch) encoder, with keyword
arguments that are plain JSON values::

    {"library": "smp", "architecture": "Unet", "encoder": "resnet18", "args": {"decoder_channels": [64, 32, 16]}}
    {"library": "cnnkit", "architecture": "TinySegNet", "args": {"width": 16}}
    {"library": "user", "architecture": "MyNet", "args": {"depth": 3}}

This file only checks the *form* (types, lengths, JSON depth, finite numbers, no ``True`` where a number is
meant) and needs neither torch nor any network library: it is safe to run on a file somebody sent. Whether the
names exist and the arguments fit the builder is checked where the builders are known
(:mod:`cnnkit.models.registry`); the number of the network's parameters where it is built
(:mod:`cnnkit.models.factory`).

Examples:
    >>> spec = parse_spec({"library": "smp", "architecture": "Unet", "encoder": "resnet18"})
    >>> spec
    ModelSpec(library='smp', architecture='Unet', encoder='resnet18', args={})
    >>> spec.to_dict()
    {'library': 'smp', 'architecture': 'Unet', 'encoder': 'resnet18', 'args': {}}
    >>> parse_spec({"library": "cnnkit", "architecture": "TinySegNet", "args": {"width": float("nan")}})
    Traceback (most recent call last):
    ...
    cnnkit.errors.ShapeError: spec['args']['width'] must be a finite number. Received nan.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cnnkit.errors import ShapeError

__all__ = [
    "FAMILIES",
    "LIBRARIES",
    "MAX_CHANNELS",
    "MAX_CLASSES",
    "MAX_JSON_DEPTH",
    "MAX_PARAMETERS",
    "MAX_WIDTH",
    "ModelSpec",
    "check_count",
    "check_json",
    "closest_names",
    "parse_spec",
]

LIBRARIES = ("cnnkit", "smp", "user")
"""``cnnkit``: :data:`cnnkit.models.MODELS`; ``smp``: segmentation-models-pytorch's architectures on any of its
encoders (timm's as ``tu-<name>``); ``user``: a builder registered with :func:`cnnkit.models.register`."""

FAMILIES = ("cnnkit", "cnnkit-series", "attention-series", "convolutional", "transformer")
"""Training families: the rows of :data:`cnnkit.models.FAMILY_DEFAULTS` (see :mod:`cnnkit.models.defaults`)."""

MAX_CHANNELS = 1024
"""Most input channels a spec may ask for (hyperspectral sensors have a few hundred bands)."""

MAX_CLASSES = 4096
"""Most classes a spec may ask for (ADE20K-full, among the largest segmentation label sets, has 3,688)."""

MAX_WIDTH = 4096
"""Largest integer any builder argument may take (widths, channels, strides, rates)."""

MAX_PARAMETERS = 500_000_000
"""Default parameter budget of :func:`cnnkit.models.build` (2 GB in float32), checked on the meta device before
anything is allocated. The largest common segmentation networks stay well below (Unet on ResNet-152: 67 million;
DPT on ViT-Large: about 340 million)."""

MAX_JSON_DEPTH = 6
"""Most levels of lists and objects in a spec's ``args``, ``args`` itself the first (``{"a": [[1]]}`` has 3)."""

_MAX_ITEMS = 64  # items of any list or object inside args
_MAX_NODES = 2_000  # values inside args, all levels together
_MAX_TEXT = 200  # characters of any string


@dataclass(frozen=True)
class ModelSpec:
    """A network named by library, architecture, encoder and JSON arguments (see the module docstring).

    Build one with :func:`parse_spec` (from JSON) or :func:`cnnkit.models.spec_for` (from names); store
    :meth:`to_dict` in a manifest. ``in_channels`` and the number of classes are not part of a spec: they come
    from the data (:func:`cnnkit.models.build` takes them).

    Attributes:
        library: One of :data:`LIBRARIES`.
        architecture: The architecture's or builder's name (``"Unet"``, ``"TinySegNet"``, a registered name).
        encoder: smp's encoder name (``"resnet18"``, ``"efficientnet-b0"``, ``"tu-convnext_tiny"``); ``None``
            for the other libraries.
        args: Keyword arguments of the builder, JSON values.
    """

    library: str
    architecture: str
    encoder: str | None = None
    args: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-able data, ``encoder`` left out where there is none.

        Examples:
            >>> ModelSpec("cnnkit", "TinySegNet", args={"width": 8}).to_dict()
            {'library': 'cnnkit', 'architecture': 'TinySegNet', 'args': {'width': 8}}
        """
        data: dict[str, Any] = {"library": self.library, "architecture": self.architecture}
        if self.encoder is not None:
            data["encoder"] = self.encoder
        data["args"] = copy.deepcopy(self.args)
        return data

    def label(self) -> str:
        """``Unet/resnet18`` or ``TinySegNet``: the spec in a few characters, for messages and tables."""
        return self.architecture if self.encoder is None else f"{self.architecture}/{self.encoder}"


def parse_spec(data: Any, name: str = "spec") -> ModelSpec:
    """A :class:`ModelSpec` from JSON data, after checking its form; else a clear error naming the field.

    Rules: an object with the keys ``library`` (one of :data:`LIBRARIES`), ``architecture`` (a string),
    ``encoder`` (a string, required for ``smp``, absent or null otherwise) and ``args`` (an object, optional),
    and no other key. Inside ``args``: strings, finite numbers, ``true``/``false``, ``null``, lists and objects,
    nested at most :data:`MAX_JSON_DEPTH` deep, at most 64 items per list or object and 2,000 values in all,
    strings of at most 200 characters, numbers from -:data:`MAX_WIDTH` to :data:`MAX_WIDTH`. A :class:`ModelSpec`
    is checked again like its JSON form.

    Args:
        data: The parsed JSON (a ``dict``) or a :class:`ModelSpec`.
        name: What ``data`` is, for the messages (``"manifest['model']"``).

    Raises:
        ShapeError: a field of the wrong kind or size, or a number that is not finite.

    Examples:
        >>> parse_spec({"library": "smp", "architecture": "Unet"})
        Traceback (most recent call last):
        ...
        cnnkit.errors.ShapeError: spec['encoder'] must name an encoder for library 'smp' (e.g. 'resnet18'). ...
        >>> parse_spec({"library": "cnnkit", "architecture": "TinySegNet", "args": {"width": 16}}).label()
        'TinySegNet'
    """
    if isinstance(data, ModelSpec):
        data = data.to_dict()
    if not isinstance(data, Mapping):
        raise ShapeError(f"{name} must be an object with the keys library, architecture, encoder and args. "
                         f"Received {type(data).__name__}: {_short(data)}.")
    extra = [k for k in data if k not in ("library", "architecture", "encoder", "args")]
    if extra:
        raise ShapeError(f"{name} has keys no spec has: {_short(extra)}. Expected only library, architecture, "
                         "encoder and args.")
    library = data.get("library")
    if library not in LIBRARIES:
        raise ShapeError(f"{name}['library'] must be one of {LIBRARIES!r}. Received {_short(library)}.")
    architecture = _text(data.get("architecture"), f"{name}['architecture']")
    encoder = data.get("encoder")
    if library == "smp":
        if encoder is None:
            raise ShapeError(f"{name}['encoder'] must name an encoder for library 'smp' (e.g. 'resnet18'). "
                             "Received no encoder.")
        encoder = _text(encoder, f"{name}['encoder']")
    elif encoder is not None:
        raise ShapeError(f"{name}['encoder'] is only for library 'smp' (library {library!r} networks take their "
                         f"arguments in args). Received encoder={_short(encoder)}.")
    args = data.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise ShapeError(f"{name}['args'] must be an object of keyword arguments. Received "
                         f"{type(args).__name__}: {_short(args)}.")
    check_json(args, f"{name}['args']")
    return ModelSpec(library, architecture, encoder, copy.deepcopy(dict(args)))


def check_json(value: Any, name: str) -> None:
    """Check that ``value`` is small, shallow, finite JSON (see :func:`parse_spec`), without recursion: a
    200,000-deep list is refused at level :data:`MAX_JSON_DEPTH` + 1, not by a ``RecursionError``."""
    stack: list[tuple[Any, str, int]] = [(value, name, 1)]
    nodes = 0
    while stack:
        item, where, depth = stack.pop()
        nodes += 1
        if nodes > _MAX_NODES:
            raise ShapeError(f"{name} holds more than {_MAX_NODES} values. A network's arguments are a few numbers "
                             "and names.")
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, (int, float)):
            if isinstance(item, float) and not math.isfinite(item):
                raise ShapeError(f"{where} must be a finite number. Received {item!r}.")
            if not -MAX_WIDTH <= item <= MAX_WIDTH:
                raise ShapeError(f"{where} must be a number from -{MAX_WIDTH} to {MAX_WIDTH} (widths, channels, "
                                 f"rates and indices of a network). Received {_short(item)}.")
            continue
        if isinstance(item, str):
            if len(item) > _MAX_TEXT:
                raise ShapeError(f"{where} must be a string of at most {_MAX_TEXT} characters. Received one of "
                                 f"{len(item)}.")
            continue
        if isinstance(item, (list, tuple, Mapping)):
            if depth > MAX_JSON_DEPTH:
                raise ShapeError(f"{where} is nested deeper than {MAX_JSON_DEPTH} levels of lists and objects. "
                                 "A network's arguments are flat.")
            if len(item) > _MAX_ITEMS:
                raise ShapeError(f"{where} has {len(item)} items. Expected at most {_MAX_ITEMS}.")
            if isinstance(item, Mapping):
                for key, sub in item.items():
                    if not isinstance(key, str) or not key or len(key) > _MAX_TEXT:
                        raise ShapeError(f"{where} must have non-empty string keys. Received key {_short(key)}.")
                    stack.append((sub, f"{where}[{key!r}]", depth + 1))
            else:
                stack.extend((sub, f"{where}[{i}]", depth + 1) for i, sub in enumerate(item))
            continue
        raise ShapeError(f"{where} must be a JSON value (string, number, true/false, null, list, object). "
                         f"Received {type(item).__name__}.")


def check_count(value: Any, name: str, maximum: int) -> int:
    """``value`` if it is an integer (not a bool) from 1 to ``maximum``; else a clear error.

    Examples:
        >>> check_count(10**7, "num_classes", MAX_CLASSES)
        Traceback (most recent call last):
        ...
        cnnkit.errors.ShapeError: num_classes must be an integer from 1 to 4096. Received num_classes=10000000.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ShapeError(f"{name} must be an integer from 1 to {maximum}. Received {name}={_short(value)}.")
    return int(value)


def closest_names(name: str, names: Iterable[str], n: int = 5) -> list[str]:
    """Up to ``n`` of ``names`` closest to ``name`` (difflib's ratio, case ignored), best first.

    Examples:
        >>> closest_names("unet", ["Unet", "UnetPlusPlus", "FPN", "Linknet"])
        ['Unet', 'Linknet', 'UnetPlusPlus']
    """
    by_lower: dict[str, str] = {}
    for candidate in names:
        by_lower.setdefault(candidate.lower(), candidate)
    matches = difflib.get_close_matches(str(name).lower(), list(by_lower), n=n, cutoff=0.5)
    return [by_lower[m] for m in matches]


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
        raise ShapeError(f"{name} must be a non-empty string of at most {_MAX_TEXT} characters. Received "
                         f"{_short(value)}.")
    return value


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (a tampered file may hold megabytes); never recurses deeply."""
    if isinstance(value, (list, tuple, dict)) and len(value) > 8:
        return f"{type(value).__name__} of {len(value)} items"
    try:
        text = repr(value)
    except RecursionError:
        return f"a deeply nested {type(value).__name__}"
    except ValueError:  # an int of more than 4,300 digits
        return f"a {type(value).__name__} too long to print"
    return text if len(text) <= limit else text[: limit - 1] + "…"

