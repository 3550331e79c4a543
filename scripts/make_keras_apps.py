"""Build keras.applications models with random weights and save them as ``.h5`` and ``.keras`` (test oracle).

Run with an interpreter that has Keras (Keras 3 with ``KERAS_BACKEND=torch``, or tf-keras with TensorFlow)::

    KERAS_BACKEND=torch python scripts/make_keras_apps.py OUT_DIR MobileNetV2 Xception ...
    python scripts/make_keras_apps.py --tf-keras OUT_DIR ResNet50

For each family it writes ``OUT_DIR/<family>/model.h5``, ``model.keras`` and ``io.npz`` (a channels-last
input ``x0`` and the output Keras computed, ``y0``), and prints one JSON line per family:
``{"family": ..., "ok": true, "seconds": ...}`` or ``{"family": ..., "ok": false, "error": ...}``.
No weights are downloaded (``weights=None``); every weight is random, BatchNorm's moving statistics too
(mean ~ N(0, 0.5²), variance ~ U(0.5, 2)), so that a converter that ignores them fails.

``--sequence`` instead builds the text and sequence models (``embed_bigru``, ``conv_lstm_text``,
``td_convlstm``, ``rnn_zoo``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

# Smallest input (H, W) each family accepts without pretrained weights, where it is not 32x32.
MIN_SIDE = {"Xception": 71, "InceptionV3": 75, "InceptionResNetV2": 75, "NASNetMobile": 32, "NASNetLarge": 32}
FAMILIES = ("MobileNet", "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large", "EfficientNetB0",
            "EfficientNetV2B0", "Xception", "NASNetMobile", "ResNet50", "ResNet50V2", "VGG16", "DenseNet121",
            "InceptionV3", "InceptionResNetV2", "RegNetX002", "ConvNeXtTiny")


def _randomise(keras, model, rng) -> None:
    """Random BatchNorm statistics, gammas and betas; other weights keep Keras's random initialisation."""
    for layer in _all_layers(model):
        name = type(layer).__name__
        weights = layer.get_weights()
        if not weights:
            continue
        if name == "BatchNormalization":
            new = []
            for w, var in zip(weights, layer.weights):
                vname = var.name.split("/")[-1].split(":")[0]
                if "variance" in vname:
                    new.append(rng.uniform(0.5, 2.0, w.shape).astype(w.dtype))
                elif "gamma" in vname:
                    new.append(rng.uniform(0.5, 1.5, w.shape).astype(w.dtype))
                else:
                    new.append((rng.standard_normal(w.shape) * 0.5).astype(w.dtype))
            layer.set_weights(new)
        elif name in ("LayerNormalization", "GroupNormalization", "LayerScale", "PReLU"):
            layer.set_weights([(w + rng.standard_normal(w.shape) * 0.3).astype(w.dtype) for w in weights])
        elif any(k in name for k in ("Conv", "Dense")) and any(np.all(w == 0) for w in weights):
            # Zero-initialised biases would hide a bias layout mistake.
            layer.set_weights([(w + rng.standard_normal(w.shape) * 0.05).astype(w.dtype) if np.all(w == 0) else w
                               for w in weights])


def _all_layers(model):
    out = []
    for layer in model.layers:
        out.append(layer)
        for attr in ("layer", "forward_layer", "backward_layer"):
            inner = getattr(layer, attr, None)
            if inner is not None and hasattr(inner, "get_weights"):
                out.append(inner)
    return out


def _predict(keras, model, x):
    out = model(x, training=False)
    outs = out if isinstance(out, (list, tuple)) else [out]
    return [np.asarray(keras.ops.convert_to_numpy(o)) if hasattr(keras, "ops") else np.asarray(o) for o in outs]


def build_application(keras, family: str):
    side = MIN_SIDE.get(family, 32)
    cls = getattr(keras.applications, family)
    kwargs = dict(weights=None, input_shape=(side, side, 3), classes=10, classifier_activation=None)
    if family.startswith("MobileNetV3") or family.startswith("EfficientNet") or family.startswith(
            ("RegNet", "ConvNeXt")):
        kwargs["include_preprocessing"] = True
    try:
        model = cls(**kwargs)
    except TypeError:
        kwargs.pop("include_preprocessing", None)
        model = cls(**kwargs)
    return model, [(side, side, 3)]


def build_sequence(keras, name: str):
    L = keras.layers
    if name == "embed_bigru":
        inp = keras.Input((12,), dtype="int32")
        # Embeddings of unit scale and logits out: with Keras's default (±0.05) embeddings and a softmax the
        # three outputs all sat at 1/3 ± 0.01, which hid any error in the GRUs.
        x = L.Embedding(40, 8, embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0))(inp)
        x = L.Bidirectional(L.GRU(6, return_sequences=True), merge_mode="concat")(x)
        x = L.Bidirectional(L.GRU(5, reset_after=False), merge_mode="sum")(x)
        out = L.Dense(3)(x)
        return keras.Model(inp, out), [("int", 12)]
    if name == "conv_lstm_text":
        inp = keras.Input((20, 6))
        x = L.Conv1D(8, 3, activation="relu")(inp)
        x = L.MaxPooling1D(2)(x)
        x = L.LSTM(7)(x)
        return keras.Model(inp, L.Dense(4)(x)), [(20, 6)]
    if name == "td_convlstm":
        inp = keras.Input((4, 10, 10, 3))
        x = L.TimeDistributed(L.Conv2D(5, 3, activation="relu"))(inp)
        x = L.ConvLSTM2D(6, 3, padding="same", return_sequences=False)(x)
        x = L.GlobalAveragePooling2D()(x)
        return keras.Model(inp, L.Dense(2)(x)), [(4, 10, 10, 3)]
    if name == "rnn_zoo":
        inp = keras.Input((9, 5))
        a = L.Bidirectional(L.SimpleRNN(4, return_sequences=True), merge_mode="mul")(inp)
        b = L.Bidirectional(L.GRU(4, return_sequences=True), merge_mode="ave")(inp)
        c = L.Bidirectional(L.LSTM(4, return_sequences=True), merge_mode="concat")(inp)
        x = L.Concatenate()([a, b, c])
        x = L.TimeDistributed(L.Dense(3, activation="tanh"))(x)
        x = L.SimpleRNN(5, activation="relu")(x)
        return keras.Model(inp, x), [(9, 5)]
    raise SystemExit(f"unknown sequence model {name!r}")


SEQUENCES = ("embed_bigru", "conv_lstm_text", "td_convlstm", "rnn_zoo")


def main(argv: list[str]) -> None:
    tf_keras = "--tf-keras" in argv
    sequence = "--sequence" in argv
    argv = [a for a in argv if not a.startswith("--")]
    out_dir, names = Path(argv[0]), argv[1:]
    if tf_keras:
        import tf_keras as keras
    else:
        import keras
    for name in names:
        start = time.perf_counter()
        try:
            rng = np.random.default_rng(abs(hash(name)) % 2**32 if False else sum(map(ord, name)))
            keras.utils.set_random_seed(sum(map(ord, name)))
            model, inputs = (build_sequence if sequence else build_application)(keras, name)
            _randomise(keras, model, rng)
            xs = []
            for spec in inputs:
                if spec[0] == "int":
                    xs.append(rng.integers(0, 40, (2, *spec[1:])).astype("int32"))
                else:
                    xs.append(rng.uniform(0, 255 if not sequence else 1, (2, *spec)).astype("float32"))
            ys = _predict(keras, model, xs[0] if len(xs) == 1 else xs)
            target = out_dir / name
            target.mkdir(parents=True, exist_ok=True)
            model.save(target / "model.keras")
            if tf_keras:
                model.save(target / "model.h5", save_format="h5")
            else:
                model.save(target / "model.h5")
            np.savez(target / "io.npz", **{f"x{i}": x for i, x in enumerate(xs)},
                     **{f"y{i}": y for i, y in enumerate(ys)})
            totals = {"trainable": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
                      "non_trainable": int(sum(np.prod(w.shape) for w in model.non_trainable_weights))}
            (target / "totals.json").write_text(json.dumps(totals))
            print(json.dumps({"family": name, "ok": True, "seconds": round(time.perf_counter() - start, 1),
                              **totals}), flush=True)
        except Exception as error:  # reported to the test, which decides
            print(json.dumps({"family": name, "ok": False, "error": f"{type(error).__name__}: {error}"[:2000]}),
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
