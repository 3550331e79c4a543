"""masked()'s CPU fast paths (a mask applied by multiplication, a finite fill before max pooling) equal per-sample runs
also where a multiplication alone would not: NaN/inf in the padding, ties in max-pool windows, NaN gradients outside
the extents. References: each sample alone (float64)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from cnnkit.masking import masked, pad_batch


def _images(seed=0, sizes=((5, 7), (8, 4), (3, 3)), channels=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(channels, h, w, generator=g, dtype=torch.float64) for h, w in sizes]


def _alone(net, images):
    return [net(x[None])[0] for x in images]


def test_nan_and_inf_in_the_input_padding_change_nothing():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1)).double()
    images = _images()
    batch = pad_batch(images)
    valid = batch.mask().expand_as(batch.data)
    batch.data[~valid] = float("nan")
    batch.data[2, 0, 0, -1] = float("inf")  # outside sample 2's 3×3 extent
    batch.data[2, 1, -1, 0] = -float("inf")
    out = masked(net)(batch)
    for got, want in zip(out.unpad(), _alone(net, images)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert bool((out.data[~out.mask().expand_as(out.data)] == 0).all())


def test_max_pool_ties_send_the_gradient_where_each_sample_alone_does():
    # Constant samples (after ReLU: all zeros, and a negative constant): every window is a tie, so the fill outside
    # the extents must lie strictly below the valid values or the gradient would go to the padding and be lost.
    net = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.MaxPool2d(2, stride=2, ceil_mode=True)).double()
    images = [torch.zeros(1, 5, 6, dtype=torch.float64), torch.full((1, 4, 3), -5.0, dtype=torch.float64),
              torch.full((1, 6, 6), 7.0, dtype=torch.float64)]
    batch = pad_batch(images)
    data = batch.data.clone().requires_grad_(True)
    out = masked(net)((data, batch.sizes))
    weights = torch.arange(out.data.numel(), dtype=torch.float64).view_as(out.data)
    (out.data * weights).sum().backward()
    for n, x in enumerate(images):
        alone = x[None].clone().requires_grad_(True)
        y = net(alone)
        (y * weights[n : n + 1, :, : y.shape[2], : y.shape[3]]).sum().backward()
        h, w = x.shape[1:]
        torch.testing.assert_close(data.grad[n, :, :h, :w], alone.grad[0], rtol=0, atol=0)
        assert float(data.grad[n].abs().sum()) == float(alone.grad.abs().sum())  # nothing outside


def test_max_pool_of_minus_infinity_at_valid_positions():
    net = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(1, 1, 3, padding=1)).double()
    images = [torch.randn(1, 4, 5, dtype=torch.float64), torch.full((1, 3, 3), -math.inf, dtype=torch.float64)]
    images[0][0, 1, 2] = -math.inf
    out = masked(net)(pad_batch(images))
    for got, want in zip(out.unpad(), _alone(net, images)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_nan_gradient_outside_the_extents_reaches_no_weight():
    # log(0) in the padding, selected away by the loss: its gradient there is 0 · (1/0) = NaN. Each sample alone
    # never sees those positions; the masked run must not pass the NaN on to the weights.
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1), nn.Softplus()).double()
    images = _images(seed=2)
    out = masked(net)(pad_batch(images))
    valid = out.mask().expand_as(out.data)
    torch.where(valid, out.data.log(), 0).sum().backward()
    got = {name: p.grad.clone() for name, p in net.named_parameters()}
    net.zero_grad()
    for x in images:
        net(x[None]).log().sum().backward()
    for name, p in net.named_parameters():
        assert torch.isfinite(got[name]).all(), name
        torch.testing.assert_close(got[name], p.grad, rtol=1e-10, atol=1e-12)


def test_inference_without_gradients_and_float32():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                        nn.Conv2d(4, 2, 3, padding=1)).eval()
    images = [x.float() for x in _images(seed=4, sizes=((9, 7), (6, 10)))]
    with torch.no_grad():
        out = masked(net)(pad_batch(images))
        for got, want in zip(out.unpad(), _alone(net, images)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_value_fill_before_a_singular_op():
    net = nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU()).double()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = net

        def forward(self, x):
            return F.conv2d(torch.sqrt(self.body(x)), torch.ones(1, 2, 3, 3, dtype=x.dtype), padding=1)

    model = Net()
    images = _images(seed=5)
    out = masked(model)(pad_batch(images))
    for got, want in zip(out.unpad(), _alone(model, images)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_inf_made_in_the_padding_by_an_op_that_can_overflow_is_cleared():
    # Known-finite tensors skip the NaN/inf check before a window op (a plain product); this guards that exp (not
    # finite-preserving) ends that trust: max pooling leaves 2·min − 1 ≈ −5 in windows wholly outside a sample,
    # exp(−150 · −5) = inf there only (the valid values give at most exp(300)), and inf · 0 would be NaN.
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = nn.MaxPool2d(3, stride=2, padding=1)
            self.conv = nn.Conv2d(2, 3, 3, padding=1).double()

        def forward(self, x):
            return self.conv(torch.exp(-150 * self.pool(x)))

    g = torch.Generator().manual_seed(0)
    images = [torch.rand(2, *size, generator=g, dtype=torch.float64) * 4 - 2 for size in [(9, 12), (4, 5), (12, 3)]]
    model = Net()
    out = masked(model)(pad_batch(images))
    for o, img in zip(out.unpad(), images):
        ref = model(img[None])[0]
        assert torch.isfinite(ref).all()
        torch.testing.assert_close(o, ref, rtol=1e-12, atol=0)


def test_padding_changed_after_pad_batch_is_noticed():
    # pad_batch's batch is known to be zero outside the extents (no look needed) only while its version counter is
    # unchanged: an in-place change of the padding afterwards is seen and cleared.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1)).double()
    images = _images()
    batch = pad_batch(images)
    wrapped = masked(net)
    first = wrapped(batch).data.clone()
    batch.data[2, :, 3:, :] = 7.0  # sample 2 is 3×3: its padding
    torch.testing.assert_close(wrapped(batch).data, first, rtol=0, atol=0)
    for o, ref in zip(wrapped(batch).unpad(), _alone(net, images)):
        torch.testing.assert_close(o, ref, rtol=1e-12, atol=1e-12)


def test_an_in_place_change_through_a_view_ends_the_finite_trust():
    # A tensor known finite that is changed in place through a view (which shares its version counter) is checked
    # again before the next window op: here exp_ makes inf in the padding only (max pooling's fill there).
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = nn.MaxPool2d(3, stride=2, padding=1)
            self.conv = nn.Conv2d(2, 3, 3, padding=1).double()

        def forward(self, x):
            y = self.pool(x) * -150  # finite-preserving so far
            y[:, :].exp_()
            return self.conv(y)

    g = torch.Generator().manual_seed(0)
    images = [torch.rand(2, *size, generator=g, dtype=torch.float64) * 4 - 2 for size in [(9, 12), (4, 5), (12, 3)]]
    model = Net()
    with torch.no_grad():
        out = masked(model)(pad_batch(images))
        for o, img in zip(out.unpad(), images):
            ref = model(img[None])[0]
            assert torch.isfinite(ref).all()
            torch.testing.assert_close(o, ref, rtol=1e-12, atol=0)


def test_max_pool_of_a_known_finite_input_whose_values_are_all_positive():
    # pad_batch's input with a finite sum is known finite, so the fill before max pooling comes from one min over
    # the tensor (padding included) without a NaN check; it must still lie below every valid value, also when the
    # whole tensor is positive (a conv's bias in the padding: 2·min − 1 of the tensor alone would be 19, above the
    # valid 15–16 of channel 1). Outputs and the input gradient: each sample alone.
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, 1).double()
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.copy_(torch.tensor([50.0, 10.0]))  # padding 50 and 10, valid values 55–56 and 15–16
    net = nn.Sequential(conv, nn.MaxPool2d(3, stride=2, padding=1), nn.Conv2d(2, 1, 3, padding=1).double())
    g = torch.Generator().manual_seed(1)
    images = [5 + torch.rand(1, *size, generator=g, dtype=torch.float64) for size in [(7, 9), (4, 3), (9, 5)]]
    batch = pad_batch(images)
    data = batch.data.clone().requires_grad_(True)
    out = masked(net)((data, batch.sizes))
    weights = torch.rand(out.data.shape, generator=g, dtype=torch.float64)
    (out.data * weights).sum().backward()
    for n, x in enumerate(images):
        alone = x[None].clone().requires_grad_(True)
        y = net(alone)
        (y * weights[n : n + 1, :, : y.shape[2], : y.shape[3]]).sum().backward()
        torch.testing.assert_close(out.unpad()[n], y[0], rtol=1e-12, atol=1e-12)
        h, w = x.shape[1:]
        torch.testing.assert_close(data.grad[n, :, :h, :w], alone.grad[0], rtol=1e-12, atol=1e-12)
        assert float(data.grad[n, :, h:].abs().sum() + data.grad[n, :, :, w:].abs().sum()) == 0  # nothing outside


def test_relu_of_a_known_finite_tensor_is_zeroed_outside_with_relu_gradients():
    # ReLU of a known-finite tensor comes out zero outside the extents (one tensor instead of ReLU's result and a
    # zeroed copy before the next conv) with ReLU's gradient taken at that result. The conv's bias puts non-zero
    # values into the padding before each ReLU, so a gradient not zeroed outside would reach the first conv's
    # weights; a bias of exactly −(the valid value) makes ReLU's input 0 inside (no gradient there, as alone).
    # References: each sample alone, outputs and every weight's gradient; nn.ReLU and torch.relu, in place or not.
    class Net(nn.Module):
        def __init__(self, inplace):
            super().__init__()
            self.conv1 = nn.Conv2d(2, 3, 3, padding=1).double()
            self.act = nn.ReLU(inplace=inplace)
            self.conv2 = nn.Conv2d(3, 2, 3, padding=1).double()
            self.conv3 = nn.Conv2d(2, 2, 3, padding=1).double()

        def forward(self, x):
            return self.conv3(torch.relu(self.conv2(self.act(self.conv1(x)))))

    for inplace in (False, True):
        torch.manual_seed(0)
        model = Net(inplace)
        with torch.no_grad():
            model.conv1.bias[0] = 0.0
            model.conv1.weight[0] = 0.0  # channel 0 of ReLU's input: exactly 0 inside and out
        images = _images(seed=6)
        out = masked(model)(pad_batch(images))
        g = torch.Generator().manual_seed(7)
        weights = torch.rand(out.data.shape, generator=g, dtype=torch.float64)
        (out.data * weights * out.mask()).sum().backward()
        got = {name: p.grad.clone() for name, p in model.named_parameters()}
        model.zero_grad()
        for n, x in enumerate(images):
            y = model(x[None])
            (y * weights[n : n + 1, :, : y.shape[2], : y.shape[3]]).sum().backward()
            torch.testing.assert_close(out.unpad()[n], y[0], rtol=1e-12, atol=1e-12)
        for name, p in model.named_parameters():
            torch.testing.assert_close(got[name], p.grad, rtol=1e-10, atol=1e-12, msg=f"{name}, inplace={inplace}")


def test_second_derivatives_through_the_zeroed_relu_equal_per_sample_runs():
    # A gradient penalty (the input gradient's squared norm, differentiated again): ReLU's zeroed result is what its
    # gradient node reads, also when that gradient is itself differentiated. Reference: each sample alone.
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1),
                        nn.Softplus(), nn.Conv2d(2, 1, 3, padding=1)).double().eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)  # padding after the batch norm is non-zero before the ReLU
    images = [x.requires_grad_() for x in _images(seed=11)]

    def penalty_grads(outputs, inputs, masks):
        total = sum(o.square().sum() for o in outputs)
        grads = torch.autograd.grad(total, inputs, create_graph=True)
        penalty = sum((g * m).square().sum() for g, m in zip(grads, masks))  # at valid input positions
        return torch.autograd.grad(penalty, list(net.parameters()))

    batch = pad_batch(images)
    data = batch.data.detach().requires_grad_()
    out = masked(net)(type(batch)(data, batch.sizes))
    got = penalty_grads([out.data * out.mask()], [data], [batch.mask()])
    want = penalty_grads([net(x[None]) for x in images], images, [1] * len(images))
    for g, w, (name, _) in zip(got, want, net.named_parameters()):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=name)


def test_the_input_check_buffer_is_per_thread_and_bounded():
    # The padding check writes into a buffer kept between calls: one per thread (two threads checking two batches
    # at once must not share it), the same memory again on one thread, and none kept for inputs over the limit.
    import threading

    from cnnkit.masking import masked_model

    x = torch.zeros(2, 3, 4, 5)
    first, again = masked_model._scratch_like(x), masked_model._scratch_like(x[:1])
    assert first.shape == x.shape and again.shape == (1, 3, 4, 5)
    assert first.data_ptr() == again.data_ptr()
    other = []
    thread = threading.Thread(target=lambda: other.append(masked_model._scratch_like(x).data_ptr()))
    thread.start()
    thread.join()
    assert other[0] != first.data_ptr()
    big = torch.empty(masked_model._SCRATCH_LIMIT + 1)
    assert masked_model._scratch_like(big).shape == big.shape
    assert masked_model._scratch_like(x).data_ptr() == first.data_ptr()  # the large one was not kept


def test_a_valid_negative_zero_keeps_its_sign_through_the_fill_before_a_reciprocal():
    # Before an op singular at 0 the padding is filled with 1; a valid −0.0 must stay −0.0 (1/−0.0 = −inf, as the
    # sample alone gives), not become +0.0 (+inf). Reference: each sample alone, compared with signs of infinities.
    class Net(nn.Module):
        def forward(self, x):
            return torch.reciprocal(torch.neg(x))  # −(+0.0) = −0.0 at the valid zeros

    images = [torch.tensor([[[0.0, 2.0], [0.0, -4.0]]], dtype=torch.float64),
              torch.tensor([[[0.0, 1.0, 0.5]]], dtype=torch.float64)]
    out = masked(Net())(pad_batch(images))
    for got, x in zip(out.unpad(), images):
        want = Net()(x[None])[0]
        assert bool((want[x == 0] == -math.inf).all())
        torch.testing.assert_close(got, want, rtol=0, atol=0)
