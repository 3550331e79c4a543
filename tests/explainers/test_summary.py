"""summary(): rows against real runs, totals against sum(p.numel()), and nothing left behind."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cnnkit import CnnkitError, ShapeError
from cnnkit.explainers import summary
from cnnkit.models import TinySegNet


class UNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.head = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        a = self.down(x)
        b = self.mid(self.pool(a))
        b = F.relu(b) + b
        return self.head(torch.cat([a, self.up(b)], dim=1)).flatten(1)


def test_rows_follow_the_forward_pass_and_output_matches_a_plain_run():
    net = UNetish()
    s = summary(net, (3, 16, 16), batch_size=2)
    kinds = [r.kind for r in s.rows]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Conv2d", "F.relu", "Tensor.add",
                     "ConvTranspose2d", "torch.cat", "Conv2d", "Tensor.flatten"]
    assert s.rows[-1].output_shape == (tuple(net(torch.zeros(2, 3, 16, 16)).shape),)
    cat = next(r for r in s.rows if r.kind == "torch.cat")
    assert cat.output_shape == ((2, 16, 16, 16),)


def test_totals_equal_parameter_count_and_rows_add_up():
    net = UNetish()
    s = summary(net, (3, 16, 16))
    assert s.total_params == sum(p.numel() for p in net.parameters())
    assert sum(r.num_params for r in s.rows) == s.total_params


def test_shared_weights_counted_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.other = nn.Conv2d(4, 4, 3, padding=1)
            self.other.weight = self.conv.weight  # tied across two modules

        def forward(self, x):
            return self.other(self.conv(self.conv(x)))  # and one module called twice

    net = Tied()
    s = summary(net, (4, 8, 8))
    assert s.total_params == sum(p.numel() for p in net.parameters()) == 4 * 4 * 9 + 4 + 4
    assert sum(r.num_params for r in s.rows) == s.total_params
    assert [r.num_params for r in s.rows] == [4 * 4 * 9 + 4, 0, 4]
    assert s.rows[1].note.startswith("shares")


def test_uncalled_modules_get_a_row():
    net = nn.Module()
    net.used = nn.Linear(3, 4)
    net.unused = nn.Linear(4, 5)
    net.forward = lambda x: net.used(x)
    s = summary(net, (3,))
    assert s.rows[-1].name == "(not called)"
    assert s.rows[-1].num_params == 4 * 5 + 5
    assert sum(r.num_params for r in s.rows) == s.total_params


def test_receptive_fields_of_a_chain_match_hand_values():
    # 3×3 conv, 3×3 conv, 2×2 pool stride 2, 3×3 conv: fields 3, 5, 6, 10 with jumps 1, 1, 2, 2.
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3),
                        nn.Flatten())
    rows = summary(net, (1, 32, 32)).rows
    fields = [r.receptive_field for r in rows]
    assert [f.size[0] for f in fields[:5]] == [3, 3, 5, 6, 10]
    assert [f.jump[0] for f in fields[:5]] == [1, 1, 1, 2, 2]
    assert fields[5] is None  # after flatten the field is not a spatial notion


def test_modes_and_hooks_restored_even_when_the_model_raises():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.ok = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.bad = nn.Linear(5, 5)

        def forward(self, x):
            return self.bad(self.bn(self.ok(x)))

    net = Broken()
    net.train()
    net.bn.eval()  # a mixed state that must come back exactly
    before = {n: m.training for n, m in net.named_modules()}
    with pytest.raises(CnnkitError, match=r"failed in layer 'bad' \(Linear\).*last layer that finished was 'bn'"):
        summary(net, (3, 8, 8))
    assert {n: m.training for n, m in net.named_modules()} == before
    for m in net.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    # and no torch function mode is left active: a plain run behaves as before
    assert net.ok(torch.zeros(1, 3, 8, 8)).shape == (1, 4, 6, 6)


def test_hooks_removed_after_success_and_weights_untouched():
    net = TinySegNet(4, 5)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    summary(net, (4, 32, 48))
    for m in net.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k  # eval mode: BatchNorm running stats not updated


def test_model_that_is_a_single_layer():
    s = summary(nn.Conv2d(3, 8, 3), (3, 10, 10))
    assert [r.output_shape for r in s.rows] == [((1, 8, 8, 8),)]
    assert s.rows[0].keras_weights == {"kernel": (3, 3, 3, 8), "bias": (8,)}


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"input_shape must be .*Received input_shape='3x8x8'"):
        summary(nn.Conv2d(3, 8, 3), "3x8x8")
    with pytest.raises(CnnkitError, match=r"batch_size must be a positive integer\. Received batch_size=0"):
        summary(nn.Conv2d(3, 8, 3), (3, 8, 8), batch_size=0)


def test_summary_text_golden(golden):
    torch.manual_seed(0)
    golden("explainers/golden/summary_tinysegnet.txt", str(summary(TinySegNet(4, 5), (4, 64, 96))))


# --- a failing forward names the layer that raised and the likely mistake -------------------------------------


class _Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 16 * 16, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


class _Raises(nn.Module):
    def forward(self, x):
        raise RuntimeError("not today")


def _failures():
    """(name, model, input_shape) of forwards that fail, each for another reason."""
    return [
        ("first layer wants 1 channel", _Small(), (3, 32, 32)),
        ("first layer, channels-last input", _Small(), (32, 32, 1)),
        ("inner conv after a conv of 16", nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)),
         (3, 16, 16)),
        ("linear after the wrong flatten", _Small(), (1, 64, 64)),
        ("batch norm of the wrong width", nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(6)), (3, 8, 8)),
        ("first linear", nn.Sequential(nn.Linear(10, 2)), (12,)),
        ("a leaf without explainer raises, deep inside",
         nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), _Raises())), (3, 8, 8)),
    ]


def test_failure_messages_golden(golden):
    text = []
    for name, model, shape in _failures():
        with pytest.raises(CnnkitError) as info:
            summary(model, shape)
        text.append(f"{name}, input_shape={shape}:\n{info.value}\n")
    golden("explainers/golden/summary_errors.txt", "\n".join(text))


def test_channel_mismatch_names_the_innermost_layer_not_a_batch_dimension():
    """Conv2d also takes an unbatched (C, H, W) input, so (3, 32, 32) minus its first entry runs: that must not be
    read as a batch dimension given by habit (it was: 'leave the batch dimension out')."""
    with pytest.raises(ShapeError) as info:
        summary(_Small(), (3, 32, 32))
    text = str(info.value)
    assert "batch dimension" not in text
    assert "layer 'features.0' (Conv2d), which has in_channels=1 but received 3 channels" in text
    assert "input_shape=(1, 32, 32)" in text and "in_channels=3" in text
    summary(_Small(), (1, 32, 32))  # the suggested shape runs


def test_an_inner_mismatch_suggests_the_layer_not_the_input():
    with pytest.raises(ShapeError) as info:
        summary(_Small(), (1, 64, 64))
    text = str(info.value)
    assert "layer 'classifier.1' (Linear), which has in_features=2048 but received 8192 features" in text
    assert "last layer that finished was 'classifier.0'" in text and "in_features=8192" in text
    assert "--input" not in text  # the input is fine for the first layer
