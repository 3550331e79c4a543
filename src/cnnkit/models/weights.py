"""Weights files as untrusted input: reading only regular files, comparing before loading, refusing non-finite
values.

A weights file (a run folder's ``model.safetensors``, a ``.pt`` somebody shared) is checked in three steps,
cheapest first:

1. **the file**: a regular file (not a FIFO, device or folder); with a ``root`` folder, it must lie inside it
   after every symbolic link is resolved (``../other/model.safetensors``, an absolute path elsewhere or a
   link pointing out are refused);
2. **the header** against the network (:func:`check_state_dict`): every parameter and buffer name and shape,
   read from a safetensors header without loading a tensor (a ``.pt`` file is unpickled onto the meta device,
   with ``weights_only=True``), so a network built on the meta device is compared before any memory is spent;
3. **the values**: loaded, every floating tensor finite, each of the kind (floating or integer) the network
   holds there.

Examples:
    >>> import tempfile, os
    >>> from safetensors.torch import save_file
    >>> net = nn.Linear(2, 3)
    >>> folder = tempfile.mkdtemp()
    >>> save_file({"weight": torch.zeros(3, 3), "bias": torch.zeros(3)}, os.path.join(folder, "w.safetensors"))
    >>> check_state_dict(net, read_header("w.safetensors", root=folder))
    Traceback (most recent call last):
    ...
    cnnkit.errors.ShapeError: The weights do not fit the network (Linear): 1 shape differs:
      weight: network (3, 2), file (3, 3)
"""

from __future__ import annotations

import os
import stat
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cnnkit.errors import ArgumentTypeError, CnnkitError, ShapeError

__all__ = ["SUFFIXES", "StateDictDiff", "check_state_dict", "load_weights", "read_header", "regular_file"]

SUFFIXES = (".safetensors", ".pt", ".pth")
"""The weights files cnnkit reads: safetensors, and PyTorch pickles read with ``weights_only=True``."""

_LISTED = 12  # layers listed per kind of difference before "… and N more"


def regular_file(path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                 suffixes: Sequence[str] = SUFFIXES, name: str = "weights") -> Path:
    """The resolved path of a regular file with one of ``suffixes``, inside ``root`` if one is given.

    A relative ``path`` is taken relative to ``root`` (else to the working folder). Symbolic links are resolved
    first, so a link inside ``root`` pointing out of it is refused like ``../x`` or an absolute path elsewhere.

    Raises:
        CnnkitError: not a path, missing, not a regular file, a suffix not in ``suffixes``, or outside ``root``.

    Examples:
        >>> regular_file("/dev/zero.pt")
        Traceback (most recent call last):
        ...
        cnnkit.errors.CnnkitError: The weights file '/dev/zero.pt' does not exist.
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ArgumentTypeError(f"{name} must be a path to a {'/'.join(suffixes)} file. Received "
                                f"{type(path).__name__}: {path!r}."[:300])
    given = Path(path)
    if root is not None:
        base = Path(root).resolve(strict=False)
        given = given if given.is_absolute() else base / given
    try:
        resolved = given.resolve(strict=True)
        mode = resolved.stat().st_mode
    except (OSError, RuntimeError):  # missing, a loop of links, no permission
        raise CnnkitError(f"The {name} file {os.fspath(path)!r} does not exist.") from None
    if root is not None and not resolved.is_relative_to(base):
        raise CnnkitError(f"The {name} file {os.fspath(path)!r} lies outside {os.fspath(root)!r} (it resolves to "
                          f"{os.fspath(resolved)!r}). A run folder's files are read only from inside it.")
    if not stat.S_ISREG(mode):
        raise CnnkitError(f"The {name} file {os.fspath(path)!r} is not a regular file.")
    if resolved.suffix.lower() not in suffixes:
        raise CnnkitError(f"The {name} file {os.fspath(path)!r} must end in one of {tuple(suffixes)!r}. Received "
                          f"{resolved.suffix or 'no suffix'!r}.")
    return resolved


def read_header(path: str | os.PathLike, *, root: str | os.PathLike | None = None) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of a weights file, without loading a tensor's values.

    A ``.safetensors`` header is read by ``safetensors.safe_open``; a ``.pt``/``.pth`` file is unpickled with
    ``weights_only=True`` onto the meta device (its storages are not read). See :func:`regular_file` for
    ``root``.

    Raises:
        CnnkitError: the file is refused (see :func:`regular_file`), damaged, or not a flat name → tensor map.
    """
    resolved = regular_file(path, root=root)
    if resolved.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(os.fspath(resolved), framework="pt") as handle:
                return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as error:
            raise CnnkitError(f"The weights file {os.fspath(path)!r} is not a readable safetensors file: {error}."
                              ) from None
    tensors = _load_pickle(resolved, path, map_location="meta")
    return {key: tuple(value.shape) for key, value in tensors.items()}


@dataclass(frozen=True)
class StateDictDiff:
    """How a weights file differs from a network: names missing from the file, names the network does not have,
    and shapes that differ (``(name, network shape, file shape)``). Empty (false) when they fit."""

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        """The differences, one line per layer (names grouped by the module that holds them)."""
        lines = []
        if self.mismatched:
            lines.append(f"{len(self.mismatched)} shape{'s differ' if len(self.mismatched) > 1 else ' differs'}:")
            lines += [f"  {key}: network {want}, file {got}" for key, want, got in self.mismatched[:_LISTED]]
            if len(self.mismatched) > _LISTED:
                lines.append(f"  … and {len(self.mismatched) - _LISTED} more")
        kinds = ((self.missing, "missing from the file"), (self.unexpected, "in the file, not in the network"))
        for keys, what in kinds:
            if keys:
                layers = _by_layer(keys)
                lines.append(f"{len(keys)} tensor{'s' if len(keys) > 1 else ''} {what} ({len(layers)} "
                             f"layer{'s' if len(layers) > 1 else ''}):")
                lines += [f"  {layer}: {', '.join(names)}" for layer, names in list(layers.items())[:_LISTED]]
                if len(layers) > _LISTED:
                    lines.append(f"  … and {len(layers) - _LISTED} more layers")
        return "\n".join(lines)


def check_state_dict(model: nn.Module, header: Mapping[str, Any], *, strict: bool = True,
                     source: str = "The weights") -> StateDictDiff:
    """Compare a network's parameter and buffer names and shapes with a weights file's header.

    Args:
        model: The network (a meta-device one costs nothing).
        header: Name → shape (from :func:`read_header`), or name → tensor (a state dict).
        strict: Raise if anything differs; else only return the differences.
        source: What ``header`` is, for the message.

    Returns:
        The :class:`StateDictDiff` (empty when everything fits).

    Raises:
        ShapeError: with ``strict``, listing missing and unexpected names by layer and each shape mismatch.
    """
    if not isinstance(header, Mapping):
        raise ArgumentTypeError(f"header must map names to shapes (read_header) or tensors. Received "
                                f"{type(header).__name__}.")
    wanted = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    given = {key: tuple(value.shape) if isinstance(value, Tensor) else tuple(value) for key, value in header.items()}
    diff = StateDictDiff(
        missing=tuple(k for k in wanted if k not in given),
        unexpected=tuple(k for k in given if k not in wanted),
        mismatched=tuple((k, wanted[k], given[k]) for k in wanted if k in given and given[k] != wanted[k]),
    )
    if diff and strict:
        raise ShapeError(f"{source} do not fit the network ({type(model).__name__}): {diff.describe()}")
    return diff


def load_weights(model: nn.Module, path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                 strict: bool = True) -> StateDictDiff:
    """Load a ``.safetensors`` or ``.pt``/``.pth`` state dict into ``model``, after every check of this module.

    Args:
        model: The network (on any device; the values are copied into its tensors).
        path: The weights file (relative to ``root`` if one is given).
        root: The folder the file must lie in (a run folder); ``None`` for a file the user named.
        strict: Names and shapes must all match; ``False`` loads the names present in both with equal shapes
            and returns the rest (to fine-tune with a new head).

    Returns:
        The differences left (empty with ``strict``).

    Raises:
        CnnkitError: a refused file (see :func:`regular_file`), names or shapes that differ (with ``strict``),
            non-finite values, or a tensor whose kind (floating or integer) differs from the network's.
    """
    resolved = regular_file(path, root=root)
    state = model.state_dict()
    if resolved.suffix.lower() == ".safetensors":
        diff = check_state_dict(model, read_header(resolved), strict=strict, source=f"The weights {os.fspath(path)!r}")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(os.fspath(resolved), device="cpu")
        except (SafetensorError, OSError, ValueError) as error:
            raise CnnkitError(f"The weights file {os.fspath(path)!r} is damaged: {error}.") from None
    else:
        # A pickle has no header: its size is bounded by what the network could hold in float64 first.
        limit = 2 * sum(value.numel() * 8 for value in state.values()) + (1 << 20)
        if resolved.stat().st_size > limit:
            raise CnnkitError(f"The weights file {os.fspath(path)!r} holds {resolved.stat().st_size} bytes, more "
                              f"than twice what the network's {len(state)} tensors take in float64; refused.")
        tensors = _load_pickle(resolved, path, map_location="cpu")
        diff = check_state_dict(model, tensors, strict=strict, source=f"The weights {os.fspath(path)!r}")
    skipped = {key for key, _, _ in diff.mismatched} | set(diff.unexpected)
    tensors = {key: value for key, value in tensors.items() if key not in skipped}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CnnkitError(f"The weights file {os.fspath(path)!r} holds NaN or infinite values in {len(bad)} "
                          f"tensor{'s' if len(bad) > 1 else ''}: {', '.join(bad[:_LISTED])}"
                          f"{' …' if len(bad) > _LISTED else ''}. Refused: a network with them predicts nothing.")
    kinds = [k for k, v in tensors.items() if v.is_floating_point() != state[k].is_floating_point()]
    if kinds:
        raise CnnkitError(f"The weights file {os.fspath(path)!r} holds {', '.join(kinds[:_LISTED])} as "
                          f"{tensors[kinds[0]].dtype}, where the network holds {state[kinds[0]].dtype}.")
    model.load_state_dict(tensors, strict=strict)
    return diff


def _load_pickle(resolved: Path, path: str | os.PathLike, map_location: str) -> dict[str, Tensor]:
    import pickle

    try:
        data = torch.load(os.fspath(resolved), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError, TypeError, AttributeError) as error:
        reason = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        raise CnnkitError(f"The weights file {os.fspath(path)!r} is not a PyTorch state dict that loads with "
                          f"weights_only=True: {reason}.") from None
    if not isinstance(data, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in data.items()):
        raise CnnkitError(f"The weights file {os.fspath(path)!r} must hold a flat name → tensor state dict "
                          f"(model.state_dict()). Received {type(data).__name__}"
                          + (f" with keys {list(data)[:5]!r}" if isinstance(data, Mapping) else "") + ".")
    return dict(data)


def _by_layer(keys: Sequence[str]) -> dict[str, list[str]]:
    layers: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        layer, _, leaf = key.rpartition(".")
        layers[layer or "(top)"].append(leaf)
    return dict(layers)
