"""Seed: "is a filter assigned a feature, or does it only become one during training?"

Filters start as random numbers with no purpose; training changes them until they respond to patterns
that help the loss. A tiny CNN is trained for about a second on scikit-learn's 8×8 digits while
``cnnkit.inspect.FilterEvolution`` snapshots the first-layer filters. Prints test accuracy before and
after and each filter's relative change ‖w_t − w_0‖ / ‖w_0‖; draws ``filter_evolution.png`` (one row per
filter, time left → right: random noise → oriented strokes/edges).
"""

import argparse
import time
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

from cnnkit.inspect import FilterEvolution


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("example-output"), help="folder for the PNG")
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    args = parser.parse_args()

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8)
    y = torch.tensor(digits.target)
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]

    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
    )

    def accuracy() -> float:
        with torch.no_grad():
            return (net(x_test).argmax(1) == y_test).float().mean().item()

    evolution = FilterEvolution(net, ["0"], every_n_steps=max(1, args.steps // 5))
    print(f"test accuracy at initialisation: {accuracy():.2f}")
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    start = time.perf_counter()
    for _ in range(args.steps):
        index = torch.randint(0, len(x_train), (64,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x_train[index]), y_train[index]).backward()
        optimizer.step()
        evolution.step()
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.1f} s")
    print(f"test accuracy after training: {accuracy():.2f}")

    change = evolution.change("0")
    print(f"snapshots at steps {evolution.steps}")
    final = change.relative_l2[-1]
    print("relative change of each filter from its random start:", ", ".join(f"{v:.2f}" for v in final.tolist()))
    print(f"mean relative change: {final.mean():.2f}")
    path = args.out / "filter_evolution.png"
    args.out.mkdir(parents=True, exist_ok=True)
    evolution.render("0", path, zoom=8)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
