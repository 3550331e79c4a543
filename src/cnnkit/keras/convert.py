"""``load(path)``: a Keras model file in, an equivalent PyTorch module out, with a report of every layout
conversion made.

How it works, in four steps, none of which runs code from the file:

1. :mod:`cnnkit.keras.reader` parses the JSON config and lists the stored arrays (shapes only).
2. The layer graph (Sequential or functional, several inputs and outputs, shared layers) is walked in
   topological order; each layer's Keras output shape is inferred and a PyTorch module is built for it
   **on the meta device** (no memory), by the builder registered for its ``class_name``. Anything not
   registered — ``Lambda``, custom objects, unknown classes, nested models — is refused.
3. Each module's expected Keras weight shapes (:func:`cnnkit.keras.keras_shapes`) are compared with the
   stored ones, and its size with :data:`MAX_LAYER_PARAMS`, *before* any array is read.
4. Arrays are read and converted by :func:`cnnkit.keras.from_keras` (the one place that knows each
   layout), and loaded into the materialised module.

Layout convention: between layers every tensor of rank ≥ 3 is channels first — Keras's last axis moved to
dim 1 (``(N, H, W, C)`` → ``(N, C, H, W)``, ``(N, T, F)`` → ``(N, F, T)``, ``(N, T, H, W, C)`` →
``(N, C, T, H, W)``). Rank-2 tensors ``(N, F)`` and integer token ids ``(N, T)`` are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

import cnnkit.keras.builders  # noqa: F401 (registers the builders)
from cnnkit.errors import CnnkitError, ShapeError
from cnnkit.keras.graph import call_refs, input_shape, parse_graph, topological_order
from cnnkit.keras.layer_config import _BUILDERS, Shape, _Built, _Layer, supported_layers
from cnnkit.keras.model import KerasModel, _Call, format_shape
from cnnkit.keras.reader import KerasFile, KerasFileError, _snake_case, open_keras_file
from cnnkit.keras.report import ConversionReport, LayerConversion, LoadedModel
from cnnkit.layouts import from_keras, keras_shapes

__all__ = [
    "MAX_BYTES",
    "MAX_LAYER_PARAMS",
    "ConversionReport",
    "KerasModel",
    "LayerConversion",
    "LoadedModel",
    "build_architecture",
    "load",
    "supported_layers",
]

_T = TypeVar("_T")

MAX_LAYER_PARAMS = 10**9
#: Default budget of :func:`load` for all weights and buffers together (bytes); see its ``max_bytes``.
MAX_BYTES = 4 * 2**30

# --- building -----------------------------------------------------------------------------------


def _key(name: str, taken: set[str]) -> str:
    key = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name) or "layer"
    if key[0].isdigit() or hasattr(nn.ModuleDict, key):
        key = "layer_" + key
    base, i = key, 1
    while key in taken:
        key, i = f"{base}_{i}", i + 1
    taken.add(key)
    return key


def _module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (BatchNorm's moving statistics included)."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _expected(built: _Built) -> dict:
    """Keras name → shape of every stored array the built module expects, in storage order."""
    out = {}
    for part in built.all_parts():
        if part.weights or part.defaults:
            out.update((part.prefix + k, v) for k, v in keras_shapes(part.module).items())
    return out


def _stored_names(built: _Built) -> tuple[str, ...]:
    return tuple(part.prefix + w for part in built.all_parts() for w in part.weights)


def _in_storage_order(built: _Built, refs: list) -> list:
    """Refs of a composite layer in its parts' order (an archive lists sub-groups alphabetically)."""
    subpaths = [p.subpath for p in built.parts if p.weights]
    if len(subpaths) < 2:
        return refs

    def rank(ref) -> int:
        return next((i for i, sub in enumerate(subpaths) if f"/{sub}/" in ref.name), len(subpaths))

    return sorted(refs, key=rank)


def _check_stored(c: _Layer, built: _Built, refs: list, path: str) -> dict:
    """Check the stored arrays' count and shapes against the module built from the config (nothing read)."""
    names = _stored_names(built)
    if len(refs) != len(names):
        stored = [f"{r.name} {format_shape(r.shape)}" for r in refs]
        if not refs and names:
            raise c.error(f"weights missing in {path}: expected {list(names)}.")
        raise c.error(f"the config asks for {len(names)} weight arrays {list(names)}; "
                      f"{path} stores {len(refs)}: {stored}.")
    expected = _expected(built)
    for name, ref in zip(names, refs):
        if tuple(ref.shape) != tuple(expected[name]):
            raise c.error(
                f"Keras weight {name!r} must have shape {format_shape(expected[name])} (from the config and the "
                f"input shape {', '.join(format_shape((None, *s)) for s in c.shapes)}). {path} stores "
                f"{ref.name} with shape {format_shape(ref.shape)}."
            )
    return expected


def _materialise(c: _Layer, built: _Built, refs: list, expected: dict) -> dict:
    """Read the (checked) arrays, convert their layouts and load them into the module, made real."""
    module = built.module
    arrays = {name: torch.from_numpy(ref.read()) for name, ref in zip(_stored_names(built), refs)}
    state = {}
    for part in built.all_parts():
        mine = {k[len(part.prefix):]: v for k, v in arrays.items() if k.startswith(part.prefix)} if (
            part.prefix) else dict(arrays)
        if part.prefix == "" and built.parts:
            mine = {k: v for k, v in mine.items() if k in part.weights}
        for name, make in part.defaults.items():
            mine[name] = make(expected[part.prefix + name])
        if not mine:
            continue
        sub = from_keras(part.module, mine)
        where = next((k for k, m in module.named_modules() if m is part.module), "")
        state.update((f"{where}.{k}" if where else k, v) for k, v in sub.items())
    module.to_empty(device="cpu")
    missing, _ = module.load_state_dict(state, strict=False)
    with torch.no_grad():
        for key, buffer in module.named_buffers():
            if key.endswith("num_batches_tracked"):  # BatchNorm keeps its own (uninitialised) counter
                buffer.zero_()
    for key in missing:
        if not key.endswith("num_batches_tracked"):  # pragma: no cover - every layout covers its tensors
            raise c.error(f"internal error: no Keras array for {key!r}.", CnnkitError)
    return {k: tuple(v.shape) for k, v in state.items()}


_NON_TRAINABLE = ("moving_mean", "moving_variance", "mean", "variance", "count")


def _keras_counts(c: _Layer, built: _Built, expected: dict) -> tuple[int, int]:
    """(trainable, non-trainable) values of the layer's stored weights, counted as Keras counts them."""
    trainable = non_trainable = 0
    frozen = c.config.get("trainable") is False
    for name in _stored_names(built):
        size = math.prod(expected[name])
        if frozen or name.rsplit("/", 1)[-1] in _NON_TRAINABLE:
            non_trainable += size
        else:
            trainable += size
    return trainable, non_trainable


def _weights_file_cap(elements: int, layers: int) -> int:
    """How many bytes an archive's ``model.weights.h5`` may hold for a config of ``elements`` values.

    16 bytes per value (float64 weights, or float32 weights with an optimizer's two moments), 16 KiB of
    HDF5 metadata per layer and 1 MiB besides. Past 256 MiB the spool is on disk, not in memory.
    """
    return 16 * elements + 16 * 2**10 * (layers + 1) + 2**20


@dataclass
class _Graph:
    """A Keras config's layer graph, every layer built on the meta device and checked (no weights read)."""

    path: str
    layers: list  # (name, class_name, config) in config order
    first: dict[str, tuple[_Layer, _Built]]  # each layer's first call: its config and meta module
    order: list[_Call]
    tensors: dict[tuple[str, int, int], tuple[str, Shape]]
    keys: dict[str, str]  # layer name -> module key
    input_refs: list
    output_refs: list
    model_class: str
    storage_index: dict[str, int]
    name: str

    def model(self, channels_last: bool) -> KerasModel:
        """The :class:`KerasModel` of the graph's modules (meta until materialised)."""
        return KerasModel(
            {self.keys[n]: b.module for n, (_, b) in self.first.items()}, self.order,
            [self.tensors[tuple(r)][0] for r in self.input_refs], [self.tensors[tuple(r)][0] for r in self.output_refs],
            [self.tensors[tuple(r)][1] for r in self.input_refs], channels_last=channels_last, name=self.name)


def _build_graph(model_config: dict, path: str, keras_major: int, max_bytes: int, free_sizes: bool = False) -> _Graph:
    """Steps 1 and 2 of the module docstring: the graph parsed, every layer built on the meta device, the
    parameter and memory budgets checked. Nothing is read from a weights file. ``free_sizes``: the inputs'
    spatial sizes (every axis but the batch and the last) are taken as ``None``, whatever the config declares."""
    layers, calls, input_refs, output_refs, model_class = parse_graph(model_config, path, _BUILDERS, keras_major)
    by_name = {name: (cls, config) for name, cls, config in layers}
    tensors: dict[tuple[str, int, int], tuple[str, Shape]] = {}
    keys: dict[str, str] = {}
    taken: set[str] = set()
    for name, cls, config in layers:
        keys[name] = _key(name, taken)
        if cls == "InputLayer":
            shape = input_shape(config, f"{path}: input layer {name!r}")
            if free_sizes and len(shape) >= 3:
                shape = (*(None,) * (len(shape) - 1), shape[-1])
            tensors[(name, 0, 0)] = (keys[name], shape)
    for ref in (*input_refs, *output_refs):
        if ref[0] not in by_name:
            raise KerasFileError(
                f"{path}: the model's inputs/outputs name a layer {ref[0]!r} that is not in the config.")
    for ref in input_refs:
        if by_name[ref[0]][0] != "InputLayer" or ref[1:] != (0, 0):
            raise KerasFileError(f"{path}: model input {list(ref)} is not an InputLayer's output.")

    # Storage index for files without layer names on their weight groups (Keras's snake_case rule).
    counts: dict[str, int] = {}
    storage_index = {}
    for name, cls, _ in layers:
        if (model_class == "Sequential" and cls == "InputLayer") or cls.startswith("ops."):
            continue  # keras.ops calls are not layers: they are not saved
        snake = _snake_case(cls)
        storage_index[name] = counts.get(snake, 0)
        counts[snake] = storage_index[name] + 1

    # 1. Every layer built on the meta device (no memory), in an order where its inputs exist.
    ordered, stuck = topological_order(calls, set(tensors))
    first: dict[str, tuple[_Layer, _Built]] = {}
    order: list[_Call] = []
    for i in ordered:
        name, index, structure = calls[i]
        refs = call_refs(structure)
        cls, config = by_name[name]
        shapes = [tensors[r][1] for r in refs]
        layer = _Layer(name, cls, config, shapes, keras_major)
        try:
            with torch.device("meta"):
                built = _BUILDERS[cls](layer)
        except CnnkitError:
            raise
        except (TypeError, ValueError, KeyError, IndexError, RuntimeError, OverflowError) as error:
            raise KerasFileError(f"Layer {name!r} ({cls}): malformed config ({type(error).__name__}: "
                                 f"{error}).") from None
        if name not in first:
            numel = sum(p.numel() for p in built.module.parameters())
            if numel > MAX_LAYER_PARAMS:
                raise layer.error(f"the config asks for {numel:,} parameters; at most {MAX_LAYER_PARAMS:,} are "
                                  "allowed per layer.")
            first[name] = (layer, built)
        elif _expected(first[name][1]) != _expected(built):
            raise layer.error("a shared layer is called on inputs that need different weight shapes.")
        out_name = f"{keys[name]}:{index}" if index else keys[name]
        tensors[(name, index, 0)] = (out_name, built.output_shape)
        args = tensors[refs[0]][0] if not isinstance(structure, list) else tuple(tensors[r][0] for r in refs)
        order.append(_Call(keys[name], args, out_name))
    if stuck:
        missing = sorted({r for i in stuck for r in call_refs(calls[i][2])} - set(tensors))
        waiting = sorted({calls[i][0] for i in stuck})[:20]
        raise KerasFileError(f"{path}: the layer graph cannot be run: layers {waiting} "
                             f"wait for tensors {[list(m) for m in missing][:5]} that no layer produces "
                             "(a cycle, or a reference to a missing layer or node).")
    for ref in output_refs:
        if tuple(ref) not in tensors:
            raise KerasFileError(f"{path}: model output {list(ref)} is not produced by any layer call.")

    # 2. The memory budget, over all weights and buffers, from the declared shapes alone.
    sizes = {name: _module_bytes(built.module) for name, (_, built) in first.items()}
    total = sum(sizes.values())
    if total > max_bytes:
        largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
        raise ShapeError(
            f"{path}: the config asks for {total:,} bytes of weights and buffers; the budget is max_bytes="
            f"{max_bytes:,} (largest layers: {', '.join(f'{n!r} {b:,}' for n, b in largest)}). If you trust "
            "the file and have the memory, pass a larger max_bytes to cnnkit.keras.load.")
    inner = model_config.get("config")
    name = str(inner.get("name", "model")) if isinstance(inner, dict) else "model"
    return _Graph(path, layers, first, order, tensors, keys, input_refs, output_refs, model_class, storage_index, name)


def _convert(kf: KerasFile, channels_last: bool, max_bytes: int, free_sizes: bool = False) -> LoadedModel:
    path = kf.path
    graph = _build_graph(kf.config, path, kf.keras_major, max_bytes, free_sizes)
    layers, first, tensors = graph.layers, graph.first, graph.tensors

    # 3. The stored arrays listed and checked against the config; nothing read yet.
    elements = sum(t.numel() for _, b in first.values() for t in (*b.module.parameters(), *b.module.buffers()))
    kf.open_weights(_weights_file_cap(elements, len(layers)))
    listed = {}
    stored_bytes = 0
    for name, (layer, built) in first.items():
        refs = kf.weights(name, layer.cls, graph.storage_index.get(name, 0))
        if kf.format == "keras":
            refs = _in_storage_order(built, refs)
        listed[name] = (refs, _check_stored(layer, built, refs, path))
        stored_bytes += sum(r.nbytes for r in refs)
    if stored_bytes > max_bytes:
        raise ShapeError(f"{path}: the weights to read hold {stored_bytes:,} bytes; the budget is max_bytes="
                         f"{max_bytes:,}. If you trust the file, pass a larger max_bytes to cnnkit.keras.load.")

    # 4. Read, convert, load.
    reports: dict[str, LayerConversion] = {}
    for name, (layer, built) in first.items():
        refs, expected = listed[name]
        torch_w = _materialise(layer, built, refs, expected)
        reports[name] = LayerConversion(
            name, layer.cls, repr(built.module).splitlines()[0], tuple(layer.shapes), built.output_shape,
            {n: tuple(v) for n, v in expected.items()}, torch_w, tuple(layer.notes),
            sum(p.numel() for p in built.module.parameters()), *_keras_counts(layer, built, expected))

    module = graph.model(channels_last)
    module.eval()
    report = ConversionReport(
        path=path, format=kf.format, keras_version=kf.keras_version, model_class=graph.model_class,
        layers=tuple(reports[n] for n, _, _ in layers if n in reports),
        input_shapes=tuple(tensors[tuple(r)][1] for r in graph.input_refs),
        output_shapes=tuple(tensors[tuple(r)][1] for r in graph.output_refs),
        channels_last=channels_last,
    )
    return LoadedModel(module, report)


def build_architecture(model_config: dict, keras_major: int, path: str, *, max_bytes: int = MAX_BYTES,
                       free_sizes: bool = False) -> KerasModel:
    """The :class:`KerasModel` a Keras model config describes, **on the meta device**, without weights.

    The config gets every check :func:`load` makes before reading weights (only supported layers, no
    ``Lambda`` or custom object, a graph that runs, at most :data:`MAX_LAYER_PARAMS` parameters per layer and
    ``max_bytes`` in all); its modules and state-dict names are those :func:`load` gives for a file with this
    config. Materialise it with ``module.to_empty(device=...)`` and load weights into every tensor.

    Args:
        model_config: The model config (the JSON object a ``.keras`` archive's ``config.json`` holds).
        keras_major: The Keras major version that wrote it (2 for tf-keras; some defaults differ).
        path: What the config came from, for the messages.
        max_bytes: The budget for all weights and buffers together.
        free_sizes: Take the inputs' spatial sizes (all axes but the batch and the last) as free (``None``)
            whatever the config declares: a convolutional network saved for ``(None, 256, 256, 3)`` then takes
            any height and width. Layers that need the declared sizes refuse it.

    Raises:
        UnsupportedError, ShapeError, KerasFileError: as :func:`load`, for the config.

    Examples:
        >>> from pathlib import Path
        >>> import cnnkit, json, zipfile
        >>> archive = Path(cnnkit.__file__).parents[2] / "tests" / "keras" / "fixtures" / "classifier.keras"
        >>> config = json.loads(zipfile.ZipFile(archive).read("config.json"))
        >>> net = build_architecture(config, 3, str(archive))
        >>> next(net.parameters()).device, net(torch.zeros(2, 3, 10, 10, device="meta")).shape
        (device(type='meta'), torch.Size([2, 5]))
    """
    if not isinstance(model_config, dict):
        raise KerasFileError(f"{path}: a Keras model config must be a JSON object. Received "
                             f"{type(model_config).__name__}.")
    try:
        graph = _build_graph(model_config, path, keras_major, max_bytes, free_sizes)
    except CnnkitError:
        raise
    except RecursionError:
        raise KerasFileError(f"{path}: the config is nested too deeply to read (RecursionError).") from None
    except Exception as error:
        raise KerasFileError(f"{path}: the config could not be read ({type(error).__name__}: {error}).") from error
    module = graph.model(False)
    module.eval()
    return module


def load(path: str | Path, channels_last_input: bool = False, *, max_bytes: int = MAX_BYTES) -> LoadedModel:
    """Convert a Keras model file (``.keras`` archive or legacy ``.h5``) to a PyTorch module.

    Reads the file with ``zipfile``, ``json`` and ``h5py`` only: no TensorFlow, no Keras, no unpickling,
    and no code from the file is run (``Lambda`` layers and custom objects are refused). The file is
    treated as untrusted (see ``docs/keras.md``, "Untrusted files"): only data stored inside it is read
    (no links, external storage or virtual datasets), every array must hold the bytes it declares, and
    the memory it may take is bounded by ``max_bytes`` before anything is read.

    Args:
        path: The ``.keras`` or ``.h5`` file (the format is recognised from the content).
        channels_last_input: If ``True``, the module takes and returns Keras's channels-last tensors
            (``(N, H, W, C)``); by default it takes and returns PyTorch's channels-first ``(N, C, H, W)``.
        max_bytes: The budget for all weights and buffers together (BatchNorm's moving statistics
            included), checked against the shapes the config declares before any array is read; also
            the cap on the arrays read. Default :data:`MAX_BYTES` (4 GiB).

    Returns:
        A :class:`LoadedModel` ``(module, report)``: ``module`` is a :class:`KerasModel` in eval mode;
        ``report`` (:class:`ConversionReport`) lists every layer and layout conversion made.

    Raises:
        UnsupportedError: for a Lambda layer, a custom object, an unknown layer class or option.
        ShapeError: if stored weights disagree with the config, a layer asks for more than
            :data:`MAX_LAYER_PARAMS` parameters, or the model for more than ``max_bytes``.
        KerasFileError: (a ``ValueError``) for a missing, truncated, malformed or hostile file; every
            error from the libraries reading it (h5py, zipfile, zlib, json) arrives as one, naming the file.

    Examples:
        >>> from pathlib import Path
        >>> import cnnkit
        >>> fixtures = Path(cnnkit.__file__).parents[2] / "tests" / "keras" / "fixtures"
        >>> model, report = load(fixtures / "classifier.keras")
        >>> model(torch.zeros(2, 3, 10, 10)).shape                 # NCHW in
        torch.Size([2, 5])
        >>> print(report.layers[0].keras_weights, report.layers[0].torch_weights)
        {'kernel': (3, 3, 3, 4), 'bias': (4,)} {'weight': (4, 3, 3, 3), 'bias': (4,)}
    """
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
        raise ShapeError(f"max_bytes must be a positive integer. Received max_bytes={max_bytes!r}.")
    return read_keras_file(path, lambda kf: _convert(kf, bool(channels_last_input), max_bytes))


def read_keras_file(path: str | Path, read: Callable[[KerasFile], _T]) -> _T:
    """``read(kf)`` on the opened Keras file, closed afterwards; every error from the libraries reading it (h5py,
    zipfile, zlib, json, numpy) re-raised as a :class:`KerasFileError` naming the file, as :func:`load` does."""
    try:
        kf = open_keras_file(path)
        try:
            return read(kf)
        finally:
            kf.close()
    except CnnkitError:
        raise
    except RecursionError:
        raise KerasFileError(f"{path}: the file is nested too deeply to read (RecursionError); it is damaged "
                             "or hostile.") from None
    except MemoryError:
        raise KerasFileError(f"{path}: reading the file ran out of memory (MemoryError); it is damaged or "
                             "declares more than it holds.") from None
    except Exception as error:
        # h5py, zipfile, zlib, struct, numpy: one error naming the file, whatever broke deep inside.
        raise KerasFileError(f"{path}: the file could not be read ({type(error).__name__}: {error}); it is "
                             "damaged or was not written by Keras. Re-save it with Keras "
                             "(model.save('model.keras')) from a copy you trust.") from error

