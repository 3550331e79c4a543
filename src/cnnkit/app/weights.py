"""Where a run's first weights come from: ``--weights`` (a weight name, a state dict, a run folder, a Keras file).

:func:`weights_source` turns what the user gave into what :func:`cnnkit.models.build` loads; :func:`build_network`
builds the network with it and logs what it built.

A Keras ``.keras``/``.h5`` file with no ``--model`` is the network to train: :func:`spec_of_weights` names it
(``KerasNetwork``, :mod:`cnnkit.keras.network`, whose import registers its builder) and :func:`build_network`
converts it with its weights (:func:`cnnkit.keras.network.from_keras_file`). With ``--model X`` its converted
weights are loaded into ``X`` like any state dict (the keys that differ listed).
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from cnnkit.errors import CnnkitError
from cnnkit.keras.network import NAME as KERAS_NETWORK
from cnnkit.keras.network import digest, from_keras_file, is_keras_file, keras_spec
from cnnkit.models import ModelSpec, build, parse_spec
from cnnkit.train.rundir import read_manifest

__all__ = ["build_network", "spec_of_weights", "weights_source"]


def spec_of_weights(weights: str | os.PathLike) -> ModelSpec | None:
    """The network a ``--weights`` source names, used when no ``--model`` is given: a run folder's (from its
    manifest), a Keras file's (``KerasNetwork``: its config checked, no weight read); ``None`` for a weight name or
    a state dict (they fit a network the user names).

    Raises:
        CnnkitError: a Keras file that does not exist or whose config :func:`cnnkit.keras.load` refuses.
    """
    path = Path(weights)
    if path.is_dir():
        return parse_spec(read_manifest(path)["model"]["spec"])
    if is_keras_file(path):
        _check_keras_file(weights)
        return keras_spec(path)
    return None


def _check_keras_file(weights: str | os.PathLike) -> None:
    if not Path(weights).is_file():
        raise CnnkitError(f"--weights {os.fspath(weights)!r}: no such Keras file.")


def _is_keras_network(spec: ModelSpec) -> bool:
    return spec.library == "user" and spec.architecture == KERAS_NETWORK


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
    if is_keras_file(path):
        import tempfile

        from cnnkit.keras import load, save_safetensors

        _check_keras_file(weights)
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
    """``build(spec, ...)`` with ``weights`` (see :func:`weights_source`), logged.

    A Keras file with the spec :func:`spec_of_weights` gave for it is converted with its weights (the network's
    input channels and classes checked against the data's, naming the file, before any weight is read).
    """
    import contextlib

    if weights is not None and _is_keras_network(spec) and is_keras_file(weights):
        _check_keras_file(weights)
        net = from_keras_file(weights, in_channels, num_classes)
        found = digest(net.keras_architecture.numpy().tobytes())
        if found != spec.args.get("sha256"):
            raise CnnkitError(f"--weights {os.fspath(weights)!r}: the spec names the Keras architecture with SHA-256 "
                              f"{spec.args.get('sha256')!r}; this file's is {found!r} (the file changed while it was "
                              f"read, or the spec was given by hand). Leave --model out: the file names its network.")
        count = sum(p.numel() for p in net.parameters())
        log(f"network: the Keras network of {os.fspath(weights)!r} ({KERAS_NETWORK}, {count:,} parameters, its "
            f"weights; {'the data bands, not the validity band' if net.drop_validity_band else 'every channel'} "
            "as input, logits out)")
        return net
    with contextlib.ExitStack() as stack:
        source, root, _ = weights_source(weights, stack)
        net = build(spec, in_channels=in_channels, num_classes=num_classes, weights=source, root=root,
                    band_names=band_names if source is not None else None)
    count = sum(p.numel() for p in net.parameters())
    origin = "random weights" if weights is None else f"weights {os.fspath(weights)!r}"
    log(f"network: {spec.label()} ({spec.library}{', args ' + str(spec.args) if spec.args else ''}), "
        f"{count:,} parameters, {origin}")
    return net
