"""``cnnkit train DATA --weights net.keras`` trains the converted Keras network itself (cnnkit issue 25).

Keras 3 (torch backend, the test extras) writes three small segmentation networks in a child process, with its own
outputs on a fixed input: ``net.keras`` (4 bands in, 5 classes, softmax head; saved for 12 × 10 images only, trained
on any size), ``net5.h5`` (5 channels in: the
bands and the validity band, logits head; legacy HDF5), ``net2.keras`` (2 bands: fits no folder here) and
``unet.keras`` (two stride-2 stages and a skip connection: sizes must be multiples of 4). The data
are 4-band TIFFs (NaN under clouds), as in test_networks.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import lightning.pytorch  # noqa: F401  (Lightning's log handler bound to pytest's stream, see test_train.py)
import numpy as np
import pytest
import tifffile
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from cnnkit.cli.main import app
from cnnkit.data import CLASS_NAMES, SyntheticLandCover

runner = CliRunner()

_KERAS_CHILD = r"""
import sys
from pathlib import Path

import keras
import numpy as np

out = Path(sys.argv[1])
keras.utils.set_random_seed(0)


def network(channels, classes, activation, size):
    image = keras.Input((*size, channels), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(image)
    x = keras.layers.BatchNormalization(name="norm")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", dilation_rate=2, activation="relu", name="conv_b")(x)
    x = keras.layers.Conv2D(classes, 1, activation=activation, name="head")(x)
    model = keras.Model(image, x)
    norm = model.get_layer("norm")  # moving statistics other than 0 and 1, so that they must be converted
    norm.moving_mean.assign(np.linspace(-0.5, 0.5, 8).astype("float32"))
    norm.moving_variance.assign(np.linspace(0.5, 2.0, 8).astype("float32"))
    return model


rng = np.random.default_rng(0)
for name, channels, activation, size in (("net.keras", 4, "softmax", (12, 10)), ("net5.h5", 5, None, (None, None)),
                                         ("net2.keras", 2, None, (None, None))):
    model = network(channels, 5, activation, size)
    model.save(out / name)
    x = rng.standard_normal((2, 12, 10, channels)).astype("float32")
    np.savez(out / (name.split(".")[0] + ".npz"), x=x, y=keras.ops.convert_to_numpy(model(x, training=False)))

# two stride-2 stages and a skip connection: sizes must be multiples of 4
image = keras.Input((None, None, 4), name="image")
skip = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="down_1")(image)
x = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="down_2")(skip)
x = keras.layers.Conv2DTranspose(6, 3, strides=2, padding="same", name="up_1")(x)
x = keras.layers.Concatenate(name="skip")([x, skip])
x = keras.layers.Conv2DTranspose(6, 3, strides=2, padding="same", name="up_2")(x)
x = keras.layers.Conv2D(5, 1, activation="softmax", name="head")(x)
model = keras.Model(image, x)
model.save(out / "unet.keras")
x = rng.standard_normal((2, 16, 12, 4)).astype("float32")
np.savez(out / "unet.npz", x=x, y=keras.ops.convert_to_numpy(model(x, training=False)))
print("ok")
"""


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory) -> Path:
    """The three Keras files and Keras's outputs (``<stem>.npz``: ``x`` channels-last in, ``y`` out)."""
    out = tmp_path_factory.mktemp("keras")
    env = {**os.environ, "KERAS_BACKEND": "torch", "PYTHONHASHSEED": "0", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", _KERAS_CHILD, str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiff_scenes) -> Path:
    """images/ and masks/ plus held/images and held/masks: 4-band float32 TIFFs, NaN under clouds, odd sizes."""
    root = tmp_path_factory.mktemp("keras-data") / "data"
    tiff_scenes(root, SyntheticLandCover(8, seed=7, min_size=24, max_size=40), name="s{}", held_from=6,
                odd_sizes=True, scale=1000.0, offset=3000.0)
    return root


def _train(root: Path, out: Path, *extra: str):
    return runner.invoke(app, ["train", str(root), "--out", str(out), "--heldout", str(root / "held"), "--epochs",
                               "1", "--batch-size", "4", "--classes", ",".join(CLASS_NAMES), "--ignore-index", "255",
                               *extra])


def _text(result) -> str:
    return " ".join(result.output.split())


def _keras_io(keras_files: Path, stem: str) -> tuple[torch.Tensor, np.ndarray]:
    data = np.load(keras_files / f"{stem}.npz")
    return torch.from_numpy(data["x"]).permute(0, 3, 1, 2), data["y"].transpose(0, 3, 1, 2)


def _keras_config(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json"))


# --- the network training starts from is Keras's ------------------------------------------------------------------

def test_the_network_training_starts_from_gives_keras_s_outputs(keras_files):
    """build_network (what cnnkit train calls) on net.keras: softmax of its logits == Keras's output; the validity
    band, appended as cnnkit's pipeline does, is left out. net5.h5 reads every channel, the validity band too."""
    from cnnkit.app.weights import build_network, spec_of_weights

    lines: list[str] = []
    path = keras_files / "net.keras"
    net = build_network(spec_of_weights(path), 5, 5, path, None, lines.append)
    assert all(module.training for module in net.modules())  # Lightning keeps the mode it finds: training
    net.eval()
    x, y = _keras_io(keras_files, "net")
    validity = torch.ones(x.shape[0], 1, *x.shape[2:])
    with torch.no_grad():
        logits = net(torch.cat([x, validity], 1))
    assert net.drop_validity_band and "the data bands, not the validity band" in lines[0]
    np.testing.assert_allclose(torch.softmax(logits.double(), 1).numpy(), y, atol=1e-5, rtol=0)
    assert not np.allclose(logits.numpy(), y, atol=1e-2)  # logits out: the final softmax was removed

    path = keras_files / "net5.h5"
    net = build_network(spec_of_weights(path), 5, 5, path, None, lines.append).eval()
    x, y = _keras_io(keras_files, "net5")
    with torch.no_grad():
        np.testing.assert_allclose(net(x).numpy(), y, atol=1e-4, rtol=0)
    assert not net.drop_validity_band and "every channel" in lines[1]


def test_a_keras_input_of_one_size_takes_any_size_where_its_layers_allow(keras_files):
    """net.keras was saved for (None, 12, 10, 4): a convolutional network, so it takes any size; the fixture
    classifier flattens its features, so it keeps its declared (None, 10, 10, 3)."""
    from cnnkit.keras.network import architecture_of, from_keras_file

    net = from_keras_file(keras_files / "net.keras", in_channels=5, num_classes=5)
    assert net.model.keras_input_shapes == ((None, None, 4),)
    assert net(torch.zeros(1, 5, 7, 31)).shape == (1, 5, 7, 31)
    fixture = Path(__file__).parents[1] / "keras" / "fixtures" / "classifier.keras"
    assert architecture_of(fixture)[1].keras_input_shapes == ((10, 10, 3),)


def test_the_size_multiple_is_the_total_stride_and_the_spec_records_it(keras_files):
    """unet.keras: two stride-2 stages → 4, recorded in the spec and given by the registry; gives Keras's outputs."""
    from cnnkit.app.weights import build_network, spec_of_weights
    from cnnkit.models.registry import size_multiple_of

    spec = spec_of_weights(keras_files / "unet.keras")
    assert spec.args["multiple_of"] == 4 and size_multiple_of(spec) == 4
    assert spec_of_weights(keras_files / "net.keras").args["multiple_of"] == 1
    net = build_network(spec, 5, 5, keras_files / "unet.keras", None, lambda line: None).eval()
    x, y = _keras_io(keras_files, "unet")
    with torch.no_grad():
        logits = net(torch.cat([x, torch.ones(x.shape[0], 1, *x.shape[2:])], 1))
    np.testing.assert_allclose(torch.softmax(logits.double(), 1).numpy(), y, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("name", "sizes"), [("net.keras", [(17, 23), (9, 12), (20, 8)]),
                                             ("unet.keras", [(16, 24), (8, 12), (20, 8)])])
def test_a_padded_training_step_equals_each_sample_alone(keras_files, name, sizes):
    """Loss and every gradient of masked(net) on a padded batch == the sum over the samples alone (float64); the
    strided network on sizes that are multiples of its 4, as cnnkit's pipeline pads them."""
    from cnnkit.keras.network import from_keras_file
    from cnnkit.masking import collate_padded, masked

    net = from_keras_file(keras_files / name, in_channels=5, num_classes=5).double().eval()
    g = torch.Generator().manual_seed(1)
    samples = [(torch.randn(5, h, w, generator=g, dtype=torch.float64),
                torch.randint(0, 5, (h, w), generator=g)) for h, w in sizes]
    images, labels = collate_padded(samples)
    loss = torch.nn.functional.cross_entropy(masked(net)(images).data, labels, ignore_index=-100, reduction="sum")
    grads = torch.autograd.grad(loss, list(net.parameters()))
    reference, ref_grads = 0.0, [torch.zeros_like(p) for p in net.parameters()]
    for image, label in samples:
        alone = torch.nn.functional.cross_entropy(net(image[None]), label[None], reduction="sum")
        reference += float(alone.detach())
        for total, grad in zip(ref_grads, torch.autograd.grad(alone, list(net.parameters()))):
            total += grad
    assert float(loss.detach()) == pytest.approx(reference, rel=1e-10)
    for (name, _), grad, ref in zip(net.named_parameters(), grads, ref_grads):
        assert torch.allclose(grad, ref, rtol=1e-8, atol=1e-10 * (1 + float(ref.abs().max()))), name


# --- cnnkit train → a run folder that names the network ---------------------------------------------------------

@pytest.fixture(scope="module")
def keras_run(folder, keras_files, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("keras-run") / "run"
    done = _train(folder, run, "--weights", str(keras_files / "net.keras"))
    assert done.exit_code == 0, done.output
    assert "network: the Keras network of" in done.output
    return run


def test_the_run_names_the_keras_network_and_holds_its_architecture(keras_run, keras_files):
    manifest = json.loads((keras_run / "manifest.json").read_text())
    tensors = load_file(keras_run / "model.safetensors")
    stored = tensors["keras_architecture"].numpy().tobytes()
    assert manifest["model"]["spec"] == {"library": "user", "architecture": "KerasNetwork",
                                         "args": {"architecture": "model.safetensors",
                                                  "sha256": hashlib.sha256(stored).hexdigest(), "multiple_of": 1}}
    assert manifest["model"]["in_channels"] == 5 and manifest["model"]["num_classes"] == 5
    architecture = json.loads(stored)
    assert architecture["config"] == _keras_config(keras_files / "net.keras")  # the file's config, as Keras wrote it
    assert architecture["format"] == "cnnkit-keras-architecture" and architecture["keras_version"].startswith("3.")
    assert tensors["model.layers.head.weight"].shape == (5, 8, 1, 1)


def _rebuilt(run: Path):
    """The run's network rebuilt by name through the registry, with the run folder's weights."""
    from cnnkit.models import parse_spec, resolve
    from cnnkit.models.weights import check_state_dict, load_weights, read_header

    manifest = json.loads((run / "manifest.json").read_text())
    builder = resolve(parse_spec(manifest["model"]["spec"]), root=run)
    with torch.device("meta"):
        meta = builder(manifest["model"]["in_channels"], manifest["model"]["num_classes"])
    check_state_dict(meta, read_header("model.safetensors", root=run))  # before anything is allocated
    net = builder(manifest["model"]["in_channels"], manifest["model"]["num_classes"])
    load_weights(net, "model.safetensors", root=run)
    return net.eval(), manifest


def test_the_run_is_rebuilt_by_name_and_tiles_equal_the_whole(keras_run, tmp_path):
    from cnnkit.predict import Predictor, Preprocessing
    from cnnkit.predict.scene import open_scene

    net, manifest = _rebuilt(keras_run)
    trained = load_file(keras_run / "model.safetensors")
    assert set(net.state_dict()) == set(trained)
    assert all(torch.equal(value, trained[key]) for key, value in net.state_dict().items())
    prep = manifest["input"]
    predictor = Predictor(net, Preprocessing(mean=tuple(prep["mean"]), std=tuple(prep["std"]), nodata=prep["nodata"],
                                             multiple_of=prep["multiple_of"], validity_band=prep["validity_band"]),
                          manifest["classes"]["names"])
    rng = np.random.default_rng(3)
    scene = rng.normal(3000, 200, (4, 300, 260)).astype(np.float32)
    scene[:, 100:140, 200:250] = np.nan
    whole = predictor.predict_image(torch.from_numpy(scene))
    labels = np.empty((300, 260), np.int16)
    scores = np.empty((300, 260, 5), np.float32)
    path = tmp_path / "scene.tif"
    tifffile.imwrite(path, scene, photometric="minisblack", planarconfig="separate")
    opened = open_scene(path, 4)
    try:
        predictor.predict_scene(opened, tile=64, labels_out=labels, probabilities_out=scores)
    finally:
        opened.close()
    probabilities = whole.probabilities.permute(1, 2, 0).numpy()
    valid = whole.valid.numpy()
    assert np.abs(scores - probabilities)[valid].max() <= 1e-5
    top2 = np.sort(probabilities, axis=-1)[..., -2:]
    clear = valid & (top2[..., 1] - top2[..., 0] > 1e-4)
    assert clear.mean() > 0.5 and np.array_equal(labels[clear], whole.labels.numpy()[clear])


def test_cnnkit_predict_rebuilds_the_run_without_code_and_fine_tuning_continues_from_it(keras_run, folder, tmp_path):
    """A fresh process (no import of cnnkit.keras by the caller) predicts from the run: labels == the argmax of the
    network rebuilt here on the same standardised input; --weights RUN (no --model) fine-tunes the Keras network."""
    from PIL import Image

    done = subprocess.run([sys.executable, "-m", "cnnkit", "predict", str(keras_run), str(folder / "held" / "images"),
                           "--out", str(tmp_path / "pred")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    stems = sorted(p.stem for p in (folder / "held" / "images").iterdir())
    predicted = {s: np.array(Image.open(tmp_path / "pred" / f"{s}_labels.png")) for s in stems}
    net, manifest = _rebuilt(keras_run)
    prep = manifest["input"]
    for stem in stems:
        bands = tifffile.imread(folder / "held" / "images" / f"{stem}.tif").astype(np.float64)
        valid = np.isfinite(bands).all(0)
        scaled = (bands - np.array(prep["mean"])[:, None, None]) / np.array(prep["std"])[:, None, None]
        image = np.concatenate([np.where(valid, scaled, 0.0), valid[None].astype(np.float64)])
        with torch.no_grad():
            logits = net.double()(torch.from_numpy(image)[None])[0].numpy()
        top2 = np.sort(logits, axis=0)[-2:]
        clear = valid & (top2[1] - top2[0] > 1e-4)
        assert clear.mean() > 0.5 and np.array_equal(predicted[stem][clear], logits.argmax(0)[clear])

    done = _train(folder, tmp_path / "again", "--weights", str(keras_run))
    assert done.exit_code == 0, done.output
    again = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert again["model"]["spec"] == manifest["model"]["spec"]


def test_a_strided_keras_network_trains_on_odd_sizes_padded_to_its_multiple_and_predicts(folder, keras_files,
                                                                                          tmp_path):
    """unet.keras needs multiples of 4: cnnkit train pads the odd-sized images to them (the spec's multiple_of, through
    the registry), and cnnkit predict gives a label map of each image's own size."""
    from PIL import Image

    done = _train(folder, tmp_path / "run", "--weights", str(keras_files / "unet.keras"))
    assert done.exit_code == 0, done.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["input"]["multiple_of"] == 4 and manifest["model"]["spec"]["args"]["multiple_of"] == 4
    done = subprocess.run([sys.executable, "-m", "cnnkit", "predict", str(tmp_path / "run"),
                           str(folder / "held" / "images"), "--out", str(tmp_path / "pred")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for image in (folder / "held" / "images").iterdir():
        shape = tifffile.imread(image).shape[1:]
        assert np.array(Image.open(tmp_path / "pred" / f"{image.stem}_labels.png")).shape == shape


# --- refusals -----------------------------------------------------------------------------------------------------

def _with_architecture(run: Path, tmp_path: Path, change, *, manifest_follows: bool) -> Path:
    """A copy of ``run`` whose stored Keras config is changed by ``change`` (and the manifest's digest with it)."""
    copy = tmp_path / "tampered"
    shutil.copytree(run, copy)
    tensors = load_file(copy / "model.safetensors")
    architecture = json.loads(tensors["keras_architecture"].numpy().tobytes())
    change(architecture["config"])
    data = json.dumps(architecture).encode()
    tensors["keras_architecture"] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    save_file(tensors, copy / "model.safetensors")
    if manifest_follows:
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["model"]["spec"]["args"]["sha256"] = hashlib.sha256(data).hexdigest()
        (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def _layer(config: dict, name: str) -> dict:
    return next(layer for layer in config["config"]["layers"] if layer["config"]["name"] == name)


def _wider(config: dict) -> None:
    _layer(config, "conv_b")["config"]["filters"] = 9


def _lambda(config: dict) -> None:
    layer = _layer(config, "conv_b")
    layer["class_name"], layer["module"] = "Lambda", "keras.layers"
    layer["config"] = {"name": "conv_b", "function": {"class_name": "__lambda__", "config": {"code": "x"}}}


def _huge(config: dict) -> None:
    _layer(config, "conv_b")["config"].update(filters=200_000, kernel_size=[100, 100])


@pytest.mark.parametrize(("change", "follows", "message"), [
    (_wider, False, "the run's manifest names"),
    (_lambda, True, "Lambda"),
    (_huge, True, "parameters; at most"),
    (_wider, True, "do not fit the network"),
    (None, True, "spec records multiple_of=2"),
])
def test_a_tampered_architecture_is_refused(keras_run, tmp_path, change, follows, message):
    """A changed config is refused: by the digest, by the Keras reader's checks (on the meta device: a
    2·10⁹-parameter layer allocates nothing), or — a consistent but different network — by the weights' header."""
    from cnnkit.errors import CnnkitError

    tampered = _with_architecture(keras_run, tmp_path, change or (lambda config: None), manifest_follows=follows)
    if change is None:  # the manifest alone: another size multiple
        manifest = json.loads((tampered / "manifest.json").read_text())
        manifest["model"]["spec"]["args"]["multiple_of"] = 2
        (tampered / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CnnkitError, match=message):
        _rebuilt(tampered)


def test_without_the_run_folder_the_builder_says_what_it_needs(keras_run):
    from cnnkit.errors import CnnkitError
    from cnnkit.models import parse_spec, resolve

    spec = parse_spec(json.loads((keras_run / "manifest.json").read_text())["model"]["spec"])
    with pytest.raises(CnnkitError, match=r"reads its architecture from 'model.safetensors' in the run folder"):
        resolve(spec)(5, 5)
    assert (keras_run / "report" / "../model.safetensors").is_file()
    with pytest.raises(CnnkitError, match="lies outside"):
        resolve({**spec.to_dict(), "args": {**spec.args, "architecture": "../model.safetensors"}},
                root=keras_run / "report")(5, 5)


def test_a_band_count_the_keras_input_does_not_take_is_refused_naming_the_file(folder, keras_files, tmp_path):
    path = keras_files / "net2.keras"
    done = _train(folder, tmp_path / "run", "--weights", str(path))
    text = _text(done)
    assert done.exit_code == 2, done.output
    assert f"{path}: the Keras network reads 2 input channels" in text
    assert "the folder's images give 4 bands plus the validity band (5 channels)" in text
    assert not (tmp_path / "run").exists()


def test_another_model_with_keras_weights_lists_the_keys_that_differ(folder, keras_files, tmp_path):
    done = _train(folder, tmp_path / "run", "--model", "TinySegNet", "--weights", str(keras_files / "net.keras"))
    text = _text(done)
    assert done.exit_code == 2, done.output
    assert "do not fit TinySegNet" in text and "missing from the file" in text
    assert "in the file, not in the network" in text and "layers.conv_a: bias, weight" in text
    assert not (tmp_path / "run").exists()
