"""Screenshots of a cnnkit report in headless Chromium: 1400 px light, 1400 px dark, 420 px wide.

Run from the repository root::

    python scripts/report_screenshots.py                  # trains the demo (cnnkit demo) into a temporary folder
    python scripts/report_screenshots.py --run RUN_DIR    # uses RUN_DIR/report/report.html as it is

Writes ``docs/images/report-light-1400.png``, ``report-dark-1400.png``, ``report-narrow-420.png`` and
``report-inside-1400.png`` (t-SNE and activations) and ``report-filters-1400.png`` (filters and their evolution,
dark). Each shot shows the page's header and chosen sections:
the script saves a copy of ``report.html`` beside it (removed afterwards) with one CSS rule that hides the
other sections, because Chromium's ``--screenshot`` only captures the top of a page. Dark mode is Chromium's
``--force-dark-mode`` (the page follows ``prefers-color-scheme``). Shots are cropped in height and reduced to
256 colours to stay small.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
SHOTS = (
    # (file, width, height kept, dark, sections shown)
    ("report-light-1400.png", 1400, 1700, False, ("predictions",)),
    ("report-dark-1400.png", 1400, 1700, True, ("heldout", "predictions")),
    ("report-narrow-420.png", 420, 1900, False, ("predictions",)),
    ("report-inside-1400.png", 1400, 1900, False, ("tsne", "activations")),
    ("report-filters-1400.png", 1400, 1950, True, ("filters", "evolution")),
)


def _shot(page: Path, out: Path, width: int, height: int, dark: bool, profile: Path) -> None:
    from PIL import Image

    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            f"--user-data-dir={profile}", f"--window-size={width},{height + 400}", f"--screenshot={out}",
            *(["--force-dark-mode"] if dark else []), page.resolve().as_uri()]
    subprocess.run(args, check=True, capture_output=True, timeout=180)
    with Image.open(out) as image:
        cropped = image.convert("RGB").crop((0, 0, width, height))
    cropped.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)


def take(report: Path, folder: Path) -> list[Path]:
    """Write the screenshots of ``report`` (a report.html) into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    html = report.read_text(encoding="utf-8")
    written = []
    with tempfile.TemporaryDirectory() as profile:
        for name, width, height, dark, shown in SHOTS:
            keep = ", ".join(f"#{s}" for s in shown)
            rule = f"<style>main > section:not({keep}) {{ display: none; }}</style></head>"
            variant = report.parent / f"_screenshot_{name}.html"
            variant.write_text(html.replace("</head>", rule, 1), encoding="utf-8")
            try:
                _shot(variant, folder / name, width, height, dark, Path(profile))
            finally:
                variant.unlink()
            written.append(folder / name)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a run folder with report/report.html (default: train the demo)")
    parser.add_argument("--out", type=Path, default=Path("docs/images"), help="folder of the PNGs")
    args = parser.parse_args()
    if args.run is not None:
        report = args.run / "report" / "report.html"
        if not report.is_file():
            sys.exit(f"{str(report)!r} does not exist: run cnnkit demo --out {args.run} first, or leave out --run.")
        paths = take(report, args.out)
    else:
        from cnnkit.app.demo import train_demo

        with tempfile.TemporaryDirectory() as tmp:
            run = train_demo(Path(tmp) / "demo", progress=False, log=lambda line: None)
            paths = take(run.report, args.out)
    for path in paths:
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
