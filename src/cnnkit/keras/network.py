"""A converted Keras segmentation network that cnnkit trains, saves and rebuilds by name: ``KerasNetwork``.

``cnnkit train DATA --weights net.keras`` trains the Keras network itself, converted by :func:`cnnkit.keras.load`
and wrapped in :class:`KerasSegmentation` (channels first, logits out). The run folder names it, never code:

* the manifest's spec is ``{"library": "user", "architecture": "KerasNetwork", "args": {"architecture":
  "model.safetensors", "sha256": "<hex>"}}``;
* the Keras model's architecture — its JSON config, as the Keras file holds it, with the version of Keras that
  wrote it — is a buffer of the network, :data:`ARCHITECTURE` (UTF-8 bytes as ``uint8``), so it is saved in the
  run's ``model.safetensors`` beside the weights, in every checkpoint, and travels wherever the weights go;
* :func:`keras_network`, registered here with :func:`cnnkit.models.register` as ``KerasNetwork`` (the Keras room
  registers downward; :mod:`cnnkit.models` never imports it), rebuilds the network from that file: it reads only
  the one ``uint8`` tensor of a regular file inside the run folder, checks its size and its SHA-256 against the
  spec, parses the JSON and builds the graph on the meta device with every check :func:`cnnkit.keras.load` makes
  of a config (supported layers only: no ``Lambda``, no custom object; a graph that runs; the parameter and memory
  budgets), before anything is allocated. :func:`cnnkit.models.build` then compares the weights file's header
  with that meta network, as for every network.

Sizes: a Keras input declared for one height and width (``(None, 256, 256, C)``) is taken for any height and
width when every layer allows it (a convolutional network; the declared size computes exactly what Keras does),
else kept as declared.

The input: cnnkit's pipeline gives ``(N, C, H, W)``, the data bands then the validity band (1 = data). A Keras
network whose input has ``C`` channels reads all of them; one with ``C - 1`` reads the data bands and the
validity band is left out (pixels without data are 0 after standardisation; padding is handled by
:func:`cnnkit.masked`). Any other count is refused. The output must be ``(H, W, classes)`` per pixel; a final
softmax over the classes is removed (cnnkit's losses and ``cnnkit predict`` take logits; the argmax is unchanged).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from cnnkit.errors import CnnkitError, ShapeError, UnsupportedError
from cnnkit.keras.convert import MAX_BYTES, _convert, build_architecture, read_keras_file
from cnnkit.keras.model import KerasModel, format_shape
from cnnkit.keras.modules.activations import KerasActivation, _ActivationMixin
from cnnkit.keras.reader import MAX_CONFIG_BYTES, KerasFile, KerasFileError
from cnnkit.models import ModelSpec, parse_spec, register
from cnnkit.models.weights import regular_file

__all__ = ["ARCHITECTURE", "NAME", "WEIGHTS_FILE", "KerasSegmentation", "architecture_of", "digest",
           "from_keras_file", "is_keras_file", "keras_network", "keras_spec", "size_multiple"]

NAME = "KerasNetwork"
"""The name the converted Keras network is registered under (library ``"user"`` of a spec)."""

ARCHITECTURE = "keras_architecture"
"""The state-dict name of the Keras architecture bytes (a ``uint8`` buffer of :class:`KerasSegmentation`)."""

WEIGHTS_FILE = "model.safetensors"
"""The weights file a spec's architecture is read from: a run folder's (and the temporary one of a Keras file)."""

_FORMAT = "cnnkit-keras-architecture"
_EXTENSIONS = (".keras", ".h5", ".hdf5")
_PROBE_SIDE = 64  # the side of the meta image that checks a Keras input of free size (rounded to the multiple)
_MAX_MULTIPLE = 1024  # the largest total stride looked for


# --- the architecture: a Keras config as canonical bytes ------------------------------------------------------


def _encode(config: dict, keras_version: str) -> bytes:
    data = {"format": _FORMAT, "keras_version": str(keras_version), "config": config}
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _decode(data: bytes, where: str) -> tuple[dict, int]:
    """(model config, Keras major version) of architecture bytes, checked as untrusted input."""
    if len(data) > MAX_CONFIG_BYTES:
        raise KerasFileError(f"{where}: the Keras architecture holds {len(data):,} bytes; at most "
                             f"{MAX_CONFIG_BYTES:,} are read.")
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise KerasFileError(f"{where}: the Keras architecture is not valid JSON ({type(error).__name__}: "
                             f"{str(error)[:200]}).") from None
    if not isinstance(parsed, dict) or parsed.get("format") != _FORMAT or not isinstance(parsed.get("config"), dict) \
            or not isinstance(parsed.get("keras_version"), str):
        keys = sorted(parsed)[:8] if isinstance(parsed, dict) else type(parsed).__name__
        raise KerasFileError(f"{where}: the Keras architecture must be an object with format {_FORMAT!r}, "
                             f"keras_version and config. Received {keys}.")
    version = parsed["keras_version"].strip()
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() and len(version) < 20 else 3
    return parsed["config"], major


def digest(data: bytes) -> str:
    """The SHA-256 of architecture bytes, as a spec records it (64 hex digits)."""
    return hashlib.sha256(data).hexdigest()


def _meta_network(config: dict, keras_major: int, where: str) -> tuple[KerasModel, bool]:
    """The meta-device network of a config, of any height and width if its layers allow (an input declared
    ``(None, 256, 256, C)`` taken as ``(None, None, None, C)``), else of the declared size; whether it is free."""
    try:
        return build_architecture(config, keras_major, where, free_sizes=True), True
    except CnnkitError:  # a layer needs the declared size (a Flatten, a Reshape): the config as declared
        return build_architecture(config, keras_major, where), False


def _architecture(kf: KerasFile) -> tuple[bytes, KerasModel, bool]:
    """(architecture bytes, meta network, free sizes) of an open Keras file; its weights not read."""
    data = _encode(kf.config, kf.keras_version)
    config, major = _decode(data, kf.path)
    return (data, *_meta_network(config, major, kf.path))


def architecture_of(path: str | os.PathLike) -> tuple[bytes, KerasModel]:
    """The architecture bytes of a Keras file and the meta-device network they describe (no weights read).

    Raises:
        KerasFileError, UnsupportedError, ShapeError: as :func:`cnnkit.keras.load` for the file's config.
    """
    data, meta, _ = read_keras_file(path, _architecture)
    return data, meta


# --- the network cnnkit trains ----------------------------------------------------------------------------------


class KerasSegmentation(nn.Module):
    """A converted Keras segmentation network as cnnkit trains it: ``(N, C, H, W)`` in, logits ``(N, K, H, W)`` out.

    Args:
        model: The converted network (:class:`~cnnkit.keras.KerasModel`, channels first).
        architecture: The architecture bytes it was built from (kept as the buffer :data:`ARCHITECTURE`).
        drop_validity_band: Leave the input's last channel (cnnkit's validity band) out: the Keras network reads
            the data bands only.

    Shape:
        - Input: ``(N, C, H, W)``, ``C`` the Keras input's channels (plus one with ``drop_validity_band``).
        - Output: ``(N, K, H, W)``, the Keras output's classes, before any softmax.

    Examples:
        >>> from cnnkit.keras.convert import build_architecture
        >>> config = {"class_name": "Sequential", "config": {"name": "seg", "layers": [
        ...     {"class_name": "InputLayer", "config": {"batch_shape": [None, None, None, 3]}},
        ...     {"class_name": "Conv2D", "config": {"name": "head", "filters": 2, "kernel_size": [1, 1]}}]}}
        >>> model = build_architecture(config, 3, "example").to_empty(device="cpu")
        >>> net = KerasSegmentation(model, b"{}", drop_validity_band=True)  # 3 bands + the validity band in
        >>> net(torch.zeros(1, 4, 6, 5)).shape
        torch.Size([1, 2, 6, 5])
    """

    def __init__(self, model: KerasModel, architecture: bytes, *, drop_validity_band: bool) -> None:
        super().__init__()
        self.model = model
        self.drop_validity_band = bool(drop_validity_band)
        self.register_buffer(ARCHITECTURE, torch.frombuffer(bytearray(architecture), dtype=torch.uint8).clone())

    def forward(self, input: Tensor) -> Tensor:
        if self.drop_validity_band:
            input = input[:, :-1]
        return self.model(input)

    def extra_repr(self) -> str:
        return "drop_validity_band=True" if self.drop_validity_band else ""


def _strip_softmax(model: KerasModel, where: str) -> bool:
    """Remove a softmax over the channels that ends the network; whether one was removed."""
    output = model.output_names[0]
    call = next(c for c in model.calls if c.output == output)
    module = model.layers[call.layer]
    if (isinstance(module, KerasActivation) and module.name == "softmax") or (
            isinstance(module, nn.Softmax) and module.dim in (1, -3)):
        replace = True
    elif isinstance(module, _ActivationMixin) and getattr(module, "activation", None) == "softmax":
        replace = False
    else:
        return False
    if sum(c.layer == call.layer for c in model.calls) > 1:
        raise UnsupportedError(f"{where}: the final softmax belongs to layer {call.layer!r}, which the network also "
                               "calls elsewhere; cnnkit trains on logits and cannot remove it there alone.")
    if replace:
        model.layers[call.layer] = nn.Identity()
    else:
        module._set_activation("linear")
    return True


def _maps_to_same_size(meta: KerasModel, channels: int, height: int, width: int) -> bool:
    probe = torch.zeros(1, channels, height, width, device="meta")
    try:
        with torch.no_grad():
            out = meta(probe)
    except Exception:  # the graph's own refusal of the size (skip connections of different sizes, a crop too large)
        return False
    return isinstance(out, Tensor) and out.dim() == 4 and tuple(out.shape[2:]) == (height, width)


def size_multiple(meta: KerasModel) -> int:
    """What heights and widths the network needs to be multiples of: the smallest power of two ``m`` (up to
    1024) for which it maps ``3m × 5m`` and ``7m × 3m`` images to same-sized class maps, found by meta-device
    forward passes (a U-Net with four stride-2 stages: 16). 1 for an input of one declared size, or if none.

    Examples:
        >>> from cnnkit.keras.convert import build_architecture
        >>> def conv(name, strides, cls="Conv2D"):
        ...     return {"class_name": cls, "config": {"name": name, "filters": 2, "kernel_size": [3, 3],
        ...                                          "strides": [strides, strides], "padding": "same"}}
        >>> config = {"class_name": "Sequential", "config": {"name": "seg", "layers": [
        ...     {"class_name": "InputLayer", "config": {"batch_shape": [None, None, None, 3]}},
        ...     conv("down_1", 2), conv("down_2", 2), conv("up_1", 2, "Conv2DTranspose"),
        ...     conv("up_2", 2, "Conv2DTranspose")]}}
        >>> size_multiple(build_architecture(config, 3, "example"))
        4
    """
    shape = meta.keras_input_shapes[0] if len(meta.keras_input_shapes) == 1 else ()
    if len(shape) != 3 or any(s is not None for s in shape[:2]) or not isinstance(shape[-1], int):
        return 1
    multiple = 1
    while multiple <= _MAX_MULTIPLE:
        if all(_maps_to_same_size(meta, shape[-1], multiple * a, multiple * b) for a, b in ((3, 5), (7, 3))):
            return multiple
        multiple *= 2
    return 1


def _check_fit(meta: KerasModel, in_channels: int, num_classes: int, where: str) -> bool:
    """Check on the meta device that ``meta`` maps an image of ``in_channels`` (or one fewer: the validity band
    left out) to ``num_classes`` per pixel; whether the validity band is left out."""
    shapes = meta.keras_input_shapes
    if len(shapes) != 1 or len(meta.output_names) != 1:
        raise ShapeError(f"{where}: a segmentation network has one input and one output. Received "
                         f"{len(shapes)} inputs and {len(meta.output_names)} outputs.")
    shape = shapes[0]
    if len(shape) != 3 or not isinstance(shape[-1], int):
        raise ShapeError(f"{where}: the Keras input must be an image (None, H, W, channels). Received "
                         f"{format_shape((None, *shape))}.")
    channels = shape[-1]
    if in_channels not in (channels, channels + 1):
        raise ShapeError(
            f"{where}: the Keras network reads {channels} input channels; the folder's images give "
            f"{in_channels - 1} bands plus the validity band ({in_channels} channels). Expected {channels} or "
            f"{channels - 1} bands (choose them with --bands), or a Keras network for these bands.")
    multiple = size_multiple(meta)
    side = -(-_PROBE_SIDE // multiple) * multiple
    probe = torch.zeros(1, channels, *(s if isinstance(s, int) else side for s in shape[:2]), device="meta")
    try:
        with torch.no_grad():
            out = meta(probe)
    except CnnkitError:
        raise
    except Exception as error:  # the graph's own refusal of the probe's size
        raise ShapeError(f"{where}: the Keras network does not run on a {tuple(probe.shape)} image: "
                         f"{type(error).__name__}: {str(error)[:300]}") from None
    if not isinstance(out, Tensor) or out.dim() != 4 or tuple(out.shape[2:]) != tuple(probe.shape[2:]):
        got = format_shape((None, *out.shape[2:], out.shape[1])) if isinstance(out, Tensor) and out.dim() == 4 else (
            format_shape((None, *out.shape[2:], out.shape[1])) if isinstance(out, Tensor) and out.dim() >= 2
            else type(out).__name__)
        raise ShapeError(f"{where}: a segmentation network's output must be classes per pixel, (None, H, W, "
                         f"classes) for a (None, H, W, {channels}) input. Received {got} for "
                         f"{format_shape((None, *probe.shape[2:], channels))}.")
    if out.shape[1] != num_classes:
        raise ShapeError(f"{where}: the Keras network predicts {out.shape[1]} classes; the data has {num_classes}. "
                         f"Give --num-classes {out.shape[1]} (or --classes with {out.shape[1]} names) if the labels "
                         "are a subset of the network's classes.")
    return in_channels == channels + 1


def _wrap(model: KerasModel, architecture: bytes, drop_validity_band: bool, where: str) -> KerasSegmentation:
    _strip_softmax(model, where)
    return KerasSegmentation(model, architecture, drop_validity_band=drop_validity_band)


def from_keras_file(path: str | os.PathLike, in_channels: int, num_classes: int, *,
                    max_bytes: int = MAX_BYTES) -> KerasSegmentation:
    """The Keras file's network with its weights, as cnnkit trains it (checks as :func:`keras_network`), in
    training mode.

    The file is read by :func:`cnnkit.keras.load` (untrusted input; nothing run). The channels and classes are
    checked on the meta device, from the config alone, before any weight is read.

    Args:
        path: The ``.keras`` or ``.h5`` file.
        in_channels: Input channels of the data, the validity band included.
        num_classes: Classes of the data; must be the Keras output's.
        max_bytes: See :func:`cnnkit.keras.load`.

    Raises:
        ShapeError: the network's input does not fit ``in_channels`` (naming the file, the Keras input's channels
            and the data's), or its output is not ``num_classes`` per pixel.
        KerasFileError, UnsupportedError: as :func:`cnnkit.keras.load`.

    Examples:
        >>> from pathlib import Path
        >>> import cnnkit
        >>> fixture = Path(cnnkit.__file__).parents[2] / "tests" / "keras" / "fixtures" / "classifier.keras"
        >>> from_keras_file(fixture, in_channels=4, num_classes=5)
        Traceback (most recent call last):
        ...
        cnnkit.errors.ShapeError: .../classifier.keras: a segmentation network's output must be classes per pixel, ...
    """
    where = os.fspath(path)

    def read(kf: KerasFile) -> KerasSegmentation:
        architecture, meta, free = _architecture(kf)
        drop = _check_fit(meta, in_channels, num_classes, where)  # before any weight is read
        model, _ = _convert(kf, False, max_bytes, free)
        return _wrap(model, architecture, drop, where)

    return read_keras_file(path, read).float().train()


# --- rebuilt by name ----------------------------------------------------------------------------------------


def keras_network(in_channels: int, num_classes: int, architecture: str = WEIGHTS_FILE, sha256: str = "",
                  multiple_of: int = 1, *, root: str | os.PathLike | None = None) -> KerasSegmentation:
    """The builder of ``KerasNetwork``: the network whose architecture the file ``root/architecture`` holds.

    Called by :func:`cnnkit.models.build` with the run folder as ``root``; in training mode. On the meta device
    (a meta default device, as :func:`~cnnkit.models.build` uses to check) the network holds no memory;
    elsewhere its tensors are zeros (torch's own layers: their usual initialisation) until weights are loaded.

    Args:
        in_channels: Input channels of the data, the validity band included.
        num_classes: Classes of the data; must be the Keras output's.
        architecture: The ``.safetensors`` file inside ``root`` whose :data:`ARCHITECTURE` tensor holds it.
        sha256: The architecture's SHA-256 (hex), which the bytes read must have.
        multiple_of: What heights and widths must be multiples of (:func:`size_multiple`), as the spec records it
            for the training pipeline; must be the architecture's.
        root: The folder the file lies in (a run folder); nothing outside it is read.

    Raises:
        CnnkitError: no ``root``, a file outside it or not regular, no or a malformed architecture tensor, a
            digest that differs (a tampered file), a config :func:`cnnkit.keras.load` refuses, or one that does
            not fit ``in_channels`` and ``num_classes``.
    """
    if root is None:
        raise CnnkitError(f"{NAME} reads its architecture from {architecture!r} in the run folder, and was given "
                          "none: build it with cnnkit.models.build(spec, ..., root=RUN_FOLDER).")
    if not isinstance(sha256, str) or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ShapeError(f"spec['args']['sha256'] must be 64 lowercase hexadecimal digits (the architecture's "
                         f"SHA-256). Received {sha256[:80]!r}.")
    file = regular_file(architecture, root=root, suffixes=(".safetensors",), name="Keras architecture")
    where = os.fspath(Path(root) / architecture)
    data = _read_architecture(file, where)
    if digest(data) != sha256:
        raise ShapeError(f"{where}: the Keras architecture's SHA-256 is {digest(data)}; the run's manifest names "
                         f"{sha256}. The file or the manifest was changed after training: refused.")
    config, major = _decode(data, where)
    meta, _ = _meta_network(config, major, where)
    if size_multiple(meta) != multiple_of:
        raise ShapeError(f"{where}: the Keras network needs sizes that are multiples of {size_multiple(meta)}; the "
                         f"spec records multiple_of={multiple_of!r}. The manifest was changed after training: refused.")
    net = _wrap(meta, data, _check_fit(meta, in_channels, num_classes, where), where).train()
    if torch.get_default_device().type == "meta":
        return net
    net = net.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in net.model.state_dict().values():
            tensor.zero_()
        for module in net.model.modules():
            if hasattr(module, "reset_parameters") and module is not net.model:
                module.reset_parameters()
        getattr(net, ARCHITECTURE).copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    return net


def _read_architecture(file: Path, where: str) -> bytes:
    """The :data:`ARCHITECTURE` tensor's bytes, its type and size checked from the header before it is read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(file), framework="numpy") as handle:
            if ARCHITECTURE not in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                raise KerasFileError(f"{where} holds no {ARCHITECTURE!r} tensor: it is not the weights of a "
                                     f"converted Keras network.")
            view = handle.get_slice(ARCHITECTURE)
            dtype, shape = view.get_dtype(), tuple(view.get_shape())
            if dtype != "U8" or len(shape) != 1 or not 0 < shape[0] <= MAX_CONFIG_BYTES:
                raise KerasFileError(f"{where}: {ARCHITECTURE!r} must be a 1-D uint8 tensor of at most "
                                     f"{MAX_CONFIG_BYTES:,} bytes. Received {dtype} of shape {shape}.")
            return handle.get_tensor(ARCHITECTURE).tobytes()
    except (SafetensorError, OSError, ValueError) as error:
        raise KerasFileError(f"{where} is not a readable safetensors file: {error}.") from None


def keras_spec(path: str | os.PathLike) -> ModelSpec:
    """The spec that names the network of a Keras file as cnnkit trains it (its config checked, no weight read).

    Examples:
        >>> from pathlib import Path
        >>> import cnnkit
        >>> fixture = Path(cnnkit.__file__).parents[2] / "tests" / "keras" / "fixtures" / "classifier.keras"
        >>> spec = keras_spec(fixture)
        >>> spec.library, spec.architecture, spec.args["architecture"], len(spec.args["sha256"])
        ('user', 'KerasNetwork', 'model.safetensors', 64)
        >>> spec.args["multiple_of"]  # an input of one declared size: 1
        1
    """
    data, meta = architecture_of(path)
    return parse_spec({"library": "user", "architecture": NAME,
                       "args": {"architecture": WEIGHTS_FILE, "sha256": digest(data),
                                "multiple_of": size_multiple(meta)}})


def is_keras_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a Keras file by its extension (``.keras``, ``.h5``, ``.hdf5``)."""
    return Path(path).suffix.lower() in _EXTENSIONS


def _spec_multiple(args) -> int:
    return int(args.get("multiple_of", 1))


register(NAME, keras_network, family="convolutional", reads_files=True, multiple_of=_spec_multiple)
