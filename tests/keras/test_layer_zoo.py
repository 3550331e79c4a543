"""Each layer configuration cnnkit converts, built by Keras itself with random weights, saved, loaded, compared.

``_layer_zoo.py`` runs in each oracle's interpreter (Keras 3 on the torch backend; tf-keras 2.21 — see
:class:`conftest.KerasOracle`) and writes one small model per case as ``.h5`` and ``.keras`` with inputs that
cross every activation's kinks and Keras's outputs. Here each file is loaded with cnnkit and its outputs
compared with Keras's: ≤ 1e-5 + 1e-4 · max |Keras| (float32). One child per oracle builds all cases
(about 50), so the whole file costs two Keras imports; the files are cached like the applications'.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import cnnkit.keras as ck

ZOO = Path(__file__).with_name("_layer_zoo.py")
RTOL, ATOL = 1e-4, 1e-5
pytestmark = pytest.mark.slow  # two Keras children (about 3 min on a loaded 2-core machine when not cached)
# Cases only one Keras can write (Keras 3 refuses "/" in a layer name; CustomScaleLayer is tf-keras's;
# tf-keras has no hard_swish, hard_silu or silu activation names).
TF_KERAS_ONLY = ("slash_names_custom_scale",)
KERAS3_ONLY = ("hard_swish_silu",)
# The cases each oracle must build: a case that silently vanished from the zoo would otherwise pass.
EXPECTED = (
    "depthwise_conv2d", "depthwise_conv2d_dilated", "depthwise_conv1d", "separable_conv2d",
    "separable_conv2d_strided", "separable_conv1d", "conv2d_transpose_same", "conv2d_transpose_output_padding",
    "conv2d_transpose_same_output_padding", "conv1d_transpose", "conv1d_transpose_valid", "rescaling",
    "normalization_config", "normalization_invert", "normalization_adapted", "layer_normalization",
    "layer_normalization_no_center", "group_normalization", "relu_clipped_leaky_threshold", "relu_max_value",
    "leaky_relu", "prelu_shared", "prelu", "elu", "softmax_last", "softmax_axis1", "activations",
    "upsampling2d_nearest", "upsampling2d_bilinear", "upsampling1d", "cropping2d", "cropping1d", "permute",
    "global_average_keepdims", "global_max_keepdims_1d", "inference_identities", "multiply", "subtract",
    "maximum", "minimum", "gru_reset_after", "gru_reset_before", "simple_rnn", "bidirectional_concat",
    "bidirectional_sum", "bidirectional_mul", "bidirectional_ave", "time_distributed_dense",
    "time_distributed_conv2d", "nested_sequential_twice",
)


@pytest.fixture(scope="module", params=["keras3", "tf_keras"])
def zoo(request, keras_oracle):
    cache, errors = keras_oracle(request.param).generate(ZOO, "layer-zoo")
    return request.param, cache, errors


def _compare(model_path: Path, io_path: Path) -> str | None:
    """None if cnnkit's outputs match Keras's; otherwise what went wrong."""
    try:
        model, _ = ck.load(model_path, channels_last_input=True)
    except Exception as error:
        return f"{type(error).__name__}: {error}"[:400]
    io = np.load(io_path)
    xs = [torch.from_numpy(io[f"x{i}"]) for i in range(sum(k.startswith("x") for k in io.files))]
    with torch.no_grad():
        out = model(*xs)
    outs = out if isinstance(out, tuple) else (out,)
    for i, o in enumerate(outs):
        ref = io[f"y{i}"]
        if tuple(o.shape) != ref.shape:
            return f"output {i} has shape {tuple(o.shape)}; Keras's {ref.shape}"
        if not np.std(ref) > 0:
            return f"output {i} is constant: the case checks nothing"
        err = float(np.abs(o.numpy() - ref).max())
        if err > ATOL + RTOL * float(np.abs(ref).max()):
            return f"output {i}: max |cnnkit − Keras| = {err:.3g} (max |Keras| = {np.abs(ref).max():.3g})"
    return None


def test_every_layer_case_matches_keras(zoo):
    oracle, cache, errors = zoo
    expected = EXPECTED + (TF_KERAS_ONLY if oracle == "tf_keras" else KERAS3_ONLY)
    assert not errors, f"{oracle} could not build: {errors}"
    built = sorted(p.name for p in cache.iterdir() if (p / "io.npz").exists())
    assert sorted(expected) == built
    failures = {}
    for case in expected:
        for fmt in ("h5", "keras"):
            problem = _compare(cache / case / f"model.{fmt}", cache / case / "io.npz")
            if problem:
                failures[f"{case}.{fmt}"] = problem
    assert not failures, f"{oracle}: {len(failures)} of {2 * len(expected)} files differ:\n" + "\n".join(
        f"  {k}: {v}" for k, v in failures.items())


def test_tf_keras_zoo_holds_what_its_cases_claim(keras_oracle):
    """Guards that the tf-keras files exercise the reader's tf-keras paths (they would pass vacuously if not)."""
    cache, _ = keras_oracle("tf_keras").generate(ZOO, "layer-zoo")
    with h5py.File(cache / "slash_names_custom_scale" / "model.h5", "r") as f:
        config = json.loads(f.attrs["model_config"])
        assert isinstance(f["model_weights/block/conv/bn"], h5py.Group)  # "/" in names: nested groups
    assert "Custom>CustomScaleLayer" in {layer["class_name"] for layer in config["config"]["layers"]}
    with h5py.File(cache / "nested_sequential_twice" / "model.h5", "r") as f:
        layers = json.loads(f.attrs["model_config"])["config"]["layers"]
    refs = {tuple(ref[:2]) for layer in layers for node in layer["inbound_nodes"] for ref in node}
    assert {("block", 1), ("block", 2)} <= refs  # the nested model's calls are nodes 1 and 2, not 0 and 1
