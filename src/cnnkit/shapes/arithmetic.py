"""Output sizes, padding amounts and receptive fields of convolution-like layers.

This module is the single place where cnnkit does shape arithmetic: the layers, :func:`cnnkit.explainers`,
:func:`cnnkit.summary`, the command line and the tests all call these functions. Everything here is pure
integer arithmetic on Python ints; no tensor is created.

Padding modes (for one spatial dimension of length ``in``, kernel ``k``, stride ``s``, dilation ``d``;
the dilated kernel spans ``d·(k−1)+1`` inputs):

============  ==========================================  =====================================
padding       zeros added (before, after)                 output size
============  ==========================================  =====================================
``"valid"``   (0, 0)                                      ``floor((in − d·(k−1) − 1) / s) + 1``
``"same"``    total = max((out−1)·s + d·(k−1) + 1 − in, 0),  ``ceil(in / s)``
              before = total // 2, after = total − before
              (TensorFlow's rule: the odd zero goes at the end)
``"full"``    (d·(k−1), d·(k−1))                          ``floor((in + d·(k−1) − 1) / s) + 1``
``"causal"``  (d·(k−1), 0)                                ``ceil(in / s)``
``p`` (int)   (p, p)                                      ``floor((in + 2p − d·(k−1) − 1) / s) + 1``
============  ==========================================  =====================================

With stride 1, ``"same"`` and ``"causal"`` keep the size, ``"full"`` grows it by ``d·(k−1)`` (the
"a + b − 1" of a full convolution) and ``"valid"`` shrinks it by ``d·(k−1)`` ("a − b + 1").
``"causal"`` pads the start of *every* spatial dimension; it is meant for 1-D sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from cnnkit._checks import check_choice, is_int, ntuple
from cnnkit.errors import ShapeError

__all__ = [
    "PADDING_MODES",
    "ReceptiveField",
    "conv_output_size",
    "conv_transpose_output_size",
    "describe_conv_size",
    "describe_pool_size",
    "padding_amounts",
    "pool_output_size",
    "receptive_fields",
    "tf_same_padding",
]

PADDING_MODES = ("valid", "same", "full", "causal")
Size = int | Sequence[int]
Padding = str | int | Sequence[int]


def _rank(size: Size) -> int:
    if is_int(size):
        return 1
    if isinstance(size, Sequence) and not isinstance(size, str) and len(size) > 0:
        return len(size)
    raise ShapeError(
        f"size must be a positive integer or a non-empty tuple of positive integers. Received size={size!r}."
    )


def _geometry(size: Size, kernel_size: Size, stride: Size | None, dilation: Size):
    """``(n, sizes, kernel, strides, dilations)`` as tuples of ``n`` ints; ``stride=None`` means the kernel."""
    n = _rank(size)
    kernel = ntuple(kernel_size, n, "kernel_size")
    strides = kernel if stride is None else ntuple(stride, n, "stride")
    return n, ntuple(size, n, "size"), kernel, strides, ntuple(dilation, n, "dilation")


def _unwrap(values: tuple, size: Size):
    return values[0] if is_int(size) else values


def _pads(size, kernel, stride, dilation, padding, n) -> tuple[tuple[int, int], ...]:
    """(before, after) per dimension, for already-normalised int tuples."""
    if isinstance(padding, str):
        check_choice(padding, PADDING_MODES, "padding")
        pads = []
        for i, k, s, d in zip(size, kernel, stride, dilation):
            span = d * (k - 1)
            if padding == "valid":
                pads.append((0, 0))
            elif padding == "same":
                out = -(-i // s)
                total = max((out - 1) * s + span + 1 - i, 0)
                pads.append((total // 2, total - total // 2))
            elif padding == "full":
                pads.append((span, span))
            else:  # causal
                pads.append((span, 0))
        return tuple(pads)
    return tuple((p, p) for p in ntuple(padding, n, "padding", minimum=0))


def _args_text(**kwargs) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def padding_amounts(
    size: Size, kernel_size: Size, stride: Size = 1, padding: Padding = "valid", dilation: Size = 1
) -> tuple[tuple[int, int], ...]:
    """Zeros added before and after each spatial dimension by a convolution.

    Args:
        size: Input size, an int or a tuple (one entry per spatial dimension).
        kernel_size, stride, dilation: Ints or tuples of the same length as ``size``.
        padding: ``"valid"``, ``"same"``, ``"full"``, ``"causal"``, an int or a tuple of ints.

    Returns:
        One ``(before, after)`` pair per spatial dimension (always a tuple of pairs).

    Examples:
        >>> padding_amounts((5, 6), 3, stride=2, padding="same")
        ((1, 1), (0, 1))
    """
    n, sizes, kernel, strides, dilations = _geometry(size, kernel_size, stride, dilation)
    return _pads(sizes, kernel, strides, dilations, padding, n)


def tf_same_padding(size: Size, kernel_size: Size, stride: Size = 1, dilation: Size = 1):
    """TensorFlow's ``"same"`` padding: ``(before, after)`` with the odd zero at the end.

    The output size is ``ceil(size / stride)``; just enough zeros are added so that the last window
    fits, ``total // 2`` before and the rest after. PyTorch's ``padding="same"`` uses the same split
    but only allows stride 1.

    Returns:
        ``(before, after)`` for an int ``size``; a tuple of pairs for a tuple ``size``.

    Examples:
        >>> tf_same_padding(28, 5, stride=2)
        (1, 2)
        >>> tf_same_padding((7, 8), 3, stride=2)
        ((1, 1), (0, 1))
    """
    return _unwrap(padding_amounts(size, kernel_size, stride, "same", dilation), size)


def conv_output_size(
    size: Size, kernel_size: Size, stride: Size = 1, padding: Padding = "valid", dilation: Size = 1
):
    """Output size of a convolution (``nn.Conv1d/2d/3d``, Keras ``Conv*D``, locally connected layers).

    Args:
        size: Input size: an int, or a tuple with one entry per spatial dimension.
        kernel_size: Int or tuple.
        stride: Int or tuple, default 1.
        padding: ``"valid"`` (default), ``"same"`` (TensorFlow's rule, also for stride > 1), ``"full"``,
            ``"causal"``, an int or a tuple of ints (zeros on both sides, as in PyTorch).
        dilation: Int or tuple, default 1.

    Returns:
        An int if ``size`` is an int, else a tuple.

    Raises:
        ShapeError: if an argument is malformed or the output would be empty.

    Examples:
        >>> conv_output_size(28, 5)                  # 28 − 5 + 1
        24
        >>> conv_output_size(28, 5, padding="full")  # 28 + 5 − 1
        32
        >>> conv_output_size((32, 32), 5, stride=2, padding="same")
        (16, 16)
        >>> conv_output_size((224, 224), 7, stride=2, padding=3)
        (112, 112)
    """
    n, sizes, kernel, strides, dilations = _geometry(size, kernel_size, stride, dilation)
    pads = _pads(sizes, kernel, strides, dilations, padding, n)
    out = []
    for i, k, s, d, (lo, hi) in zip(sizes, kernel, strides, dilations, pads):
        span = d * (k - 1) + 1
        if i + lo + hi < span:
            raise ShapeError(
                "Convolution output would be empty: the dilated kernel spans "
                f"{span} positions but the padded input has {i + lo + hi}. Received "
                + _args_text(
                    size=size, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation
                )
                + "."
            )
        out.append((i + lo + hi - span) // s + 1)
    return _unwrap(tuple(out), size)


def pool_output_size(
    size: Size,
    kernel_size: Size,
    stride: Size | None = None,
    padding: Padding = 0,
    dilation: Size = 1,
    ceil_mode: bool = False,
):
    """Output size of max/average pooling (``nn.MaxPool*d``, ``nn.AvgPool*d``, Keras pooling).

    ``stride`` defaults to ``kernel_size`` as in PyTorch and Keras. An int padding follows PyTorch
    (at most half the kernel; with ``ceil_mode`` the last window must start inside the input or its
    left padding). ``"valid"`` and ``"same"`` follow Keras (``"same"`` gives ``ceil(size / stride)``).

    Examples:
        >>> pool_output_size(24, 2)
        12
        >>> pool_output_size((7, 7), 2, ceil_mode=True)
        (4, 4)
        >>> pool_output_size(112, 3, stride=2, padding=1)
        56
        >>> pool_output_size(5, 2, padding="same")
        3
    """
    n, sizes, kernel, strides, dilations = _geometry(size, kernel_size, stride, dilation)
    args = _args_text(
        size=size, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
        ceil_mode=ceil_mode,
    )
    if isinstance(padding, str):
        check_choice(padding, ("valid", "same"), "padding")
        if ceil_mode:
            raise ShapeError(f"ceil_mode=True only goes with an integer padding. Received {args}.")
        for i, k, d in zip(sizes, kernel, dilations):
            if padding == "valid" and i < d * (k - 1) + 1:
                raise ShapeError(
                    f"Pooling output would be empty: the window spans {d * (k - 1) + 1} positions but the "
                    f"input has {i}. Received {args}."
                )
        return conv_output_size(size, kernel, strides, padding, dilations)
    pads = ntuple(padding, n, "padding", minimum=0)
    out = []
    for i, k, s, d, p in zip(sizes, kernel, strides, dilations, pads):
        if 2 * p > k:
            raise ShapeError(f"padding must be at most half of kernel_size. Received {args}.")
        span = d * (k - 1) + 1
        if ceil_mode:
            # PyTorch's rule: round up (a last window may overhang the end), but drop a window that
            # would start in the right padding.
            o = (i + 2 * p - span + s - 1) // s + 1
            if (o - 1) * s >= i + p:
                o -= 1
        else:
            o = (i + 2 * p - span) // s + 1
        if o < 1:
            raise ShapeError(
                f"Pooling output would be empty: the window spans {span} positions but the padded "
                f"input has {i + 2 * p}. Received {args}."
            )
        out.append(o)
    return _unwrap(tuple(out), size)


def conv_transpose_output_size(
    size: Size,
    kernel_size: Size,
    stride: Size = 1,
    padding: Padding = 0,
    output_padding: Size = 0,
    dilation: Size = 1,
):
    """Output size of a transposed convolution (``nn.ConvTranspose*d``, Keras ``Conv*DTranspose``).

    An int padding follows PyTorch: ``(in − 1)·s − 2p + d·(k − 1) + output_padding + 1``, with
    ``output_padding < max(stride, dilation)``. ``"same"`` and ``"valid"`` follow Keras
    (``in·s`` and ``in·s + max(d·(k−1)+1 − s, 0)``; ``output_padding`` must then be 0).

    Examples:
        >>> conv_transpose_output_size(16, 2, stride=2)
        32
        >>> conv_transpose_output_size((7, 7), 3, stride=2, padding=1, output_padding=1)
        (14, 14)
        >>> conv_transpose_output_size(10, 3, stride=2, padding="valid")
        21
    """
    n, sizes, kernel, strides, dilations = _geometry(size, kernel_size, stride, dilation)
    extra = ntuple(output_padding, n, "output_padding", minimum=0)
    args = _args_text(
        size=size, kernel_size=kernel_size, stride=stride, padding=padding,
        output_padding=output_padding, dilation=dilation,
    )
    out = []
    if isinstance(padding, str):
        check_choice(padding, ("valid", "same"), "padding")
        if any(extra):
            raise ShapeError(f"output_padding must be 0 with padding={padding!r}. Received {args}.")
        for i, k, s, d in zip(sizes, kernel, strides, dilations):
            span = d * (k - 1) + 1
            out.append(i * s if padding == "same" else i * s + max(span - s, 0))
        return _unwrap(tuple(out), size)
    pads = ntuple(padding, n, "padding", minimum=0)
    for i, k, s, d, p, e in zip(sizes, kernel, strides, dilations, pads, extra):
        if e >= max(s, d):
            raise ShapeError(
                f"output_padding must be smaller than stride or dilation. Received {args}."
            )
        o = (i - 1) * s - 2 * p + d * (k - 1) + e + 1
        if o < 1:
            raise ShapeError(f"Transposed convolution output would be {o} (not positive). Received {args}.")
        out.append(o)
    return _unwrap(tuple(out), size)


class ReceptiveField(NamedTuple):
    """How much of the input one output position sees (``size``) and how far apart neighbouring
    output positions are in input pixels (``jump``), one entry per spatial dimension."""

    size: tuple[int, ...]
    jump: tuple[int, ...]

    def step(self, kernel_size: Size = 1, stride: Size = 1, dilation: Size = 1) -> ReceptiveField:
        """The receptive field after one more conv/pool layer.

        ``size' = size + d·(k − 1)·jump`` and ``jump' = jump·s``.

        Examples:
            >>> ReceptiveField((1, 1), (1, 1)).step(3).step(2, 2).step(3)
            ReceptiveField(size=(8, 8), jump=(2, 2))
        """
        n = len(self.size)
        k = ntuple(kernel_size, n, "kernel_size")
        s = ntuple(stride, n, "stride")
        d = ntuple(dilation, n, "dilation")
        return ReceptiveField(
            tuple(r + di * (ki - 1) * j for r, ki, di, j in zip(self.size, k, d, self.jump)),
            tuple(j * si for j, si in zip(self.jump, s)),
        )

    @classmethod
    def identity(cls, ndim: int) -> ReceptiveField:
        """One input pixel: size 1, jump 1 in each of ``ndim`` dimensions."""
        return cls((1,) * ndim, (1,) * ndim)


def receptive_fields(layers: Sequence[Sequence[Size]], ndim: int = 2) -> list[ReceptiveField]:
    """Receptive field after each layer of a chain.

    Args:
        layers: One ``(kernel_size, stride)`` or ``(kernel_size, stride, dilation)`` per layer.
        ndim: Number of spatial dimensions.

    Examples:
        >>> [rf.size[0] for rf in receptive_fields([(3, 1), (3, 1), (2, 2), (3, 1)], ndim=1)]
        [3, 5, 6, 10]
    """
    rf = ReceptiveField.identity(ndim)
    out = []
    for i, layer in enumerate(layers):
        if not 2 <= len(layer) <= 3:
            raise ShapeError(
                "each layer must be (kernel_size, stride) or (kernel_size, stride, dilation). "
                f"Received layers[{i}]={layer!r}."
            )
        rf = rf.step(*layer)
        out.append(rf)
    return out


def describe_conv_size(
    size: Size, kernel_size: Size, stride: Size = 1, padding: Padding = "valid", dilation: Size = 1
) -> list[str]:
    """The output-size derivation of :func:`conv_output_size` in words, one line per distinct dimension.

    Examples:
        >>> print(*describe_conv_size(28, 5), sep="\\n")
        28 → floor((28 + 0 + 0 − 1·(5−1) − 1) / 1) + 1 = 24
        >>> print(*describe_conv_size((28, 28), 5, stride=2, padding="same"), sep="\\n")
        28 → ceil(28 / 2) = 14 ('same', TensorFlow rule: pad (1, 2))
    """
    n, sizes, kernel, strides, dilations = _geometry(size, kernel_size, stride, dilation)
    outs = conv_output_size(sizes, kernel, strides, padding, dilations)
    pads = _pads(sizes, kernel, strides, dilations, padding, n)
    lines: list[str] = []
    for i, k, s, d, (lo, hi), o in zip(sizes, kernel, strides, dilations, pads, outs):
        if padding in ("same", "causal"):
            name = "TensorFlow rule" if padding == "same" else "zeros at the start"
            line = f"{i} → ceil({i} / {s}) = {o} ({padding!r}, {name}: pad ({lo}, {hi}))"
        else:
            line = f"{i} → floor(({i} + {lo} + {hi} − {d}·({k}−1) − 1) / {s}) + 1 = {o}"
        if line not in lines:
            lines.append(line)
    return lines


def describe_pool_size(
    size: Size,
    kernel_size: Size,
    stride: Size | None = None,
    padding: Padding = 0,
    dilation: Size = 1,
    ceil_mode: bool = False,
) -> list[str]:
    """The output-size derivation of :func:`pool_output_size` in words, one line per distinct dimension.

    Examples:
        >>> print(*describe_pool_size((7, 7), 2, ceil_mode=True), sep="\\n")
        7 → ceil((7 + 2·0 − 1·(2−1) − 1) / 2) + 1 = 4
    """
    if isinstance(padding, str):
        return describe_conv_size(size, kernel_size, kernel_size if stride is None else stride, padding,
                                  dilation)
    n, sizes, kernel, strides, dilations = _geometry(size, kernel_size, stride, dilation)
    pads = ntuple(padding, n, "padding", minimum=0)
    outs = pool_output_size(sizes, kernel, strides, pads, dilations, ceil_mode)
    rounding = "ceil" if ceil_mode else "floor"
    lines: list[str] = []
    for i, k, s, d, p, o in zip(sizes, kernel, strides, dilations, pads, outs):
        line = f"{i} → {rounding}(({i} + 2·{p} − {d}·({k}−1) − 1) / {s}) + 1 = {o}"
        if line not in lines:
            lines.append(line)
    return lines
