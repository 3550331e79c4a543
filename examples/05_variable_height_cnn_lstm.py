"""Seed: "scans of variable height, constant width: pad them, run a CNN then an LSTM — does the CNN ignore the zeros?"

A plain CNN does not: padding changes the numbers near the border. ``cnnkit.pad_batch`` pads the scans
into one batch that remembers each true size, ``cnnkit.masked(cnn)`` runs the unchanged CNN so that every
valid output equals the scan run alone (and the padding stays exactly zero),
``cnnkit.masking.to_packed_sequence`` turns each valid feature map into one sequence (one step per row)
for ``nn.LSTM``. Prints the sizes and that batched == one-at-a-time for the CNN and the LSTM.
"""

import argparse

import torch
from torch import nn

import cnnkit
from cnnkit.masking import feature_sizes, to_packed_sequence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="example-output", help="output folder (unused here)")
    parser.parse_args()

    torch.manual_seed(0)
    scans = [torch.randn(1, h, 32) for h in (57, 23, 40)]  # (C, H, W): height varies, width constant
    cnn = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
    ).eval()
    lstm = nn.LSTM(input_size=16 * 8, hidden_size=20, batch_first=True)

    batch = cnnkit.pad_batch(scans)
    print(f"padded batch {tuple(batch.data.shape)}, true sizes {batch.sizes.tolist()}, "
          f"{100 * batch.padding_fraction():.0f}% padding")
    features = cnnkit.masked(cnn)(batch)
    print(f"feature maps {tuple(features.data.shape)}, valid sizes {features.sizes.tolist()}")
    print(f"same sizes from the shape arithmetic: {feature_sizes(batch.sizes, cnn).tolist()}")
    packed = to_packed_sequence(features.data, features.sizes)  # one step per feature row, 16·8 features
    _, (h_batched, _) = lstm(packed)

    cnn_ok, lstm_ok = True, True
    for i, scan in enumerate(scans):
        alone = cnn(scan[None])
        cnn_ok &= torch.allclose(features.unpad()[i], alone[0], atol=1e-5)
        sizes = torch.tensor([alone.shape[-2:]])
        _, (h_alone, _) = lstm(to_packed_sequence(alone, sizes))
        lstm_ok &= torch.allclose(h_batched[:, i], h_alone[:, 0], atol=1e-5)
    outside = features.data * ~features.mask()
    print(f"padding positions exactly zero: {bool((outside == 0).all())}")
    print(f"CNN batched == one-at-a-time: {bool(cnn_ok)}")
    print(f"LSTM final state batched == one-at-a-time: {bool(lstm_ok)}")


if __name__ == "__main__":
    main()
