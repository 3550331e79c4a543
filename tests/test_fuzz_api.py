"""Fuzz the public API with invalid arguments: every outcome must be a cnnkit error, never a raw one.

Each entry of ``CALLS`` is a public callable with a valid set of arguments and, for each argument, its *kind*
(a positive int, a flag, a choice, a tensor of some shape, ...). Hypothesis picks a call, an argument and a
value drawn from that kind's invalid values (wrong types, zero or negative sizes, bools for ints, NaN and inf
floats, wrong shapes and dtypes), and the call must raise a :class:`~cnnkit.CnnkitError` subclass: not a
``TypeError`` / ``ZeroDivisionError`` / ``RuntimeError`` from deep inside, and not succeed silently. The valid
call itself is checked to succeed, so that each refusal is caused by the one argument replaced.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnkit.data import RareClassCrops, Standardized
from cnnkit.errors import CnnkitError
from cnnkit.losses import (
    DiceLoss,
    FocalLoss,
    PixelCrossEntropy,
    class_weights,
    dice_loss,
    focal_loss,
    pixel_cross_entropy,
)
from cnnkit.masking import (
    BucketBatchSampler,
    PaddedBatch,
    PartialConv1d,
    PartialConv2d,
    PartialConv3d,
    collate_padded,
    pad_batch,
    padding_fraction,
    partial_conv,
)
from cnnkit.metrics import SegmentationMetrics, confusion_matrix, iou
from cnnkit.nn import ConvLSTM1d, ConvLSTM2d, LocallyConnected1d, LocallyConnected2d, conv_lstm_nd
from cnnkit.nn.locally_connected import locally_connected_nd

NAN, INF = math.nan, math.inf


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


OPAQUE = _Opaque()
# Invalid values by kind of argument. ``{n}`` kinds depend on the number of spatial dimensions.
BAD_POSITIVE_INT = [0, -1, -7, True, False, 1.5, 2.0, NAN, INF, "3", None, OPAQUE]
BAD_NONNEG_INT = [-1, True, 1.5, NAN, "0", None, OPAQUE]
BAD_FLAG = ["yes", "", 1, 0, 1.0, None, NAN, OPAQUE]
BAD_CHOICE = ["smae", "", "SAME", 3, None, True, OPAQUE]
BAD_NONNEG_FLOAT = [-0.5, -INF, NAN, INF, "1", None, True, OPAQUE]
BAD_UNIT_FLOAT = [-0.1, 1.5, NAN, INF, "0.5", None, True, OPAQUE]
BAD_OPTIONAL_INT = [1.5, NAN, "255", True, OPAQUE]


def bad_ntuple(n: int) -> list:
    return [0, -2, True, 1.5, NAN, "3", None, OPAQUE, (3,) * (n + 1), (0,) * n, (-1,) * n, (1.5,) * n,
            (True,) * n, (NAN,) * n, ()]


def bad_padding(n: int) -> list:
    return ["smae", "", -1, 1.5, True, NAN, None, OPAQUE, (1,) * (n + 1), (-1,) * n]


@dataclass
class Call:
    """``fn(*args, **kwargs)`` is valid; ``bad[name]`` lists invalid values for the argument ``name``."""

    name: str
    fn: Callable
    kwargs: dict
    bad: dict = field(default_factory=dict)

    def __call__(self, **override):
        return self.fn(**{**self.kwargs, **override})


g = torch.Generator().manual_seed(0)
LOGITS = torch.randn(2, 3, 4, 5, generator=g)
LABELS = torch.randint(0, 3, (2, 4, 5), generator=g)
BAD_LOGITS = [None, OPAQUE, [[0.0]], LABELS, torch.zeros(3), torch.zeros(2, 3, 4, 5, dtype=torch.complex64),
              torch.full((2, 3, 4, 5), NAN), torch.full((2, 3, 4, 5), INF), torch.zeros(2, 3, 5, 4)]
BAD_TARGET = [None, OPAQUE, LABELS.float().unsqueeze(1), LABELS.transpose(1, 2), LABELS + 3, LABELS - 5,
              torch.zeros(2, 3, 4, 5, dtype=torch.complex64), torch.full((2, 3, 4, 5), NAN), torch.zeros(2, 4)]
BAD_CLASS_WEIGHT = [[1.0, 2.0], [1.0, -1.0, 1.0], [1.0, NAN, 1.0], [1.0, INF, 1.0], "abc", OPAQUE, 3.0, [[1.0] * 3],
                    torch.ones(3, 1), [], [1.0, "x", 2.0]]
BAD_SAMPLE_WEIGHT = [torch.ones(5), torch.ones(2, 4, 5, 1), -torch.ones(2, 1, 1), torch.full((2, 1, 1), NAN),
                     torch.full((2, 1, 1), INF), [1.0, 2.0], OPAQUE]
IMAGES = [torch.ones(2, 3, 4), torch.ones(2, 5, 2)]
BAD_IMAGES = [[], None, OPAQUE, [torch.ones(3, 4), torch.ones(2, 3, 4)], [torch.ones(2, 3, 4), torch.ones(3, 3, 4)],
              [torch.ones(2, 3, 4), torch.ones(2, 3, 4, dtype=torch.float64)], [torch.ones(2, 0, 4)],
              [torch.ones(2)], [torch.ones(1, 1, 1, 1, 1, 1)], [torch.ones(2, 3, 4), "x"], ["x"]]
SIZES = [(30, 40), (120, 90), (32, 41), (118, 95)]
BAD_SIZES = [[], None, "abc", OPAQUE, [(0, 3)], [(-1, 2)], [(1.5, 2)], [(1, 2), (1, 2, 3)], [True, 2], [(NAN, 1)],
             torch.tensor([[1.5, 2.0]]), torch.zeros(0, 2, dtype=torch.long)]


class _Pairs:
    """A tiny data set of (image, label) pairs for the data-set wrappers."""

    def __init__(self) -> None:
        self.items = [(torch.randn(2, 6, 6, generator=g), torch.randint(0, 3, (6, 6), generator=g)) for _ in range(3)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


PAIRS = _Pairs()


def _layer_calls() -> list[Call]:
    calls = []
    for cls, n in ((ConvLSTM1d, 1), (ConvLSTM2d, 2)):
        calls.append(Call(cls.__name__, cls, dict(in_channels=2, hidden_channels=3, kernel_size=3), {
            "in_channels": BAD_POSITIVE_INT, "hidden_channels": BAD_POSITIVE_INT, "kernel_size": bad_ntuple(n),
            "stride": bad_ntuple(n), "dilation": bad_ntuple(n), "padding": bad_padding(n), "bias": BAD_FLAG,
            "bidirectional": BAD_FLAG, "num_layers": BAD_POSITIVE_INT, "dropout": BAD_UNIT_FLOAT,
            "recurrent_activation": BAD_CHOICE, "activation": BAD_CHOICE, "init": BAD_CHOICE,
        }))
    lstm = ConvLSTM2d(2, 3, 3)
    x = torch.randn(2, 4, 2, 5, 5, generator=g)
    calls.append(Call("ConvLSTM2d.forward", lambda input, mask: lstm(input, mask=mask),
                      dict(input=x, mask=torch.ones(2, 4, 5, 5, dtype=torch.bool)), {
        "input": [None, OPAQUE, torch.randn(2, 4, 3, 5, 5), torch.randn(4, 2, 5, 5), torch.randn(2, 4, 2, 5)],
        "mask": [torch.ones(2, 4, 5, 5), torch.ones(2, 4, 4, 4, dtype=torch.bool), torch.ones(4, 2, dtype=torch.bool),
                 "all", OPAQUE, torch.ones(2, dtype=torch.bool)],
    }))
    calls.append(Call("conv_lstm_nd", conv_lstm_nd, dict(input=x, weight_ih=torch.randn(12, 2, 3, 3),
                                                         weight_hh=torch.randn(12, 3, 3, 3)), {
        "input": [None, OPAQUE, torch.randn(2, 4, 2), torch.randn(2, 4, 3, 5, 5)],
        "weight_ih": [torch.randn(11, 2, 3, 3), torch.randn(12, 2, 3), torch.randn(12, 3, 3, 3)],
        "weight_hh": [torch.randn(12, 2, 3, 3), torch.randn(12, 3, 3)],
        "stride": bad_ntuple(2), "padding": bad_padding(2), "reverse": BAD_FLAG,
        "recurrent_activation": BAD_CHOICE, "activation": BAD_CHOICE,
    }))
    for cls, n in ((LocallyConnected1d, 1), (LocallyConnected2d, 2)):
        calls.append(Call(cls.__name__, cls, dict(in_channels=2, out_channels=3, kernel_size=3, input_size=6), {
            "in_channels": BAD_POSITIVE_INT, "out_channels": BAD_POSITIVE_INT, "kernel_size": bad_ntuple(n),
            "input_size": [*bad_ntuple(n), 2], "stride": bad_ntuple(n), "dilation": bad_ntuple(n),
            "padding": bad_padding(n), "bias": BAD_FLAG, "init": BAD_CHOICE,
        }))
    lc = LocallyConnected2d(2, 3, 3, input_size=6)
    calls.append(Call("LocallyConnected2d.forward", lambda input: lc(input), dict(input=torch.randn(2, 2, 6, 6)), {
        "input": [None, OPAQUE, torch.randn(2, 3, 6, 6), torch.randn(2, 2, 7, 6), torch.randn(2, 6, 6)],
    }))
    calls.append(Call("locally_connected_nd", locally_connected_nd,
                      dict(input=torch.randn(2, 2, 6, 6), weight=torch.randn(16, 18, 3), kernel_size=3), {
        "input": [None, OPAQUE, torch.randn(2, 3, 6, 6), torch.randn(2)],
        "weight": [torch.randn(16, 18), torch.randn(15, 18, 3), torch.randn(16, 17, 3)],
        "bias": [torch.randn(3), torch.randn(3, 4, 5)],
        "kernel_size": [*bad_ntuple(2), 7], "stride": bad_ntuple(2), "padding": bad_padding(2),
    }))
    for cls, n in ((PartialConv1d, 1), (PartialConv2d, 2), (PartialConv3d, 3)):
        calls.append(Call(cls.__name__, cls, dict(in_channels=2, out_channels=4, kernel_size=3), {
            "in_channels": BAD_POSITIVE_INT, "out_channels": BAD_POSITIVE_INT, "kernel_size": bad_ntuple(n),
            "stride": bad_ntuple(n), "dilation": bad_ntuple(n), "padding": bad_padding(n), "bias": BAD_FLAG,
            "groups": [*BAD_POSITIVE_INT, 3], "padding_mode": BAD_CHOICE, "multi_channel": BAD_FLAG,
        }))
    calls.append(Call("partial_conv", partial_conv, dict(input=torch.randn(2, 2, 5, 5), mask=torch.ones(2, 1, 5, 5),
                                                         weight=torch.randn(4, 2, 3, 3)), {
        "input": [None, OPAQUE, torch.randn(2, 3, 5, 5), torch.randn(2, 5, 5)],
        "mask": [None, OPAQUE, torch.ones(2, 3, 5, 5), torch.ones(2, 1, 4, 5),
                 torch.ones(2, 1, 5, 5, dtype=torch.long)],
        "weight": [None, torch.randn(4, 2), torch.randn(4, 3, 3, 3)],
        "stride": bad_ntuple(2), "padding": bad_padding(2), "groups": [*BAD_POSITIVE_INT, 3],
        "multi_channel": [v for v in BAD_FLAG if v is not None],  # None: read it from the mask
    }))
    return calls


def _loss_calls() -> list[Call]:
    common = {"logits": BAD_LOGITS, "target": BAD_TARGET, "class_weight": BAD_CLASS_WEIGHT,
              "ignore_index": BAD_OPTIONAL_INT, "sample_weight": BAD_SAMPLE_WEIGHT, "reduction": BAD_CHOICE}
    calls = [
        Call("pixel_cross_entropy", pixel_cross_entropy, dict(logits=LOGITS, target=LABELS), common),
        Call("focal_loss", focal_loss, dict(logits=LOGITS, target=LABELS), {**common, "gamma": BAD_NONNEG_FLOAT}),
        Call("dice_loss", dice_loss, dict(logits=LOGITS, target=LABELS),
             {**common, "smooth": BAD_NONNEG_FLOAT, "per_sample": BAD_FLAG}),
    ]
    module = {"class_weight": BAD_CLASS_WEIGHT[1:], "ignore_index": BAD_OPTIONAL_INT, "reduction": BAD_CHOICE}
    calls += [
        Call("PixelCrossEntropy", PixelCrossEntropy, {}, module),
        Call("FocalLoss", FocalLoss, {}, {**module, "gamma": BAD_NONNEG_FLOAT}),
        Call("DiceLoss", DiceLoss, {}, {**module, "smooth": BAD_NONNEG_FLOAT, "per_sample": BAD_FLAG}),
        Call("class_weights", class_weights, dict(labels=LABELS, num_classes=3), {
            "labels": [None, OPAQUE, LABELS.float(), LABELS + 3, torch.tensor(1), [1, 2], ["x"],
                       torch.full((2, 2), -100)],
            "num_classes": BAD_POSITIVE_INT, "method": BAD_CHOICE, "ignore_index": BAD_OPTIONAL_INT,
            "beta": [*BAD_UNIT_FLOAT, 1.0],
        }),
        Call("confusion_matrix", confusion_matrix, dict(preds=LOGITS, target=LABELS, num_classes=3), {
            "preds": [*(v for v in BAD_LOGITS[:-1] if v is not LABELS), LABELS + 3,
                      torch.zeros(2, 4, 5, dtype=torch.bool)],
            "target": BAD_TARGET, "num_classes": [*BAD_POSITIVE_INT, 4], "ignore_index": BAD_OPTIONAL_INT,
        }),
        Call("SegmentationMetrics", SegmentationMetrics, dict(num_classes=3), {
            "num_classes": BAD_POSITIVE_INT, "ignore_index": BAD_OPTIONAL_INT,
        }),
        Call("iou", iou, dict(confmat=torch.eye(3, dtype=torch.long)), {
            "confmat": [None, OPAQUE, torch.ones(3), torch.ones(2, 3), [[1, 0], [0, 1]]],
        }),
    ]
    return calls


def _batch_calls() -> list[Call]:
    data = torch.zeros(2, 1, 4, 4)
    return [
        Call("pad_batch", pad_batch, dict(images=IMAGES), {
            "images": BAD_IMAGES, "multiple_of": bad_ntuple(2), "value": ["0", None, OPAQUE, 1j],
        }),
        Call("pad_batch(int)", pad_batch, dict(images=[t.long() for t in IMAGES]), {
            "value": [0.5, NAN, INF, 2.0**70, "0"],
        }),
        Call("PaddedBatch", PaddedBatch, dict(data=data, sizes=torch.tensor([[4, 4], [2, 3]])), {
            "data": [None, OPAQUE, torch.zeros(2, 1, 4), torch.zeros(3, 1, 4, 4), torch.zeros(4)],
            "sizes": [None, OPAQUE, torch.tensor([[-1, 4], [2, 3]]), torch.tensor([[5, 4], [2, 3]]),
                      torch.tensor([[4.0, 4.0], [2.0, 3.0]]), torch.tensor([4, 4]), torch.tensor([[4, 4]]),
                      [[4, 4], [2, 3]]],
        }),
        Call("collate_padded", collate_padded,
             dict(samples=[(torch.ones(1, 2, 2), torch.zeros(2, 2, dtype=torch.long))] * 2), {
            "samples": [[], None,
                        [(torch.ones(1, 2, 2), torch.zeros(2, 2, dtype=torch.long)), (torch.ones(1, 2, 2),
                                                                                      torch.full((2, 2), 0.7))],
                        [(torch.ones(1, 2, 2), torch.zeros(2, 2, dtype=torch.uint8))] * 2],
            "label_pad_value": [0.5, NAN, "x", None, 2.0**70],
        }),
        Call("BucketBatchSampler", BucketBatchSampler, dict(sizes=SIZES, batch_size=2), {
            "sizes": BAD_SIZES, "batch_size": BAD_POSITIVE_INT, "shuffle": BAD_FLAG, "drop_last": BAD_FLAG,
            "megabatch": BAD_POSITIVE_INT,
        }),
        Call("padding_fraction", padding_fraction, dict(batches=[[0, 1], [2, 3]], sizes=SIZES), {
            "batches": [[], [[]], [[0, 9]], [[-1]], [[0.5]], None, OPAQUE],
            "sizes": BAD_SIZES,
        }),
        Call("RareClassCrops", RareClassCrops, dict(dataset=PAIRS, crop_size=4, class_ratios={1: 0.5}), {
            "dataset": [None, 3, OPAQUE], "crop_size": [*BAD_POSITIVE_INT[:-1], (4, 0), (4, 4, 4, 4), ()],
            "class_ratios": [None, [0.5], {-1: 0.5}, {1.5: 0.5}, {1: 1.5}, {1: NAN}, {1: 0.7, 2: 0.7}, {1: "x"}],
            "jitter": [-1, 1.5, True, "2", (1, 2, 3), NAN], "num_crops": BAD_POSITIVE_INT,
        }),
        Call("Standardized", Standardized, dict(dataset=PAIRS, mean=[0.0, 0.0], std=[1.0, 1.0]), {
            "mean": [[NAN, 0.0], [INF, 0.0], "ab", [[0.0], [0.0, 1.0]], OPAQUE, [0.0]],
            "std": [[0.0, 1.0], [-1.0, 1.0], [NAN, 1.0], [INF, 1.0], "ab", OPAQUE],
            "nodata": ["x", True, OPAQUE], "multiple_of": BAD_POSITIVE_INT,
        }),
    ]


CALLS = _layer_calls() + _loss_calls() + _batch_calls()
CASES = [(call, name, i) for call in CALLS for name, values in call.bad.items() for i in range(len(values))]


@pytest.mark.parametrize("call", CALLS, ids=lambda c: c.name)
def test_the_valid_call_succeeds(call):
    call()


def _outcome(call: Call, override: dict) -> str | None:
    """None if ``call(**override)`` raised a CnnkitError, else what happened instead."""
    try:
        result = call(**override)
    except CnnkitError:
        return None
    except Exception as error:
        return f"{call.name}({override!r}) raised {type(error).__name__}: {str(error)[:200]}"
    return f"{call.name}({override!r}) was accepted (returned {type(result).__name__})"


def test_every_invalid_argument_alone_raises_a_cnnkit_error():
    """Each listed invalid value, one argument at a time (all {len(CASES)} cases, in one pass)."""
    failures = [f for call, name, i in CASES if (f := _outcome(call, {name: call.bad[name][i]})) is not None]
    assert not failures, f"{len(failures)} of {len(CASES)} cases:\n" + "\n".join(failures)


@st.composite
def several_bad_arguments(draw):
    call = draw(st.sampled_from(CALLS))
    names = draw(st.lists(st.sampled_from(sorted(call.bad)), min_size=1, max_size=3, unique=True))
    return call, {name: draw(st.sampled_from(call.bad[name])) for name in names}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=several_bad_arguments())
def test_several_invalid_arguments_at_once_raise_a_cnnkit_error(case):
    """Up to three invalid arguments together: still one cnnkit error, whichever check comes first."""
    call, override = case
    failure = _outcome(call, override)
    assert failure is None, failure
