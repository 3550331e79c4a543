"""Recorder: activations vs a manual forward, gradients vs autograd / .grad, no hooks left behind."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.errors import CnnkitError, ShapeError, UnsupportedError
from cnnkit.inspect import Recorder


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)  # modifies conv1's output in place
        self.block = nn.Sequential(nn.Conv2d(4, 3, 3), nn.BatchNorm2d(3))
        self.head = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x):
        x = self.block(self.act(self.conv1(x)))
        return self.head(x.flatten(1))


def manual_forward(net: Net, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same computation written with plain functional ops (eval mode BatchNorm)."""
    c1 = F.conv2d(x, net.conv1.weight, net.conv1.bias, padding=1)
    c2 = F.conv2d(F.relu(c1), net.block[0].weight, net.block[0].bias)
    bn = net.block[1]
    b = (c2 - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var[None, :, None, None] + bn.eps)
    b = b * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    return {"conv1": c1, "block.0": c2, "block.1": b, "head": F.linear(b.flatten(1), net.head.weight, net.head.bias)}


def no_hooks(net: nn.Module) -> bool:
    for m in net.modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            return False
    return all(not p._backward_hooks for p in net.parameters())


@pytest.fixture
def net():
    model = Net()
    with torch.no_grad():
        model.block[1].running_mean.uniform_(-0.5, 0.5)
        model.block[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_activations_equal_a_manual_forward(net):
    x = torch.randn(3, 2, 6, 6)
    with Recorder(net, ["conv1", "block.0", "block.1", "head"]) as rec:
        out = net(x)
    ref = manual_forward(net, x)
    for name in ref:
        torch.testing.assert_close(rec.activation(name), ref[name])
    # conv1's stored output is the value *before* the in-place ReLU (it was cloned)
    assert (rec.activation("conv1") < 0).any()
    torch.testing.assert_close(out, ref["head"])
    assert not rec.activation("head").requires_grad


def test_weight_grads_equal_dot_grad_after_backward_for_each_step(net):
    x1, x2 = torch.randn(2, 2, 6, 6), torch.randn(2, 2, 6, 6)
    with Recorder(net, [nn.Conv2d, "head"], activations=False, weight_grads=True) as rec:
        net.zero_grad()
        net(x1).square().sum().backward()
        first = {n: p.grad.clone() for n, p in net.named_parameters()}
        net.zero_grad()
        net(x2).sum().backward()
    assert set(rec.weight_grads) == {"conv1", "block.0", "head"}
    for layer in ("conv1", "block.0", "head"):
        for param in ("weight", "bias"):
            grads = rec.weight_grads[layer][param]
            assert len(grads) == 2
            torch.testing.assert_close(grads[0], first[f"{layer}.{param}"])
            torch.testing.assert_close(grads[1], net.get_parameter(f"{layer}.{param}").grad)
            torch.testing.assert_close(rec.weight_grad(layer, param), grads[1])
    assert no_hooks(net)


def test_output_grads_equal_autograd_on_the_manual_graph(net):
    x = torch.randn(2, 2, 6, 6)
    target = torch.randn(2, 5)
    with Recorder(net, ["conv1", "block.1"], output_grads=True) as rec:
        F.mse_loss(net(x), target).backward()
    ref = manual_forward(net, x)
    grads = torch.autograd.grad(F.mse_loss(ref["head"], target), [ref["conv1"], ref["block.1"]])
    torch.testing.assert_close(rec.output_grad("conv1"), grads[0])
    torch.testing.assert_close(rec.output_grad("block.1"), grads[1])


def test_repeated_calls_are_recorded_in_order():
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.Tanh(), lin)  # one layer called twice
    x = torch.randn(4, 3)
    with Recorder(model, ["0"], output_grads=True) as rec:
        model(x).sum().backward()
    assert len(rec.activations["0"]) == 2
    h = x @ lin.weight.T + lin.bias
    torch.testing.assert_close(rec.activation("0", call=0), h)
    torch.testing.assert_close(rec.activation("0", call=1), torch.tanh(h) @ lin.weight.T + lin.bias)
    torch.testing.assert_close(rec.output_grad("0", call=1), torch.ones(4, 3))


def test_hooks_removed_and_mode_restored_even_when_the_model_raises(net):
    net.train()
    net.block.eval()  # a mixed mode that must come back exactly
    before = {name: m.training for name, m in net.named_modules()}
    rec = Recorder(net, [nn.Conv2d, nn.Linear], output_grads=True, weight_grads=True, mode="eval")
    assert no_hooks(net)  # constructing installs nothing
    with pytest.raises(RuntimeError), rec:
        assert not net.training
        assert not no_hooks(net)
        net(torch.randn(1, 2, 9, 9))  # wrong size for the Linear head → raises inside the block
    assert no_hooks(net)
    assert {name: m.training for name, m in net.named_modules()} == before
    assert len(rec.activations["conv1"]) == 1  # what ran before the error is kept


def test_tensor_hooks_on_outputs_are_removed_when_backward_comes_after_exit(net):
    x = torch.randn(1, 2, 6, 6)
    with Recorder(net, ["conv1"], output_grads=True) as rec:
        out = net(x)
    out.sum().backward()  # after the block: the output hook must not fire any more
    assert rec.output_grads["conv1"] == [None]
    with pytest.raises(CnnkitError, match=r"No gradient reached the output of layer 'conv1'"):
        rec.output_grad("conv1")


def test_recorder_errors(net):
    with pytest.raises(ShapeError, match=r"Unknown layer name 'conv9' in layers.*e.g. 'conv1', 'act', 'block'"):
        Recorder(net, ["conv9"])
    with pytest.raises(ShapeError, match=r"No layer of type Conv1d in the model"):
        Recorder(net, nn.Conv1d)
    with pytest.raises(ShapeError, match=r"weight_grads needs layers with weights, but layer 'act' \(ReLU\)"):
        Recorder(net, ["conv1", "act"], weight_grads=True)
    net.head.requires_grad_(False)
    with pytest.raises(ShapeError, match=r"every parameter of layer 'head' \(Linear\) has requires_grad=False"):
        Recorder(net, "head", weight_grads=True)
    with pytest.raises(ShapeError, match=r"layers must name at least one layer"):
        Recorder(net, [])
    with pytest.raises(ShapeError, match=r"Unknown mode 'test'"):
        Recorder(net, "conv1", mode="test")
    with pytest.raises(TypeError, match=r"layers must hold layer names"):
        Recorder(net, [3])
    rec = Recorder(net, "conv1")
    with pytest.raises(CnnkitError, match=r"does not record weight_grads"):
        rec.weight_grad("conv1")
    with pytest.raises(CnnkitError, match=r"Nothing recorded for activations of layer 'conv1'"):
        rec.activation("conv1")
    with pytest.raises(CnnkitError, match=r"already recording"), rec, rec:
        pass
    assert no_hooks(net)


def test_output_grads_need_single_tensor_outputs():
    lstm = nn.LSTM(3, 4, batch_first=True)
    model = nn.Sequential(lstm)
    with pytest.raises(UnsupportedError, match=r"layer '0' \(LSTM\) returned tuple"), \
            Recorder(model, nn.LSTM, output_grads=True):
        model(torch.randn(2, 5, 3))
    assert no_hooks(model)
    with Recorder(model, nn.LSTM) as rec:  # activations of tuple outputs are fine
        out, (h, _) = model(torch.randn(2, 5, 3))
    torch.testing.assert_close(rec.activation("0")[0], out)
    torch.testing.assert_close(rec.activation("0")[1][0], h)


def test_public_names_of_cnnkit_inspect():
    import cnnkit.inspect as inspect_

    expected = {"FilterChange", "FilterEvolution", "Recorder", "grad_cam", "pool_features", "saliency", "tsne_plot"}
    assert expected <= set(inspect_.__all__)
    assert all(hasattr(inspect_, name) for name in inspect_.__all__)
