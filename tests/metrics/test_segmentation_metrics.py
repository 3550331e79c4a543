"""Segmentation metrics against a confusion matrix and IoUs counted with numpy loops, pixel by pixel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnnkit.metrics as metrics
from cnnkit import ShapeError
from cnnkit.masking import pad_batch
from cnnkit.metrics import SegmentationMetrics, confusion_matrix, iou, mean_iou


def loop_confusion(pred, true, num_classes, left_out=(-100,)):
    """Confusion matrix by visiting every pixel (numpy arrays of equal shape)."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for p, t in zip(pred.reshape(-1).tolist(), true.reshape(-1).tolist()):
        if t in left_out:
            continue
        cm[t, p] += 1
    return cm


def loop_iou(cm):
    out = []
    for c in range(cm.shape[0]):
        tp = cm[c, c]
        fp = sum(cm[r, c] for r in range(cm.shape[0]) if r != c)
        fn = sum(cm[c, k] for k in range(cm.shape[0]) if k != c)
        out.append(tp / (tp + fp + fn) if tp + fp + fn else math.nan)
    return out


def random_data(seed, n=3, c=5, spatial=(6, 7)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((n, c, *spatial), generator=g)
    target = torch.randint(0, c, (n, *spatial), generator=g)
    target = torch.where(torch.rand(target.shape, generator=g) < 0.15, 255, target)
    target.view(-1)[:4] = -100
    return logits, target


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("spatial", [(11,), (6, 7), (3, 4, 5)])
def test_confusion_and_iou_against_loops(seed, spatial):
    logits, target = random_data(seed, spatial=spatial)
    pred = logits.argmax(dim=1)
    expected = loop_confusion(pred.numpy(), target.numpy(), 5, left_out=(-100, 255))
    got = confusion_matrix(logits, target, 5, ignore_index=255)
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), expected)
    np.testing.assert_array_equal(confusion_matrix(pred, target, 5, ignore_index=255).numpy(), expected)
    np.testing.assert_allclose(iou(got).numpy(), loop_iou(expected), rtol=1e-6)
    assert mean_iou(got).item() == pytest.approx(np.nanmean(loop_iou(expected)), rel=1e-6)


def test_absent_classes_are_nan_and_left_out_of_the_mean():
    pred = torch.tensor([[0, 0, 1, 1, 3]])
    true = torch.tensor([[0, 1, 1, 1, 0]])
    cm = confusion_matrix(pred, true, 4)
    # class 2: never true nor predicted -> NaN; class 3: predicted once, never true -> 0.
    expected = [1 / 3, 2 / 3, math.nan, 0.0]
    np.testing.assert_allclose(iou(cm).numpy(), expected, rtol=1e-6)
    assert mean_iou(cm).item() == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_metric_accumulates_over_batches_and_resets():
    metric = SegmentationMetrics(num_classes=5, ignore_index=255)
    total = np.zeros((5, 5), dtype=np.int64)
    for seed in range(3):
        logits, target = random_data(seed)
        metric.update(logits, target)
        total += loop_confusion(logits.argmax(1).numpy(), target.numpy(), 5, left_out=(-100, 255))
    result = metric.compute()
    np.testing.assert_array_equal(result["confusion_matrix"].numpy(), total)
    np.testing.assert_allclose(result["iou"].numpy(), loop_iou(total), rtol=1e-6)
    assert result["mean_iou"].item() == pytest.approx(np.nanmean(loop_iou(total)), rel=1e-6)
    assert result["pixel_accuracy"].item() == pytest.approx(np.trace(total) / total.sum(), rel=1e-6)
    metric.reset()
    with pytest.warns(UserWarning, match="called before the ``update`` method"):
        empty = metric.compute()
    assert empty["confusion_matrix"].sum() == 0
    assert math.isnan(empty["pixel_accuracy"].item())


def test_agrees_with_torchmetrics_jaccard_on_present_classes():
    from torchmetrics.classification import MulticlassJaccardIndex

    logits, target = random_data(7)
    target = torch.where(target == -100, 255, target)  # torchmetrics has one ignore_index
    reference = MulticlassJaccardIndex(num_classes=5, average=None, ignore_index=255)(logits, target)
    ours = iou(confusion_matrix(logits, target, 5, ignore_index=255))
    torch.testing.assert_close(ours, reference)


def test_padded_batch_predictions_ignore_padding():
    g = torch.Generator().manual_seed(3)
    samples = [torch.randn(4, 3, 5, generator=g), torch.randn(4, 6, 2, generator=g)]
    labels = [torch.randint(0, 4, s.shape[1:], generator=g) for s in samples]
    batch = pad_batch(samples)
    target = torch.zeros((2, *batch.canvas), dtype=torch.long)  # padding labelled 0 on purpose
    for n, y in enumerate(labels):
        target[n, : y.shape[0], : y.shape[1]] = y
    expected = sum(loop_confusion(s.argmax(0).numpy(), y.numpy(), 4) for s, y in zip(samples, labels))
    np.testing.assert_array_equal(confusion_matrix(batch, target, 4).numpy(), expected)


def test_one_hot_targets_with_unlabelled_pixels():
    logits, target = random_data(5)
    labelled = (target >= 0) & (target < 5)
    hot = F.one_hot(torch.where(labelled, target, 0), 5).movedim(-1, 1).float() * labelled.unsqueeze(1)
    expected = loop_confusion(logits.argmax(1).numpy(), target.numpy(), 5, left_out=(-100, 255))
    np.testing.assert_array_equal(confusion_matrix(logits, hot, 5).numpy(), expected)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nan_scores_at_counted_pixels_are_an_error_not_class_0(value):
    """An all-NaN network scored mean IoU 0.167 (every pixel arg-maxed to class 0); now it is refused."""
    target = torch.tensor([[[0, 1, 2], [2, 1, 0]]])
    nan_net = torch.full((1, 3, 2, 3), value)
    with pytest.raises(ShapeError, match=r"preds must be finite at counted pixels.*Received 6 counted pixel\(s\) "
                                         r"of preds \(shape \(1, 3, 2, 3\)\)"):
        confusion_matrix(nan_net, target, 3)
    metric = SegmentationMetrics(3)
    with pytest.raises(ShapeError, match=r"Received 6 counted pixel"):
        metric.update(nan_net, target)
    assert int(metric.confmat.sum()) == 0  # nothing was counted


def test_nan_scores_at_left_out_pixels_are_not_read():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(1, 3, 2, 3, generator=g)
    target = torch.tensor([[[0, 1, 2], [-100, 1, 255]]])
    dirty = scores.clone()
    dirty[0, :, 1, 0] = math.nan
    dirty[0, 1, 1, 2] = math.inf
    expected = loop_confusion(scores.argmax(1).numpy(), target.numpy(), 3, left_out=(-100, 255))
    np.testing.assert_array_equal(confusion_matrix(dirty, target, 3, ignore_index=255).numpy(), expected)
    # padding of a PaddedBatch too
    batch = pad_batch([torch.randn(3, 2, 2, generator=g), torch.randn(3, 1, 3, generator=g)])
    labels = torch.zeros(2, 2, 3, dtype=torch.long)
    clean = confusion_matrix(batch, labels, 3)
    batch.data[~batch.mask().expand_as(batch.data)] = math.nan
    assert torch.equal(confusion_matrix(batch, labels, 3), clean)


def test_errors():
    logits, target = random_data(0)
    with pytest.raises(ShapeError, match=r"target values must be class indices in \[0, 5\).*Received a value 255"):
        confusion_matrix(logits, target, 5)
    with pytest.raises(ShapeError, match=r"preds must be scores \(N, C, \*spatial\) with C = num_classes = 4"):
        confusion_matrix(logits, target, 4, ignore_index=255)
    with pytest.raises(ShapeError, match=r"preds labels must lie in \[0, 5\).*Received a value 7"):
        confusion_matrix(torch.full((3, 6, 7), 7), target, 5, ignore_index=255)
    with pytest.raises(ShapeError, match=r"target must be integer labels \(3, 6, 7\).*Received target of shape "
                       r"\(3, 7, 6\)"):
        confusion_matrix(logits, target.transpose(1, 2), 5, ignore_index=255)
    with pytest.raises(ShapeError, match=r"num_classes must be an integer >= 1\. Received num_classes=0"):
        SegmentationMetrics(num_classes=0)
    with pytest.raises(ShapeError, match=r"confmat must be a square \(C, C\) tensor\. Received \(2, 3\)"):
        iou(torch.zeros(2, 3))


def test_public_names():
    for name in ["SegmentationMetrics", "confusion_matrix", "iou", "mean_iou"]:
        assert name in metrics.__all__
        assert hasattr(metrics, name)
