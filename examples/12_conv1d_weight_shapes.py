"""Seed: "Conv1D(111, 5) over 300-dimensional word vectors: what shape are its weights?"

The 300 embedding dimensions are input channels, so each of the 111 filters spans 5 words × 300
channels: torch ``Conv1d(300, 111, 5).weight`` is (111, 300, 5) and the Keras kernel is (5, 300, 111);
the bias is (111,). Prints both layouts (``cnnkit.keras.to_keras``), the parameter count
111·300·5 + 111 = 166,611 and ``cnnkit.explain`` for a 50-word sentence.
"""

import argparse

import torch

import cnnkit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="example-output", help="output folder (unused here)")
    parser.parse_args()

    conv = torch.nn.Conv1d(300, 111, 5)
    keras = cnnkit.keras.to_keras(conv)
    print(f"torch weight {tuple(conv.weight.shape)} (filters, channels, width); bias {tuple(conv.bias.shape)}")
    print(f"Keras kernel {tuple(keras['kernel'].shape)} (width, channels, filters); bias {tuple(keras['bias'].shape)}")
    total = sum(p.numel() for p in conv.parameters())
    print(f"parameters: 111·300·5 + 111 = {111 * 300 * 5 + 111:,} (counted: {total:,})")
    print()
    print(cnnkit.explain(conv, (300, 50)))


if __name__ == "__main__":
    main()
