"""smp networks through ``cnnkit train`` → ``cnnkit predict``, and the refusals of bad networks and tampered runs.

Each network trains one epoch from random weights on a small generated folder of 4-band TIFFs (NaN under
clouds); predict must reproduce the held-out IoU training printed; tiled prediction must equal the whole-image
one on a 900 × 700 scene (or be refused with a clear error where tiles cannot reproduce a layer); and a padded
training step must equal each sample alone (loss and gradients, float64, batch norm on its running statistics so
that a sample's result depends on that sample only).
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import lightning.pytorch  # noqa: F401  (Lightning's log handler bound to pytest's stream, see test_train.py)
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from typer.testing import CliRunner

from cnnkit.cli.main import app
from cnnkit.data import CLASS_NAMES, SyntheticLandCover

runner = CliRunner()

NETWORKS = [("Unet", "resnet18"), ("FPN", "mobilenet_v2"), ("DeepLabV3Plus", "efficientnet-b0")]
TILING_REFUSED = {"FPN": "group_norm", "DeepLabV3Plus": "adaptive_avg_pool2d"}
"""Layers tiles cannot reproduce, which cnnkit predict refuses to tile (never approximated): FPN's decoder normalises
with group norm, EfficientNet's squeeze-and-excitation and DeepLabV3+'s ASPP pool over the whole image."""


def _text(result) -> str:
    return " ".join(result.output.split())


def _mean_iou(predicted: list[np.ndarray], truth: list[np.ndarray], num_classes: int) -> float:
    """Mean IoU over classes present in the truth or the prediction, pixels with truth −1 left out (numpy)."""
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    for p, t in zip(predicted, truth):
        keep = t >= 0
        p, t = p[keep], t[keep]
        for k in range(num_classes):
            inter[k] += np.sum((p == k) & (t == k))
            union[k] += np.sum((p == k) | (t == k))
    present = union > 0
    return float(np.mean(inter[present] / union[present]))


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiff_scenes) -> tuple[Path, dict[str, np.ndarray]]:
    """images/ and masks/ plus held/images and held/masks: 4-band float32 TIFFs, NaN under clouds, odd sizes."""
    root = tmp_path_factory.mktemp("networks") / "data"
    truth = tiff_scenes(root, SyntheticLandCover(9, seed=7, min_size=32, max_size=64), name="s{}", held_from=6,
                        odd_sizes=True, scale=1000.0, offset=3000.0)
    return root, truth


def _train(root: Path, out: Path, *extra: str):
    return runner.invoke(app, ["train", str(root), "--out", str(out), "--heldout", str(root / "held"), "--epochs",
                               "1", "--batch-size", "4", "--classes", ",".join(CLASS_NAMES), "--ignore-index", "255",
                               *extra])


@pytest.mark.slow
@pytest.mark.parametrize(("architecture", "encoder"), NETWORKS)
def test_train_then_predict_reproduces_the_heldout_iou_and_tiles_equal_the_whole(folder, tmp_path, architecture,
                                                                                 encoder):
    from cnnkit.app.predict import load_predictor
    from cnnkit.errors import UnsupportedError
    from cnnkit.predict.scene import open_scene

    root, truth = folder
    run = tmp_path / "run"
    done = _train(root, run, "--model", architecture, "--encoder", encoder)
    assert done.exit_code == 0, done.output
    assert f"network: {architecture}/{encoder} (smp)" in done.output and "learning rate 0.001" in done.output
    printed = float(re.search(r"held-out mean IoU:\s+([0-9.]+)", done.output).group(1))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model"]["spec"] == {"library": "smp", "architecture": architecture, "encoder": encoder,
                                         "args": {}}
    assert manifest["model"]["in_channels"] == 5 and manifest["input"]["multiple_of"] == 32
    done = runner.invoke(app, ["predict", str(run), str(root / "held" / "images"), "--out", str(tmp_path / "pred")])
    assert done.exit_code == 0, done.output
    stems = sorted(truth)
    predicted = [np.array(Image.open(tmp_path / "pred" / f"{s}_labels.png")).astype(np.int64) for s in stems]
    assert _mean_iou(predicted, [truth[s] for s in stems], 5) == pytest.approx(printed, abs=5e-4)

    # tiled == whole on a 900 × 700 scene: labels where the top two probabilities differ by > 1e-4, probabilities
    predictor, _ = load_predictor(run)
    rng = np.random.default_rng(3)
    scene = (rng.normal(3000, 200, (4, 900, 700))).astype(np.float32)
    scene[:, 100:140, 200:260] = np.nan
    path = tmp_path / "scene.tif"
    tifffile.imwrite(path, scene, photometric="minisblack", planarconfig="separate")
    labels = np.empty((900, 700), np.int16)
    scores = np.empty((900, 700, 5), np.float32)
    opened = open_scene(path, 4)
    try:
        predictor.predict_scene(opened, tile=256, labels_out=labels, probabilities_out=scores)
    except UnsupportedError as error:  # a layer tiles cannot reproduce: refused, never approximated
        reason = TILING_REFUSED[architecture]  # KeyError: a network expected to tile was refused
        assert f"Tiles cannot reproduce {reason}" in str(error), error
        done = runner.invoke(app, ["predict", str(run), str(path), "--out", str(tmp_path / "tiled"), "--max-pixels",
                                   "100000", "--tile", "256"])
        assert done.exit_code == 2 and f"Tiles cannot reproduce {reason}" in _text(done)
        return
    finally:
        opened.close()
    whole = predictor.predict_image(torch.from_numpy(scene))
    valid = whole.valid.numpy()
    probabilities = whole.probabilities.permute(1, 2, 0).numpy()
    top2 = np.sort(probabilities, axis=-1)[..., -2:]
    clear = valid & (top2[..., 1] - top2[..., 0] > 1e-4)
    assert clear.mean() > 0.5
    assert np.array_equal(labels[clear], whole.labels.numpy()[clear])
    assert np.abs(scores - probabilities)[valid].max() <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(("architecture", "encoder"), NETWORKS)
def test_a_padded_training_step_equals_each_sample_alone(architecture, encoder):
    """Loss and every gradient of ``masked(net)`` on a padded batch == the sum over the samples run alone (float64)."""
    from cnnkit.masking import collate_padded, masked
    from cnnkit.models import build, spec_for

    torch.manual_seed(0)
    net = build(spec_for(architecture, encoder=encoder), in_channels=5, num_classes=3).double()
    net.eval()  # batch norm on running statistics, dropout off: each sample's loss depends on that sample only
    g = torch.Generator().manual_seed(1)
    sizes = [(64, 96), (32, 64), (64, 32)]
    samples = [(torch.randn(5, h, w, generator=g, dtype=torch.float64),
                torch.randint(0, 3, (h, w), generator=g)) for h, w in sizes]
    images, labels = collate_padded(samples)
    loss = torch.nn.functional.cross_entropy(masked(net)(images).data, labels, ignore_index=-100, reduction="sum")
    grads = torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)
    reference, ref_grads = 0.0, [torch.zeros_like(p) for p in net.parameters()]
    for image, label in samples:
        alone = torch.nn.functional.cross_entropy(net(image[None]), label[None], reduction="sum")
        reference += float(alone)
        for total, grad in zip(ref_grads, torch.autograd.grad(alone, list(net.parameters()), allow_unused=True)):
            if grad is not None:
                total += grad
    assert float(loss) == pytest.approx(reference, rel=1e-10)
    for (name, _), grad, ref in zip(net.named_parameters(), grads, ref_grads):
        got = grad if grad is not None else torch.zeros_like(ref)
        assert torch.allclose(got, ref, rtol=1e-8, atol=1e-10 * (1 + float(ref.abs().max()))), name


# --- refusals: a clear error, nothing written ---------------------------------------------------------------------

def test_unknown_architecture_or_encoder_names_the_closest(folder, tmp_path):
    root, _ = folder
    done = _train(root, tmp_path / "a", "--model", "Unte")
    assert done.exit_code == 2 and "Unknown architecture 'Unte'" in _text(done) and "'Unet'" in _text(done)
    done = _train(root, tmp_path / "b", "--model", "Unet", "--encoder", "resnet_18")
    assert done.exit_code == 2 and "Unknown encoder 'resnet_18'" in _text(done) and "'resnet18'" in _text(done)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_weights_of_another_architecture_name_the_mismatched_keys(folder, tmp_path):
    from safetensors.torch import save_file

    from cnnkit.models import build, spec_for

    root, _ = folder
    fpn = build(spec_for("FPN", encoder="resnet18"), in_channels=5, num_classes=5)
    save_file({k: v.contiguous() for k, v in fpn.state_dict().items()}, tmp_path / "fpn.safetensors")
    done = _train(root, tmp_path / "run", "--model", "Unet", "--encoder", "resnet18", "--weights",
                  str(tmp_path / "fpn.safetensors"))
    text = _text(done)
    assert done.exit_code == 2 and "do not fit Unet/resnet18" in text and "segmentation_head.0.weight" in text
    assert "missing from the file" in text and "decoder.p5" in text
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def tiny_run(folder, tmp_path_factory) -> Path:
    root, _ = folder
    run = tmp_path_factory.mktemp("tiny") / "run"
    done = _train(root, run, "--width", "4")
    assert done.exit_code == 0, done.output
    return run


def _tampered(run: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "tampered"
    shutil.copytree(run, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    change(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def _predict(run: Path, folder: Path, out: Path):
    return runner.invoke(app, ["predict", str(run), str(folder / "held" / "images"), "--out", str(out)])


def _nothing_written(out: Path) -> bool:
    """No output file: ``cnnkit predict`` checks (and creates) its ``--out`` folder before it reads the run, so a
    refused run may leave that folder, empty."""
    return not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m["model"].__setitem__("weights", "../other/model.safetensors"), "lies outside"),
    (lambda m: m["model"].__setitem__("weights", "/etc/passwd"), "/etc/passwd"),
    (lambda m: m["model"].__setitem__("weights", None), "'model.weights' must be a file name"),
    (lambda m: m["model"]["spec"]["args"].__setitem__("width", 100000), "100000"),
    (lambda m: m["model"]["spec"]["args"].__setitem__("width", 4000), "over the budget"),
    (lambda m: m["model"].__setitem__("num_classes", 10**7), "'model.num_classes' must be an integer"),
    (lambda m: m["model"]["spec"].__setitem__("architecture", ["TinySegNet"]), "model.spec"),
    (lambda m: m["model"].__setitem__("spec", {"library": "user", "architecture": "MyNet", "args": {}}),
     "cnnkit.models.register('MyNet'"),
    (lambda m: m["input"].__setitem__("std", [1.0, 1e-45, 1.0, 1.0]), "'input.std[1]' must be at least"),
    (lambda m: m["input"].__setitem__("mean", [0.0, float("nan"), 0.0, 0.0]), "'input.mean[1]' must be a finite"),
    (lambda m: m["input"].pop("mean"), "'input.mean' must be a list"),
    (lambda m: m["input"].__setitem__("bands", [-1, -2, -3, -4]), "'input.bands[0]' must be an integer from 0"),
    (lambda m: m["input"].__setitem__("bands", [0, 0, 1, 2]), "'input.bands' must not repeat"),
    (lambda m: m["classes"].__setitem__("palette", [[999, -5, 3]] * 5), "'classes.palette[0]' must be 3 integers"),
    (lambda m: m["classes"].__setitem__("names", [1, 2, 3, 4, 5]), "'classes.names[0]' must be a string"),
    (lambda m: m.__setitem__("extra", json.loads("[" * 50 + "]" * 50)), "levels deep"),
    (lambda m: m["input"].__setitem__("days_reference", "2018-13-45"), "'input.days_reference' must be a date"),
    (lambda m: m["input"].__setitem__("days_reference", 20180901), "'input.days_reference' must be a date"),
])
def test_tampered_manifests_are_refused(tiny_run, folder, tmp_path, change, message):
    root, _ = folder
    (tmp_path / "other").mkdir()
    shutil.copy(tiny_run / "model.safetensors", tmp_path / "other" / "model.safetensors")
    tampered = _tampered(tiny_run, tmp_path, change)
    done = _predict(tampered, root, tmp_path / "pred")
    assert done.exit_code == 2 and message in _text(done), done.output
    assert _nothing_written(tmp_path / "pred")


def test_deep_json_symlinked_weights_and_nan_weights_are_refused(tiny_run, folder, tmp_path):
    from safetensors.torch import load_file, save_file

    root, _ = folder
    deep = tmp_path / "deep"
    shutil.copytree(tiny_run, deep)
    (deep / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    done = _predict(deep, root, tmp_path / "p1")
    assert done.exit_code == 2 and "nests lists or objects too deeply" in _text(done)
    linked = tmp_path / "linked"
    shutil.copytree(tiny_run, linked)
    (tmp_path / "outside.safetensors").write_bytes((linked / "model.safetensors").read_bytes())
    (linked / "model.safetensors").unlink()
    (linked / "model.safetensors").symlink_to(tmp_path / "outside.safetensors")
    done = _predict(linked, root, tmp_path / "p2")
    assert done.exit_code == 2 and "outside" in _text(done)
    nan = tmp_path / "nan"
    shutil.copytree(tiny_run, nan)
    state = load_file(nan / "model.safetensors")
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = torch.full_like(state[first], float("nan"))
    save_file(state, nan / "model.safetensors")
    done = _predict(nan, root, tmp_path / "p3")
    assert done.exit_code == 2 and first in _text(done)
    assert all(_nothing_written(tmp_path / p) for p in ("p1", "p2", "p3"))


def test_a_run_killed_before_its_manifest_says_resume_and_resume_keeps_the_run_s_options(tiny_run, folder, tmp_path):
    root, _ = folder
    killed = tmp_path / "killed"
    shutil.copytree(tiny_run, killed)
    (killed / "manifest.json").unlink()
    done = _predict(killed, root, tmp_path / "pred")
    assert done.exit_code == 2 and "--resume" in _text(done) and "older cnnkit" not in _text(done)
    for option, value in (("--nodata", "0"), ("--bands", "0,1,2"), ("--model", "TinyResNet")):
        done = _train(root, killed, "--width", "4", "--resume", option, value)
        text = _text(done)
        assert done.exit_code == 2 and f"started with {option}" in text and f"gives {option} {value}" in text, text
    done = _train(root, killed, "--resume", "--model", "Unet", "--encoder", "resnet18")
    assert done.exit_code == 2 and "started with --model TinySegNet" in _text(done)
    done = _train(root, killed, "--width", "4", "--resume")  # finishes the run: report and manifest written
    assert done.exit_code == 0, done.output
    assert (killed / "manifest.json").is_file()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        done = runner.invoke(app, ["train", str(root), "--out", str(killed), "--heldout", str(root / "held"),
                                   "--epochs", "2", "--batch-size", "4", "--classes", ",".join(CLASS_NAMES),
                                   "--ignore-index", "255", "--width", "4", "--resume"])
    assert done.exit_code == 0 and "epoch 2/2" in done.output, done.output
    assert "warn" not in done.output.lower(), done.output  # more epochs continue the run, without Lightning's warning
    # ... nor one of its callbacks' warnings (the checkpoint folder's move, from the copy above, aside)
    assert [str(w.message) for w in caught if "dirpath has changed" not in str(w.message)] == []


def _many_classes(manifest: dict, count: int) -> None:
    """A manifest made consistent for ``count`` classes (names and palette), so that only the network's size is
    left to refuse."""
    manifest["model"]["num_classes"] = count
    manifest["classes"]["names"] = [f"class {i}" for i in range(count)]
    if manifest["classes"].get("palette") is not None:
        manifest["classes"]["palette"] = [[i % 256, (i // 256) % 256, 0] for i in range(count)]


_PEAK_CHILD = """
import json, resource, sys
import torch, cnnkit.app.predict, cnnkit.models, cnnkit.rasters  # the loaded interpreter: the baseline
from cnnkit.cli.main import app
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    code = app(sys.argv[1:], standalone_mode=False)  # click returns a typer.Exit's code here
except SystemExit as stop:
    code = stop.code
except BaseException as error:  # typer's Exit and click's exceptions carry the exit code
    code = getattr(error, "exit_code", repr(error))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("PEAK", json.dumps({"base_kb": base, "peak_kb": peak, "code": code}))
"""


@pytest.mark.slow
@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m["model"]["spec"]["args"].__setitem__("width", 100000), "100000"),
    (lambda m: m["model"]["spec"]["args"].__setitem__("width", 4000), "over the budget"),
    (lambda m: _many_classes(m, 4096), "2 shapes differ"),  # small enough; the weights header refuses it
    (lambda m: m["model"].__setitem__("spec", {"library": "smp", "architecture": "Unet", "encoder": "resnet152",
                                               "args": {"decoder_channels": [4096, 4096, 4096, 4096, 4096]}}),
     "over the budget"),
])
def test_tampered_manifests_are_refused_within_300_mb(tiny_run, folder, tmp_path, change, message):
    """Peak memory of the refusing process stays under 300 MB above the interpreter with torch and cnnkit loaded
    (measured in a child: its own ru_maxrss before and after the command)."""
    import subprocess
    import sys

    root, _ = folder
    tampered = _tampered(tiny_run, tmp_path, change)
    done = subprocess.run([sys.executable, "-c", _PEAK_CHILD, "predict", str(tampered), str(root / "held" / "images"),
                           "--out", str(tmp_path / "pred")], capture_output=True, text=True, timeout=300)
    line = [x for x in done.stdout.splitlines() if x.startswith("PEAK ")]
    assert line, done.stdout + done.stderr
    result = json.loads(line[-1][5:])
    assert result["code"] == 2 and message in " ".join((done.stdout + done.stderr).split()), done.stderr
    assert (result["peak_kb"] - result["base_kb"]) / 1024 < 300, result
    assert _nothing_written(tmp_path / "pred")


def test_imagenet_weights_offline_name_the_cache_folder_and_write_nothing(folder, tmp_path, monkeypatch):
    """``--weights imagenet`` without a network: smp's own download path (Hugging Face Hub, in its offline mode so
    the test does not wait for retries) fails, and cnnkit names the cache folder to fill; no run folder is made."""
    import os

    from huggingface_hub import constants  # installed with timm: the path smp downloads its weights by
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", os.fspath(cache))
    root, _ = folder
    done = _train(root, tmp_path / "run", "--model", "Unet", "--encoder", "resnet18", "--weights", "imagenet")
    text = _text(done)
    assert done.exit_code == 2, done.output
    assert "pretrained weights 'imagenet'" in text and "snapshot_download" in text, done.output
    assert os.path.join(os.fspath(cache), "models--smp-hub--resnet18.imagenet") in "".join(done.output.split()), text
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_pretrained_weights_through_the_command_line_adapt_the_stem_by_the_rule(folder, tmp_path):
    """A 3-band "pretrained" Unet written by the test → ``--weights PATH --band-names`` → the run's first layer is
    the documented rule applied to the file's (computed here by hand), every other weight is the file's. The
    learning rate is so small that one epoch moves no weight by more than ~1e-30."""
    import segmentation_models_pytorch as smp
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    pretrained = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=len(CLASS_NAMES))
    state = {k: v.contiguous() for k, v in pretrained.state_dict().items()}
    save_file(state, tmp_path / "pretrained.safetensors")
    root, _ = folder
    done = _train(root, tmp_path / "run", "--model", "Unet", "--encoder", "resnet18", "--weights",
                  str(tmp_path / "pretrained.safetensors"), "--band-names", "nir,red,green,blue", "--lr", "1e-30")
    assert done.exit_code == 0, done.output
    trained = load_file(tmp_path / "run" / "model.safetensors")
    w = state["encoder.conv1.weight"].double()  # (64, 3, 7, 7): red, green, blue
    mean = w.mean(dim=1)
    expected = torch.stack([mean, w[:, 0], w[:, 1], w[:, 2], torch.zeros_like(mean)], dim=1)  # nir, r, g, b, valid
    expected[:, :4] *= 3 / 4
    stem = trained["encoder.conv1.weight"].double()
    assert stem.shape == (64, 5, 7, 7)
    torch.testing.assert_close(stem, expected, rtol=1e-6, atol=1e-12)
    for name, value in state.items():
        if name == "encoder.conv1.weight" or name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        torch.testing.assert_close(trained[name], value, rtol=0, atol=1e-20, msg=name)  # zeros moved by ~1e-30
