"""Shape questions run on the meta device: no weights or activations of real size, exact counts, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from cnnkit import CnnkitError, ShapeError, UnsupportedError, explain, summary
from cnnkit.models import TinySegNet


class Spy(nn.Module):
    """Records the device of its input and of its weight at every call (no explainer is registered for it)."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, 1, 1))
        self.seen: list[tuple[str, str]] = []

    def forward(self, x):
        self.seen.append((x.device.type, self.weight.device.type))
        return torch.cat([x * self.weight, x], dim=1)


class ReadsValues(nn.Module):
    """A forward that reads a value: it cannot run on meta tensors."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        if x.abs().sum() > 0:
            return self.conv(x)
        return self.conv(x)[:, :2]


def test_explain_of_an_unregistered_module_runs_on_meta_and_keeps_the_weights():
    spy = Spy()
    before = spy.weight.detach().clone()
    e = explain(spy, (3, 5, 7))
    assert spy.seen == [("meta", "meta")]
    assert e.output_shape == tuple(spy(torch.zeros(1, 3, 5, 7))[0].shape) == (6, 5, 7)  # a real run as reference
    assert spy.weight.device.type == "cpu" and torch.equal(spy.weight, before)
    assert e.num_params == 3


def test_summary_runs_on_meta_and_rows_match_a_real_run():
    spy = Spy(8)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), spy, nn.Flatten())
    weight = net[0].weight
    s = summary(net, (3, 9, 9), batch_size=2)
    assert spy.seen == [("meta", "meta")]
    real = net(torch.zeros(2, 3, 9, 9))
    assert s.rows[-1].output_shape == (tuple(real.shape),) == ((2, 16 * 7 * 7),)
    assert net[0].weight is weight and weight.device.type == "cpu"
    assert s.total_params == sum(p.numel() for p in net.parameters()) == 8 * 3 * 9 + 8 + 8
    assert sum(r.num_params for r in s.rows) == s.total_params


def test_models_built_on_meta_give_exact_counts():
    with torch.device("meta"):
        net = nn.Sequential(nn.Linear(60000, 60000), nn.ReLU(), nn.Linear(60000, 10, bias=False))
    s = summary(net, (60000,))
    assert s.total_params == 60000 * 60000 + 60000 + 60000 * 10
    assert [r.output_shape for r in s.rows] == [((1, 60000),), ((1, 60000),), ((1, 10),)]
    e = explain(net, (60000,))
    assert e.num_params == s.total_params and e.output_shape == (10,)


def test_a_forward_that_reads_values_falls_back_to_zeros_when_small():
    net = ReadsValues()
    with pytest.warns(UserWarning, match=r"cannot run on the meta device.*real zeros"):
        s = summary(net, (3, 8, 8))
    assert s.rows[-1].output_shape == (tuple(net(torch.zeros(1, 3, 8, 8))[:, :2].shape),)
    assert explain(net, (3, 8, 8)).output_shape == (2, 8, 8)


def test_a_forward_that_reads_values_is_refused_when_large_or_built_on_meta():
    with pytest.raises(UnsupportedError, match=r"'' \(ReadsValues\) cannot run on the meta device.*too large"):
        summary(ReadsValues(), (3, 4096, 4096))
    with torch.device("meta"):
        net = ReadsValues()
    with pytest.raises(UnsupportedError, match=r"ReadsValues cannot run on the meta device.*meta device only"):
        explain(net, (3, 8, 8))


# --- memory and time, measured in a fresh process -------------------------------------------------------

_MEASURE = textwrap.dedent("""
    import json, resource, sys, time
    import torch
    from torch import nn
    from typer.main import get_command
    from cnnkit import explain, summary
    from cnnkit.cli.main import app

    cli = get_command(app)

    def limit_memory():  # a failure would otherwise take the machine's memory: 3 GiB more at most
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (3 << 30), resource.RLIM_INFINITY))

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB on Linux

    class Twice(nn.Module):
        def forward(self, x):
            return torch.cat([x, x], dim=1)

    cases = {
        "cli Linear(60000, 60000)": lambda: cli.main(["explain", "Linear(60000, 60000)", "-i", "60000"],
                                                      standalone_mode=False),
        "cli Conv2d(3, 1e9, 5)": lambda: cli.main(["explain", "Conv2d(3, 1000000000, 5)", "--input", "3x32x32"],
                                                   standalone_mode=False),
        "summary conv 3x4096x4096": lambda: summary(
            nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1)),
            (3, 4096, 4096)),
        "explain unregistered 64x4096x4096": lambda: explain(Twice(), (64, 4096, 4096)),
    }
    # the trivial explain first: what any explain costs (imports, first use of the parser)
    cli.main(["explain", "Linear(2, 2)", "-i", "2"], standalone_mode=False)
    summary(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), (3, 8, 8))
    explain(Twice(), (3, 4))
    limit_memory()
    base, results = peak(), {}
    for name, case in cases.items():
        start = time.perf_counter()
        try:
            case()
            error = None
        except BaseException as e:  # noqa: BLE001
            error = f"{type(e).__name__}: {e}"[:300]
        results[name] = {"seconds": time.perf_counter() - start, "extra_mib": peak() - base, "error": error}
    print(json.dumps(results))
""")


def test_shape_questions_of_any_size_answer_at_once_without_memory():
    out = subprocess.run([sys.executable, "-c", _MEASURE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    for name, r in results.items():
        assert r["error"] is None, (name, r)
        assert r["seconds"] < 1.0, (name, r)
        assert r["extra_mib"] < 100, (name, r)


# --- layers that used to give raw errors ---------------------------------------------------------------


@pytest.mark.parametrize(("r", "shape"), [(2, (8, 3, 5)), (3, (18, 2, 2)), (1, (5, 4, 4))])
def test_pixel_shuffle_and_unshuffle_shapes_match_torch(r, shape):
    m = nn.PixelShuffle(r)
    e = explain(m, shape)
    assert e.output_shape == tuple(m(torch.zeros(shape)).shape)
    c, h, w = e.output_shape
    back = nn.PixelUnshuffle(r)
    assert explain(back, (c, h, w)).output_shape == tuple(back(torch.zeros(c, h, w)).shape) == shape


@pytest.mark.parametrize(
    ("module", "shape", "match"),
    [
        (nn.PixelShuffle(3), (8, 4, 4), r"divisible by 3² = 9\. Received input_shape=\(8, 4, 4\)"),
        (nn.PixelShuffle(2), (8, 4), r"PixelShuffle expects input_shape \(C, H, W\)"),
        (nn.PixelUnshuffle(3), (8, 4, 4), r"height and width divisible by 3"),
        (nn.Unflatten(1, (3, 4)), (8, 4), r"sizes \(3, 4\) must multiply to input_shape\[0\]=8"),
        (nn.Unflatten(5, (2, 4)), (8, 4), r"dim 5 is out of range"),
        (nn.Flatten(3), (8, 4), r"dim 3 is out of range"),
        (nn.Flatten(0), (8, 4), r"acts on dim 0, the batch"),
        (nn.MultiheadAttention(16, 2), (5, 12), r"embed_dim=16, so input_shape\[1\] must be 16"),
    ],
)
def test_reshaping_layers_explain_bad_shapes(module, shape, match):
    with pytest.raises(ShapeError, match=match):
        explain(module, shape)


@pytest.mark.parametrize(("dim", "sizes", "shape"), [(1, (4, 16), (64,)), (-1, (2, -1), (8, 4)), (2, (3, 1), (5, 3))])
def test_unflatten_matches_torch(dim, sizes, shape):
    m = nn.Unflatten(dim, sizes)
    assert explain(m, shape).output_shape == tuple(m(torch.zeros(2, *shape)).shape[1:])


@pytest.mark.parametrize("kwargs", [{}, {"batch_first": True}, {"add_bias_kv": True, "bias": False}])
def test_multihead_self_attention_shape_and_params(kwargs):
    m = nn.MultiheadAttention(16, 4, **kwargs)
    x = torch.zeros(5, 16)  # one unbatched sequence: (L, E)
    e = explain(m, (5, 16))
    assert e.output_shape == tuple(m(x, x, x)[0].shape) == (5, 16)
    assert e.num_params == sum(p.numel() for p in m.parameters())
    bias = 0 if kwargs.get("bias") is False else 4 * 16
    extra = 2 * 16 if kwargs.get("add_bias_kv") else 0
    assert f"= {4 * 16 * 16 + bias + extra:,}" in str(e)


@pytest.mark.parametrize(
    ("module", "match"),
    [
        (nn.Transformer(16, 2, 1, 1, 32), r"Transformer\.forward needs 2 inputs \(src, tgt\)"),
        (nn.TransformerDecoderLayer(16, 2, 32), r"TransformerDecoderLayer\.forward needs 2 inputs \(tgt, memory\)"),
        (nn.MultiheadAttention(16, 2, kdim=8, vdim=8), r"kdim=8, vdim=8"),
    ],
)
def test_layers_with_several_inputs_are_refused_by_name(module, match):
    with pytest.raises(UnsupportedError, match=match):
        explain(module, (5, 16))
    if not isinstance(module, nn.MultiheadAttention):
        with pytest.raises(UnsupportedError, match=match):
            summary(module, (5, 16))


def test_transformer_encoder_layer_is_measured():
    m = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    assert explain(m, (5, 16)).output_shape == tuple(m.eval()(torch.zeros(1, 5, 16)).shape[1:])


# --- the batch dimension given by habit -----------------------------------------------------------------


def test_explain_says_leave_the_batch_dimension_out():
    with pytest.raises(ShapeError, match=r"leave the batch dimension out.*input_shape=\(3, 32, 32\).*--input 3x32x32"):
        explain(nn.Conv2d(3, 8, 3), (1, 3, 32, 32))


def test_summary_says_leave_the_batch_dimension_out():
    with pytest.raises(ShapeError, match=r"summary: input_shape=\(1, 4, 32, 32\).*leave the batch dimension out"):
        summary(TinySegNet(4, 5), (1, 4, 32, 32))
    with pytest.raises(ShapeError, match=r"input_shape=\(4, 32, 32\).*batch_size=8 sets the batch"):
        summary(TinySegNet(4, 5), (8, 4, 32, 32))


def test_a_wrong_shape_that_is_not_a_batch_keeps_the_layer_message():
    with pytest.raises(CnnkitError, match=r"failed in layer") as info:
        summary(TinySegNet(4, 5), (3, 32, 32))
    assert "batch dimension out" not in str(info.value)
    with pytest.raises(ShapeError, match=r"in_channels=3") as info:
        explain(nn.Conv2d(3, 8, 3), (4, 32, 32))
    assert "batch dimension" not in str(info.value)
