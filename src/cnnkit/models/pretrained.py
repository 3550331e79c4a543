"""Pretrained encoder weights, through segmentation-models-pytorch's and timm's own download and cache.

cnnkit does not download anything itself: ``weights="imagenet"`` asks smp for the encoder's weights (smp 0.5+
keeps them on the Hugging Face Hub, ``smp-hub/<encoder>.<weights>``; timm's ``tu-`` encoders come from
``timm/<model>.<tag>`` or timm's release URLs). Each is downloaded once into a cache folder and read from there
afterwards. Without network, and without the file in the cache, the error names the cache folder this process
uses and how to fill it from a machine that has network.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from cnnkit.errors import CnnkitError, UnsupportedError
from cnnkit.models.registry import Builder
from cnnkit.models.spec import closest_names

__all__ = ["build_pretrained", "pretrained_names", "weights_location"]


def pretrained_names(encoder: str) -> list[str]:
    """The weight names smp offers for ``encoder`` (``["imagenet", "ssl", "swsl"]`` for ``resnet18``); for a
    ``tu-`` encoder ``["imagenet"]`` if timm has pretrained weights for it (its tag, ``tu-<model>.<tag>``, picks
    which), else none."""
    if encoder.startswith("tu-"):
        return ["imagenet"] if _timm_config(encoder) is not None else []
    import segmentation_models_pytorch as smp

    return list(smp.encoders.encoders.get(encoder, {}).get("pretrained_settings", {}))


def weights_location(encoder: str, weights: str) -> str:
    """Where smp/timm cache ``weights`` of ``encoder`` in this process, and how to put them there by hand."""
    if encoder.startswith("tu-"):
        config = _timm_config(encoder)
        if config is None:
            return f"timm has no pretrained weights for {encoder[3:]!r}."
        if config.hf_hub_id:
            return _hub_instructions(config.hf_hub_id, None)
        return _url_instructions(config.url)
    import segmentation_models_pytorch as smp

    settings = smp.encoders.encoders[encoder]["pretrained_settings"][weights]
    if "repo_id" in settings:
        return _hub_instructions(settings["repo_id"], settings.get("revision"))
    return _url_instructions(settings["url"])


def build_pretrained(builder: Builder, num_classes: int, weights: str) -> nn.Module:
    """The smp network of ``builder`` with 3 input channels and its encoder's pretrained ``weights`` (downloaded
    by smp/timm into their cache on first use), on the CPU.

    Raises:
        UnsupportedError: not an smp spec, or weights smp/timm do not offer for this encoder (with those it does).
        CnnkitError: the download failed (no network, file not in the cache): the cache folder and what to do.
    """
    spec = builder.spec
    if spec.library != "smp":
        raise UnsupportedError(f"Pretrained weights by name ({weights!r}) exist for smp encoders only; "
                               f"{spec.label()} (library {spec.library!r}) has none. Give a weights file instead.")
    offered = pretrained_names(spec.encoder)
    if weights not in offered:
        raise UnsupportedError(f"Unknown weights {weights!r} for encoder {spec.encoder!r}. Closest: "
                               f"{closest_names(weights, offered)}. Expected one of {tuple(offered)!r}"
                               + (" (timm's tag goes in the encoder name: tu-<model>.<tag>)."
                                  if spec.encoder.startswith("tu-") else "."))
    # smp wants True for timm encoders (the tag in the name picks the weights), the weight name for its own.
    encoder_weights = True if spec.encoder.startswith("tu-") else weights
    try:
        return builder(3, num_classes, encoder_weights=encoder_weights)
    except OSError as error:  # Hugging Face Hub's errors, URLError, ConnectionError, a missing cached file
        reason = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        raise CnnkitError(
            f"Could not get the pretrained weights {weights!r} of encoder {spec.encoder!r} ({type(error).__name__}: "
            f"{reason}). {weights_location(spec.encoder, weights)}"
        ) from error


def _timm_config(encoder: str):
    from timm.models import get_pretrained_cfg

    try:
        return get_pretrained_cfg(encoder[3:])
    except (RuntimeError, KeyError, ValueError):
        return None


def _hub_instructions(repo_id: str, revision: str | None) -> str:
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    pinned = f", revision={revision!r}" if revision else ""
    return (
        f"smp and timm cache them in {os.fspath(folder)!r} (Hugging Face repository {repo_id!r}{pinned}; the cache "
        f"folder is {constants.HF_HUB_CACHE!r}, moved by HF_HUB_CACHE or HF_HOME). Without network here: on a machine "
        f"with network run python -c \"import huggingface_hub as h; h.snapshot_download({repo_id!r}{pinned})\", "
        f"copy the folder {folder.name!r} from its cache into {constants.HF_HUB_CACHE!r} here, and set "
        "HF_HUB_OFFLINE=1."
    )


def _url_instructions(url: str) -> str:
    import torch.hub

    target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    return (f"smp and timm cache them in {os.fspath(target)!r} (torch hub's folder, moved by TORCH_HOME). Without "
            f"network here: download {url} on a machine with network and place the file at that path.")
