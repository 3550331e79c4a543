"""Every keras.applications family and the text/sequence models, built by Keras with random weights,
saved as ``.h5`` and ``.keras``, loaded by cnnkit in a process where Keras and TensorFlow cannot be
imported, and compared with Keras's own outputs (≤ 1e-4 of the output's scale).

Two oracles, each in its own interpreter (run as a child process; cnnkit never imports either):

* **Keras 3** (``KERAS_BACKEND=torch``: no TensorFlow), from the test extras. ``CNNKIT_KERAS3_PYTHON``
  names another interpreter (default: this one) and ``CNNKIT_KERAS3_PATH`` an extra ``PYTHONPATH`` for it.
* **tf-keras 2.21** (TensorFlow's Keras 2, the other Keras people's files come from), in its own virtual
  environment, ``.venv-tf`` (``make test`` builds it: ``tensorflow-cpu==2.21.*``, ``tf-keras==2.21.*``;
  TensorFlow's protobuf and numpy pins do not mix with the main environment). ``CNNKIT_TF_KERAS_PYTHON``
  names its interpreter. Without it the tf-keras tests FAIL (they are the issue's evidence, not optional).

The model files are made by ``scripts/make_keras_apps.py`` (weights=None: no downloads; BatchNorm
statistics randomised; logits, ``classifier_activation=None``) and cached under
``~/.cache/cnnkit/keras-apps/`` (``CNNKIT_CACHE`` to move it), keyed by the oracle, its version and the
script's hash.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "make_keras_apps.py"
CHILD = Path(__file__).with_name("_apps_child.py")
# Both Kerases build these.
COMMON = ("MobileNet", "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large", "EfficientNetB0",
          "EfficientNetV2B0", "Xception", "ResNet50", "ResNet50V2", "VGG16", "DenseNet121",
          "InceptionV3", "InceptionResNetV2", "ConvNeXtTiny")
FAMILIES = {
    "keras3": COMMON,
    # RegNet is in tf-keras's keras.applications only (Keras 3.15 has none); NASNetMobile Keras 3 refuses
    # to build on the torch backend, tf-keras builds it.
    "tf_keras": (*COMMON, "NASNetMobile", "RegNetX002"),
}
# Keras 3.15 itself refuses to build these on the torch backend (checked: the refusal is Keras's).
NOT_ON_TORCH_BACKEND = {"NASNetMobile": "not available with the torch backend"}
SEQUENCES = ("embed_bigru", "conv_lstm_text", "td_convlstm", "rnn_zoo")
RTOL = 1e-4

pytestmark = pytest.mark.slow


def _load_all(cache: Path, names) -> dict:
    pairs = [[str(cache / n / f"model.{fmt}"), str(cache / n / "io.npz")] for n in names for fmt in ("h5", "keras")
             if (cache / n / "io.npz").exists()]
    proc = subprocess.run([sys.executable, str(CHILD)], input=json.dumps(pairs), capture_output=True, text=True,
                          timeout=1800)
    records = {json.loads(line)["path"]: json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")}
    assert records or not pairs, proc.stderr[-3000:]
    return records


@pytest.fixture(scope="module")
def compared(keras_oracle):
    """``compared(oracle, kind)``: (oracle, cache, refusals, load records), made once per oracle and kind.

    Memoised here rather than by parametrising a module-scoped fixture: pytest orders the tests by ``fmt``
    too and would set such a fixture up again at every change of oracle (4 loads of every file, not 2).
    """
    memo: dict = {}

    def get(oracle: str, kind: str):
        if (oracle, kind) not in memo:
            names = FAMILIES[oracle] if kind == "applications" else SEQUENCES
            flags = ["--sequence"] if kind == "sequence" else []
            cache, errors = keras_oracle(oracle).generate(SCRIPT, kind, names, flags)
            memo[oracle, kind] = (oracle, cache, errors, _load_all(cache, names))
        return memo[oracle, kind]

    return get


def _check(result, name: str, fmt: str) -> None:
    oracle, cache, errors, records = result
    assert name not in errors, f"{oracle} could not build {name}: {errors[name]}"
    totals = json.loads((cache / name / "totals.json").read_text())
    record = records.get(str(cache / name / f"model.{fmt}"))
    assert record is not None, f"the loading child gave no answer for {name}.{fmt}"
    assert record["blocked_ok"], "tensorflow/keras was imported in the loading child"
    assert record["ok"], f"{oracle} {name}.{fmt}: {record['error']}"
    assert record["shape_ok"]
    # Not vacuous: the outputs vary (logits, not a saturated softmax).
    assert record["spread"] > 1e-3 * record["scale"] > 0
    assert record["max_abs_err"] <= RTOL * record["scale"], (
        f"{oracle} {name}.{fmt}: max |cnnkit − Keras| = {record['max_abs_err']:.3g}, output scale "
        f"{record['scale']:.3g}")
    assert record["keras_totals"] == [totals["trainable"], totals["non_trainable"]]


@pytest.mark.parametrize("fmt", ["h5", "keras"])
@pytest.mark.parametrize(("oracle", "name"), [(o, n) for o in FAMILIES for n in FAMILIES[o]])
def test_application_matches_keras(compared, oracle, name, fmt):
    _check(compared(oracle, "applications"), name, fmt)


@pytest.mark.parametrize("fmt", ["h5", "keras"])
@pytest.mark.parametrize(("oracle", "name"), [(o, n) for o in FAMILIES for n in SEQUENCES])
def test_sequence_model_matches_keras(compared, oracle, name, fmt):
    _check(compared(oracle, "sequence"), name, fmt)


def test_families_keras3_cannot_build_on_torch_are_refused_by_keras(keras_oracle):
    """NASNetMobile is compared through tf-keras only: Keras 3 refuses it on the torch backend (not cnnkit)."""
    _, errors = keras_oracle("keras3").generate(SCRIPT, "applications", tuple(NOT_ON_TORCH_BACKEND))
    for name, reason in NOT_ON_TORCH_BACKEND.items():
        assert reason in errors.get(name, ""), errors


def test_keras3_has_no_regnet(keras_oracle):
    """RegNetX002 is compared through tf-keras only: Keras 3's keras.applications has no RegNet."""
    oracle = keras_oracle("keras3")
    oracle.version()
    probe = subprocess.run([oracle.python, "-c", "import keras; print(hasattr(keras.applications, 'RegNetX002'))"],
                           env=oracle.env, capture_output=True, text=True, timeout=300)
    assert probe.stdout.strip().splitlines()[-1] == "False", probe.stderr[-2000:]
