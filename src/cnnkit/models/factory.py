"""Building a network from a spec: on the meta device first, for real only once the checks pass.

:func:`build` is the one way cnnkit turns a :class:`~cnnkit.models.ModelSpec` into a network, for training and
for ``cnnkit predict`` alike:

1. the spec's form, names and arguments are checked (:func:`~cnnkit.models.parse_spec`,
   :func:`~cnnkit.models.resolve`), ``in_channels`` and ``num_classes`` bounded;
2. the network is built on the **meta device** (shapes, no memory) and refused above ``max_parameters``
   (``width: 100000`` is 10¹¹ parameters: refused in a fraction of a second, nothing allocated); an smp network
   must map a (1, C, 224, 224) image to (1, num_classes, 224, 224), checked by a meta forward pass;
3. with a weights file, its header is compared with the meta network (names and shapes, by layer) before
   anything is allocated;
4. only then is the network built on the CPU, given its weights (random, pretrained through smp/timm, or the
   file's), its stem adapted to the bands if a 3-band pretrained stem meets N bands
   (:mod:`cnnkit.models.stem`), and moved to ``device``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from cnnkit.errors import ArgumentTypeError, CnnkitError, ShapeError, UnsupportedError
from cnnkit.models.pretrained import build_pretrained
from cnnkit.models.registry import Builder, resolve
from cnnkit.models.spec import MAX_CHANNELS, MAX_CLASSES, MAX_PARAMETERS, ModelSpec, _short, check_count
from cnnkit.models.stem import adapt_stem, stem_convolutions
from cnnkit.models.weights import SUFFIXES, check_state_dict, load_weights, read_header

__all__ = ["build", "count_parameters"]

_CHECK_SIDE = 224  # the side of the meta image an smp network must map to a same-sized map (ViT encoders need it)


def build(
    spec: ModelSpec | Mapping[str, Any],
    *,
    in_channels: int,
    num_classes: int,
    weights: str | os.PathLike | None = None,
    band_names: Sequence[str] | None = None,
    validity_band: bool = True,
    root: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    max_parameters: int = MAX_PARAMETERS,
) -> nn.Module:
    """Build the network a spec names, after the checks of the module docstring.

    Args:
        spec: A :class:`~cnnkit.models.ModelSpec` or its JSON form (``{"library": "smp", "architecture":
            "Unet", "encoder": "resnet18", "args": {}}``); untrusted input is fine.
        in_channels: Input channels, the validity band included (1 to 1024).
        num_classes: Classes predicted (1 to 4096).
        weights: ``None`` (random), a weight name smp/timm offer for the encoder (``"imagenet"``; no path
            separator and no file suffix), or a ``.safetensors``/``.pt``/``.pth`` state dict: of this network,
            or of the same network with a 3-band stem (pretrained on RGB), adapted to ``band_names``.
        band_names: Names of the data bands, in input order (``in_channels`` minus the validity band). Needed
            when a 3-band pretrained stem meets other inputs; bands named red/green/blue take those colours'
            filters (see :mod:`cnnkit.models.stem`).
        validity_band: The input's last channel is cnnkit's validity band (its stem filter starts at zero).
        root: The folder a weights *file* must lie in (a run folder): a relative path is taken from it, and no
            path or link may lead out of it. ``None``: any regular file.
        device: Where the network goes; ``"meta"`` returns the meta-device network (no memory, no weights).
        max_parameters: The parameter budget (parameters and buffers, counted on the meta device).

    Returns:
        The network, in training mode, on ``device``.

    Raises:
        CnnkitError: every refusal, naming the field, the rule and the value: an unknown architecture or encoder
            (with the closest names), an unregistered ``user`` network, arguments that do not fit, a network over
            the budget, weights that do not fit (the differing layers), weights not downloadable (the cache folder).

    Examples:
        >>> net = build({"library": "cnnkit", "architecture": "TinySegNet", "args": {"width": 8}},
        ...             in_channels=5, num_classes=3)
        >>> net(torch.zeros(1, 5, 16, 16)).shape
        torch.Size([1, 3, 16, 16])
        >>> build({"library": "cnnkit", "architecture": "TinySegNet", "args": {"width": 4000}},
        ...       in_channels=5, num_classes=3, max_parameters=10**6)
        Traceback (most recent call last):
        ...
        cnnkit.errors.ShapeError: TinySegNet (args {'width': 4000}, in_channels=5, num_classes=3) has 864,...
    """
    builder = resolve(spec, root=root)
    check_count(in_channels, "in_channels", MAX_CHANNELS)
    check_count(num_classes, "num_classes", MAX_CLASSES)
    if isinstance(max_parameters, bool) or not isinstance(max_parameters, int) or max_parameters < 1:
        raise ShapeError(f"max_parameters must be a positive integer. Received max_parameters={max_parameters!r}.")
    if not isinstance(validity_band, bool):
        raise ShapeError(f"validity_band must be True or False. Received validity_band={validity_band!r}.")
    if band_names is not None:
        data_bands = in_channels - int(validity_band)
        if isinstance(band_names, str) or not isinstance(band_names, Sequence) or len(band_names) != data_bands:
            raise ShapeError(f"band_names must name the {data_bands} data bands of in_channels={in_channels}"
                             f"{' (the last one the validity band)' if validity_band else ''}. Received "
                             f"band_names={_short(band_names)}.")
    meta = _on_meta(builder, in_channels, num_classes, max_parameters)
    if str(device) == "meta":
        if weights is not None:
            raise ShapeError("A meta-device network holds no values: build it with weights=None, or on a real device.")
        return meta
    if weights is None:
        model = _on_host(builder, in_channels, num_classes)
    elif _is_file(weights):
        model = _from_file(builder, meta, weights, in_channels, num_classes, band_names, validity_band, root)
    else:
        model = build_pretrained(builder, num_classes, weights)
        if in_channels != 3 or band_names is not None:
            if band_names is None:
                raise ShapeError(_NEEDS_NAMES.format(in_channels=in_channels, source=f"weights {weights!r}"))
            _adapt(model, meta, in_channels, band_names, validity_band, builder.spec)
    return model.to(device)


def count_parameters(spec: ModelSpec | Mapping[str, Any], *, in_channels: int, num_classes: int) -> int:
    """The number of parameters of the network a spec names, counted on the meta device (nothing allocated).

    Examples:
        >>> count_parameters({"library": "cnnkit", "architecture": "TinySegNet"}, in_channels=4, num_classes=5)
        14821
    """
    meta = build(spec, in_channels=in_channels, num_classes=num_classes, device="meta",
                 max_parameters=2**62)
    return sum(p.numel() for p in meta.parameters())


_NEEDS_NAMES = ("The {source} have a 3-band (RGB) first layer and the network reads in_channels={in_channels}: give "
                "band_names (the data bands in input order; red, green and blue take the pretrained colour filters, "
                "the others their mean, see cnnkit.models.stem) to adapt it.")


def _on_meta(builder: Builder, in_channels: int, num_classes: int, max_parameters: int) -> nn.Module:
    spec = builder.spec
    what = f"{spec.label()} (args {_short(spec.args)}, in_channels={in_channels}, num_classes={num_classes})"
    try:
        with torch.device("meta"), _IndexHelpersOnHost():
            model = builder(in_channels, num_classes)
    except CnnkitError:
        raise
    except Exception as error:  # the builder's own refusal of its arguments, whatever its type
        raise ShapeError(f"{what} could not be built: {type(error).__name__}: {_first_line(error)}") from error
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"The builder of {spec.label()} returned {type(model).__name__}, not an nn.Module.")
    model.to("meta")  # smp makes a re-channelled first convolution on the CPU (a few kB); the rest is meta already
    count = sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())
    if count > max_parameters:
        raise ShapeError(f"{what} has {count:,} parameters and buffers ({count * 4 / 1e9:.1f} GB in float32), over "
                         f"the budget max_parameters={max_parameters:,}. Give smaller widths or fewer classes (or a "
                         "larger max_parameters if you mean it).")
    if spec.library == "smp":
        _check_output(model, what, in_channels, num_classes)
    return model


def _check_output(model: nn.Module, what: str, in_channels: int, num_classes: int) -> None:
    image = torch.zeros(1, in_channels, _CHECK_SIDE, _CHECK_SIDE, device="meta")
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            out = model(image)
    except Exception as error:
        raise ShapeError(f"{what} does not run on a {tuple(image.shape)} image: {type(error).__name__}: "
                         f"{_first_line(error)}") from error
    finally:
        for module, training in modes.items():
            module.training = training
    expected = (1, num_classes, _CHECK_SIDE, _CHECK_SIDE)
    if not isinstance(out, Tensor) or tuple(out.shape) != expected:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ShapeError(f"{what} maps a {tuple(image.shape)} image to {got}; a segmentation network must give "
                         f"{expected} (check upsampling and the other output-size arguments).")


def _on_host(builder: Builder, in_channels: int, num_classes: int) -> nn.Module:
    try:
        return builder(in_channels, num_classes)
    except CnnkitError:
        raise
    except Exception as error:  # it built on the meta device: what fails now is memory or the builder itself
        raise CnnkitError(f"{builder.spec.label()} could not be built: {type(error).__name__}: "
                          f"{_first_line(error)}") from error


def _from_file(builder: Builder, meta: nn.Module, weights: str | os.PathLike, in_channels: int, num_classes: int,
               band_names: Sequence[str] | None, validity_band: bool, root: str | os.PathLike | None) -> nn.Module:
    header = read_header(weights, root=root)
    diff = check_state_dict(meta, header, strict=False)
    if not diff:
        model = _on_host(builder, in_channels, num_classes)
        load_weights(model, weights, root=root)
        return model
    stems = {f"{name}.weight" for name in stem_convolutions(meta, in_channels=in_channels)}
    rgb_stem = bool(diff.mismatched) and not diff.missing and not diff.unexpected and all(
        key in stems and len(got) == 4 and got[1] == 3 and (got[0], *got[2:]) == (want[0], *want[2:])
        for key, want, got in diff.mismatched
    )
    if not rgb_stem:
        raise ShapeError(f"The weights {os.fspath(weights)!r} do not fit {builder.spec.label()} with "
                         f"in_channels={in_channels}, num_classes={num_classes}: {diff.describe()}")
    if band_names is None:
        raise ShapeError(_NEEDS_NAMES.format(in_channels=in_channels, source=f"weights {os.fspath(weights)!r}"))
    model = _on_host(builder, 3, num_classes)
    load_weights(model, weights, root=root)
    _adapt(model, meta, in_channels, band_names, validity_band, builder.spec)
    return model


def _adapt(model: nn.Module, meta: nn.Module, in_channels: int, band_names: Sequence[str], validity_band: bool,
           spec: ModelSpec) -> None:
    adapt_stem(model, band_names, validity_band=validity_band, stem=stem_convolutions(meta, in_channels=in_channels))
    diff = check_state_dict(meta, model.state_dict(), strict=False)
    if diff:  # the builder's own N-band network differs beyond its stem: the rule cannot stand in for it
        raise UnsupportedError(f"{spec.label()}: after adapting its first layer, the pretrained network still differs "
                               f"from the one built for these bands: {diff.describe()}")


def _is_file(weights: Any) -> bool:
    if isinstance(weights, os.PathLike):
        return True
    if not isinstance(weights, str) or not weights:
        raise ArgumentTypeError(f"weights must be None, a weight name ('imagenet') or a path to a "
                                f"{'/'.join(SUFFIXES)} file. Received {_short(weights)}.")
    return weights.lower().endswith(SUFFIXES) or "/" in weights or os.sep in weights


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0][:400] if text else type(error).__name__)


class _IndexHelpersOnHost(TorchFunctionMode):
    """During a meta-device build, ``torch.arange``/``linspace``/``logspace`` without a device run on the CPU:
    some networks read those values while being built (smp's MiT encoders take stochastic-depth rates with
    ``.item()``), which a meta tensor cannot give. They are index and schedule vectors of a few dozen values."""

    _HOST = (torch.arange, torch.linspace, torch.logspace)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self._HOST and kwargs.get("device") is None:
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)
