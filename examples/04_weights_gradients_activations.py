"""Seed: "what is the 'weight gradient' that CNN demos visualise next to the weights?"

A weight gradient of layer l is ∂loss/∂w_l: one number per weight, the same shape as the filters, so it
can be drawn exactly like them. ``cnnkit.inspect.Recorder`` captures a layer's activations and weight
gradient during one forward/backward pass; ``cnnkit.render`` turns each into an image grid:
``weights.png``, ``weight_grads.png`` (signed: blue < 0 < red) and ``activations.png`` (what the input
became). Prints the shapes and checks the recorded gradient equals ``conv.weight.grad``.
"""

import argparse
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

from cnnkit.inspect import Recorder
from cnnkit.render import activation_grid, filter_grid, save_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("example-output"), help="folder for the PNGs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images[:32], dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(digits.target[:32])
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
    )

    with Recorder(net, ["0"], weight_grads=True) as rec:
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
    weight = net[0].weight.detach()
    grad = rec.weight_grad("0")
    acts = torch.relu(rec.activation("0"))  # what the ReLU passes on
    print(f"loss = {loss.item():.3f}")
    print(f"weights          {tuple(weight.shape)}")
    print(f"weight gradients {tuple(grad.shape)}  (same shape as the weights: one dloss/dw per weight)")
    print(f"activations      {tuple(acts.shape)}  (N, channels, H, W after ReLU)")
    print(f"recorded gradient == conv.weight.grad: {torch.equal(grad, net[0].weight.grad)}")
    print(f"a step of SGD moves the weights by -lr * gradient; |grad| max = {grad.abs().max():.4f}")

    for name, image in {
        "weights.png": filter_grid(weight, zoom=12),
        "weight_grads.png": filter_grid(grad, zoom=12),
        "activations.png": activation_grid(acts, sample=0, zoom=8),
        "input.png": activation_grid(x, sample=0, zoom=8),
    }.items():
        print(f"wrote {save_png(image, args.out / name)}")


if __name__ == "__main__":
    main()
