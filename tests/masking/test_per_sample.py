"""masked() on ops that are defined per sample but not on the padded canvas (issue 13, second round).

* adaptive pooling to sizes other than 1 (PSPNet's pyramid bins): each sample pools its own extent into
  ``output_size`` bins; the small fully valid grid is then resized back to each sample's extent;
* attention over the flattened spatial positions (smp MAnet's ``PABBlock``): the module runs once per group of
  samples of one extent, on the valid crop (named, registered, or found after a refusal).

Every number is compared with each sample run alone (float64, 1e-10 relative), outputs and weight gradients.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cnnkit import UnsupportedError, _ops
from cnnkit.errors import ArgumentTypeError
from cnnkit.masking import masked, pad_batch, register_per_sample_module

SIZES = [(9, 13), (12, 7), (9, 13), (5, 6)]  # two samples share an extent (one group), others alone


def _images(sizes, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(channels, *size, generator=g, dtype=torch.float64) for size in sizes]


def _relative(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def _outputs(out):
    return list(out.unpad()) if hasattr(out, "unpad") else list(out)


def _check(model, images, wrapper=masked, tol=1e-10):
    """Outputs and weight gradients of the masked batch equal each sample alone (and the sum of its gradients)."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    out = wrapper(model)(pad_batch(images))
    outputs = _outputs(out)
    sum(o.square().sum() * (n + 1) for n, o in enumerate(outputs)).backward()
    batched = [p.grad.clone() for p in params]
    model.zero_grad()
    for n, img in enumerate(images):
        ref = model(img[None])[0]
        assert _relative(outputs[n].detach(), ref.detach()) <= tol, (n, _relative(outputs[n].detach(), ref.detach()))
        (ref.square().sum() * (n + 1)).backward()
    for p, g in zip(params, batched):
        assert _relative(g, p.grad) <= tol
    return out


# -- adaptive pooling per sample ---------------------------------------------------------------------------------


class Pool(nn.Module):
    def __init__(self, pool, dims=2):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        self.conv = conv(3, 4, 3, padding=1).double()
        self.pool = pool

    def forward(self, x):
        y = self.pool(torch.relu(self.conv(x)))
        return y[0] if isinstance(y, tuple) else y


@pytest.mark.parametrize(
    ("pool", "dims"),
    [
        (lambda x: F.adaptive_avg_pool2d(x, (2, 3)), 2),
        (lambda x: torch.adaptive_avg_pool1d(x, 3), 1),
        (lambda x: F.adaptive_avg_pool3d(x, (2, 1, 3)), 3),
        (lambda x: F.adaptive_max_pool2d(x, 3), 2),
        (lambda x: torch.adaptive_max_pool1d(x, 4), 1),
        (lambda x: F.adaptive_max_pool3d(x, 2), 3),
        (lambda x: F.adaptive_avg_pool2d(x, (None, 2)), 2),
        (lambda x: F.adaptive_max_pool2d(x, (3, None)), 2),
        (nn.AdaptiveAvgPool2d(6), 2),  # more bins than some samples have positions
    ],
    ids=["F-avg2d", "torch-avg1d", "F-avg3d", "F-max2d", "torch-max1d", "F-max3d", "avg-None", "max-None",
         "avg-6"],
)
def test_adaptive_pooling_pools_each_sample_over_its_own_extent(pool, dims):
    # Before: refused ("to output_size=... is not defined per sample").
    torch.manual_seed(0)
    sizes = {1: [(9,), (12,), (9,), (5,)], 2: SIZES, 3: [(4, 5, 6), (6, 3, 5), (4, 5, 6)]}[dims]
    _check(Pool(pool, dims), _images(sizes))


@pytest.mark.parametrize("target", [1, (2, 3)])
def test_adaptive_max_pooling_indices_are_each_samples_own(target):
    # Before: global max pooling with indices returned positions on the canvas (r·W + c), not in the sample's own
    # extent (r·w + c) as the sample alone gives them (and other targets were refused).
    x = _images(SIZES, channels=2)
    out = masked(_Indices(target))(pad_batch(x))
    for n, img in enumerate(x):
        values, index = F.adaptive_max_pool2d(img[None], target, return_indices=True)
        assert torch.equal(out[1][n], index[0].flatten())
        assert torch.equal(out[0][n], values[0].flatten())


class _Indices(nn.Module):
    def __init__(self, target):
        super().__init__()
        self.target = target

    def forward(self, x):
        values, index = F.adaptive_max_pool2d(x, self.target, return_indices=True)
        return values.flatten(1), index.flatten(1)


class PSPBlock(nn.Module):
    """smp PSPNet's pyramid: adaptive pooling to 1, 2, 3, 6 bins, 1×1 conv, resize back to the feature size."""

    def __init__(self, align_corners=True, mode="bilinear"):
        super().__init__()
        self.align, self.mode = align_corners, mode
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(4, 2, 1) for _ in (1, 2, 3, 6))
        self.head = nn.Conv2d(4 + 8, 3, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        h, w = x.shape[2:]
        kwargs = {"align_corners": self.align} if self.mode != "nearest" else {}
        pyramid = [F.interpolate(conv(F.adaptive_avg_pool2d(x, s)), size=(h, w), mode=self.mode, **kwargs)
                   for conv, s in zip(self.convs, (1, 2, 3, 6))]
        return self.head(torch.cat([*pyramid, x], dim=1))


@pytest.mark.parametrize(("align", "mode"), [(True, "bilinear"), (False, "bilinear"), (None, "nearest")])
def test_pyramid_pooling_resized_back_to_each_samples_extent(align, mode):
    # Before: refused at F.adaptive_avg_pool2d(x, 2).
    torch.manual_seed(0)
    _check(PSPBlock(align, mode).double(), _images([(17, 26), (24, 13), (17, 26), (10, 12)]))


# -- modules run per sample --------------------------------------------------------------------------------------


class PAB(nn.Module):
    """smp MAnet's position attention block (PABBlock), verbatim in its ops: a softmax over the whole flattened
    (HW × HW) map of every sample."""

    def __init__(self, channels=4, inner=3):
        super().__init__()
        self.top = nn.Conv2d(channels, inner, 1)
        self.center = nn.Conv2d(channels, inner, 1)
        self.bottom = nn.Conv2d(channels, channels, 3, padding=1)
        self.out = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        b, c, h, w = x.shape
        top = self.top(x).flatten(2)
        center = self.center(x).flatten(2).transpose(1, 2)
        bottom = self.bottom(x).flatten(2).transpose(1, 2)
        attention = torch.softmax(torch.matmul(center, top).view(b, -1), dim=1).view(b, h * w, h * w)
        return self.out(x + torch.matmul(attention, bottom).reshape(b, c, h, w))


class WithAttention(nn.Module):
    def __init__(self, bn=True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4) if bn else nn.Identity(),
                                  nn.ReLU())
        self.attention = PAB()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4) if bn else nn.Identity(),
                                  nn.Conv2d(4, 2, 1))

    def forward(self, x):
        return self.head(self.up(self.attention(self.stem(x))))


def _model():
    torch.manual_seed(0)
    model = WithAttention().double().eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean = torch.randn(4, generator=g, dtype=torch.float64)
            m.running_var = torch.rand(4, generator=g, dtype=torch.float64) + 0.5
    return model


IMAGES = [(10, 14), (14, 8), (10, 14), (6, 6)]


def test_attention_module_runs_per_sample_without_a_hint():
    # Before: refused ("Tensor.flatten ... [in module 'attention' (PAB)]").
    model = _model()
    wrapper = masked(model)
    with pytest.warns(UserWarning, match=r"module 'attention' \(PAB\) now runs once per group .*Tensor.flatten"):
        _check(model, _images(IMAGES), wrapper=lambda m: wrapper)
    assert wrapper.per_sample_modules == ("attention",)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the choice is kept: no refusal and no warning now
        _check(model, _images(IMAGES, seed=1), wrapper=lambda m: wrapper)


@pytest.mark.parametrize("per_sample", [(PAB,), ("attention",)], ids=["class", "path"])
def test_attention_module_named_by_class_or_path(per_sample):
    model = _model()
    _check(model, _images(IMAGES), wrapper=lambda m: masked(m, per_sample=per_sample, auto_per_sample=False))


def test_registered_module_class_runs_per_sample():
    class Registered(PAB):
        pass

    register_per_sample_module(Registered)
    try:
        model = _model()
        model.attention = Registered().double()
        _check(model, _images(IMAGES), wrapper=lambda m: masked(m, auto_per_sample=False))
    finally:
        _ops.PER_SAMPLE_MODULES.remove(Registered)


def test_without_auto_the_attention_is_refused_naming_the_module():
    with pytest.raises(UnsupportedError, match=r"Tensor.flatten .*\[in module 'attention' \(PAB\)\]"):
        masked(_model(), auto_per_sample=False)(pad_batch(_images(IMAGES)))


def test_train_mode_batch_norm_around_a_per_sample_module_uses_the_valid_pixels():
    model = _model().train()
    model.stem[1] = nn.Identity()  # so that the head's batch norm input alone is an independent reference
    images = _images(IMAGES)
    bn = model.head[1]
    mean0, var0 = bn.running_mean.clone(), bn.running_var.clone()
    inputs = []
    hook = bn.register_forward_pre_hook(lambda m, inp: inputs.append(inp[0].detach()))
    try:
        out = masked(model)(pad_batch(images))  # refused once, then rerun: the statistics are updated once
    finally:
        hook.remove()
    assert len(inputs) == 1 and bn.num_batches_tracked.item() == 1
    # Reference: each sample's own input to that batch norm, run alone, and its pixels pooled over the batch.
    model.eval()
    with torch.no_grad():
        alone = [model.head[0](model.up(model.attention(model.stem(img[None])))) for img in images]
    pixels = torch.cat([a[0].flatten(1) for a in alone], dim=1)
    torch.testing.assert_close(bn.running_mean, 0.9 * mean0 + 0.1 * pixels.mean(1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bn.running_var, 0.9 * var0 + 0.1 * pixels.var(1), rtol=1e-10, atol=1e-12)
    assert out.sizes.tolist() == [list(img.shape[1:]) for img in images]


def test_stem_batch_norm_stats_are_updated_once_despite_the_retry():
    model = _model().train()
    before = model.stem[1].running_mean.clone()
    masked(model)(pad_batch(_images(IMAGES)))
    once = model.stem[1].running_mean.clone()
    model.stem[1].running_mean.copy_(before)
    model.stem[1].num_batches_tracked.zero_()
    masked(model, per_sample=("attention",), auto_per_sample=False)(pad_batch(_images(IMAGES)))
    torch.testing.assert_close(model.stem[1].running_mean, once, rtol=0, atol=0)


def test_the_retry_restores_the_random_number_generator():
    # Dropout before the per-sample module: the refused first pass must not consume random numbers.
    class Net(WithAttention):
        def forward(self, x):
            return self.head(self.up(self.attention(F.dropout(self.stem(x), 0.5, True))))

    torch.manual_seed(0)
    model = Net(bn=False).double()
    images = _images(IMAGES)
    torch.manual_seed(5)
    auto = masked(model)(pad_batch(images)).data
    torch.manual_seed(5)
    named = masked(model, per_sample=("attention",), auto_per_sample=False)(pad_batch(images)).data
    assert torch.equal(auto, named)


def test_a_per_sample_module_with_batch_statistics_is_refused():
    class Normed(PAB):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return super().forward(self.bn(x))

    model = _model().train()
    model.attention = Normed().double().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedError, match=r"Tensor.flatten .*\[in module 'attention' \(Normed\)\]"):
        masked(model)(pad_batch(_images(IMAGES)))
    with pytest.raises(UnsupportedError, match=r"'attention' \(Normed\) cannot run per sample: .*batch norm .*'bn'"):
        masked(model, per_sample=("attention",))(pad_batch(_images(IMAGES)))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_module_whose_per_sample_outputs_differ_in_shape_reports_the_first_refusal():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 2)).double()
    wrapper = masked(model)
    with pytest.raises(UnsupportedError, match=r"Tensor.flatten .*\[in module '1' \(Flatten\)\].* Running module "
                                               r"'1' per sample does not help"):
        wrapper(pad_batch(_images([(8, 8), (5, 6)])))
    assert wrapper.per_sample_modules == ()  # nothing learned: the same answer again
    with pytest.raises(UnsupportedError, match=r"'1' per sample does not help"):
        wrapper(pad_batch(_images([(8, 8), (5, 6)])))


def test_per_sample_argument_is_checked():
    with pytest.raises(ArgumentTypeError, match=r"per_sample names a module path .* Received per_sample entry 'nope'"):
        masked(_model(), per_sample=("nope",))
    with pytest.raises(ArgumentTypeError, match=r"nn\.Module subclasses or module paths"):
        masked(_model(), per_sample=(3,))
    for wrong in (True, "attention", PAB):
        with pytest.raises(ArgumentTypeError, match=r"per_sample must be a tuple or list .* Received per_sample="):
            masked(_model(), per_sample=wrong)


def test_per_sample_leaves_the_model_as_it_was():
    model = _model()
    masked(model, per_sample=("attention",))(pad_batch(_images(IMAGES)))
    assert "forward" not in model.attention.__dict__
    model(torch.zeros(1, 3, 8, 8, dtype=torch.float64))  # the plain model runs as before
