"""Write the Keras fixtures of ``tests/keras`` (models, sample inputs, Keras's outputs).

Runs ONLY in a separate environment that has Keras 3 (the tests themselves never need Keras or
TensorFlow). Keras 3 runs on the JAX backend, so no TensorFlow is needed::

    python3 -m venv /tmp/kerasenv
    /tmp/kerasenv/bin/pip install keras h5py numpy jax
    KERAS_BACKEND=jax /tmp/kerasenv/bin/python scripts/make_keras_fixtures.py

(Used to make the committed fixtures: Keras 3.15.1, jax 0.10.2.) The JAX backend is used on purpose: it
follows TensorFlow's semantics (XLA ``SAME`` padding) and is independent of PyTorch. Keras's *torch*
backend differs from TensorFlow for ``AveragePooling`` with ``padding="same"`` and asymmetric padding (it
pads by replication and counts the copies in the mean), so it must not be used to make these fixtures.

What it writes under ``tests/keras/fixtures/``:

* ``<name>.keras`` — Keras 3 archive (``model.save("x.keras")``);
* ``<name>.h5`` — legacy HDF5 written by Keras 3's own ``model.save("x.h5")`` (not tf-keras: TensorFlow
  is not installed here);
* ``<name>.npz`` — ``x0, x1, …`` sample inputs and ``y0, y1, …`` Keras's outputs (plain arrays, no pickle).

Keras 3 no longer has ``LocallyConnected1D/2D``. Those fixtures (``lc2d.h5``, ``lc1d_functional.h5``) are
written by hand below in the Keras 2 legacy-HDF5 layout (``model_config`` JSON in Keras 2 syntax,
``keras_version`` "2.15.0", ``model_weights/<layer>/<layer>/kernel:0`` with ``weight_names``), from a
documented config and random arrays; their expected outputs come from the plain-numpy reference
:func:`np_locally_connected` in this script. They also cover Keras 2's ``hard_sigmoid`` (0.2·x + 0.5) and
Keras 2's functional ``inbound_nodes`` syntax.

The hostile fixtures (Lambda, unknown class, truncated, wrong shapes) are built by the tests themselves
from these files.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import h5py
import numpy as np

os.environ["KERAS_BACKEND"] = "jax"
import keras
from keras import layers as L

OUT = Path(__file__).resolve().parents[1] / "tests" / "keras" / "fixtures"
RNG = np.random.default_rng(7)


def randomise(model: keras.Model) -> None:
    """Give every weight a random, non-trivial value (BN variances positive)."""
    for w in model.weights:
        shape = tuple(w.shape)
        if "variance" in w.path:
            value = RNG.uniform(0.5, 1.5, shape)
        elif "moving_mean" in w.path:
            value = RNG.normal(0, 0.3, shape)
        else:
            value = RNG.normal(0, 0.4, shape)
        w.assign(value.astype("float32"))


def save(name: str, model: keras.Model, inputs: list[np.ndarray], h5: bool = True) -> None:
    outputs = model.predict(inputs if len(inputs) > 1 else inputs[0], verbose=0)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    model.save(OUT / f"{name}.keras")
    _deflate(OUT / f"{name}.keras")
    if h5:
        model.save(OUT / f"{name}.h5")
    arrays = {f"x{i}": np.asarray(x) for i, x in enumerate(inputs)}
    arrays.update({f"y{i}": np.asarray(y) for i, y in enumerate(outputs)})
    np.savez(OUT / f"{name}.npz", **arrays)


def _deflate(path: Path) -> None:
    """Re-pack a .keras archive with deflate (Keras stores it uncompressed) to keep the fixtures small."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for n, data in members.items():
            z.writestr(n, data)


def normal(*shape: int) -> np.ndarray:
    return RNG.normal(0, 1, shape).astype("float32")


# --- models built with Keras -------------------------------------------------------------------------


def classifier() -> None:
    """Conv2D → BN → MaxPool → Flatten → Dense (Sequential)."""
    model = keras.Sequential([
        keras.Input((10, 10, 3)),
        L.Conv2D(4, 3, activation="relu"),
        L.BatchNormalization(momentum=0.9, epsilon=1e-2),
        L.MaxPooling2D(2),
        L.Flatten(),
        L.Dropout(0.5),
        L.Dense(5, activation="softmax"),
    ])
    randomise(model)
    save("classifier", model, [normal(3, 10, 10, 3)])


def text_cnn() -> None:
    """Embedding → Conv1D with kernel sizes 2, 3, 4 → GlobalMaxPooling1D → Concatenate → Dense."""
    tokens = keras.Input((12,), dtype="int32", name="tokens")
    emb = L.Embedding(30, 6)(tokens)
    branches = [L.GlobalMaxPooling1D()(L.Conv1D(5, k, activation="relu")(emb)) for k in (2, 3, 4)]
    x = L.Concatenate()(branches)
    x = L.Dropout(0.3)(x)
    out = L.Dense(3, activation="sigmoid")(x)
    model = keras.Model(tokens, out)
    randomise(model)
    save("text_cnn", model, [RNG.integers(0, 30, (4, 12)).astype("int32")])


def conv2d_same() -> None:
    """Strided and dilated 'same' convolutions, groups, padding, same-pooling; two inputs, two outputs."""
    a = keras.Input((9, 9, 2), name="image")
    b = keras.Input((5, 5, 4), name="side")
    x = L.Conv2D(4, 3, strides=2, padding="same")(a)                       # 9 → 5, TF asymmetric pads
    x = L.Conv2D(4, 3, padding="same", groups=2, activation="elu")(x)
    x = L.Add()([x, b])
    x = L.ZeroPadding2D(((1, 2), (0, 1)))(x)                               # 5 → 8 × 6
    y = L.Conv2D(3, 2, padding="same", dilation_rate=2, activation="tanh")(x)
    y = L.MaxPooling2D(3, strides=2, padding="same")(y)                    # -inf padding
    z = L.Conv2D(3, (4, 2), strides=(3, 2), padding="same")(L.Concatenate()([x, x]))
    means = L.AveragePooling2D(2, strides=2, padding="same")(x)          # padding excluded from means
    head = L.Dense(2)(L.GlobalAveragePooling2D()(y))
    pooled = L.AveragePooling2D(3, strides=2, padding="same")(y)
    maps = L.Concatenate(axis=-1)([L.GlobalMaxPooling2D(keepdims=True)(z),
                                   L.GlobalAveragePooling2D(keepdims=True)(pooled),
                                   L.GlobalMaxPooling2D(keepdims=True)(means)])
    model = keras.Model([a, b], [head, maps])
    randomise(model)
    save("conv2d_same", model, [normal(2, 9, 9, 2), normal(2, 5, 5, 4)])


def conv1d_stack() -> None:
    """Conv1D strides/same, pooling 1-D, ZeroPadding1D, BN on a sequence, Dense on the last axis."""
    model = keras.Sequential([
        keras.Input((15, 4)),
        L.Conv1D(5, 4, strides=2, padding="same"),
        L.BatchNormalization(),
        L.MaxPooling1D(2, padding="same"),
        L.AveragePooling1D(3, strides=1, padding="same"),
        L.ZeroPadding1D((1, 2)),
        L.Conv1D(6, 3, dilation_rate=2, activation="swish"),
        L.Dense(3, activation="gelu"),                                     # on the channel axis of (T, C)
        L.AveragePooling1D(2),
        L.Flatten(),
        L.Dense(4),
    ])
    randomise(model)
    save("conv1d_stack", model, [normal(3, 15, 4)])


def activations() -> None:
    """Every supported activation string, the ReLU and Softmax layers, Reshape and Concatenate axes."""
    x_in = keras.Input((6,))
    x = L.Dense(24)(x_in)
    names = ["relu", "sigmoid", "tanh", "softmax", "linear", "elu", "selu", "gelu", "swish", "silu",
             "softplus", "hard_sigmoid", "relu6", "leaky_relu", "softsign", "exponential", "mish"]
    parts = [L.Activation(n, name=f"act_{n}")(x) for n in names]
    parts.append(L.ReLU(max_value=1.0, negative_slope=0.1, threshold=0.2)(x))
    grid = L.Reshape((2, 3, 4))(x)                                       # (H, W, C)
    parts.append(L.Flatten()(L.Softmax(axis=1)(grid)))                    # softmax over H
    parts.append(L.Flatten()(L.Concatenate(axis=2)([grid, grid])))        # concat over W
    parts.append(L.Reshape((-1,))(L.Conv2D(2, 1)(grid)))
    seq = L.Reshape((4, 6))(x)
    parts.append(L.Flatten()(L.Dense(3, activation="softmax")(seq)))     # Dense + softmax on (T, C)
    model = keras.Model(x_in, L.Concatenate()(parts))
    randomise(model)
    save("activations", model, [normal(3, 6)])


def lstm() -> None:
    """Stacked LSTMs (return_sequences) → Dense."""
    model = keras.Sequential([
        keras.Input((7, 3)),
        L.LSTM(5, return_sequences=True),
        L.LSTM(4),
        L.Dense(2),
    ])
    randomise(model)
    save("lstm", model, [normal(2, 7, 3)])


def conv_lstm() -> None:
    """ConvLSTM2D (same, sequences) → ConvLSTM2D (valid, strides, last step) → Flatten → Dense."""
    model = keras.Sequential([
        keras.Input((4, 6, 6, 2)),
        L.ConvLSTM2D(3, 3, padding="same", return_sequences=True),
        L.ConvLSTM2D(2, 3, strides=2, padding="valid"),
        L.Flatten(),
        L.Dense(2),
    ])
    randomise(model)
    save("conv_lstm", model, [normal(2, 4, 6, 6, 2)])


def seeds() -> None:
    """The seed questions' layers: Dense(4800) on 2000 inputs; Conv1D(111, 5) over 300 channels.

    Weights are zeros and the archive is re-packed with deflate, so the files stay a few KB (the tests
    look at shapes only).
    """
    dense = keras.Sequential([keras.Input((2000,)), L.Dense(4800)])
    conv = keras.Sequential([keras.Input((40, 300)), L.Conv1D(111, 5)])
    for name, model in (("seed_dense", dense), ("seed_conv1d", conv)):
        for w in model.weights:
            w.assign(np.zeros(w.shape, "float32"))
        model.save(OUT / f"{name}.keras")
        _deflate(OUT / f"{name}.keras")


# --- hand-built Keras 2 legacy HDF5 files (LocallyConnected) -----------------------------------------


def np_locally_connected(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, kernel_size, strides):
    """Keras 2 LocallyConnected{1,2}D, implementation=1, padding 'valid', channels_last, in plain numpy.

    ``x`` is ``(N, *S, C)``; ``kernel`` ``(L, prod(k)·C, F)`` with patches flattened over ``(*k, C)``;
    ``bias`` ``(*S', F)``.
    """
    spatial = x.shape[1:-1]
    out_size = [(s - k) // st + 1 for s, k, st in zip(spatial, kernel_size, strides)]
    out = np.zeros((x.shape[0], *out_size, kernel.shape[-1]), np.float64)
    for pos, index in enumerate(np.ndindex(*out_size)):
        window = tuple(slice(i * st, i * st + k) for i, k, st in zip(index, kernel_size, strides))
        patch = x[(slice(None), *window, slice(None))].reshape(x.shape[0], -1)
        out[(slice(None), *index, slice(None))] = patch @ kernel[pos]
    return out + bias


def _layer(class_name: str, **config) -> dict:
    return {"class_name": class_name, "config": {"trainable": True, "dtype": "float32", **config}}


def _write_legacy_h5(path: Path, model_config: dict, weights: dict[str, list[tuple[str, np.ndarray]]]) -> None:
    """The layout tf-keras 2.x writes with ``model.save("x.h5")``."""
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["backend"] = "tensorflow"
        f.attrs["model_config"] = json.dumps(model_config)
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = np.array([n.encode() for n in weights], dtype="S")
        g.attrs["backend"] = "tensorflow"
        g.attrs["keras_version"] = "2.15.0"
        for layer, arrays in weights.items():
            lg = g.create_group(layer)
            names = [f"{layer}/{w}:0" for w, _ in arrays]
            lg.attrs["weight_names"] = np.array([n.encode() for n in names], dtype="S")
            for name, (_, value) in zip(names, arrays):
                lg.create_dataset(name, data=value)


def lc2d() -> None:
    """Sequential (Keras 2): Input 6×5×3 → LocallyConnected2D(4, (3, 2), strides (1, 2), relu) → Flatten
    → Dense(3, hard_sigmoid). Output from :func:`np_locally_connected` and numpy."""
    x = normal(2, 6, 5, 3)
    kernel = RNG.normal(0, 0.4, (4 * 2, 3 * 2 * 3, 4)).astype("float32")   # L = 4·2 positions
    bias = RNG.normal(0, 0.4, (4, 2, 4)).astype("float32")
    dense_k = RNG.normal(0, 0.4, (4 * 2 * 4, 3)).astype("float32")
    dense_b = RNG.normal(0, 0.4, (3,)).astype("float32")
    y = np.maximum(np_locally_connected(x, kernel, bias, (3, 2), (1, 2)), 0)
    y = y.reshape(2, -1) @ dense_k + dense_b
    y = np.clip(0.2 * y + 0.5, 0, 1)                                     # Keras 2 hard_sigmoid
    config = {"class_name": "Sequential", "config": {"name": "sequential", "layers": [
        _layer("InputLayer", batch_input_shape=[None, 6, 5, 3], sparse=False, ragged=False, name="input_1"),
        _layer("LocallyConnected2D", name="locally_connected2d", filters=4, kernel_size=[3, 2],
               strides=[1, 2], padding="valid", data_format="channels_last", activation="relu",
               use_bias=True, implementation=1),
        _layer("Flatten", name="flatten", data_format="channels_last"),
        _layer("Dense", name="dense", units=3, activation="hard_sigmoid", use_bias=True),
    ]}}
    _write_legacy_h5(OUT / "lc2d.h5", config, {
        "locally_connected2d": [("kernel", kernel), ("bias", bias)],
        "dense": [("kernel", dense_k), ("bias", dense_b)],
    })
    np.savez(OUT / "lc2d.npz", x0=x, y0=y.astype("float32"))


def lc1d_functional() -> None:
    """Functional (Keras 2 ``inbound_nodes`` syntax): Input (8, 2) → LocallyConnected1D(3, 3, strides 2)
    and a linear Dense(3) branch → Add... via GlobalAveragePooling1D of both. Output from numpy."""
    x = normal(2, 8, 2)
    kernel = RNG.normal(0, 0.4, (3, 3 * 2, 3)).astype("float32")
    bias = RNG.normal(0, 0.4, (3, 3)).astype("float32")
    dense_k = RNG.normal(0, 0.4, (2, 3)).astype("float32")
    a = np_locally_connected(x, kernel, bias, (3,), (2,)).mean(1)
    b = (x @ dense_k).mean(1)
    y = a + b

    def node(*names):
        return [[[n, 0, 0, {}] for n in names]]

    config = {"class_name": "Functional", "config": {
        "name": "model",
        "layers": [
            {**_layer("InputLayer", batch_input_shape=[None, 8, 2], name="seq"), "name": "seq",
             "inbound_nodes": []},
            {**_layer("LocallyConnected1D", name="lc", filters=3, kernel_size=[3], strides=[2],
                      padding="valid", data_format="channels_last", activation="linear", use_bias=True,
                      implementation=1), "name": "lc", "inbound_nodes": node("seq")},
            {**_layer("Dense", name="proj", units=3, activation="linear", use_bias=False), "name": "proj",
             "inbound_nodes": node("seq")},
            {**_layer("GlobalAveragePooling1D", name="gap_a", data_format="channels_last"), "name": "gap_a",
             "inbound_nodes": node("lc")},
            {**_layer("GlobalAveragePooling1D", name="gap_b", data_format="channels_last"), "name": "gap_b",
             "inbound_nodes": node("proj")},
            {**_layer("Add", name="add"), "name": "add", "inbound_nodes": node("gap_a", "gap_b")},
        ],
        "input_layers": [["seq", 0, 0]],
        "output_layers": [["add", 0, 0]],
    }}
    _write_legacy_h5(OUT / "lc1d_functional.h5", config, {
        "seq": [], "lc": [("kernel", kernel), ("bias", bias)], "proj": [("kernel", dense_k)],
        "gap_a": [], "gap_b": [], "add": [],
    })
    np.savez(OUT / "lc1d_functional.npz", x0=x, y0=y.astype("float32"))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    for make in (classifier, text_cnn, conv2d_same, conv1d_stack, activations, lstm, conv_lstm, seeds,
                 lc2d, lc1d_functional):
        keras.backend.clear_session()  # layer names (dense, dense_1, …) restart for every model
        make()
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total / 1024:.0f} KiB, under {OUT}")


if __name__ == "__main__":
    main()
