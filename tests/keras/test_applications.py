"""Every keras.applications family and the text/sequence models, built by Keras with random weights,
saved as ``.h5`` and ``.keras``, loaded by cnnkit in a process where Keras and TensorFlow cannot be
imported, and compared with Keras's own outputs (≤ 1e-4 of the output's scale).

The oracle is Keras 3 (``KERAS_BACKEND=torch``: no TensorFlow). It runs in a child process:
``CNNKIT_KERAS3_PYTHON`` names its interpreter (default: this one, with ``keras`` from the test extras) and
``CNNKIT_KERAS3_PATH`` an extra ``PYTHONPATH`` for it. The model files are made by
``scripts/make_keras_apps.py`` (weights=None: no downloads; BatchNorm statistics randomised; logits,
``classifier_activation=None``) and cached under ``~/.cache/cnnkit/keras-apps/`` (``CNNKIT_CACHE`` to move
it), keyed by the Keras version and the script's hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "make_keras_apps.py"
CHILD = Path(__file__).with_name("_apps_child.py")
FAMILIES = ("MobileNet", "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large", "EfficientNetB0",
            "EfficientNetV2B0", "Xception", "ResNet50", "ResNet50V2", "VGG16", "DenseNet121",
            "InceptionV3", "InceptionResNetV2", "ConvNeXtTiny")
# In keras.applications of tf-keras only (Keras 3.15 has no RegNet): documented in docs/keras.md.
NOT_IN_KERAS3 = ("RegNetX002",)
# Keras 3.15 itself refuses to build these on the torch backend (checked: the refusal is Keras's).
NOT_ON_TORCH_BACKEND = {"NASNetMobile": "not available with the torch backend"}
SEQUENCES = ("embed_bigru", "conv_lstm_text", "td_convlstm", "rnn_zoo")
RTOL = 1e-4

pytestmark = pytest.mark.slow


def _oracle_env() -> tuple[str, dict]:
    env = {**os.environ, "KERAS_BACKEND": "torch", "PYTHONHASHSEED": "0"}
    if os.environ.get("CNNKIT_KERAS3_PATH"):
        env["PYTHONPATH"] = os.environ["CNNKIT_KERAS3_PATH"] + os.pathsep + env.get("PYTHONPATH", "")
    return os.environ.get("CNNKIT_KERAS3_PYTHON", sys.executable), env


def _keras_version() -> str | None:
    python, env = _oracle_env()
    probe = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('keras'))"],
                           env=env, capture_output=True, text=True, timeout=120)
    return probe.stdout.strip() if probe.returncode == 0 else None


def _generate(kind: str, names: tuple[str, ...]) -> tuple[Path, dict]:
    version = _keras_version()
    if version is None:
        message = ("Keras 3 (the oracle) is not importable: install the test extras (keras) or set "
                   "CNNKIT_KERAS3_PYTHON / CNNKIT_KERAS3_PATH")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    digest = hashlib.sha256(SCRIPT.read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("CNNKIT_CACHE", Path.home() / ".cache" / "cnnkit")) / "keras-apps" / (
        f"keras-{version}-{digest}") / kind
    missing = [n for n in names if not (cache / n / "io.npz").exists() and not (cache / n / "error.txt").exists()]
    if missing:
        python, env = _oracle_env()
        flags = ["--sequence"] if kind == "sequence" else []
        proc = subprocess.run([python, str(SCRIPT), *flags, str(cache), *missing], env=env, capture_output=True,
                              text=True, timeout=1800)
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if not record["ok"]:
                    (cache / record["family"]).mkdir(parents=True, exist_ok=True)
                    (cache / record["family"] / "error.txt").write_text(record["error"])
    return cache, {n: (cache / n / "error.txt").read_text() for n in names if (cache / n / "error.txt").exists()}


def _load_all(cache: Path, names) -> dict:
    pairs = [[str(cache / n / f"model.{fmt}"), str(cache / n / "io.npz")] for n in names for fmt in ("h5", "keras")
             if (cache / n / "io.npz").exists()]
    proc = subprocess.run([sys.executable, str(CHILD)], input=json.dumps(pairs), capture_output=True, text=True,
                          timeout=1200)
    records = {json.loads(line)["path"]: json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")}
    assert records or not pairs, proc.stderr[-3000:]
    return records


@pytest.fixture(scope="module")
def applications():
    cache, errors = _generate("applications", FAMILIES)
    return cache, errors, _load_all(cache, FAMILIES)


@pytest.fixture(scope="module")
def sequences():
    cache, errors = _generate("sequence", SEQUENCES)
    return cache, errors, _load_all(cache, SEQUENCES)


def _check(result, name: str, fmt: str) -> None:
    cache, errors, records = result
    assert name not in errors, f"Keras could not build {name}: {errors[name]}"
    totals = json.loads((cache / name / "totals.json").read_text())
    record = records.get(str(cache / name / f"model.{fmt}"))
    assert record is not None, f"the loading child gave no answer for {name}.{fmt}"
    assert record["blocked_ok"], "tensorflow/keras was imported in the loading child"
    assert record["ok"], f"{name}.{fmt}: {record['error']}"
    assert record["shape_ok"]
    # Not vacuous: the outputs vary (logits, not a saturated softmax).
    assert record["spread"] > 1e-3 * record["scale"] > 0
    assert record["max_abs_err"] <= RTOL * record["scale"], (
        f"{name}.{fmt}: max |cnnkit − Keras| = {record['max_abs_err']:.3g}, output scale {record['scale']:.3g}")
    assert record["keras_totals"] == [totals["trainable"], totals["non_trainable"]]


@pytest.mark.parametrize("fmt", ["h5", "keras"])
@pytest.mark.parametrize("name", FAMILIES)
def test_application_matches_keras3(applications, name, fmt):
    _check(applications, name, fmt)


@pytest.mark.parametrize("fmt", ["h5", "keras"])
@pytest.mark.parametrize("name", SEQUENCES)
def test_sequence_model_matches_keras3(sequences, name, fmt):
    _check(sequences, name, fmt)


def test_families_keras3_cannot_build_on_torch_are_refused_by_keras():
    """NASNetMobile is not in the comparison because Keras 3 refuses it on the torch backend (not cnnkit)."""
    _, errors = _generate("applications", tuple(NOT_ON_TORCH_BACKEND))
    for name, reason in NOT_ON_TORCH_BACKEND.items():
        assert reason in errors.get(name, ""), errors
