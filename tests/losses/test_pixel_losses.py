"""Pixel-wise losses against independent references: ``F.cross_entropy``, per-pixel Python loops and the
published formulas written out here; plus the invariances (ignored / unlabelled / padded pixels) and errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import cnnkit.losses as losses
from cnnkit import ShapeError
from cnnkit.losses import DiceLoss, FocalLoss, PixelCrossEntropy, dice_loss, focal_loss, pixel_cross_entropy
from cnnkit.masking import pad_batch

D64 = torch.float64
FUNCTIONS = [pixel_cross_entropy, focal_loss, dice_loss]


def random_case(spatial=(5, 6), n=2, c=4, dtype=D64, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((n, c, *spatial), generator=g, dtype=dtype)
    target = torch.randint(0, c, (n, *spatial), generator=g)
    return logits, target


# --- cross-entropy equals PyTorch's where both apply -------------------------------------------------------


@pytest.mark.parametrize("spatial", [(7,), (5, 6), (3, 4, 5)])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_equals_torch(spatial, weighted, reduction):
    logits, target = random_case(spatial)
    target[0].view(-1)[:3] = 255
    target[1].view(-1)[-2:] = -100
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=D64) if weighted else None
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    ours = pixel_cross_entropy(a, target, class_weight=weight, ignore_index=255, reduction=reduction)
    # PyTorch has one ignore_index: map our two ignored values onto it for the reference.
    ref_target = torch.where(target == -100, 255, target)
    ref = F.cross_entropy(b, ref_target, weight=weight, ignore_index=255, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)


def test_minus_100_is_ignored_by_default_like_torch():
    logits, target = random_case()
    target[:, 0] = -100
    torch.testing.assert_close(pixel_cross_entropy(logits, target), F.cross_entropy(logits, target))


def test_one_hot_target_equals_integer_target():
    logits, target = random_case()
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=D64)
    hot = F.one_hot(target, 4).movedim(-1, 1).to(D64)
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(
            pixel_cross_entropy(logits, hot, class_weight=weight, reduction=reduction),
            F.cross_entropy(logits, target, weight=weight, reduction=reduction),
        )


def test_probability_target_without_weights_equals_torch():
    logits, _ = random_case()
    probs = torch.softmax(torch.randn(logits.shape, dtype=D64), dim=1)
    torch.testing.assert_close(pixel_cross_entropy(logits, probs), F.cross_entropy(logits, probs))


def test_all_zero_one_hot_pixels_equal_ignored_labels():
    logits, target = random_case()
    hot = F.one_hot(target, 4).movedim(-1, 1).to(D64)
    hot[0, :, 1, 2] = 0
    hot[1, :, 4, :] = 0
    labels = target.clone()
    labels[0, 1, 2] = -100
    labels[1, 4, :] = -100
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=D64)
    torch.testing.assert_close(
        pixel_cross_entropy(logits, hot, class_weight=weight),
        F.cross_entropy(logits, labels, weight=weight),
    )


# --- left-out pixels change neither the loss nor the gradient ------------------------------------------------


def _value_and_grad(fn, logits, target, **kwargs):
    x = logits.clone().requires_grad_()
    loss = fn(x, target, **kwargs)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("fn", FUNCTIONS)
@pytest.mark.parametrize("kind", ["ignore_index", "minus_100", "zero_one_hot"])
def test_left_out_pixels_do_not_matter(fn, kind):
    logits, target = random_case()
    left_out = torch.zeros(target.shape, dtype=torch.bool)
    left_out[0, 1:3, 2:5] = True
    left_out[1, 4, :] = True
    kwargs = {}
    if kind == "zero_one_hot":
        target = F.one_hot(target, 4).movedim(-1, 1).to(D64) * ~left_out.unsqueeze(1)
    elif kind == "ignore_index":
        target = torch.where(left_out, 7, target)
        kwargs["ignore_index"] = 7
    else:
        target = torch.where(left_out, -100, target)
    loss1, grad1 = _value_and_grad(fn, logits, target, **kwargs)
    changed = logits.clone()
    changed.masked_scatter_(left_out.unsqueeze(1).expand_as(logits), 100 * torch.randn(logits.shape, dtype=D64))
    loss2, grad2 = _value_and_grad(fn, changed, target, **kwargs)
    assert torch.equal(loss1, loss2)
    assert torch.equal(grad1, grad2)
    assert torch.equal(grad1[left_out.unsqueeze(1).expand_as(grad1)], torch.zeros(int(left_out.sum()) * 4, dtype=D64))


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_padded_batch_padding_does_not_matter_even_nan(fn):
    g = torch.Generator().manual_seed(1)
    samples = [torch.randn(3, 4, 6, generator=g, dtype=D64), torch.randn(3, 5, 2, generator=g, dtype=D64)]
    batch = pad_batch(samples)
    target = torch.randint(0, 3, (2, *batch.canvas), generator=g)
    mask = batch.mask()
    loss1, grad1 = _value_and_grad(lambda x, t: fn(type(batch)(x, batch.sizes), t), batch.data, target)
    dirty = torch.where(mask, batch.data, torch.nan)
    loss2, grad2 = _value_and_grad(lambda x, t: fn(type(batch)(x, batch.sizes), t), dirty, target)
    assert torch.equal(loss1, loss2)
    assert torch.equal(grad1, grad2)
    assert torch.equal(grad1 * ~mask, torch.zeros_like(grad1))


def test_padded_batch_equals_cross_entropy_of_the_samples_alone():
    g = torch.Generator().manual_seed(2)
    samples = [torch.randn(3, 4, 6, generator=g, dtype=D64), torch.randn(3, 5, 2, generator=g, dtype=D64)]
    labels = [torch.randint(0, 3, s.shape[1:], generator=g) for s in samples]
    batch = pad_batch(samples)
    target = torch.full((2, *batch.canvas), 1)  # padding labelled with a real class on purpose
    for n, y in enumerate(labels):
        target[n, : y.shape[0], : y.shape[1]] = y
    weight = torch.tensor([1.0, 3.0, 0.5], dtype=D64)
    flat_logits = torch.cat([s.reshape(3, -1).T for s in samples])
    flat_labels = torch.cat([y.reshape(-1) for y in labels])
    ref = F.cross_entropy(flat_logits, flat_labels, weight=weight)
    torch.testing.assert_close(pixel_cross_entropy(batch, target, class_weight=weight), ref)


# --- sample weights ---------------------------------------------------------------------------------------


def test_sample_weight_per_timestep_and_pixel_against_loop():
    n, c, t, h, w = 2, 3, 4, 2, 3
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(n, c, t, h, w, generator=g, dtype=D64)
    target = torch.randint(0, c, (n, t, h, w), generator=g)
    target[1, 2, 0, 0] = -100
    per_step = torch.rand(n, t, 1, 1, generator=g, dtype=D64)
    per_pixel = torch.rand(n, 1, h, w, generator=g, dtype=D64)
    weight = [0.5, 2.0, 1.5]
    num = den = 0.0
    for i in range(n):
        for s in range(t):
            for y in range(h):
                for x in range(w):
                    label = int(target[i, s, y, x])
                    if label == -100:
                        continue
                    scores = [float(logits[i, k, s, y, x]) for k in range(c)]
                    log_p = scores[label] - math.log(sum(math.exp(v) for v in scores))
                    wt = weight[label] * float(per_step[i, s, 0, 0]) * float(per_pixel[i, 0, y, x])
                    num += -wt * log_p
                    den += wt
    ours = pixel_cross_entropy(logits, target, class_weight=weight, sample_weight=per_step * per_pixel)
    assert ours.item() == pytest.approx(num / den, rel=1e-12)
    total = pixel_cross_entropy(logits, target, class_weight=weight, sample_weight=per_step * per_pixel,
                                reduction="sum")
    assert total.item() == pytest.approx(num, rel=1e-12)


def test_zero_sample_weight_masks_like_ignore():
    logits, target = random_case()
    keep = torch.ones(target.shape, dtype=D64)
    keep[0, 2:, :] = 0
    ignored = torch.where(keep == 0, -100, target)
    torch.testing.assert_close(pixel_cross_entropy(logits, target, sample_weight=keep),
                               F.cross_entropy(logits, ignored))


# --- empty batches ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_no_counted_pixel_gives_zero_and_zero_gradient(fn):
    logits, target = random_case()
    loss, grad = _value_and_grad(fn, logits, torch.full_like(target, -100))
    assert loss.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))
    loss, grad = _value_and_grad(fn, logits, target, sample_weight=torch.zeros(2, 1, 1, dtype=D64))
    assert loss.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


# --- focal -----------------------------------------------------------------------------------------------


def test_focal_gamma_zero_equals_cross_entropy():
    logits, target = random_case((3, 4, 5))
    target[0, 0] = 9
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=D64)
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(
            focal_loss(logits, target, gamma=0.0, class_weight=weight, ignore_index=9, reduction=reduction),
            F.cross_entropy(logits, target, weight=weight, ignore_index=9, reduction=reduction),
        )


def test_focal_against_formula():
    logits, target = random_case()
    alpha = torch.tensor([0.25, 0.75, 1.0, 0.5], dtype=D64)
    p = torch.softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    a = alpha[target]
    per_pixel = -a * (1 - p) ** 2 * torch.log(p)
    torch.testing.assert_close(focal_loss(logits, target, 2.0, class_weight=alpha, reduction="none"), per_pixel)
    torch.testing.assert_close(focal_loss(logits, target, 2.0, class_weight=alpha), per_pixel.sum() / a.sum())
    torch.testing.assert_close(focal_loss(logits, target, 2.0), (-(1 - p) ** 2 * torch.log(p)).mean())


def test_focal_small_gamma_keeps_finite_gradient_when_confident():
    logits = torch.tensor([[[60.0], [-60.0]]], requires_grad=True)
    focal_loss(logits, torch.tensor([[0]]), gamma=0.5).backward()
    assert torch.isfinite(logits.grad).all()


# --- Dice ------------------------------------------------------------------------------------------------


def hand_dice(logits, target, smooth, weight=None, per_sample=False, valid=None):
    """Soft Dice per class from the formula, with Python loops over samples and classes."""
    n, c = logits.shape[:2]
    p = torch.softmax(logits, dim=1)
    rows = []
    for i in range(n) if per_sample else [None]:
        row = []
        for k in range(c):
            inter = sp = st = 0.0
            for j in range(n) if i is None else [i]:
                m = torch.ones(target[j].shape, dtype=torch.bool) if valid is None else valid[j]
                pk = p[j, k][m]
                tk = (target[j][m] == k).to(D64)
                inter += float((pk * tk).sum())
                sp += float(pk.sum())
                st += float(tk.sum())
            row.append(1 - (2 * inter + smooth) / (sp + st + smooth) if sp + st + smooth > 0 else 0.0)
        rows.append(row)
    per_class = torch.tensor(rows if per_sample else rows[0], dtype=D64)
    w = torch.ones(c, dtype=D64) if weight is None else torch.as_tensor(weight, dtype=D64)
    return per_class, float((per_class * w).sum() / (w.sum() * (n if per_sample else 1)))


@pytest.mark.parametrize("smooth", [0.0, 1.0])
@pytest.mark.parametrize("per_sample", [False, True])
def test_dice_against_formula(smooth, per_sample):
    logits, target = random_case((4, 5), n=3, c=3)
    weight = [0.0, 1.0, 2.0]
    per_class, mean = hand_dice(logits, target, smooth, weight, per_sample)
    torch.testing.assert_close(
        dice_loss(logits, target, smooth=smooth, per_sample=per_sample, reduction="none"), per_class
    )
    got = dice_loss(logits, target, class_weight=weight, smooth=smooth, per_sample=per_sample)
    assert got.item() == pytest.approx(mean, rel=1e-12)


def test_dice_counts_only_valid_pixels():
    logits, target = random_case((4, 5), n=2, c=3)
    valid = torch.rand(target.shape, generator=torch.Generator().manual_seed(5)) > 0.3
    per_class, _ = hand_dice(logits, target, 1.0, valid=valid)
    got = dice_loss(logits, torch.where(valid, target, -100), reduction="none")
    torch.testing.assert_close(got, per_class)


def test_dice_absent_class_with_no_smooth_is_not_nan():
    inf = float("inf")
    logits = torch.tensor([[[0.0, 0.0], [-inf, -inf]]], dtype=D64)  # class 1: no target, no predicted mass
    loss = dice_loss(logits, torch.tensor([[0, 0]]), smooth=0.0, reduction="none")
    assert torch.isfinite(loss).all()
    assert loss[1].item() == 0.0


# --- modules, gradcheck ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "fn", "kwargs"),
    [
        (PixelCrossEntropy, pixel_cross_entropy, {"class_weight": [1.0, 2.0, 0.5, 1.0], "ignore_index": 3}),
        (FocalLoss, focal_loss, {"gamma": 1.5, "class_weight": [1.0, 2.0, 0.5, 1.0]}),
        (DiceLoss, dice_loss, {"class_weight": [0.0, 1.0, 1.0, 1.0], "smooth": 0.5, "per_sample": True}),
    ],
)
def test_module_equals_functional(module, fn, kwargs):
    logits, target = random_case()
    sw = torch.rand(2, 1, 6, dtype=D64)
    loss = module(**kwargs)
    torch.testing.assert_close(loss(logits, target, sw), fn(logits, target, sample_weight=sw, **kwargs))
    assert list(loss.state_dict()) == []  # the class weight is a constructor argument, not state
    assert loss.class_weight.dtype == torch.float32
    assert loss.to(D64).class_weight.dtype == D64


def test_module_repr_reads_like_constructor():
    assert repr(PixelCrossEntropy()) == "PixelCrossEntropy()"
    assert repr(PixelCrossEntropy([1, 2], ignore_index=0, reduction="sum")) == (
        "PixelCrossEntropy(class_weight=[1.0, 2.0], ignore_index=0, reduction='sum')"
    )
    assert repr(DiceLoss(smooth=0.0)) == "DiceLoss(smooth=0.0)"


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_gradcheck(fn):
    logits, target = random_case((3, 2), n=2, c=3)
    target[0, 0, 0] = -100
    sw = torch.rand(2, 3, 1, dtype=D64)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: fn(x, target, class_weight=[1.0, 2.0, 0.5], sample_weight=sw),
                                    (logits,))


# --- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", FUNCTIONS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_or_inf_at_ignored_pixels_changes_nothing(fn, value):
    """Selected, not multiplied: NaN/inf under ignored labels leaves the loss and every gradient as with
    zeros there (exactly), and equal to the loss of the counted pixels alone (F.cross_entropy for CE)."""
    logits, target = random_case()
    ignored = torch.zeros(target.shape, dtype=torch.bool)
    ignored[0, 1:3, 2:5] = True
    target = torch.where(ignored, -100, target)
    loss0, grad0 = _value_and_grad(fn, logits.masked_fill(ignored.unsqueeze(1), 0.0), target)
    loss, grad = _value_and_grad(fn, logits.masked_fill(ignored.unsqueeze(1), value), target)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert torch.equal(loss, loss0) and torch.equal(grad, grad0)
    if fn is pixel_cross_entropy:
        torch.testing.assert_close(loss, F.cross_entropy(logits, target))


@pytest.mark.parametrize("fn", FUNCTIONS)
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nan_or_inf_at_counted_pixels_is_an_error_with_the_count(fn, value):
    logits, target = random_case()  # (2, 4, 5, 6)
    bad = logits.clone()
    bad[0, 2, 1, 3] = value
    bad[1, :, 4, 0] = value
    with pytest.raises(ShapeError, match=r"logits must be finite at counted pixels.*Received 2 counted pixel\(s\) "
                                         r"of logits \(shape \(2, 4, 5, 6\)\).*first at \(n, \*spatial\)=\(0, 1, 3\)"):
        fn(bad, target)
    only_minus_inf = logits.clone()
    only_minus_inf[1, :, 0, 0] = -math.inf  # no finite maximum: softmax is NaN
    with pytest.raises(ShapeError, match=r"Received 1 counted pixel"):
        fn(only_minus_inf, target)
    # ...but the same pixels ignored are fine
    target = target.clone()
    target[0, 1, 3] = target[1, 4, 0] = -100
    assert torch.isfinite(fn(bad, target))


def test_minus_inf_at_some_classes_is_probability_zero():
    logits, target = random_case()
    logits[:, 3] = -math.inf
    target = target.clamp(max=2)
    torch.testing.assert_close(pixel_cross_entropy(logits, target), F.cross_entropy(logits[:, :3], target))


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_errors(fn):
    logits, target = random_case()
    with pytest.raises(ShapeError, match=r"target values must be class indices in \[0, 4\).*Received a value 4"):
        fn(logits, torch.where(target == 0, 4, target))
    with pytest.raises(ShapeError, match=r"Received a value -3"):
        fn(logits, torch.full_like(target, -3))
    with pytest.raises(ShapeError, match=r"class_weight must have one entry per class \(C = 4\)\. Received 3"):
        fn(logits, target, class_weight=[1.0, 2.0, 3.0])
    with pytest.raises(ShapeError, match=r"class_weight must be finite and >= 0\. Received class_weight=\[1.0, -1"):
        fn(logits, target, class_weight=[1.0, -1.0, 1.0, 1.0])
    with pytest.raises(ShapeError, match=r"target must be integer labels \(2, 5, 6\).*Received target of shape "
                       r"\(2, 6, 5\)"):
        fn(logits, target.transpose(1, 2))
    with pytest.raises(ShapeError, match=r"or one-hot/probabilities \(2, 4, 5, 6\).*Received target of "
                       r"shape \(2, 3, 5"):
        fn(logits, torch.zeros(2, 3, 5, 6, dtype=D64))
    with pytest.raises(ShapeError, match=r"probabilities must be finite and >= 0"):
        fn(logits, -F.one_hot(target, 4).movedim(-1, 1).to(D64))
    with pytest.raises(ShapeError, match=r"sample_weight must broadcast to \(N, \*spatial\) = \(2, 5, 6\).*\(6,\)"):
        fn(logits, target, sample_weight=torch.ones(6, dtype=D64))
    with pytest.raises(ShapeError, match=r"sample_weight must be finite and >= 0\. Received a value -1"):
        fn(logits, target, sample_weight=-torch.ones(2, 1, 1, dtype=D64))
    with pytest.raises(ShapeError, match=r"Unknown reduction 'avg'\. Expected one of \('mean', 'sum', 'none'\)"):
        fn(logits, target, reduction="avg")
    with pytest.raises(ShapeError, match=r"logits must be a floating tensor \(N, C, \*spatial\)"):
        fn(target, target)
    with pytest.raises(ShapeError, match=r"ignore_index must be an integer or None\. Received ignore_index=1.5"):
        fn(logits, target, ignore_index=1.5)


def test_module_errors_at_construction():
    with pytest.raises(ShapeError, match=r"gamma must be a finite number >= 0\. Received gamma=-1"):
        FocalLoss(gamma=-1)
    with pytest.raises(ShapeError, match=r"class_weight must be finite and >= 0"):
        PixelCrossEntropy(class_weight=[1.0, float("nan")])
    with pytest.raises(ShapeError, match=r"smooth must be a finite number >= 0"):
        DiceLoss(smooth=-0.1)
    with pytest.raises(ShapeError, match=r"Unknown reduction 'mena'"):
        DiceLoss(reduction="mena")
    with pytest.raises(ShapeError, match=r"per_sample must be True or False\. Received per_sample='yes'"):
        DiceLoss(per_sample="yes")
    logits, target = random_case()
    with pytest.raises(ShapeError, match=r"per_sample must be True or False\. Received per_sample='yes'"):
        dice_loss(logits, target, per_sample="yes")  # the functional form was truth-tested


def test_public_names():
    for name in ["PixelCrossEntropy", "FocalLoss", "DiceLoss", "pixel_cross_entropy", "focal_loss", "dice_loss",
                 "class_weights", "CLASS_WEIGHT_METHODS"]:
        assert name in losses.__all__
        assert hasattr(losses, name)
