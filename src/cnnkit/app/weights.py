"""Where a run's first weights come from: ``--weights`` (a weight name, a state dict, a run folder, a Keras file).

:func:`weights_source` turns what the user gave into what :func:`cnnkit.models.build` loads; :func:`build_network`
builds the network with it and logs what it built.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from cnnkit.errors import CnnkitError
from cnnkit.models import ModelSpec, build, parse_spec
from cnnkit.train.rundir import read_manifest

__all__ = ["build_network", "spec_of_weights", "weights_source"]


def spec_of_weights(weights: str | os.PathLike) -> ModelSpec | None:
    """The network a ``--weights`` source names, used when no ``--model`` is given: a run folder's (from its
    manifest); ``None`` for a weight name or a state dict (they fit a network the user names)."""
    path = Path(weights)
    if path.is_dir():
        return parse_spec(read_manifest(path)["model"]["spec"])
    return None


def weights_source(weights: str | os.PathLike | None, stack) -> tuple[str | os.PathLike | None, Path | None,
                                                                        ModelSpec | None]:
    """``(weights for cnnkit.models.build, the folder the file must lie in, the spec of a run)`` from ``--weights``.

    * ``None``, ``"imagenet"`` (a weight name): as given;
    * a cnnkit run folder: its weights file (read inside the folder only) and the spec its manifest names;
    * a Keras ``.keras``/``.h5`` file: converted by :func:`cnnkit.keras.load` into a safetensors file in a
      temporary folder entered on ``stack`` (a :class:`contextlib.ExitStack`);
    * a ``.safetensors``/``.pt``/``.pth`` state dict: as given (``.pt`` read with ``weights_only=True``).
    """
    if weights is None:
        return None, None, None
    path = Path(weights)
    if path.is_dir():
        manifest = read_manifest(path)
        model = manifest["model"]
        return model["weights"], path, parse_spec(model["spec"])
    if path.suffix.lower() in (".keras", ".h5", ".hdf5"):
        import tempfile

        from cnnkit.keras import load, save_safetensors

        if not path.is_file():
            raise CnnkitError(f"--weights {os.fspath(weights)!r}: no such Keras file.")
        module, _ = load(path)
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cnnkit-keras-")))
        save_safetensors(module, folder / "keras.safetensors")
        return folder / "keras.safetensors", None, None
    if isinstance(weights, str) and "/" not in weights and os.sep not in weights and not path.suffix \
            and not path.exists():
        return weights, None, None  # a weight name: smp/timm's download and cache
    if not path.exists():
        raise CnnkitError(f"--weights {os.fspath(weights)!r} does not exist. Expected 'imagenet' (or another weight "
                          "name the encoder offers), a .safetensors/.pt/.pth state dict, a cnnkit run folder or a "
                          "Keras .keras/.h5 file.")
    return weights, None, None


def build_network(spec: ModelSpec, in_channels: int, num_classes: int, weights, band_names, log) -> nn.Module:
    """``build(spec, ...)`` with ``weights`` (see :func:`weights_source`), logged."""
    import contextlib

    with contextlib.ExitStack() as stack:
        source, root, _ = weights_source(weights, stack)
        net = build(spec, in_channels=in_channels, num_classes=num_classes, weights=source, root=root,
                    band_names=band_names if source is not None else None)
    count = sum(p.numel() for p in net.parameters())
    origin = "random weights" if weights is None else f"weights {os.fspath(weights)!r}"
    log(f"network: {spec.label()} ({spec.library}{', args ' + str(spec.args) if spec.args else ''}), "
        f"{count:,} parameters, {origin}")
    return net
