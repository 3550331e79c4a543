"""masked(model): padded batched output == each sample run alone, zeros outside, gradients summed."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from cnnkit import ShapeError, UnsupportedError
from cnnkit.masking import masked, masked_batch_norm, pad_batch
from cnnkit.shapes import conv_output_size, pool_output_size


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride), nn.BatchNorm2d(cout)) if (
            stride != 1 or cin != cout) else nn.Identity()

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.skip(x))


class ResNetish(nn.Module):
    """Stride-2 convs, BatchNorm, residual adds, max-pool, global average pool, Linear head."""

    def __init__(self, cin=3, classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(cin, 8, 5, stride=2, padding=2), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(3, stride=2, padding=1))
        self.layer1 = Block(8, 8, 1)
        self.layer2 = Block(8, 16, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layer2(self.layer1(self.stem(x)))), 1))


class ResNetishFeatures(ResNetish):
    def forward(self, x):
        return self.layer2(self.layer1(self.stem(x)))


class UNetish(nn.Module):
    """Down-sampling, up-sampling (nearest and bilinear, transposed conv), skip concatenation."""

    def __init__(self, cin=3, classes=4):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(cin, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU())
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.enc3 = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(16, 16, 3, padding=1), nn.Sigmoid())
        self.up3 = nn.Upsample(scale_factor=2, mode="bilinear")
        self.dec2 = nn.Sequential(nn.Conv2d(32, 8, 3, padding=1), nn.ReLU())
        self.up2 = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.up2b = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Conv2d(8 + 8 + 16, classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([self.up3(e3), e2], dim=1))
        return self.head(torch.cat([e1, self.up2(d2), self.up2b(e2)], dim=1)).softmax(dim=1)


def _images(sizes, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(channels, h, w, generator=g) for h, w in sizes]


def _check_invariance(model, images, atol=1e-5):
    model.eval()
    batch = pad_batch(images)
    out = masked(model)(batch)
    refs = [model(img[None])[0] for img in images]
    if isinstance(out, torch.Tensor):  # classification head: no padding left
        torch.testing.assert_close(out, torch.stack(refs), atol=atol, rtol=1e-5)
        return out
    for n, ref in enumerate(refs):
        extent = tuple(out.sizes[n].tolist())
        assert extent == tuple(ref.shape[1:]), (n, extent, ref.shape)
        valid = out.data[(n, slice(None), *(slice(0, s) for s in extent))]
        torch.testing.assert_close(valid, ref, atol=atol, rtol=1e-5)
        outside = out.data[n].clone()
        outside[(slice(None), *(slice(0, s) for s in extent))] = 0
        assert torch.count_nonzero(outside) == 0
    return out


def _randomise_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=g)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean = torch.randn(m.running_mean.shape, generator=g)
            m.running_var = torch.rand(m.running_var.shape, generator=g) + 0.5


@settings(max_examples=12, deadline=None)
@given(st.lists(st.tuples(st.integers(9, 40), st.integers(9, 40)), min_size=1, max_size=4),
       st.integers(0, 1000))
def test_resnet_features_equal_per_sample_runs(sizes, seed):
    torch.manual_seed(seed)
    model = ResNetishFeatures()
    _randomise_bn(model)
    _check_invariance(model, _images(sizes, seed=seed))


@settings(max_examples=12, deadline=None)
@given(st.lists(st.tuples(st.integers(5, 40), st.integers(5, 40)), min_size=1, max_size=4),
       st.integers(0, 1000))
def test_resnet_classifier_equals_per_sample_runs(sizes, seed):
    torch.manual_seed(seed)
    model = ResNetish()
    _randomise_bn(model)
    _check_invariance(model, _images(sizes, seed=seed))


@settings(max_examples=12, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 8), st.integers(1, 8)), min_size=1, max_size=4), st.integers(0, 1000))
def test_unet_equals_per_sample_runs(blocks, seed):
    torch.manual_seed(seed)
    model = UNetish()
    _randomise_bn(model)
    sizes = [(4 * h, 4 * w) for h, w in blocks]  # divisible by the total stride 4
    _check_invariance(model, _images(sizes, seed=seed))


def test_output_sizes_follow_the_shape_arithmetic():
    model = ResNetishFeatures().eval()
    out = masked(model)(pad_batch(_images([(33, 17), (20, 40)])))
    for (h, w), size in zip([(33, 17), (20, 40)], out.sizes.tolist()):
        s = conv_output_size((h, w), 5, 2, 2)
        s = pool_output_size(s, 3, 2, 1)
        s = conv_output_size(s, 3, 2, 1)
        assert tuple(size) == s


def test_weight_gradients_equal_the_sum_of_per_sample_gradients():
    torch.manual_seed(0)
    model = UNetish().eval()
    images = _images([(12, 20), (16, 8), (8, 8)])
    out = masked(model)(pad_batch(images))
    (out.data ** 2).sum().backward()
    batched = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for img in images:
        (model(img[None]) ** 2).sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(batched[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_train_mode_batchnorm_equals_batchnorm_on_the_valid_pixels():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    images = _images([(5, 7), (3, 2), (6, 6)], channels=4)
    out = masked(bn)(pad_batch(images))
    # Reference: the valid pixels of all samples, side by side as one (1, C, 1, P) image.
    pixels = torch.cat([img.reshape(4, -1) for img in images], dim=1)[None, :, None, :]
    ref_bn = nn.BatchNorm2d(4)
    ref = ref_bn(pixels)[0, :, 0]
    offset = 0
    for n, img in enumerate(images):
        count = img.shape[1] * img.shape[2]
        got = out.unpad()[n].reshape(4, -1)
        torch.testing.assert_close(got, ref[:, offset:offset + count], atol=1e-5, rtol=1e-5)
        offset += count
    torch.testing.assert_close(bn.running_mean, ref_bn.running_mean)
    torch.testing.assert_close(bn.running_var, ref_bn.running_var)
    assert bn.num_batches_tracked.item() == 1


def test_masked_batch_norm_gradient_float64():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(2, 1, 4, 5, dtype=torch.bool)
    mask[0, :, :3, :4] = True
    mask[1, :, :4, :2] = True
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: masked_batch_norm(x, mask, None, None, w, b) * mask,
                                    (x, w, b))


@pytest.mark.parametrize("affine", [True, False])
def test_masked_batch_norm_equals_batch_norm_of_the_valid_pixels_alone(affine):
    # Reference: torch's own training-mode batch norm on the valid pixels gathered into one (1, C, n) tensor.
    # Gradients given to outputs outside the mask are ignored and no padded position receives one.
    g = torch.Generator().manual_seed(5)
    x = (3 * torch.randn(3, 4, 6, 7, generator=g, dtype=torch.float64) + 2).requires_grad_()
    mask = torch.zeros(3, 1, 6, 7, dtype=torch.bool)
    mask[0, :, :4, :5] = True
    mask[1, :, :6, :7] = True
    mask[2, :, :1, :2] = True
    w = torch.rand(4, generator=g, dtype=torch.float64).requires_grad_() if affine else None
    b = torch.randn(4, generator=g, dtype=torch.float64).requires_grad_() if affine else None
    upstream = torch.randn(3, 4, 6, 7, generator=g, dtype=torch.float64)  # nonzero at padded positions too
    rm, rv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    out = masked_batch_norm(x, mask, rm, rv, w, b, momentum=0.3, eps=1e-3)
    params = [t for t in (w, b) if t is not None]
    got = torch.autograd.grad((out * upstream).sum(), [x, *params])

    select = mask.expand_as(x)
    valid = x.transpose(0, 1)[select.transpose(0, 1)].reshape(4, -1)[None]  # (1, C, n)
    ref_rm, ref_rv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    ref = torch.nn.functional.batch_norm(valid, ref_rm, ref_rv, w, b, training=True, momentum=0.3, eps=1e-3)
    ref_upstream = upstream.transpose(0, 1)[select.transpose(0, 1)].reshape(4, -1)[None]
    expected = torch.autograd.grad((ref * ref_upstream).sum(), [x, *params])

    torch.testing.assert_close(out.transpose(0, 1)[select.transpose(0, 1)].reshape(4, -1)[None], ref,
                               rtol=1e-12, atol=1e-12)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
    assert got[0][~select].abs().max() == 0  # padding gets no gradient
    torch.testing.assert_close(rm, ref_rm, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rv, ref_rv, rtol=1e-12, atol=1e-12)


def test_masked_batch_norm_refuses_an_empty_mask():
    with pytest.raises(ShapeError, match="at least one valid position"):
        masked_batch_norm(torch.randn(2, 3, 4), torch.zeros(2, 1, 4, dtype=torch.bool), None, None)


def test_groupnorm_and_instancenorm_use_each_samples_valid_pixels():
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.GroupNorm(3, 6), nn.InstanceNorm2d(6, affine=True))
    _check_invariance(model, _images([(7, 9), (4, 11)]))


@pytest.mark.parametrize(
    "layer",
    [nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), nn.AvgPool2d(2), nn.MaxPool2d(2, ceil_mode=True),
     nn.MaxPool2d(3, stride=2, padding=1, dilation=2), nn.Upsample(scale_factor=3, mode="bicubic"),
     nn.Upsample(scale_factor=1.5, mode="nearest"), nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1),
     nn.ZeroPad2d((1, 2, 0, 3)), nn.Conv2d(3, 2, 4, padding="same"), nn.Conv2d(3, 2, 3, dilation=2, groups=1),
     nn.AdaptiveMaxPool2d(1), nn.Dropout(0.5), nn.Softmax(dim=1), nn.Hardsigmoid()],
    ids=lambda m: repr(m)[:40],
)
def test_single_layers_equal_per_sample_runs(layer):
    _check_invariance(layer, _images([(9, 13), (11, 6), (5, 5)]))


def test_1d_and_3d_networks():
    net1 = nn.Sequential(nn.Conv1d(2, 4, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(4, 3, 3))
    images = [torch.randn(2, n) for n in (20, 9, 15)]
    batch = pad_batch(images)
    out = masked(net1)(batch)
    for n, img in enumerate(images):
        torch.testing.assert_close(out.unpad()[n], net1(img[None])[0], atol=1e-5, rtol=1e-5)
    net3 = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.BatchNorm3d(2).eval(), nn.AvgPool3d(2))
    vols = [torch.randn(1, 4, 6, 8), torch.randn(1, 8, 4, 6)]
    out3 = masked(net3)(pad_batch(vols))
    for n, v in enumerate(vols):
        torch.testing.assert_close(out3.unpad()[n], net3(v[None])[0], atol=1e-5, rtol=1e-5)


def test_spatial_mean_and_max_in_forward_code():
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return torch.cat([y.mean(dim=(2, 3)), y.amax(dim=(-2, -1))], dim=1)

    _check_invariance(Head(), _images([(6, 9), (3, 3), (10, 2)]))


def test_tensor_factories_in_forward_code():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            bias = y.new_zeros(1, y.shape[1], 1, 1) + 0.5  # an ordinary tensor borrowing dtype/device
            return self.conv.weight.new_ones(()) * torch.zeros_like(y) + torch.ones_like(y) + y + bias

    _check_invariance(Net(), _images([(6, 9), (3, 5)]))


def test_weights_are_shared_not_copied():
    model = nn.Conv2d(3, 4, 3)
    wrapped = masked(model)
    assert wrapped.model is model
    assert all(a is b for a, b in zip(wrapped.parameters(), model.parameters()))


@pytest.mark.parametrize(
    ("forward", "match"),
    [
        (lambda x: x.flatten(1), r"Tensor.flatten from shape \(2, 3, 8, 8\) to \(2, 192\) merges"),
        (lambda x: x.view(x.shape[0], -1), "Tensor.view from shape"),
        (lambda x: F.interpolate(x, size=(5, 5)), r"interpolate\(size=\(5, 5\)\).*not defined"),
        (lambda x: x.cumsum(2), r"Tensor.cumsum is not supported on a padded batch"),
        (lambda x: x.mean(dim=2), "reduces some spatial dimensions"),
        (lambda x: F.pad(x, (1, 1, 1, 1), mode="reflect"), "mode='reflect'"),
        (lambda x: x + torch.ones(1, 1, x.shape[2], x.shape[3]), "varies over the spatial dimensions"),
        (lambda x: x.transpose(2, 3), "Tensor.transpose with order .* reorders the spatial"),
        (lambda x: x.sum(), "Tensor.sum over dims"),
        (lambda x: F.linear(x, torch.ones(2, x.shape[-1])), "linear"),
    ],
)
def test_unsupported_ops_raise_naming_the_op(forward, match):
    class Net(nn.Module):
        def forward(self, x):
            return forward(x)

    with pytest.raises(UnsupportedError, match=match):
        masked(Net())(pad_batch(_images([(8, 8), (4, 6)])))


def test_reflect_padding_conv_is_refused():
    with pytest.raises(UnsupportedError, match="reflect"):
        masked(nn.Conv2d(3, 2, 3, padding=1, padding_mode="reflect"))(pad_batch(_images([(8, 8), (4, 6)])))


def test_sample_too_small_for_the_network():
    net = nn.Sequential(nn.Conv2d(3, 2, 5), nn.Conv2d(2, 2, 5))
    with pytest.raises(ShapeError, match=r"sample 1 \(extent \(2, 2\) at this layer\) is too small"):
        masked(net)(pad_batch(_images([(20, 20), (6, 6)])))


def test_bad_batches():
    with pytest.raises(TypeError, match="PaddedBatch"):
        masked(nn.ReLU())(torch.zeros(1, 1, 2, 2))
    with pytest.raises(ShapeError, match=r"between 1 and the canvas \(4, 4\)"):
        masked(nn.ReLU())((torch.zeros(2, 1, 4, 4), torch.tensor([[4, 4], [0, 3]])))
    with pytest.raises(ShapeError, match="same rank and channel count"):
        pad_batch([torch.zeros(3, 4, 4), torch.zeros(2, 4, 4)])
    with pytest.raises(ShapeError, match="must not be empty"):
        pad_batch([torch.zeros(3, 4, 4), torch.zeros(3, 0, 4)])


def test_no_nan_with_padding_and_train_mode():
    model = UNetish().train()
    out = masked(model)(pad_batch(_images([(16, 8), (4, 4)])))
    assert torch.isfinite(out.data).all()


class Singular(nn.Module):
    """Ops that are not finite at 0: division by a padded tensor, 1 / x, sqrt, rsqrt, log, reciprocal, pow."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1, bias=False)  # zero outside each extent
        self.b = nn.Conv2d(4, 4, 1, bias=False)  # a 1×1 convolution reads no neighbours: its padding stays 0
        self.c = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        h = self.a(x)
        d = self.b(h)
        m = d.abs()
        y = h / d + 1 / d + torch.div(h, other=d) + m.sqrt() + m.rsqrt() + m.log() + d.reciprocal() + m**0.5
        return self.c(y)


def test_division_log_sqrt_pow_keep_padding_finite_and_gradients_exact():
    # Before: 0/0 outside the extents gave NaN there, and 0 · inf in backward NaN weight gradients for
    # every layer below (a convolution's weight gradient sums over all positions).
    torch.manual_seed(0)
    model = Singular().double()
    images = [img.double() for img in _images([(5, 6), (8, 7), (3, 9)], channels=1)]
    out = _check_invariance(model, images, atol=1e-9)
    sum(o.sum() for o in out.unpad()).backward()
    batched = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    sum(model(img[None]).sum() for img in images).backward()
    for name, p in model.named_parameters():
        assert torch.isfinite(batched[name]).all(), name
        torch.testing.assert_close(batched[name], p.grad, rtol=1e-9, atol=1e-9, msg=name)


# -- regressions: silent wrong answers and refusals of issue 13 ---------------------------------------------------


def _net(forward):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, padding=1)

        def forward(self, x):
            return forward(self, x)

    return Net


def _double_images(sizes, channels=3):
    return [img.double() for img in _images(sizes, channels)]


@pytest.mark.parametrize(
    "change",
    [
        lambda x: x[:, :1].add_(1),
        lambda x: x[:, :1].sigmoid_(),
        lambda x: x.data.add_(1),
        lambda x: x.data[:, 1:].mul_(2).add_(0.5),
    ],
    ids=["view-add_", "view-sigmoid_", "data-add_", "data-view-chain"],
)
def test_in_place_change_through_a_view_dirties_the_base(change):
    # Before: the base tensor's record still said "zero outside the extents" after an in-place change through a
    # view (or .data), so the padded convolution read non-zero padding: off by 0.2-0.6 at the borders.
    def forward(self, x):
        x = x * 1.0  # a tensor of our own (the per-sample reference must not change its input either)
        change(x)
        return self.conv(x)

    model = _net(forward)().double()
    _check_invariance(model, _double_images([(6, 7), (9, 4), (3, 3)]), atol=1e-12)


class TorchBatchNorm(nn.Module):
    """Calls ``torch.batch_norm`` (weight and bias before the running statistics, unlike ``F.batch_norm``)."""

    def __init__(self, channels=3):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.weight = nn.Parameter(torch.rand(channels, generator=g, dtype=torch.float64) + 0.5)
        self.bias = nn.Parameter(torch.randn(channels, generator=g, dtype=torch.float64))
        self.register_buffer("rm", torch.randn(channels, generator=g, dtype=torch.float64))
        self.register_buffer("rv", torch.rand(channels, generator=g, dtype=torch.float64) + 0.5)

    def forward(self, x):
        return torch.batch_norm(x, self.weight, self.bias, self.rm, self.rv, self.training, 0.1, 1e-5, False)


def test_torch_batch_norm_is_read_with_its_own_argument_order():
    # Before: torch.batch_norm was read with F.batch_norm's order (weight taken for running_mean …): off by 2.76.
    images = _double_images([(5, 6), (8, 3), (2, 7)])
    model = TorchBatchNorm().eval()
    _check_invariance(model, images, atol=1e-12)
    model.train()
    rm, rv = model.rm.clone(), model.rv.clone()
    out = masked(model)(pad_batch(images))
    pixels = torch.cat([img.flatten(1) for img in images], dim=1)  # (C, valid pixels of every sample)
    mean, var = pixels.mean(1), pixels.var(1, unbiased=False)
    for n, img in enumerate(images):
        expected = (img - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5) * model.weight.detach()[
            :, None, None] + model.bias.detach()[:, None, None]
        torch.testing.assert_close(out.unpad()[n], expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model.rm, 0.9 * rm + 0.1 * mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.rv, 0.9 * rv + 0.1 * pixels.var(1, unbiased=True), rtol=1e-12, atol=1e-12)


def test_torch_adaptive_max_pool1d_returns_values_and_indices():
    # Before: the rule returned one tensor where torch.adaptive_max_pool1d returns (values, indices), so [0]
    # picked the first sample: the batch was split.
    def forward(self, x):
        return torch.adaptive_max_pool1d(x, 1)[0].flatten(1)

    model = _net(forward)()
    images = [torch.randn(3, n, generator=torch.Generator().manual_seed(n)) for n in (5, 9, 2)]
    out = masked(model)(pad_batch(images))
    torch.testing.assert_close(out, torch.stack([img.amax(1) for img in images]))


def test_reading_grad_fn_in_forward_is_allowed():
    # Before: `x.grad_fn is None` raised UnsupportedError (a metadata read returning None was taken for an op).
    def forward(self, x):
        y = self.conv(x)
        return y * 2 if y.grad_fn is None or x.grad_fn is None else y + 1

    _check_invariance(_net(forward)().double(), _double_images([(6, 7), (4, 9)]), atol=1e-12)


def test_refusal_leaves_running_statistics_as_they_were():
    # Before: the BatchNorm layers that ran before the refused op had updated their running statistics.
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 2)).train()
    before = {name: b.clone() for name, b in model.named_buffers()}
    with pytest.raises(UnsupportedError, match=r"Tensor\.flatten") as info:
        masked(model)(pad_batch(_images([(8, 8), (5, 6)])))
    for name, b in model.named_buffers():
        torch.testing.assert_close(b, before[name], rtol=0, atol=0, msg=name)
    assert "[in module '4' (Flatten)]" in str(info.value)
    model(torch.randn(2, 3, 8, 8))  # the plain model still updates them
    assert not torch.equal(model[1].running_mean, before["1.running_mean"])


def test_locally_connected_is_refused_with_the_reason():
    # Before: "Tensor.movedim is not supported" (an implementation detail, not the reason).
    from cnnkit.nn import LocallyConnected2d

    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), LocallyConnected2d(2, 2, 3, input_size=(8, 8)))
    with pytest.raises(UnsupportedError, match=r"module '1' \(LocallyConnected2d\) has weights tied to positions"):
        masked(model)(pad_batch(_images([(8, 8), (5, 6)])))


def test_errors_name_the_module_path():
    class Block(nn.Module):
        def forward(self, x):
            return x.cumsum(-1)

    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Sequential(nn.ReLU(), Block()))
    with pytest.raises(UnsupportedError, match=r"Tensor.cumsum .* \[in module '1.1' \(Block\)\]"):
        masked(model, auto_per_sample=False)(pad_batch(_images([(12, 12), (9, 10)])))
    # With auto_per_sample (the default) that module runs per sample instead: what each sample gives alone.
    out = masked(model)(pad_batch(_images([(12, 12), (9, 10)])))
    for o, img in zip(out.unpad(), _images([(12, 12), (9, 10)])):
        torch.testing.assert_close(o, model(img[None])[0])


class Mini(nn.Module):
    """Patterns of real architectures: ConvNeXt block (channels-last LayerNorm + Linear, layer scale, stochastic
    depth), ShuffleNet channel shuffle (view / transpose / chunk), squeeze-excite, ASPP image pooling
    (1×1 → interpolate(size=canvas) → cat), FPN merge (stack + sum), U-Net decoder (interpolate(size=skip),
    bilinear with align_corners=True)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(8, 8, 7, padding=3, groups=8)
        self.norm = nn.LayerNorm(8)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.scale = nn.Parameter(torch.full((8, 1, 1), 0.5))
        self.branch = nn.Conv2d(4, 4, 3, padding=1)
        self.se1, self.se2 = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)
        self.pool_conv = nn.Conv2d(8, 8, 1)
        self.down = nn.Conv2d(16, 8, 3, stride=2, padding=1)
        self.up = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8 + 3, 2, 3, padding=1)

    def forward(self, image):
        x = self.stem(image)
        y = self.dw(x).permute(0, 2, 3, 1)  # ConvNeXt
        y = self.fc2(F.gelu(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
        keep = torch.ones(x.shape[0], 1, 1, 1, dtype=x.dtype).bernoulli_(1.0)  # stochastic depth, eval-like
        x = x + self.scale * y * keep
        a, b = x.chunk(2, dim=1)  # ShuffleNet
        x = torch.cat((a, self.branch(b)), dim=1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        x = x * torch.sigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(x, 1)))))  # squeeze-excite
        pooled = F.interpolate(self.pool_conv(F.adaptive_avg_pool2d(x, 1)), size=x.shape[-2:], mode="bilinear",
                               align_corners=False)  # ASPP image pooling
        x = self.down(torch.cat([x, pooled], dim=1))
        x = torch.stack([x, x * 2]).sum(dim=0)  # FPN merge
        x = F.interpolate(self.up(x), size=(h, w), mode="nearest")  # U-Net: size of the skip connection
        x = F.interpolate(x, size=image.shape[-2:], mode="bilinear", align_corners=True)
        return self.head(torch.cat([x, image], dim=1))


@pytest.mark.parametrize("sizes", [[(16, 24), (24, 8), (8, 8)], [(13, 22), (21, 9), (7, 7)]], ids=["even", "odd"])
def test_real_architecture_patterns_equal_per_sample_runs(sizes):
    torch.manual_seed(0)
    model = Mini().double()
    out = _check_invariance(model, _double_images(sizes), atol=1e-10)
    sum(o.square().sum() for o in out.unpad()).backward()
    batched = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    sum(model(img[None]).square().sum() for img in _double_images(sizes)).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(batched[name], p.grad, rtol=1e-9, atol=1e-9, msg=name)


def test_register_masked_op_adds_a_rule():
    from cnnkit.masking import register_masked_op

    @torch.overrides.wrap_torch_function(lambda x: (x,))
    def box3(x):  # a window op masked() knows nothing about: 3-tap sum along the last axis, zero padded
        p = F.pad(x, (1, 1))
        return p[..., :-2] + p[..., 1:-1] + p[..., 2:]

    class Net(nn.Module):
        def forward(self, x):
            return box3(x)

    images = [torch.randn(2, n, generator=torch.Generator().manual_seed(n)) for n in (6, 3)]
    with pytest.raises(UnsupportedError, match="box3 is not supported"):
        masked(Net())(pad_batch(images))

    @register_masked_op(box3)
    def _box3(ctx, func, args, kwargs):
        x = ctx.bind(func, args, kwargs)["input"]
        return ctx.track(func(ctx.zeros_outside(x)), ctx.sizes(x))

    out = masked(Net())(pad_batch(images))
    for n, img in enumerate(images):
        torch.testing.assert_close(out.unpad()[n], box3(img[None])[0])


class _ExpMinus(nn.Module):
    def __init__(self, shift: float):
        super().__init__()
        self.shift = shift

    def forward(self, x):
        return torch.exp(x) - self.shift


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(3, 13), st.integers(3, 13)), min_size=2, max_size=4),
       st.sampled_from([(3, 2, 1, 1, False), (2, 2, 0, 1, True), (3, 1, 1, 1, False), (3, 2, 1, 2, False),
                        (3, 3, 1, 1, True)]),
       st.floats(-2.0, 0.5), st.booleans(), st.booleans(), st.integers(0, 1000))
@example([(7, 9), (4, 5)], (3, 2, 1, 1, False), 0.0, False, True, 0)
@example([(7, 9), (4, 5)], (3, 2, 1, 1, False), 0.0, False, False, 0)
@example([(6, 6), (13, 4), (3, 9)], (3, 2, 1, 1, False), -0.5, True, True, 1)
def test_relu_then_max_pool_equals_per_sample_runs_with_gradients(sizes, pool, bias, through_exp, inplace, seed):
    # After a ReLU the padding is zero and every value >= 0: max pooling reads those zeros instead of a -inf fill.
    # A negative conv bias makes many windows all-zero (ties between valid zeros and padding zeros: the gradient
    # must still go to the valid entry, as it does for the sample alone).
    k, s, p, d, ceil = pool
    if any(min(size) + 2 * p < d * (k - 1) + 1 for size in sizes):
        return
    torch.manual_seed(seed)
    # through_exp: exp is not known to keep values finite, so the ReLU after it is a plain one whose padding holds
    # relu(exp(conv) − 1.5), >= 0 but not zero: max pooling must fill it.
    # inplace: nn.ReLU(inplace=True), as torchvision's ResNets use it (zeroed in place too).
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), _ExpMinus(1.5) if through_exp else nn.Identity(),
                          nn.ReLU(inplace=inplace),
                          nn.MaxPool2d(k, stride=s, padding=p, dilation=d, ceil_mode=ceil),
                          nn.Conv2d(3, 2, 3, padding=1)).double()
    with torch.no_grad():
        model[0].bias.fill_(bias)
    images = [torch.randn(2, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + i))
              for i, (h, w) in enumerate(sizes)]
    batch = pad_batch(images)
    data = batch.data.clone().requires_grad_()
    out = masked(model)(type(batch)(data, batch.sizes))
    out = out.data if not isinstance(out, torch.Tensor) else out  # a plain tensor when every sample fills it
    weights = [torch.randn(ref_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
               for ref_shape in [model(img[None])[0].shape for img in images]]
    loss = sum((out[(n, slice(None), *(slice(0, e) for e in w.shape[1:]))] * w).sum()
               for n, w in enumerate(weights))
    grads = torch.autograd.grad(loss, [data, *model.parameters()])
    ref_inputs = [img.clone().requires_grad_() for img in images]
    ref_loss = sum((model(x[None])[0] * w).sum() for x, w in zip(ref_inputs, weights))
    ref_grads = torch.autograd.grad(ref_loss, [*ref_inputs, *model.parameters()])
    for n, (img, ref) in enumerate(zip(images, ref_grads[:len(images)])):
        torch.testing.assert_close(grads[0][(n, slice(None), slice(0, img.shape[1]), slice(0, img.shape[2]))], ref,
                                   rtol=1e-10, atol=1e-12)
    for got, ref in zip(grads[1:], ref_grads[len(images):]):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    _check_invariance(model, images, atol=1e-12)


def test_masked_runs_under_inference_mode():
    # Inference tensors have no version counter (which masked() reads); the call runs as no_grad instead.
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                          nn.MaxPool2d(3, 2, 1), nn.Conv2d(4, 3, 3, padding=1))
    _randomise_bn(model)
    model.eval()
    images = _images([(9, 13), (6, 7), (11, 4)], channels=2)
    with torch.inference_mode():
        out = masked(model)(pad_batch(images))  # the batch is made inside inference mode too
    assert not out.data.requires_grad
    with torch.no_grad():
        for n, img in enumerate(images):
            ref = model(img[None])[0]
            torch.testing.assert_close(out.data[n, :, :ref.shape[1], :ref.shape[2]], ref, atol=1e-6, rtol=1e-5)


class _UpToSkip(nn.Module):
    """U-Net style: upsample to the skip connection's size (``size=skip.shape[-2:]``), concatenate, convolve."""

    def __init__(self, factor: int, mode: str):
        super().__init__()
        self.factor, self.mode = factor, mode
        self.down = nn.Sequential(nn.Conv2d(2, 3, 3, stride=factor, padding=1), nn.ReLU())
        self.fuse = nn.Conv2d(5, 2, 3, padding=1)

    def forward(self, x):
        low = self.down(x)
        up = F.interpolate(low, size=x.shape[-2:], mode=self.mode)
        return self.fuse(torch.cat([up, x], dim=1))


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.integers(2, 9), st.integers(2, 9)), min_size=2, max_size=4),
       st.sampled_from([2, 3, 4, 1.5]), st.sampled_from(["nearest", "nearest-exact"]), st.integers(0, 1000))
@example([(5, 7), (3, 2)], 3, "nearest", 0)
@example([(5, 7), (3, 2)], 1.5, "nearest", 0)
def test_nearest_upsampling_then_conv_equals_per_sample_runs(sizes, factor, mode, seed):
    # Nearest upsampling by a power of two keeps a zero padding zero (the conv after it needs no zeroed copy); by 3
    # or 1.5 a position past the extent can read a valid input, so the padding must be zeroed again.
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=factor, mode=mode),
                          nn.Conv2d(3, 2, 3, padding=1)).double()
    _check_invariance(model, [img.double() for img in _images(sizes, channels=2, seed=seed)], atol=1e-12)


@pytest.mark.parametrize("factor", [2, 4])
@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
def test_upsampling_to_the_skip_size_equals_per_sample_runs(factor, mode):
    torch.manual_seed(factor)
    sizes = [(4 * factor, 6 * factor), (3 * factor, 2 * factor), (2 * factor, 5 * factor)]
    _check_invariance(_UpToSkip(factor, mode).double(), [img.double() for img in _images(sizes, channels=2)],
                      atol=1e-12)
