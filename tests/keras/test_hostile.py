"""Hostile and broken Keras files: refused with the reason, never run, never a crash or a hang."""

from __future__ import annotations

import base64
import json
import marshal
import pickle
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import cnnkit.keras as ck
from cnnkit.errors import CnnkitError, ShapeError, UnsupportedError

FIXTURES = Path(__file__).parent / "fixtures"


def rewrite_keras(src: Path, dst: Path, config=None, weights=None) -> Path:
    """Copy a .keras archive, editing its config (a function of the dict) and/or weights (of the h5 file)."""
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    if config is not None:
        cfg = json.loads(members["config.json"])
        config(cfg)
        members["config.json"] = json.dumps(cfg).encode()
    if weights is not None:
        tmp = dst.with_suffix(".weights.h5")
        tmp.write_bytes(members["model.weights.h5"])
        with h5py.File(tmp, "r+") as f:
            weights(f)
        members["model.weights.h5"] = tmp.read_bytes()
    with zipfile.ZipFile(dst, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    return dst


def rewrite_h5_config(src: Path, dst: Path, config) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        config(cfg)
        f.attrs["model_config"] = json.dumps(cfg)
    return dst


def lambda_entry(marker: Path) -> dict:
    """A Keras 3 Lambda layer whose marshalled function would create ``marker`` if it were ever run."""
    code = compile(f"open({str(marker)!r}, 'w').close()", "<evil>", "exec")
    payload = base64.b64encode(marshal.dumps(code)).decode()
    return {
        "module": "keras.layers", "class_name": "Lambda", "registered_name": None,
        "config": {"name": "evil", "trainable": True, "dtype": "float32",
                   "function": {"class_name": "__lambda__", "config": {"code": payload, "defaults": None,
                                                                        "closure": None}},
                   "output_shape": None, "arguments": {}},
    }


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any attempt to unpickle or torch.load during the test fails it (the marker file covers code objects;
    ``marshal.loads`` cannot be patched: Python's own import machinery uses it)."""

    def refuse(*args, **kwargs):
        raise AssertionError("cnnkit tried to deserialise code or objects")

    for target, name in ((pickle, "loads"), (pickle, "load"), (torch, "load")):
        monkeypatch.setattr(target, name, refuse)


def test_lambda_is_refused_and_never_runs(tmp_path, no_unpickling):
    marker = tmp_path / "pwned"
    path = rewrite_keras(FIXTURES / "classifier.keras", tmp_path / "lambda.keras",
                         config=lambda c: c["config"]["layers"].insert(2, lambda_entry(marker)))
    with pytest.raises(UnsupportedError,
                       match=r"Layer 'evil' \(Lambda\): Lambda layers hold Python code.*never runs"):
        ck.load(path)
    assert not marker.exists()


def test_lambda_in_legacy_h5_is_refused(tmp_path, no_unpickling):
    marker = tmp_path / "pwned"
    entry = lambda_entry(marker)
    entry["config"]["function"] = [base64.b64encode(b"\xe3evil").decode(), None, None]  # Keras 2 syntax
    path = rewrite_h5_config(FIXTURES / "lc2d.h5", tmp_path / "lambda.h5",
                             lambda c: c["config"]["layers"].insert(1, entry))
    with pytest.raises(UnsupportedError, match="Lambda"):
        ck.load(path)
    assert not marker.exists()


def test_custom_objects_are_refused(tmp_path):
    def custom(c):
        layer = c["config"]["layers"][1]
        layer.update(module="my_package.layers", registered_name="Custom>FancyConv", class_name="FancyConv")

    path = rewrite_keras(FIXTURES / "classifier.keras", tmp_path / "custom.keras", config=custom)
    with pytest.raises(UnsupportedError, match=r"custom object.*my_package.layers.*never runs code"):
        ck.load(path)


def test_custom_activation_function_is_refused(tmp_path):
    def custom(c):
        c["config"]["layers"][1]["config"]["activation"] = {
            "module": "builtins", "class_name": "function", "config": "my_activation", "registered_name": "function"}

    path = rewrite_keras(FIXTURES / "classifier.keras", tmp_path / "act.keras", config=custom)
    with pytest.raises(UnsupportedError, match="activation is a custom object"):
        ck.load(path)


def test_unknown_class_is_refused_with_the_supported_list(tmp_path):
    def unknown(c):
        c["config"]["layers"][1]["class_name"] = "Conv7D"

    path = rewrite_keras(FIXTURES / "classifier.keras", tmp_path / "unknown.keras", config=unknown)
    with pytest.raises(UnsupportedError, match=r"\(Conv7D\): unknown or unsupported layer class\. Supported: .*Conv2D"):
        ck.load(path)


def test_subclassed_model_is_refused(tmp_path):
    def subclassed(c):
        c.update(class_name="MyModel", module="my_models", registered_name="Custom>MyModel")

    path = rewrite_keras(FIXTURES / "classifier.keras", tmp_path / "sub.keras", config=subclassed)
    with pytest.raises(UnsupportedError, match="custom class 'MyModel'"):
        ck.load(path)


@pytest.mark.parametrize("name", ["classifier.keras", "text_cnn.h5"])
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9])
def test_truncated_files_are_refused(tmp_path, name, fraction):
    data = (FIXTURES / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ValueError, match=r"truncated|not a Keras model file|damaged|not a readable") as info:
        ck.load(path)
    assert isinstance(info.value, CnnkitError)


def test_missing_file_and_garbage():
    with pytest.raises(ck.KerasFileError, match="Cannot open Keras file"):
        ck.load("no/such/model.keras")
    with pytest.raises(ck.KerasFileError, match="not a Keras model file"):
        ck.load(Path(__file__))


def test_archive_without_config(tmp_path):
    path = tmp_path / "empty.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model.weights.h5", b"")
    with pytest.raises(ck.KerasFileError, match=r"must contain 'config.json'"):
        ck.load(path)


def test_malformed_json_and_deep_nesting(tmp_path):
    for i, text in enumerate([b"{not json", b"[" * 100_000 + b"]" * 100_000, b"[1, 2]"]):
        path = tmp_path / f"bad{i}.keras"
        with zipfile.ZipFile(FIXTURES / "classifier.keras") as src, zipfile.ZipFile(path, "w") as z:
            z.writestr("config.json", text)
            z.writestr("model.weights.h5", src.read("model.weights.h5"))
        with pytest.raises(ck.KerasFileError, match=r"config.json"):
            ck.load(path)


def test_weights_that_disagree_with_the_config(tmp_path):
    def wider(c):
        c["config"]["layers"][-1]["config"]["units"] = 6  # the Dense kernel stored is (64, 5)

    path = rewrite_keras(FIXTURES / "classifier.keras", tmp_path / "shapes.keras", config=wider)
    with pytest.raises(ShapeError, match=r"Layer 'dense' \(Dense\): Keras weight 'kernel' must have shape \(64, 6\).*"
                                         r"stores .* with shape \(64, 5\)"):
        ck.load(path)


def test_replaced_weight_array_with_wrong_shape(tmp_path):
    def replace(f):
        group = next(g for k, g in f["layers"].items() if k.startswith("conv2d"))
        del group["vars/0"]
        group["vars"].create_dataset("0", data=np.zeros((5, 5, 3, 4), "float32"))

    path = rewrite_keras(FIXTURES / "classifier.keras", tmp_path / "conv.keras", weights=replace)
    with pytest.raises(ShapeError, match=r"'kernel' must have shape \(3, 3, 3, 4\).*\(5, 5, 3, 4\)"):
        ck.load(path)


def test_missing_weights(tmp_path):
    def drop(f):
        for k in list(f["layers"]):
            if k.startswith("dense"):
                del f["layers"][k]

    path = rewrite_keras(FIXTURES / "classifier.keras", tmp_path / "noweights.keras", weights=drop)
    with pytest.raises(ShapeError, match=r"Layer 'dense' \(Dense\): weights missing"):
        ck.load(path)


def test_non_numeric_weights_are_refused(tmp_path):
    def strings(f):
        group = next(g for k, g in f["layers"].items() if k.startswith("dense"))
        del group["vars/1"]
        group["vars"].create_dataset("1", data=np.array([b"x"] * 5, dtype=h5py.string_dtype()))

    path = rewrite_keras(FIXTURES / "classifier.keras", tmp_path / "str.keras", weights=strings)
    with pytest.raises(ck.KerasFileError, match="must hold numbers"):
        ck.load(path)


def test_absurd_sizes_are_refused_without_allocating(tmp_path):
    def huge(c):
        c["config"]["layers"][-1]["config"]["units"] = 2_000_000_000

    path = rewrite_keras(FIXTURES / "seed_dense.keras", tmp_path / "huge.keras", config=huge)
    with pytest.raises(ShapeError, match=r"asks for 4,002,000,000,000 parameters; at most 1,000,000,000"):
        ck.load(path)

    def overflow(c):
        c["config"]["layers"][-1]["config"]["units"] = 10**30

    path = rewrite_keras(FIXTURES / "seed_dense.keras", tmp_path / "overflow.keras", config=overflow)
    with pytest.raises(ShapeError, match=r"units must be an integer in \[1, 2147483647\]. Received units=1000000"):
        ck.load(path)


def test_bad_config_values_name_the_layer_and_argument(tmp_path):
    def bad(c):
        c["config"]["layers"][1]["config"]["kernel_size"] = [3, 0]

    path = rewrite_keras(FIXTURES / "classifier.keras", tmp_path / "k.keras", config=bad)
    with pytest.raises(ShapeError,
                       match=r"Layer 'conv2d' \(Conv2D\): kernel_size must be .* Received kernel_size=\(3, 0\)"):
        ck.load(path)

    def bn_axis(c):
        c["config"]["layers"][2]["config"]["axis"] = 1

    path = rewrite_keras(FIXTURES / "classifier.keras", tmp_path / "bn.keras", config=bn_axis)
    with pytest.raises(UnsupportedError, match=r"axis must be the channel axis \(-1 or 3\).*Received axis=1"):
        ck.load(path)


def test_cycles_and_dangling_references(tmp_path):
    def cycle(c):
        layers = c["config"]["layers"]
        conv = next(layer for layer in layers if layer["class_name"] == "Conv1D")
        conv["inbound_nodes"][0]["args"][0]["config"]["keras_history"] = ["concatenate", 0, 0]

    path = rewrite_keras(FIXTURES / "text_cnn.keras", tmp_path / "cycle.keras", config=cycle)
    with pytest.raises(ck.KerasFileError, match=r"cannot be run.*cycle"):
        ck.load(path)

    def dangling(c):
        c["config"]["output_layers"] = [["nowhere", 0, 0]]

    path = rewrite_keras(FIXTURES / "text_cnn.keras", tmp_path / "dangling.keras", config=dangling)
    with pytest.raises(ck.KerasFileError, match="'nowhere'"):
        ck.load(path)


def test_unsupported_options_are_refused(tmp_path):
    # go_backwards is supported since issue 14 (Bidirectional's backward layers; checked against Keras in
    # test_applications.py); return_state (several outputs) is not.
    def state(c):
        c["config"]["layers"][1]["config"]["return_state"] = True

    path = rewrite_keras(FIXTURES / "lstm.keras", tmp_path / "state.keras", config=state)
    with pytest.raises(UnsupportedError, match=r"Layer 'lstm' \(LSTM\): return_state=True is not supported"):
        ck.load(path)
