"""Oracle child of test_layer_zoo.py: one small model per layer configuration, built by Keras, saved, run.

Run with an interpreter that has Keras (Keras 3 with ``KERAS_BACKEND=torch``, or tf-keras)::

    KERAS_BACKEND=torch python tests/keras/_layer_zoo.py OUT_DIR
    python tests/keras/_layer_zoo.py --tf-keras OUT_DIR

For each case it writes ``OUT_DIR/<case>/model.h5``, ``model.keras`` and ``io.npz`` (channels-last inputs
``x0, x1, …`` and Keras's outputs ``y0, …``) and prints one JSON line: ``{"case", "ok", "error"}``. Every
weight is random (biases, BatchNorm statistics, PReLU slopes, LayerNorm gammas included), so a converter
that drops or transposes one fails. Inputs span negative and positive values past each activation's kinks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def cases(keras, tf_keras: bool) -> dict:
    """name → () -> (model, [input shapes]); an input shape ``("int", T)`` is a batch of token ids."""
    L = keras.layers

    def seq(shape, *layers):
        def build():
            inp = keras.Input(shape)
            x = inp
            for layer in layers:
                x = layer(x)
            return keras.Model(inp, x), [shape]
        return build

    def two(shape, merge):
        def build():
            a, b = keras.Input(shape), keras.Input((1, *shape[1:]) if len(shape) > 1 else shape)
            return keras.Model([a, b], merge([a, b])), [shape, (1, *shape[1:]) if len(shape) > 1 else shape]
        return build

    def nested_twice():
        inner = keras.Sequential([keras.Input((6, 6, 3)), L.Conv2D(3, 3, padding="same"), L.ReLU()],
                                 name="block")
        inp = keras.Input((6, 6, 3))
        x = inner(inp)
        y = inner(x)  # one nested model called twice: tf-keras numbers these calls 1 and 2
        return keras.Model(inp, L.Add()([x, y])), [(6, 6, 3)]

    def normalization_adapted():
        layer = L.Normalization(axis=-1)
        layer.adapt(np.random.default_rng(0).normal(2.0, 3.0, (64, 5, 5, 3)).astype("float32"))
        return seq((5, 5, 3), layer)()

    leaky = L.LeakyReLU(0.2)
    out = {
        "depthwise_conv2d": seq((9, 9, 3), L.DepthwiseConv2D(3, depth_multiplier=2, strides=2, padding="same")),
        "depthwise_conv2d_dilated": seq((9, 9, 3), L.DepthwiseConv2D(3, dilation_rate=2, activation="relu")),
        "depthwise_conv1d": seq((10, 3), L.DepthwiseConv1D(3, depth_multiplier=2, padding="same", strides=2)),
        "separable_conv2d": seq((9, 9, 3), L.SeparableConv2D(4, 3, depth_multiplier=2, padding="same")),
        "separable_conv2d_strided": seq((9, 9, 3), L.SeparableConv2D(4, 3, strides=2, padding="same")),
        "separable_conv1d": seq((11, 3), L.SeparableConv1D(4, 3, strides=2, padding="same")),
        "conv2d_transpose_same": seq((5, 5, 3), L.Conv2DTranspose(4, 3, strides=2, padding="same")),
        "conv2d_transpose_output_padding": seq((5, 5, 3), L.Conv2DTranspose(4, 3, strides=3, padding="valid",
                                                                            output_padding=2)),
        "conv2d_transpose_same_output_padding": seq((5, 6, 3), L.Conv2DTranspose(4, (3, 4), strides=(2, 3),
                                                                                 padding="same",
                                                                                 output_padding=(1, 2))),
        "conv1d_transpose": seq((6, 3), L.Conv1DTranspose(4, 3, strides=2, padding="same", output_padding=1)),
        "conv1d_transpose_valid": seq((6, 3), L.Conv1DTranspose(4, 4, strides=3, padding="valid")),
        "rescaling": seq((4, 4, 3), L.Rescaling(1 / 127.5, offset=-1.0)),
        "normalization_config": seq((5, 5, 3), L.Normalization(mean=[1.0, -2.0, 0.5], variance=[4.0, 0.25, 1.0])),
        "normalization_invert": seq((5, 5, 3), L.Normalization(mean=[1.0, -2.0, 0.5], variance=[4.0, 0.25, 1.0],
                                                               invert=True)),
        "normalization_adapted": normalization_adapted,
        "layer_normalization": seq((5, 5, 4), L.LayerNormalization(epsilon=1e-3)),
        "layer_normalization_no_center": seq((7, 4), L.LayerNormalization(center=False)),
        "group_normalization": seq((5, 5, 4), L.GroupNormalization(groups=2)),
        "relu_clipped_leaky_threshold": seq((4, 4, 3), L.ReLU(max_value=6.0, negative_slope=0.1, threshold=0.5)),
        "relu_max_value": seq((4, 4, 3), L.ReLU(max_value=2.0)),
        "leaky_relu": seq((4, 4, 3), leaky),
        "prelu_shared": seq((4, 4, 3), L.PReLU(shared_axes=[1, 2])),
        "prelu": seq((4, 4, 3), L.PReLU()),
        "elu": seq((4, 4, 3), L.ELU(alpha=0.7)),
        "softmax_last": seq((4, 5, 3), L.Softmax()),
        "softmax_axis1": seq((4, 5, 3), L.Softmax(axis=1)),
        "activations": seq((4, 4, 3), L.Conv2D(6, 1, activation="swish"), L.Activation("gelu"),
                           L.Conv2D(6, 1, activation="hard_sigmoid"), L.Conv2D(6, 1, activation="elu"),
                           L.Activation("softplus")),
        "upsampling2d_nearest": seq((3, 4, 3), L.UpSampling2D((2, 3))),
        "upsampling2d_bilinear": seq((3, 4, 3), L.UpSampling2D(2, interpolation="bilinear")),
        "upsampling1d": seq((5, 3), L.UpSampling1D(3)),
        "cropping2d": seq((7, 8, 3), L.Cropping2D(((1, 2), (0, 3)))),
        "cropping1d": seq((9, 3), L.Cropping1D((2, 1))),
        "permute": seq((3, 4, 5), L.Permute((2, 1, 3)), L.Conv2D(2, 2)),
        "global_average_keepdims": seq((5, 5, 3), L.GlobalAveragePooling2D(keepdims=True), L.Conv2D(2, 1)),
        "global_max_keepdims_1d": seq((6, 3), L.GlobalMaxPooling1D(keepdims=True), L.Conv1D(2, 1)),
        "inference_identities": seq((5, 5, 3), L.SpatialDropout2D(0.5), L.GaussianNoise(1.0),
                                    L.GaussianDropout(0.5), L.Conv2D(2, 1)),
        "multiply": two((4, 4, 3), L.Multiply()),
        "subtract": two((4, 4, 3), L.Subtract()),
        "maximum": two((4, 4, 3), L.Maximum()),
        "minimum": two((4, 4, 3), L.Minimum()),
        "gru_reset_after": seq((7, 3), L.GRU(5, return_sequences=True)),
        "gru_reset_before": seq((7, 3), L.GRU(5, reset_after=False)),
        "simple_rnn": seq((7, 3), L.SimpleRNN(5, return_sequences=True), L.SimpleRNN(4, activation="relu")),
        "bidirectional_concat": seq((6, 3), L.Bidirectional(L.LSTM(4, return_sequences=True))),
        "bidirectional_sum": seq((6, 3), L.Bidirectional(L.GRU(4), merge_mode="sum")),
        "bidirectional_mul": seq((6, 3), L.Bidirectional(L.SimpleRNN(4), merge_mode="mul")),
        "bidirectional_ave": seq((6, 3), L.Bidirectional(L.GRU(4, reset_after=False, return_sequences=True),
                                                         merge_mode="ave")),
        "time_distributed_dense": seq((5, 3), L.TimeDistributed(L.Dense(4, activation="tanh"))),
        "time_distributed_conv2d": seq((3, 6, 6, 2), L.TimeDistributed(L.Conv2D(3, 3, strides=2,
                                                                                padding="same"))),
        "nested_sequential_twice": nested_twice,
    }
    if not tf_keras:
        # Keras 3 only: tf-keras 2.21's activations have no hard_swish / hard_silu / silu names.
        out["hard_swish_silu"] = seq((4, 4, 3), L.Activation("hard_swish"), L.Conv2D(4, 1, activation="hard_silu"),
                                     L.Activation("silu"))
    if tf_keras:
        # tf-keras only: a "/" in a layer name (Keras 3 refuses one), and InceptionResNetV2's CustomScaleLayer,
        # written to a legacy .h5 under its registered name "Custom>CustomScaleLayer".
        from tf_keras.src.applications.inception_resnet_v2 import CustomScaleLayer

        def slash_and_scale():
            inp = keras.Input((5, 5, 3))
            x = L.Conv2D(3, 3, padding="same", name="block/conv")(inp)
            x = L.BatchNormalization(name="block/conv/bn")(x)
            return keras.Model(inp, CustomScaleLayer(0.3)([inp, x])), [(5, 5, 3)]

        out["slash_names_custom_scale"] = slash_and_scale
    return out


def _randomise(model, rng) -> None:
    """Every weight random: shifted from Keras's initial values, BatchNorm variances positive."""
    # Normalization keeps its adapted statistics (data of mean 2, variance 9): tf-keras computes with copies
    # made when adapting, so assigning the stored ones afterwards would desynchronise output and file.
    adapted = {id(w) for layer in model.layers if type(layer).__name__ == "Normalization" for w in layer.weights}
    for w in model.weights:
        if id(w) in adapted:
            continue
        name = w.name.split("/")[-1].split(":")[0]
        value = np.asarray(w.numpy())
        if "variance" in name or name == "count":
            continue  # Normalization's adapted statistics and BatchNorm's variance: set below / kept
        w.assign((value + rng.normal(0.0, 0.3, value.shape)).astype(value.dtype))
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            mean, var = layer.moving_mean, layer.moving_variance
            mean.assign(rng.normal(0.0, 0.5, mean.shape).astype("float32"))
            var.assign(rng.uniform(0.5, 2.0, var.shape).astype("float32"))


def main(argv: list[str]) -> None:
    tf_keras = "--tf-keras" in argv
    argv = [a for a in argv if not a.startswith("--")]
    out_dir = Path(argv[0])
    if tf_keras:
        import tf_keras as keras
    else:
        import keras
    for name, build in cases(keras, tf_keras).items():
        rng = np.random.default_rng(sum(map(ord, name)))
        keras.utils.set_random_seed(sum(map(ord, name)))
        try:
            model, shapes = build()
            _randomise(model, rng)
            xs = [rng.uniform(-3.0, 3.0, (2, *s)).astype("float32") for s in shapes]
            out = model(xs[0] if len(xs) == 1 else xs, training=False)
            to_numpy = keras.ops.convert_to_numpy if hasattr(keras, "ops") else np.asarray  # Keras 3 / tf-keras
            ys = [np.asarray(to_numpy(o)) for o in (out if isinstance(out, (list, tuple)) else [out])]
            target = out_dir / name
            target.mkdir(parents=True, exist_ok=True)
            model.save(target / "model.keras")
            if tf_keras:
                model.save(target / "model.h5", save_format="h5")
            else:
                model.save(target / "model.h5")
            np.savez(target / "io.npz", **{f"x{i}": x for i, x in enumerate(xs)},
                     **{f"y{i}": y for i, y in enumerate(ys)})
            print(json.dumps({"case": name, "ok": True}), flush=True)
        except Exception as error:  # reported to the test, which fails naming the case
            print(json.dumps({"case": name, "ok": False, "error": f"{type(error).__name__}: {error}"[:1500]}),
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
