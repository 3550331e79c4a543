"""Seed: "why does LocallyConnected2D on a 6×6×4 input with 4 filters of 3×3 hold a kernel (16, 36, 4)
and a bias (4, 4, 4)?"

Unlike Conv2D, a locally connected layer has its own filter at every output position: 6 − 3 + 1 = 4, so
4×4 = 16 positions, each with a 3·3·4 = 36-weight filter for each of the 4 outputs → (16, 36, 4), and a
bias per position and filter → (4, 4, 4). ``cnnkit.nn.LocallyConnected2d`` stores the same numbers;
this prints its Keras-layout shapes, its explanation, and the Keras docs' count for 32×32×3 → 64 filters
of 3×3: (30·30)·(3·3·3·64) + (30·30)·64.
"""

import argparse

import torch

import cnnkit
from cnnkit.nn import LocallyConnected2d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="example-output", help="output folder (unused here)")
    parser.parse_args()

    lc = LocallyConnected2d(4, 4, 3, input_size=(6, 6))
    keras = {k: tuple(v.shape) for k, v in lc.keras_weights().items()}
    print(f"LocallyConnected2D Keras weights: kernel {keras['kernel']}, bias {keras['bias']}")
    print("  kernel = (4·4 positions, 3·3·4 inputs, 4 filters); bias = (4, 4 positions, 4 filters)")
    conv = torch.nn.Conv2d(4, 4, 3, padding="same")
    print(f"Conv2D (same) Keras weights: {dict(cnnkit.keras.keras_shapes(conv))} — one shared filter bank")
    print()
    print(cnnkit.explain(lc, (4, 6, 6)))
    print()

    docs = LocallyConnected2d(3, 64, 3, input_size=(32, 32))
    expected = (30 * 30) * (3 * 3 * 3 * 64) + (30 * 30) * 64
    actual = sum(p.numel() for p in docs.parameters())
    print(f"Keras docs count for 32x32x3 -> 64 filters 3x3: (30*30)*(3*3*3*64) + (30*30)*64 = {expected:,}")
    print(f"LocallyConnected2d(3, 64, 3, input_size=(32, 32)) parameters = {actual:,} (match: {actual == expected})")


if __name__ == "__main__":
    main()
