"""Seed: "my segmentation network outputs a softmax per pixel — how do I turn that into a coloured mask
over the image, with a legend?"

``probabilities_to_labels`` takes the arg-max class per pixel (here with a confidence threshold: pixels
below it become "uncertain" = ignore), ``colorize`` paints the label map with a fixed palette,
``overlay`` blends it over the image and ``legend`` draws the class swatches. Writes ``labels.png``,
``overlay.png`` and ``legend.png`` and prints the class counts.
"""

import argparse
from pathlib import Path

import torch

from cnnkit.render import colorize, legend, overlay, probabilities_to_labels, save_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("example-output"), help="folder for the PNGs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    size = 64
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    image = torch.stack([xx / size, yy / size, 0.5 + 0.1 * torch.randn(size, size)])  # (3, H, W)
    # Fake network output: logits for background / water / forest / road, shaped by the geometry.
    logits = torch.stack([
        torch.zeros(size, size),
        3.0 * ((xx - 20) ** 2 + (yy - 20) ** 2 < 150).float(),
        3.0 * (yy > 44).float(),
        3.0 * ((xx - yy).abs() < 4).float(),
    ])[None] + 0.8 * torch.randn(1, 4, size, size)               # (1, C, H, W)
    probabilities = logits.softmax(1)
    print(f"softmax output {tuple(probabilities.shape)}, sums to 1 per pixel: "
          f"{torch.allclose(probabilities.sum(1), torch.ones(1, size, size))}")

    labels = probabilities_to_labels(probabilities, from_logits=False, threshold=0.5)[0]  # (H, W), -100 = unsure
    names = ["background", "water", "forest", "road"]
    counts = {name: int((labels == i).sum()) for i, name in enumerate(names)}
    counts["uncertain"] = int((labels == -100).sum())
    print("pixels per class:", counts)

    print(f"wrote {save_png(colorize(labels, ignore_index=-100), args.out / 'labels.png')}")
    print(f"wrote {save_png(overlay(image, labels, alpha=0.5, ignore_index=-100), args.out / 'overlay.png')}")
    print(f"wrote {save_png(legend(names, ignore_name='uncertain'), args.out / 'legend.png')}")


if __name__ == "__main__":
    main()
