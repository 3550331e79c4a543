"""The pictures a time-series run adds to its report: label maps, pixels over time, a series date by date.

Each builder takes what the workflow measured (held-out series, predicted label maps) and returns a
:class:`~cnnkit.report.ReportSection` drawn with :mod:`cnnkit.render.series`; none trains or evaluates.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from cnnkit.report.sections import ReportSection

__all__ = ["frames_section", "maps_section", "profiles_section"]


def profiles_section(series: Tensor, valid: Tensor, label: Tensor, class_names: Sequence[str],
                     palette: Sequence[Sequence[int]], bands: Sequence[int]) -> ReportSection | None:
    """*Pixels over time*: one pixel of every class of a held-out series (``(T, C, H, W)``, ``valid`` ``(T, H, W)``,
    ``label`` ``(H, W)``), the ``bands`` at the dates that hold data; ``None`` when no class has a valid pixel."""
    from cnnkit.render.series import band_profiles_figure, pick_profile_pixels

    pixels = pick_profile_pixels(label, valid, per_class=1, num_classes=len(class_names))
    if not pixels:
        return None
    fig = band_profiles_figure(series, valid, pixels, class_names, bands=bands, palette=palette)
    text = ("One pixel of every class of a held-out series: its band values at the dates that hold data, joined in "
            "order — what the ConvLSTM reads. Grey bars and crosses mark cloudy dates: there the pixel has no value, "
            "and its memory is carried over unchanged.")
    return ReportSection("Pixels over time", text, figures=[(fig, "Band profiles per class, cloudy dates marked")],
                         id="series-profiles")


def frames_section(series: Tensor, valid: Tensor, rgb_bands: Sequence[int] | None) -> ReportSection:
    """*A series, date by date*: the ``rgb_bands`` of each date (default the first three) over its validity mask."""
    from cnnkit.render.series import frame_strip_figure

    fig = frame_strip_figure(series, valid, bands=rgb_bands)
    text = (f"A held-out series of {series.shape[0]} dates: the bands (clouds in white) over the validity mask "
            "(black: no data). Each date is a frame of the recurrence; a black pixel keeps the state it had.")
    return ReportSection("A series, date by date", text, figures=[(fig, "Frames and cloud masks")], id="series-frames")


def maps_section(panels: Sequence[tuple[str, Tensor]], class_names: Sequence[str], palette: Sequence[Sequence[int]],
                 rows: int) -> ReportSection:
    """*Predicted vs true*: label-map ``panels`` (``(title, (H, W) labels)``) on ``rows`` rows, one per series."""
    from cnnkit.render.series import label_maps_figure

    fig = label_maps_figure(panels, class_names, rows=rows, palette=palette)
    text = ("Held-out series, one per row: the true labels, the network's prediction from every date, and (when "
            "it was trained) the single-date baseline's prediction from the least cloudy date. Opaque panels; "
            "each class has the legend's colour exactly; light grey has no label (not counted).")
    return ReportSection("Predicted vs true", text, figures=[(fig, "True, time series, single date")],
                         id="series-maps")
