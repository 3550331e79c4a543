"""Read what a Keras file holds — its JSON config and its weight arrays — with ``zipfile``, ``json`` and
``h5py`` alone.

Two formats:

* **Keras 3 archives** (``.keras``): a zip with ``config.json``, ``metadata.json`` and
  ``model.weights.h5``. Each layer's variables are ``layers/<path>/vars/0, 1, …`` (an RNN's are under
  ``layers/<path>/cell/vars``); the group's ``name`` attribute gives the layer name.
* **Legacy HDF5** (``.h5``, Keras 2 / tf-keras or Keras 3's ``model.save("x.h5")``): the ``model_config``
  attribute holds the JSON config; ``model_weights/<layer>`` lists its arrays in ``weight_names``.

Nothing is ever executed or unpickled: the config is parsed with :func:`json.loads`, arrays are read
from HDF5 only if they are plain numbers, and only after their shapes have been checked.
"""

from __future__ import annotations

import json
import re
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnkit.errors import CnnkitError

__all__ = ["KerasFile", "KerasFileError", "WeightRef", "open_keras_file"]

MAX_CONFIG_BYTES = 64 * 2**20
MAX_WEIGHTS_BYTES = 16 * 2**30
_SPOOL_BYTES = 256 * 2**20


class KerasFileError(CnnkitError, ValueError):
    """A Keras file that cannot be read: not a Keras file, truncated, malformed, or inconsistent."""


@dataclass(frozen=True)
class WeightRef:
    """One stored array, not yet read: its name in the file, shape, and a reader."""

    name: str
    shape: tuple[int, ...]
    read: Callable[[], np.ndarray] = field(repr=False, compare=False)


@dataclass
class KerasFile:
    """A Keras file's model config and, per layer name, its weight arrays in storage order."""

    path: str
    format: str  # "keras" (Keras 3 archive) or "h5" (legacy HDF5)
    keras_version: str
    config: dict
    weights: Callable[[str, str, int], list[WeightRef]] = field(repr=False)
    close: Callable[[], None] = field(repr=False)

    @property
    def keras_major(self) -> int:
        match = re.match(r"\s*(\d+)", self.keras_version)
        return int(match.group(1)) if match else 3


def _h5py():
    try:
        import h5py
    except ImportError as error:  # pragma: no cover - h5py is a dependency
        raise CnnkitError("Reading Keras files needs h5py: pip install h5py.") from error
    return h5py


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value.item())
    return str(value)


def _parse_json(data: bytes | str, what: str, path: str) -> dict:
    try:
        config = json.loads(data)
    except (ValueError, RecursionError) as error:
        raise KerasFileError(f"{path}: {what} is not valid JSON ({error}).") from None
    if not isinstance(config, dict):
        raise KerasFileError(f"{path}: {what} must be a JSON object. Received a {type(config).__name__}.")
    return config


def _check_dataset(h5py, obj, name: str, path: str) -> WeightRef:
    if not isinstance(obj, h5py.Dataset):
        raise KerasFileError(f"{path}: weight {name!r} is not an HDF5 dataset.")
    if obj.dtype.kind not in "fiub":
        raise KerasFileError(
            f"{path}: weight {name!r} must hold numbers. Received HDF5 dtype {obj.dtype} (never unpickled)."
        )
    shape = tuple(int(s) for s in obj.shape)

    def read() -> np.ndarray:
        try:
            array = np.asarray(obj[()])
        except (OSError, RuntimeError, ValueError) as error:
            raise KerasFileError(
                f"{path}: weight {name!r} could not be read ({error}); is the file truncated?") from None
        if tuple(array.shape) != shape:
            raise KerasFileError(f"{path}: weight {name!r} read with shape {array.shape}, stored as {shape}.")
        return array

    return WeightRef(name, shape, read)


def _snake_case(name: str) -> str:
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name)
    return name.lower()


def _collect_vars(h5py, group, path: str, where: str) -> list[WeightRef]:
    """Arrays of a Keras 3 layer group: ``vars/0, 1, …`` then sub-objects' (``cell/vars/…``) in order."""
    out: list[WeightRef] = []
    if "vars" in group:
        vars_group = group["vars"]
        keys = list(vars_group.keys())
        if not all(k.isdigit() for k in keys):
            raise KerasFileError(f"{path}: {where}/vars must hold datasets named 0, 1, …. Received {keys}.")
        for k in sorted(keys, key=int):
            out.append(_check_dataset(h5py, vars_group[k], f"{where}/vars/{k}", path))
    for key in sorted(group.keys()):
        if key != "vars" and isinstance(group[key], h5py.Group):
            out.extend(_collect_vars(h5py, group[key], path, f"{where}/{key}"))
    return out


def _open_archive(path: str) -> KerasFile:
    h5py = _h5py()
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise KerasFileError(f"{path}: not a readable .keras archive ({error}); is it truncated?") from None
    try:
        names = set(archive.namelist())
        for needed in ("config.json", "model.weights.h5"):
            if needed not in names:
                raise KerasFileError(f"{path}: a .keras archive must contain {needed!r}. Found {sorted(names)}.")
        infos = {i.filename: i for i in archive.infolist()}
        if infos["config.json"].file_size > MAX_CONFIG_BYTES:
            raise KerasFileError(f"{path}: config.json declares {infos['config.json'].file_size} bytes; "
                                 f"at most {MAX_CONFIG_BYTES} are read.")
        if infos["model.weights.h5"].file_size > MAX_WEIGHTS_BYTES:
            raise KerasFileError(f"{path}: model.weights.h5 declares {infos['model.weights.h5'].file_size} "
                                 f"bytes; at most {MAX_WEIGHTS_BYTES} are read.")
        config = _parse_json(archive.read("config.json"), "config.json", path)
        version = "3"
        if "metadata.json" in names and infos["metadata.json"].file_size <= MAX_CONFIG_BYTES:
            meta = _parse_json(archive.read("metadata.json"), "metadata.json", path)
            version = str(meta.get("keras_version", "3"))
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115 (closed by KerasFile.close)
        with archive.open("model.weights.h5") as member:
            while chunk := member.read(2**20):
                spool.write(chunk)
        spool.seek(0)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as error:
        if isinstance(error, KerasFileError):
            raise
        raise KerasFileError(f"{path}: the .keras archive is damaged ({type(error).__name__}: {error}); "
                             "is it truncated?") from None
    finally:
        archive.close()
    try:
        h5 = h5py.File(spool, "r")
    except (OSError, ValueError) as error:
        spool.close()
        raise KerasFileError(f"{path}: model.weights.h5 is not a readable HDF5 file ({error}).") from None

    groups: dict[str, object] = {}
    layers_group = h5.get("layers")
    if layers_group is not None:
        for key in layers_group:
            g = layers_group[key]
            if isinstance(g, h5py.Group):
                stored = g["vars"].attrs.get("name") if "vars" in g else None
                groups[key] = (g, None if stored is None else _text(stored))
    by_name = {name: key for key, (_, name) in groups.items() if name is not None}

    def weights(layer_name: str, class_name: str, index: int) -> list[WeightRef]:
        # The group's "name" attribute names the layer; files without it use Keras's path rule
        # (snake_case class name, made unique in layer order), which the caller passes as ``index``.
        key = by_name.get(layer_name)
        if key is None:
            snake = _snake_case(class_name)
            key = snake if index == 0 else f"{snake}_{index}"
        if key not in groups:
            return []
        return _collect_vars(h5py, groups[key][0], path, f"layers/{key}")

    def close() -> None:
        h5.close()
        spool.close()

    return KerasFile(path, "keras", version, config, weights, close)


def _open_h5(path: str) -> KerasFile:
    h5py = _h5py()
    try:
        h5 = h5py.File(path, "r")
    except (OSError, ValueError) as error:
        raise KerasFileError(f"{path}: not a readable HDF5 file ({error}); is it truncated?") from None
    try:
        if "model_config" not in h5.attrs:
            raise KerasFileError(
                f"{path}: an .h5 Keras model needs a 'model_config' attribute (files written by "
                "model.save_weights() hold weights only and cannot be converted alone)."
            )
        raw = h5.attrs["model_config"]
        text = _text(raw)
        if len(text) > MAX_CONFIG_BYTES:
            raise KerasFileError(f"{path}: model_config has {len(text)} characters; at most {MAX_CONFIG_BYTES}.")
        config = _parse_json(text, "model_config", path)
        version = _text(h5.attrs.get("keras_version", "2"))
        root = h5.get("model_weights", h5)
    except KerasFileError:
        h5.close()
        raise
    except (OSError, KeyError, RuntimeError) as error:
        h5.close()
        raise KerasFileError(f"{path}: the HDF5 file is damaged ({error}); is it truncated?") from None

    def weights(layer_name: str, class_name: str, index: int) -> list[WeightRef]:
        if layer_name not in root:
            return []
        group = root[layer_name]
        names = [_text(n) for n in np.asarray(group.attrs.get("weight_names", [])).ravel()]
        out = []
        for name in names:
            if name not in group:
                raise KerasFileError(f"{path}: layer {layer_name!r} lists weight {name!r}, which is missing.")
            out.append(_check_dataset(h5py, group[name], f"model_weights/{layer_name}/{name}", path))
        return out

    return KerasFile(path, "h5", version, config, weights, h5.close)


def open_keras_file(path: str | Path) -> KerasFile:
    """Open a ``.keras`` archive or a legacy ``.h5`` file (chosen by content, not by extension).

    Raises:
        KerasFileError: if the file is missing, truncated, or not a Keras model file.
    """
    path = str(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as error:
        raise KerasFileError(f"Cannot open Keras file {path!r}: {error.strerror or error}.") from None
    if head.startswith(b"PK"):
        return _open_archive(path)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return _open_h5(path)
    raise KerasFileError(
        f"{path}: not a Keras model file. Expected a .keras archive (zip) or a legacy .h5 (HDF5) file; "
        f"the file starts with {head!r}."
    )
