"""From variable-size CNN feature maps to packed sequences for an RNN, and back.

The seed case: microscopy scans of variable height and constant width go through a CNN, then an LSTM
reads the feature map row by row. On a padded batch (see :func:`cnnkit.masking.pad_batch`) sample ``n``
of the feature map is valid on ``[:sizes[n, 0], :sizes[n, 1]]``; :func:`feature_sizes` computes those
sizes from the input sizes and the network's layers, :func:`to_packed_sequence` turns the valid part
into a ``PackedSequence`` (so the LSTM never sees a padded row), and :func:`from_packed_sequence` gives
the LSTM's output back as a padded ``(N, C', L)`` tensor with its lengths.

Examples:
    >>> import torch
    >>> from torch import nn
    >>> from cnnkit.masking.batch import pad_batch
    >>> cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
    >>> scans = pad_batch([torch.rand(1, 20, 16), torch.rand(1, 12, 16)])
    >>> sizes = feature_sizes(scans.sizes, cnn)
    >>> sizes.tolist()
    [[9, 7], [5, 7]]
    >>> packed = to_packed_sequence(cnn(scans.data), sizes)  # rows of 4 channels × 7 columns
    >>> out, _ = nn.LSTM(28, 8, batch_first=True)(packed)
    >>> padded, lengths = from_packed_sequence(out)
    >>> padded.shape, lengths.tolist()
    (torch.Size([2, 8, 9]), [9, 5])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from cnnkit._checks import check_choice
from cnnkit._ops import spatial_size_after
from cnnkit.errors import ShapeError, UnsupportedError
from cnnkit.masking.sampler import _as_sizes
from cnnkit.shapes.arithmetic import conv_output_size

__all__ = ["feature_sizes", "from_packed_sequence", "to_packed_sequence"]


def _layer_size(layer, size: tuple[int, ...]) -> tuple[int, ...]:
    """Spatial size after one layer (a module or a ``(kernel_size, stride, padding, dilation)`` spec)."""
    if isinstance(layer, nn.Module):
        after = spatial_size_after(layer, size)  # the op catalogue's window geometry and shape-keeping modules
        if after is not None:
            return after
        raise UnsupportedError(
            f"feature_sizes does not know how {type(layer).__name__} changes spatial sizes. Pass the "
            "list of size-changing layers instead, as modules or (kernel_size, stride, padding, dilation) "
            f"specs. Received layer {layer!r}."
        )
    if isinstance(layer, (tuple, list)) and 1 <= len(layer) <= 4:
        return conv_output_size(size, *layer)
    raise ShapeError(
        "each layer must be a conv/pool module or a (kernel_size, stride, padding, dilation) spec "
        f"(stride, padding and dilation optional). Received {layer!r}."
    )


def _layers(model_or_specs) -> list:
    if isinstance(model_or_specs, nn.Module):
        leaves = [m for m in model_or_specs.modules() if not any(True for _ in m.children())]
        return leaves
    if isinstance(model_or_specs, Sequence) and not isinstance(model_or_specs, str):
        out: list = []
        for item in model_or_specs:
            out.extend(_layers(item) if isinstance(item, nn.Module) else [item])
        return out
    raise ShapeError(
        "model_or_specs must be a module or a sequence of modules and (kernel_size, stride, padding, "
        f"dilation) specs. Received {model_or_specs!r}."
    )


def feature_sizes(sizes, model_or_specs) -> Tensor:
    """Each sample's valid spatial size after a chain of convolutions and poolings.

    Applies :func:`cnnkit.shapes.conv_output_size` (or ``pool_output_size``,
    ``conv_transpose_output_size``) to every sample's size in turn, so the lengths an RNN needs come
    from the same shape arithmetic as everything else in cnnkit.

    Args:
        sizes: (N, D) sizes, e.g. ``PaddedBatch.sizes``, or a sequence of ints/tuples.
        model_or_specs: A module (its leaf modules are taken in registration order, which is the
            execution order of an ``nn.Sequential``), or a sequence of modules and
            ``(kernel_size, stride=1, padding=0, dilation=1)`` convolution specs. Conv, transposed conv,
            max/avg/adaptive pooling change sizes; activations, normalisation and dropout keep them;
            any other module is refused with :class:`~cnnkit.errors.UnsupportedError`.

    Returns:
        (N, D) ``torch.long`` tensor, on the device of ``sizes`` if it is a tensor.

    Examples:
        >>> feature_sizes([(33, 16), (20, 16)], [(3, 1, 1), (3, 2), (2, 2)]).tolist()
        [[8, 3], [4, 3]]
    """
    table = _as_sizes(sizes).tolist()
    layers = _layers(model_or_specs)
    known: dict[tuple[int, ...], tuple[int, ...]] = {}  # local: sizes repeat within a batch
    out = []
    for n, size in enumerate(table):
        key = tuple(size)
        if key not in known:
            current = key
            for i, layer in enumerate(layers):
                try:
                    current = tuple(_layer_size(layer, current))
                except ShapeError as err:
                    raise ShapeError(
                        f"feature_sizes: sample {n} of size {key} has size {current} before layer {i} "
                        f"({layer!r}), which fails: {err}"
                    ) from err
            known[key] = current
        out.append(known[key])
    device = sizes.device if isinstance(sizes, Tensor) else None
    return torch.tensor(out, dtype=torch.long, device=device)


def _check_sizes(features: Tensor, sizes) -> Tensor:
    spatial = tuple(features.shape[2:])
    table = torch.as_tensor(_as_sizes(sizes))
    if table.shape != (features.shape[0], len(spatial)):
        raise ShapeError(
            f"sizes must have shape (N, D) = {(features.shape[0], len(spatial))} for features of shape "
            f"{tuple(features.shape)}. Received sizes of shape {tuple(table.shape)}."
        )
    too_big = table > torch.tensor(spatial)
    if too_big.any():
        n = int(too_big.any(dim=1).nonzero()[0, 0])
        raise ShapeError(
            f"sizes must fit in the feature map's spatial size {spatial}. Received sizes[{n}]="
            f"{tuple(table[n].tolist())}; use feature_sizes(input_sizes, model) for the sizes after the CNN."
        )
    return table


def to_packed_sequence(features: Tensor, sizes, dim: str = "height", reduce: str = "none") -> PackedSequence:
    """Turn the valid part of each sample's feature map into one sequence of a ``PackedSequence``.

    For (N, C, H, W) features the sequence runs along ``dim`` and each step is the slice across the
    other spatial dimension ("width" for ``dim="height"``):

    - ``reduce="none"``: the step's feature vector is that C × width slice flattened (index
      ``c · width + w``), which needs every sample to have the same valid width (as the seed's
      constant-width scans do);
    - ``reduce="mean"`` / ``"max"``: the slice is pooled over its *valid* positions only, giving C
      features per step, for any sizes.

    For (N, C, L) features the sequence runs along L with C features per step (``dim`` does not apply).

    Args:
        features: (N, C, H, W) or (N, C, L) feature map; sample ``n`` is valid on
            ``[:sizes[n, 0], :sizes[n, 1]]``, the rest is ignored.
        sizes: (N, 2) or (N, 1) valid sizes in the feature map, e.g. from :func:`feature_sizes`.
        dim: ``"height"`` (default) or ``"width"``: the dimension the sequence runs along.
        reduce: ``"none"`` (default), ``"mean"`` or ``"max"``.

    Returns:
        A ``PackedSequence`` of feature size ``C·W`` (``reduce="none"``, W the common valid width) or ``C``,
        with lengths ``sizes[:, 0]`` (``sizes[:, 1]`` for ``dim="width"``); ``nn.LSTM`` accepts it as is.

    Shape:
        - features: (N, C, H, W); sizes: (N, 2)
        - output (``dim="height"``, padded view): (N, H_max, C·W) or (N, H_max, C)

    Examples:
        >>> x = torch.arange(12.0).view(2, 1, 3, 2)
        >>> p = to_packed_sequence(x, [(3, 2), (1, 2)])
        >>> p.data.shape, p.batch_sizes.tolist()
        (torch.Size([4, 2]), [2, 1, 1])
        >>> to_packed_sequence(x, [(3, 2), (1, 1)], reduce="max").data.tolist()
        [[1.0], [6.0], [3.0], [5.0]]
    """
    if not isinstance(features, Tensor) or features.dim() not in (3, 4):
        raise ShapeError(
            "features must be a tensor (N, C, H, W) or (N, C, L). "
            f"Received shape {tuple(getattr(features, 'shape', ()))}."
        )
    check_choice(dim, ("height", "width"), "dim")
    check_choice(reduce, ("none", "mean", "max"), "reduce")
    table = _check_sizes(features, sizes)
    if features.dim() == 3:
        steps = features.transpose(1, 2)
        lengths = table[:, 0]
    else:
        time_axis, other_axis = (2, 3) if dim == "height" else (3, 2)
        lengths = table[:, time_axis - 2]
        others = table[:, other_axis - 2]
        other_name = "width" if dim == "height" else "height"
        if reduce == "none":
            if (others != others[0]).any():
                raise ShapeError(
                    f"reduce='none' flattens each step's C × {other_name} slice into one feature vector, so "
                    f"every sample needs the same valid {other_name}. Received {other_name}s "
                    f"{others.tolist()}. Pass reduce='mean' or 'max' to pool the {other_name} over valid "
                    "positions (C features per step), or pool it in the network (e.g. AdaptiveAvgPool2d)."
                )
            kept = features.narrow(other_axis, 0, int(others[0]))
            steps = kept.permute(0, time_axis, 1, other_axis).flatten(2)
        else:
            positions = torch.arange(features.shape[other_axis], device=features.device)
            valid = positions < others.to(features.device)[:, None]  # (N, other)
            valid = valid[:, None, None, :] if other_axis == 3 else valid[:, None, :, None]
            if reduce == "mean":
                total = torch.where(valid, features, features.new_zeros(())).sum(other_axis)
                pooled = total / others.to(features.device, features.dtype)[:, None, None]
            else:
                pooled = features.masked_fill(~valid, float("-inf")).amax(other_axis)
            steps = pooled.transpose(1, 2)  # (N, time, C)
    if (lengths < 1).any():
        raise ShapeError(f"every sequence needs at least one step. Received lengths {lengths.tolist()}.")
    return pack_padded_sequence(steps, lengths.cpu(), batch_first=True, enforce_sorted=False)


def from_packed_sequence(packed: PackedSequence, total_length: int | None = None) -> tuple[Tensor, Tensor]:
    """A ``PackedSequence`` (e.g. an LSTM's output) as a zero-padded (N, C', L_max) tensor and its lengths.

    Samples come back in their original order (``enforce_sorted=False`` packing is undone).

    Args:
        packed: The packed sequence, with data (Σ lengths, C', ...).
        total_length: Pad to this many steps instead of the longest length.

    Returns:
        ``(padded, lengths)``: padded (N, C', L) with zeros after each length (extra feature dims
        come before L), and lengths (N,) ``torch.long`` on the same device.

    Examples:
        >>> p = to_packed_sequence(torch.ones(2, 3, 4), [(4,), (2,)])
        >>> padded, lengths = from_packed_sequence(p)
        >>> padded[1], lengths
        (tensor([[1., 1., 0., 0.],
                [1., 1., 0., 0.],
                [1., 1., 0., 0.]]), tensor([4, 2]))
    """
    if not isinstance(packed, PackedSequence):
        raise ShapeError(f"packed must be a torch.nn.utils.rnn.PackedSequence. Received {type(packed).__name__}.")
    padded, lengths = pad_packed_sequence(packed, batch_first=True, total_length=total_length)
    return padded.movedim(1, -1).contiguous(), lengths.to(padded.device)
