"""A run manifest read as untrusted input: the form of every key checked, torch-free.

People share run folders, so ``manifest.json`` is read like a file from a stranger: :func:`check_manifest` takes the
parsed JSON and returns it normalised, or raises :class:`~cnnkit.errors.CnnkitError` naming the key, the rule and
the value received. The network's spec is checked by :func:`cnnkit.models.parse_spec` (its names and arguments
later, where the network is built: :func:`cnnkit.models.build`).

Rules (the manifest of ``cnnkit train``, see :func:`cnnkit.train.rundir.write_manifest`):

- at most :data:`MAX_DEPTH` levels of lists and objects (checked without recursion);
- ``model``: ``{"spec", "in_channels", "num_classes", "weights"}``; the older ``{"builder", "args", "weights"}``
  is read as ``{"library": "cnnkit", "architecture": builder, "args": args}`` (``in_channels`` and
  ``num_classes`` taken out of ``args``); ``weights`` a relative path of at most 200 characters (where it leads
  is checked when the file is opened: inside the run folder only);
- ``input`` (``null`` for a run trained on tensors): ``mean`` and ``std`` finite, ``std`` ≥ :data:`MIN_STD`, one
  per band the network reads; ``bands`` unique indices in ``[0, band_count)``; ``nodata`` a finite number or null;
  ``multiple_of`` 1–1024; ``validity_band`` true/false; ``in_channels`` = bands + validity band;
- ``classes``: ``names`` strings (one per class, ``num_classes`` of them), ``palette`` ``[r, g, b]`` triples of
  integers 0–255 (one per class, or none), ``ignore_index`` an integer or null.
"""

from __future__ import annotations

import math
from typing import Any

from cnnkit.errors import CnnkitError
from cnnkit.models.spec import MAX_CHANNELS, MAX_CLASSES, parse_spec

__all__ = ["MAX_DEPTH", "MIN_STD", "check_manifest"]

MAX_DEPTH = 10
"""Most levels of lists and objects in a manifest (``{"model": {"spec": {"args": {...}}}}`` is 4)."""

MIN_STD = 1e-12
"""Smallest band ``std`` a manifest may hold: dividing by less turns any value into ±inf."""

_MAX_TEXT = 200


class _Bad(Exception):
    def __init__(self, key: str, rule: str, value: Any):
        super().__init__(key, rule, value)
        self.key, self.rule, self.value = key, rule, value


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _depth_ok(data: Any) -> None:
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                raise _Bad("manifest", f"must be at most {MAX_DEPTH} levels deep", f"more than {MAX_DEPTH} levels")
            items = value.values() if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)


def _int(value: Any, key: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _Bad(key, f"must be an integer from {low} to {high}", value)
    return value


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Bad(key, "must be a finite number", value)
    return float(value)


def _list(value: Any, key: str, length: int | None = None) -> list:
    if not isinstance(value, list):
        raise _Bad(key, "must be a list", value)
    if length is not None and len(value) != length:
        raise _Bad(key, f"must hold {length} items", f"{len(value)} items")
    return value


def _model(model: Any) -> dict[str, Any]:
    if not isinstance(model, dict):
        raise _Bad("model", "must be an object", model)
    weights = model.get("weights", "model.safetensors")
    if not isinstance(weights, str) or not weights or len(weights) > _MAX_TEXT:
        raise _Bad("model.weights", f"must be a file name inside the run folder (a string of 1–{_MAX_TEXT} "
                   "characters)", weights)
    if "spec" in model:
        try:
            spec = parse_spec(model["spec"], "model.spec").to_dict()
        except CnnkitError as error:
            raise _Bad("model.spec", str(error), model["spec"]) from None
        in_channels = model.get("in_channels")
        num_classes = model.get("num_classes")
    else:  # the older form: a name of cnnkit.models.MODELS and the builder's keyword arguments
        builder, args = model.get("builder"), model.get("args", {})
        if builder is None:
            raise _Bad("model.builder", "must name the network (this run used a network of the user's own, which "
                       "cnnkit cannot rebuild: build it in Python and use cnnkit.predict.Predictor)", builder)
        if not isinstance(builder, str) or len(builder) > _MAX_TEXT:
            raise _Bad("model.builder", "must be a network's name (a string)", builder)
        if not isinstance(args, dict):
            raise _Bad("model.args", "must be an object", args)
        args = dict(args)
        in_channels, num_classes = args.pop("in_channels", None), args.pop("num_classes", None)
        try:
            spec = parse_spec({"library": "cnnkit", "architecture": builder, "args": args}, "model").to_dict()
        except CnnkitError as error:
            raise _Bad("model.args", str(error), args) from None
    if in_channels is not None:
        _int(in_channels, "model.in_channels", 1, MAX_CHANNELS)
    if num_classes is not None:
        _int(num_classes, "model.num_classes", 1, MAX_CLASSES)
    return {"spec": spec, "in_channels": in_channels, "num_classes": num_classes, "weights": weights}


def _input(prep: Any, series: bool) -> dict[str, Any] | None:
    if prep is None:
        return None
    if not isinstance(prep, dict):
        raise _Bad("input", "must be an object or null", prep)
    band_count = _int(prep.get("band_count"), "input.band_count", 1, MAX_CHANNELS) \
        if prep.get("band_count") is not None or series else None
    bands = prep.get("bands")
    if bands is not None:
        _list(bands, "input.bands")
        if not bands or len(bands) > MAX_CHANNELS:
            raise _Bad("input.bands", f"must hold 1 to {MAX_CHANNELS} band indices", bands)
        for i, band in enumerate(bands):
            _int(band, f"input.bands[{i}]", 0, (band_count or MAX_CHANNELS) - 1)
        if len(set(bands)) != len(bands):
            raise _Bad("input.bands", "must not repeat a band", bands)
    count = len(bands) if bands is not None else band_count
    mean = _list(prep.get("mean"), "input.mean", count)
    std = _list(prep.get("std"), "input.std", len(mean))
    if not mean or len(mean) > MAX_CHANNELS:
        raise _Bad("input.mean", f"must hold 1 to {MAX_CHANNELS} numbers", mean)
    for i, value in enumerate(mean):
        _number(value, f"input.mean[{i}]")
    for i, value in enumerate(std):
        if _number(value, f"input.std[{i}]") < MIN_STD:
            raise _Bad(f"input.std[{i}]", f"must be at least {MIN_STD:g}", value)
    nodata = prep.get("nodata")
    if nodata is not None:
        _number(nodata, "input.nodata")
    _int(prep.get("multiple_of", 1), "input.multiple_of", 1, 1024)
    if not isinstance(prep.get("validity_band", True), bool):
        raise _Bad("input.validity_band", "must be true or false", prep.get("validity_band"))
    reference = prep.get("days_reference")
    if reference is not None:  # the day series' acquisition days count from (PASTIS: 2018-09-01)
        import datetime

        try:
            if not isinstance(reference, str) or len(reference) != 10:
                raise ValueError
            datetime.date.fromisoformat(reference)
        except ValueError:
            raise _Bad("input.days_reference", "must be a date as YYYY-MM-DD or null", reference) from None
    return prep


def _classes(classes: Any, num_classes: int | None) -> dict[str, Any]:
    if not isinstance(classes, dict):
        raise _Bad("classes", "must be an object", classes)
    names = _list(classes.get("names"), "classes.names", num_classes)
    if not 1 <= len(names) <= MAX_CLASSES:
        raise _Bad("classes.names", f"must name 1 to {MAX_CLASSES} classes", f"{len(names)} names")
    for i, name in enumerate(names):
        if not isinstance(name, str) or len(name) > _MAX_TEXT:
            raise _Bad(f"classes.names[{i}]", f"must be a string of at most {_MAX_TEXT} characters", name)
    palette = _list(classes.get("palette", []), "classes.palette")
    if palette and len(palette) != len(names):
        raise _Bad("classes.palette", f"must hold one colour per class ({len(names)})", f"{len(palette)} colours")
    for i, colour in enumerate(palette):
        if not isinstance(colour, list) or len(colour) != 3 or any(
                isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 255 for c in colour):
            raise _Bad(f"classes.palette[{i}]", "must be 3 integers (red, green, blue) from 0 to 255", colour)
    ignore = classes.get("ignore_index")
    if ignore is not None and (isinstance(ignore, bool) or not isinstance(ignore, int)):
        raise _Bad("classes.ignore_index", "must be an integer or null", ignore)
    return classes


def check_manifest(data: Any, name: str, tasks: tuple[str, ...], version: int) -> dict[str, Any]:
    """``data`` (a parsed manifest) checked and normalised: ``data["model"]`` in the current form.

    Raises:
        CnnkitError: "The manifest NAME cannot be used: KEY RULE. Received VALUE."
    """
    try:
        _depth_ok(data)
        if not isinstance(data, dict) or data.get("format") != "cnnkit-run":
            raise _Bad("format", "must be 'cnnkit-run' (this is not a cnnkit run manifest)",
                       data.get("format") if isinstance(data, dict) else type(data).__name__)
        if data.get("version") != version:
            raise _Bad("version", f"must be {version} (the manifest comes from another cnnkit version)",
                       data.get("version"))
        task = data.get("task", "segmentation")
        if task not in tasks:
            raise _Bad("task", f"must be one of {tasks} (a newer cnnkit?)", task)
        model = _model(data.get("model"))
        classes = _classes(data.get("classes"), model["num_classes"])
        if model["num_classes"] is None:
            model["num_classes"] = len(classes["names"])
        prep = _input(data.get("input"), task != "segmentation")
        if prep is not None:
            expected = len(prep["mean"]) + int(bool(prep.get("validity_band", True)) and task == "segmentation")
            if model["in_channels"] is None:
                model["in_channels"] = expected
            elif task == "segmentation" and model["in_channels"] != expected:
                raise _Bad("model.in_channels", f"must equal the bands in input.mean plus the validity band "
                           f"({expected})", model["in_channels"])
    except _Bad as bad:
        raise CnnkitError(f"The manifest {name!r} cannot be used: {bad.key!r} {bad.rule}. Received "
                          f"{_short(bad.value)}.") from None
    return {**data, "task": task, "model": model}
