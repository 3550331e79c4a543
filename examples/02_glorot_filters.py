"""Seed: "Conv2D(32, (5, 5)) only gets a filter size — what do the 32 filters look like? all the same?"

They are 32 different random filters: Keras draws each weight from glorot_uniform,
U(±√(6/(fan_in + fan_out))) with fans that include the 5×5 receptive field. ``cnnkit.init.keras_``
does the same to a PyTorch ``Conv2d(3, 32, 5)``; this prints the limit √(6/(75+800)) ≈ 0.0828, checks
every weight lies inside it, shows that no two filters are equal, and draws them as a grid
(``glorot_filters.png``: red/green/blue = the three input channels, grey = 0).
"""

import argparse
import math
from pathlib import Path

import torch

import cnnkit
from cnnkit.render import filter_grid, save_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("example-output"), help="folder for the PNG")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    conv = cnnkit.init.keras_(torch.nn.Conv2d(3, 32, 5))
    fan_in, fan_out = 3 * 5 * 5, 32 * 5 * 5
    limit = math.sqrt(6 / (fan_in + fan_out))
    w = conv.weight.detach()
    print(f"fan_in = 3·5·5 = {fan_in}, fan_out = 32·5·5 = {fan_out}")
    print(f"glorot_uniform limit = sqrt(6/({fan_in}+{fan_out})) = {limit:.4f}")
    print(f"max |weight| = {w.abs().max():.4f} (inside the limit: {bool(w.abs().max() <= limit)})")
    print(f"weight mean = {w.mean():+.4f}, std = {w.std():.4f} (uniform: limit/sqrt(3) = {limit / math.sqrt(3):.4f})")
    print(f"bias all zero: {bool((conv.bias == 0).all())}")
    flat = w.flatten(1)
    distinct = torch.cdist(flat, flat)[~torch.eye(32, dtype=torch.bool)].min()
    print(f"smallest distance between two filters = {distinct:.3f} (all 32 filters differ: {bool(distinct > 0)})")

    path = save_png(filter_grid(w, zoom=8, scale=limit), args.out / "glorot_filters.png")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
