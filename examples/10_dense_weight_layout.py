"""Seed: "Dense(4800) on 2000 inputs has a (2000, 4800) kernel in Keras, but nn.Linear(2000, 4800).weight
is (4800, 2000) — which is right?"

Both: the same matrix, transposed. PyTorch stores W as (out, in) and computes y = x·Wᵀ + b; Keras stores
kernel = Wᵀ as (in, out) and computes y = x·kernel + b. ``cnnkit.keras.to_keras`` converts, and this
prints both shapes and checks that both formulas give the layer's output.
"""

import argparse

import torch

import cnnkit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="example-output", help="output folder (unused here)")
    parser.parse_args()

    torch.manual_seed(0)
    layer = torch.nn.Linear(2000, 4800)
    keras = cnnkit.keras.to_keras(layer)
    print(f"torch weight {tuple(layer.weight.shape)} (out, in); Keras kernel {tuple(keras['kernel'].shape)} (in, out)")
    print(f"torch bias {tuple(layer.bias.shape)}; Keras bias {tuple(keras['bias'].shape)}")
    print(f"Keras kernel == torch weight transposed: {torch.equal(keras['kernel'], layer.weight.detach().T)}")

    x = torch.randn(3, 2000)
    with torch.no_grad():
        y = layer(x)
        y_torch = x @ layer.weight.T + layer.bias
        y_keras = x @ keras["kernel"] + keras["bias"]
    print(f"y = x·Wᵀ + b matches nn.Linear: {torch.allclose(y, y_torch, atol=1e-5)}")
    print(f"y = x·kernel + b matches nn.Linear: {torch.allclose(y, y_keras, atol=1e-5)}")
    print()
    print(cnnkit.explain(layer, (2000,)))


if __name__ == "__main__":
    main()
