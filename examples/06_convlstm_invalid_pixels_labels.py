"""Seed: "ConvLSTM on a time series of multi-band images where some pixels are invalid at some timesteps
and some pixels have no label (all-zero one-hot) — how do I mask both?"

Two different masks, two different places:

- invalid *inputs* (clouds: all bands zero at a pixel and time step) go to ``cnnkit.nn.ConvLSTM2d`` as a
  per-pixel per-timestep ``mask``: a masked pixel keeps its previous state instead of reading zeros;
- missing *labels* (an all-zero one-hot vector) and per-timestep sample weights go to
  ``cnnkit.losses.pixel_cross_entropy``: those pixels add nothing to the loss and get zero gradient.

Prints both checks and the loss falling over a few training steps.
"""

import argparse

import torch
from torch import nn

from cnnkit.losses import pixel_cross_entropy
from cnnkit.nn import ConvLSTM2d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="example-output", help="output folder (unused here)")
    parser.parse_args()

    torch.manual_seed(0)
    n, t, bands, size, classes = 2, 6, 6, 16, 7
    series = torch.randn(n, t, bands, size, size)
    valid = torch.rand(n, t, size, size) > 0.25                 # False = cloud / no data
    series = series * valid[:, :, None]                         # invalid pixels: all bands zero
    labels = torch.randint(0, classes, (n, size, size))
    target = nn.functional.one_hot(labels, classes).permute(0, 3, 1, 2).float()  # (N, 7, H, W)
    unlabelled = torch.rand(n, size, size) < 0.3
    target = target * ~unlabelled[:, None]                      # all-zero one-hot: no label here
    print(f"series {tuple(series.shape)} (N, T, C, H, W); {100 * (~valid).float().mean():.0f}% invalid pixel-steps")
    print(f"one-hot target {tuple(target.shape)}; {100 * (target.sum(1) == 0).float().mean():.0f}% pixels unlabelled")

    convlstm = ConvLSTM2d(bands, 16, 3)                         # 'same' padding, Keras gate order
    head = nn.Conv2d(16, classes, 1)

    def logits_of(x):
        out, _ = convlstm(x, mask=valid)                        # (N, T, 16, H, W)
        per_step = head(out.flatten(0, 1)).unflatten(0, (n, t))  # (N, T, 7, H, W)
        return out, per_step.transpose(1, 2)                    # (N, 7, T, H, W)

    out, logits = logits_of(series)
    kept = torch.stack([(out[:, s] == out[:, s - 1]).all(1)[~valid[:, s]].all() for s in range(1, t)]).all()
    print(f"masked pixels keep their previous ConvLSTM state: {bool(kept)}")

    # A label for every time step (the same map), weighted per pixel and per step: invalid steps count 0,
    # later steps (which have seen more of the series) count more.
    target_t = target[:, :, None].expand(-1, -1, t, -1, -1)    # (N, 7, T, H, W)
    step_weight = torch.linspace(0.5, 1.0, t).view(1, t, 1, 1)
    sample_weight = valid.float() * step_weight                 # (N, T, H, W)

    logits = logits.detach().requires_grad_()
    loss = pixel_cross_entropy(logits, target_t, sample_weight=sample_weight)
    loss.backward()
    no_label = (target_t.sum(1) == 0) | (sample_weight == 0)   # (N, T, H, W)
    silent = logits.grad.abs().sum(1)[no_label].max()
    print(f"loss = {loss.item():.4f}; largest gradient at unlabelled or invalid pixels = {silent.item():.1f}")

    optimizer = torch.optim.Adam([*convlstm.parameters(), *head.parameters()], lr=0.02)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = pixel_cross_entropy(logits_of(series)[1], target_t, sample_weight=sample_weight)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print("training loss: " + " -> ".join(f"{v:.3f}" for v in losses[::7]))
    print(f"loss decreased: {losses[-1] < losses[0]}")


if __name__ == "__main__":
    main()
