"""Seed: "what size is the output of a 5×5 convolution on a 28×28 image with valid, same or full padding?"

Shows the three answers (28 → 24 / 28 / 32) from ``cnnkit.conv_output_size`` and, for each, the
derivation that ``cnnkit.explain`` gives for the matching PyTorch layer.

Run: ``python examples/01_conv_output_shapes.py [--out DIR]`` (nothing is written; ``--out`` is accepted
for uniformity with the other examples).
"""

import argparse

import torch

import cnnkit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="example-output", help="output folder (unused here)")
    parser.parse_args()

    for padding in ("valid", "same", "full"):
        size = cnnkit.conv_output_size(28, 5, padding=padding)
        print(f"{padding:>5}: 28 -> {size}")

    # PyTorch spells "full" as an explicit padding of kernel_size - 1 on each side.
    layers = {
        "valid": torch.nn.Conv2d(1, 32, 5),
        "same": torch.nn.Conv2d(1, 32, 5, padding="same"),
        "full": torch.nn.Conv2d(1, 32, 5, padding=4),
    }
    for padding, layer in layers.items():
        explanation = cnnkit.explain(layer, (1, 28, 28))
        print(f"\n--- {padding} ---")
        print(explanation)
        expected = cnnkit.conv_output_size((28, 28), 5, padding=padding)
        assert tuple(explanation.output_shape[1:]) == tuple(expected), (explanation.output_shape, expected)


if __name__ == "__main__":
    main()
