"""``save_safetensors(module, path)``: a module's weights as a safetensors file (no pickle)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from cnnkit.errors import ArgumentTypeError, CnnkitError

__all__ = ["save_safetensors"]


def save_safetensors(module: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``module.state_dict()`` (parameters and persistent buffers) to ``path`` as safetensors.

    Tensors shared between entries are written once per name (as contiguous copies), so the file loads
    with ``safetensors.torch.load_file`` and ``module.load_state_dict`` on the same architecture — for a
    converted Keras model, the module :func:`cnnkit.keras.load` builds from the same file.

    Args:
        module: Any ``nn.Module``.
        path: The file to write.
        metadata: Extra string metadata stored in the header (``format: pt`` is always added).

    Returns:
        The path written.

    Raises:
        CnnkitError: if the file cannot be written (missing or read-only folder, a folder in the way, disk
            full), naming the path.

    Examples:
        >>> import tempfile, torch
        >>> from safetensors.torch import load_file
        >>> net = nn.Linear(3, 2)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     out = save_safetensors(net, f"{tmp}/w.safetensors")
        ...     sorted(load_file(out))
        ['bias', 'weight']
    """
    try:
        from safetensors.torch import save_file
    except ImportError as error:  # pragma: no cover - safetensors is a dependency
        raise CnnkitError("save_safetensors needs safetensors: pip install safetensors.") from error
    if not isinstance(module, nn.Module):
        raise ArgumentTypeError(f"module must be a torch.nn.Module. Received {type(module).__name__}.")
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    meta = {"format": "pt", **{str(k): str(v) for k, v in (metadata or {}).items()}}
    path = Path(path)
    if path.is_dir():
        raise CnnkitError(f"Cannot write safetensors to {str(path)!r}: it is a folder. Give a file name, "
                          "e.g. model.safetensors.")
    if not path.parent.is_dir():
        raise CnnkitError(f"Cannot write safetensors to {str(path)!r}: the folder {str(path.parent)!r} does not "
                          "exist. Create it first or choose another path.")
    try:
        save_file(state, str(path), metadata=meta)
    except Exception as error:  # safetensors raises SafetensorError (not an OSError) for I/O failures
        raise CnnkitError(f"Cannot write safetensors to {str(path)!r} ({type(error).__name__}: {error}). Check "
                          "that the folder is writable and has space, or choose another path.") from None
    return path
