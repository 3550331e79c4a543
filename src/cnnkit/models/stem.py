"""A pretrained RGB first layer adapted to any bands: the one rule, as a function and on a network.

A network pretrained on ImageNet reads three bands, red, green and blue, through its first convolution (the
*stem*). Satellite, aerial and microscopy images have 4 to 13 bands or more, and cnnkit adds a validity band
last (1 = data, 0 = missing, see :class:`cnnkit.data.Standardized`). The rule, for a stem weight ``W`` of shape
(O, 3, kH, kW) and N data bands:

1. a band named ``red``, ``green`` or ``blue`` (case ignored) takes the pretrained filter of that colour,
   ``W[:, c]``;
2. every other band takes the mean of the three, ``M = (W[:, 0] + W[:, 1] + W[:, 2]) / 3``;
3. all data-band filters are multiplied by ``3 / N``;
4. the validity band's filter is zero (it starts by changing nothing; training gives it a use).

The bias is kept. **What it keeps**: when the bands contain red, green and blue once each, or none of them, an
image whose N data bands all equal one picture ``g`` gives exactly the stem output the pretrained network gives
the grey RGB image ``(g, g, g)``, whatever the validity band holds: the adapted filters sum to
``3/N · (W_r + W_g + W_b + (N − 3) M) = 3 M = W_r + W_g + W_b``, the sum the grey image meets. So the first
activation, and the batch norm statistics after it, start at the scale the pretrained layers were trained on.
(With only some of the colours present the sum differs from the grey one by ``3/N · Σ (W_c − M)`` over the
colours present; the rule is unchanged, the property then holds only approximately.)

The stem is found, not named: :func:`stem_convolutions` runs a zero image through the network and lists the
``nn.Conv2d`` modules that read the input tensor itself, stopping at the first convolution that reads anything
else. That is the encoder's first convolution for every smp encoder, timm's ``pretrained_cfg["first_conv"]``
for its models, and both branches of MobileOne's first block.

docs/models.md compares the rule with segmentation-models-pytorch's and timm's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cnnkit.errors import ArgumentTypeError, ShapeError, UnsupportedError

__all__ = ["COLOURS", "adapt_stem", "adapted_stem_weight", "stem_convolutions"]

COLOURS = ("red", "green", "blue")
"""The band names that take a pretrained colour filter, in the channel order of ImageNet-pretrained weights."""


def adapted_stem_weight(weight: Tensor, band_names: Sequence[str], *, validity_band: bool = True,
                        colour_order: Sequence[str] = COLOURS) -> Tensor:
    """The rule of the module docstring on a pretrained stem weight: (O, 3, kH, kW) → (O, N (+1), kH, kW).

    Args:
        weight: The pretrained convolution's weight, 3 input channels, in the order ``colour_order``.
        band_names: The names of the N data bands, in input order (distinct, case ignored).
        validity_band: Append a zero filter for cnnkit's validity band (the last input channel).
        colour_order: Which colour each of the weight's 3 input channels holds.

    Returns:
        The new weight, of ``weight``'s dtype and device (computed in float64 on the CPU and GPU).

    Examples:
        >>> w = torch.tensor([[[[3.0]], [[6.0]], [[9.0]]]])              # 1 filter, 1 × 1; mean 6
        >>> adapted_stem_weight(w, ["nir", "red", "green", "blue"])[:, :, 0, 0]   # × 3/4
        tensor([[4.5000, 2.2500, 4.5000, 6.7500, 0.0000]])
    """
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        raise ShapeError(f"weight must be a convolution weight (O, 3, kH, kW). Received "
                         f"{tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__}.")
    colours = _names(colour_order, "colour_order")
    if len(colours) != weight.shape[1]:
        raise ShapeError(f"The pretrained stem must read {len(colours)} channels ({', '.join(colours)}). Received a "
                         f"weight of shape {tuple(weight.shape)}.")
    names = _names(band_names, "band_names")
    work = weight.detach() if weight.is_meta else weight.detach().double()
    mean = work.mean(dim=1)
    filters = [work[:, colours.index(n)] if n in colours else mean for n in names]
    if validity_band:
        filters.append(torch.zeros_like(mean))
    scale = len(colours) / len(names)
    new = torch.stack(filters, dim=1)
    new[:, : len(names)] *= scale
    return new.to(weight.dtype)


def stem_convolutions(model: nn.Module, in_channels: int = 3, size: int = 224) -> list[str]:
    """The names of the ``nn.Conv2d`` modules that read the network's input tensor directly.

    One forward pass of a zero image (1, ``in_channels``, ``size``, ``size``) in eval mode, without gradients,
    stopped at the first convolution whose input is anything else; hooks removed and modes restored after.
    On a meta-device network the pass costs nothing; on a real one it runs only the stem.

    Examples:
        >>> from cnnkit.models import TinySegNet
        >>> stem_convolutions(TinySegNet(5, 3), in_channels=5)
        ['stem.0']
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be an nn.Module. Received {type(model).__name__}.")
    reference = next(iter(model.parameters()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    image = torch.zeros(1, in_channels, size, size, device=device, dtype=dtype)
    found: list[str] = []

    def check(name: str, args: tuple) -> None:
        if args and args[0] is image:
            found.append(name)
        else:
            raise _PastTheStem

    hooks = [module.register_forward_pre_hook(lambda _m, args, name=name: check(name, args))
             for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(image)
    except _PastTheStem:
        pass
    except Exception as error:
        raise UnsupportedError(
            f"Could not find the first convolution of {type(model).__name__}: a zero image "
            f"{tuple(image.shape)} raised {type(error).__name__}: {error}. Name it: adapt_stem(model, ..., "
            "stem=['encoder.conv1']) or adapt_stem(the_conv, ...)."
        ) from error
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.training = training
    if not found:
        raise UnsupportedError(
            f"No nn.Conv2d of {type(model).__name__} reads its input directly (it is changed before the first "
            "convolution, or read by another kind of layer). Name the stem: adapt_stem(model, ..., stem=[...])."
        )
    return found


def adapt_stem(model: nn.Module, band_names: Sequence[str], *, validity_band: bool = True,
               colour_order: Sequence[str] = COLOURS, stem: Sequence[str] | None = None) -> nn.Module:
    """Adapt a pretrained 3-band network (or one convolution) to ``band_names`` in place, by the rule above.

    Each stem convolution's weight is replaced by :func:`adapted_stem_weight` of it and its ``in_channels`` set
    to N (+1 with ``validity_band``); its class, stride, padding, bias and ``requires_grad`` stay.

    Args:
        model: The network, or the ``nn.Conv2d`` itself.
        band_names: The data bands' names, in input order; ``red``, ``green``, ``blue`` take those colours.
        validity_band: The input also carries cnnkit's validity band last (as cnnkit's training feeds it).
        colour_order: Which colour each of the pretrained convolution's 3 input channels holds.
        stem: Names of the convolutions to adapt (default: :func:`stem_convolutions`).

    Returns:
        ``model``, adapted.

    Examples:
        >>> conv = nn.Conv2d(3, 8, 3)
        >>> adapt_stem(conv, ["blue", "green", "red", "nir"])
        Conv2d(5, 8, kernel_size=(3, 3), stride=(1, 1))
    """
    if isinstance(model, nn.Conv2d) and stem is None:
        convs = [("", model)]
    else:
        if not isinstance(model, nn.Module):
            raise ArgumentTypeError(f"model must be an nn.Module or an nn.Conv2d. Received {type(model).__name__}.")
        names = list(stem) if stem is not None else stem_convolutions(model, in_channels=len(colour_order))
        modules = dict(model.named_modules())
        convs = []
        for name in names:
            if not isinstance(modules.get(name), nn.Conv2d):
                raise ShapeError(f"stem names {name!r}, which is not an nn.Conv2d of {type(model).__name__}.")
            convs.append((name, modules[name]))
    for name, conv in convs:
        if conv.groups != 1:
            raise UnsupportedError(f"The stem {name or 'convolution'} has groups={conv.groups}; the rule is for "
                                   "groups=1.")
        new = adapted_stem_weight(conv.weight, band_names, validity_band=validity_band, colour_order=colour_order)
        conv.weight = nn.Parameter(new, requires_grad=conv.weight.requires_grad)
        conv.in_channels = new.shape[1]
    return model


def _names(values: Sequence[str], name: str) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise ShapeError(f"{name} must be a non-empty list of names. Received {name}={values!r}.")
    names = []
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise ShapeError(f"{name} must hold non-empty strings. Received {name}={list(values)!r}.")
        names.append(value.strip().lower())
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise ShapeError(f"{name} must be distinct (case ignored). Received {repeated} more than once.")
    return names


class _PastTheStem(Exception):
    """Raised by the tracing hook at the first convolution that does not read the input."""
