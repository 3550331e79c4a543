"""Write the tf-keras fixtures of ``tests/keras`` (``tests/keras/fixtures/tfk_*``): legacy ``.h5`` files
written by REAL tf-keras (TensorFlow 2.x's Keras 2), with sample inputs and tf-keras's own outputs.

Runs ONLY in a separate environment with TensorFlow and tf-keras (the tests themselves never need
either; never install them into the project's venv)::

    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu tf-keras
    TF_USE_LEGACY_KERAS=1 /tmp/tfenv/bin/python scripts/make_tf_keras_fixtures.py

(Used to make the committed fixtures: tensorflow-cpu 2.21.0, tf-keras 2.21.0, h5py 3.14.0, numpy 2.4.6,
Python 3.11.) Unlike ``scripts/make_keras_fixtures.py`` (Keras 3 on JAX, whose ``.h5`` files are
written by Keras 3 and whose LocallyConnected files are written by hand), every file here is written by
tf-keras itself with ``model.save("x.h5", save_format="h5")``: ``keras_version`` "2.x", Keras 2 config
syntax (``batch_input_shape``, ``inbound_nodes`` lists, ``Functional``/``Sequential``), weight names such
as ``lstm/lstm_cell/kernel:0``, and — for the trained classifier — ``training_config`` and
``optimizer_weights``, which the reader must ignore.

What it writes under ``tests/keras/fixtures/``:

* ``tfk_<name>.h5`` — the model, legacy HDF5, as tf-keras writes it;
* ``tfk_<name>.npz`` — ``x0, x1, …`` sample inputs and ``y0, y1, …`` tf-keras's outputs
  (``model.predict``, inference mode; plain arrays, no pickle).

Models: ``tfk_classifier`` (Conv2D stride 2 "same" → BatchNormalization with non-default epsilon /
momentum, moving statistics from two training steps → MaxPooling2D → Flatten → Dense),
``tfk_text_cnn`` (Embedding → Conv1D 2/3/4 → GlobalMaxPooling1D → Concatenate → Dense),
``tfk_lstm`` (LSTM return_sequences=True → LSTM → Dense, first layer built from ``input_shape=``),
``tfk_lc2d`` (LocallyConnected2D with an activation — tf-keras still has it), ``tfk_conv_lstm``
(ConvLSTM2D return_sequences=True, tf-keras's default ``hard_sigmoid`` recurrent activation).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tf_keras import layers as L

OUT = Path(__file__).resolve().parents[1] / "tests" / "keras" / "fixtures"
RNG = np.random.default_rng(11)


def randomise(model: keras.Model) -> None:
    """Give every weight a random, non-trivial value (BN variances positive)."""
    for w in model.weights:
        shape = tuple(w.shape)
        if "moving_variance" in w.name:
            value = RNG.uniform(0.5, 1.5, shape)
        elif "moving_mean" in w.name:
            value = RNG.normal(0, 0.3, shape)
        else:
            value = RNG.normal(0, 0.4, shape)
        w.assign(value.astype("float32"))


def normal(*shape: int) -> np.ndarray:
    return RNG.normal(0, 1, shape).astype("float32")


def save(name: str, model: keras.Model, inputs: list[np.ndarray], **kwargs) -> None:
    outputs = model.predict(inputs if len(inputs) > 1 else inputs[0], verbose=0)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    model.save(OUT / f"tfk_{name}.h5", save_format="h5", **kwargs)
    arrays = {f"x{i}": np.asarray(x) for i, x in enumerate(inputs)}
    arrays.update({f"y{i}": np.asarray(y) for i, y in enumerate(outputs)})
    np.savez(OUT / f"tfk_{name}.npz", **arrays)


def classifier() -> None:
    """Conv2D (stride 2, "same") → Conv2D → BN → MaxPool → Flatten → Dropout → Dense; trained two steps
    so BN's moving statistics come from tf-keras's own update; saved with its optimizer state."""
    model = keras.Sequential([
        keras.Input((11, 11, 3)),
        L.Conv2D(4, 3, strides=2, padding="same", activation="relu"),      # 11 → 6, TF asymmetric pads
        L.Conv2D(5, 2, padding="same"),                                     # even kernel: pad at the end
        L.BatchNormalization(momentum=0.8, epsilon=0.02),
        L.MaxPooling2D(2),
        L.Flatten(),
        L.Dropout(0.5),
        L.Dense(3, activation="softmax"),
    ])
    randomise(model)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="categorical_crossentropy")
    x = normal(16, 11, 11, 3) * 2 + 0.5
    y = np.eye(3, dtype="float32")[RNG.integers(0, 3, 16)]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)   # two steps
    bn = model.layers[2]
    assert not np.allclose(bn.moving_variance.numpy(), 1.0) and not np.allclose(bn.moving_mean.numpy(), 0.0)
    save("classifier", model, [normal(3, 11, 11, 3)])


def text_cnn() -> None:
    """Embedding → Conv1D with kernel sizes 2, 3, 4 → GlobalMaxPooling1D → Concatenate → Dense."""
    tokens = keras.Input((12,), dtype="int32", name="tokens")
    emb = L.Embedding(30, 6, input_length=12)(tokens)
    branches = [L.GlobalMaxPooling1D()(L.Conv1D(5, k, activation="relu")(emb)) for k in (2, 3, 4)]
    x = L.Concatenate()(branches)
    x = L.Dropout(0.3)(x)
    out = L.Dense(3, activation="sigmoid")(x)
    model = keras.Model(tokens, out)
    randomise(model)
    save("text_cnn", model, [RNG.integers(0, 30, (4, 12)).astype("int32")])


def lstm() -> None:
    """LSTM(return_sequences=True) → LSTM → Dense; the first layer gets ``input_shape=`` (Keras 2 style)."""
    model = keras.Sequential([
        L.LSTM(5, return_sequences=True, input_shape=(7, 3)),
        L.LSTM(4),
        L.Dense(2),
    ])
    randomise(model)
    save("lstm", model, [normal(2, 7, 3)])


def lc2d() -> None:
    """LocallyConnected2D (strides, tanh) → LocallyConnected2D (relu) → Flatten → Dense."""
    model = keras.Sequential([
        keras.Input((6, 5, 3)),
        L.LocallyConnected2D(4, (3, 2), strides=(1, 2), activation="tanh"),
        L.LocallyConnected2D(2, (2, 2), activation="relu"),
        L.Flatten(),
        L.Dense(3),
    ])
    randomise(model)
    save("lc2d", model, [normal(2, 6, 5, 3)])


def conv_lstm() -> None:
    """ConvLSTM2D (same, return_sequences, default hard_sigmoid) → ConvLSTM2D (valid) → Flatten → Dense."""
    model = keras.Sequential([
        keras.Input((3, 5, 5, 2)),
        L.ConvLSTM2D(3, 3, padding="same", return_sequences=True),
        L.ConvLSTM2D(2, 2, padding="valid"),
        L.Flatten(),
        L.Dense(2),
    ])
    randomise(model)
    save("conv_lstm", model, [normal(2, 3, 5, 5, 2)])


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    for make in (classifier, text_cnn, lstm, lc2d, conv_lstm):
        keras.backend.clear_session()  # layer names (dense, dense_1, …) restart for every model
        make()
    files = sorted(OUT.glob("tfk_*"))
    total = sum(p.stat().st_size for p in files)
    print(f"tf {tf.__version__}, tf-keras {keras.__version__}: wrote {len(files)} files, "
          f"{total / 1024:.0f} KiB, under {OUT}")


if __name__ == "__main__":
    main()
