"""A static HTML report of a training run: curves, IoU, predictions per sample, t-SNE, activations, filters.

One file, ``run_dir/report/report.html``, with its PNG images beside it: no network requests, no
scripts beyond inline ``onload`` markers, readable offline in any browser, in light and dark mode. See
``docs/report.md``. Reading the run (:mod:`~cnnkit.report.reading`), building the sections
(:mod:`~cnnkit.report.sections`; the ones a training workflow puts first in :mod:`~cnnkit.report.run_sections`,
a time series' pictures in :mod:`~cnnkit.report.series_sections`) and writing the page
(:mod:`~cnnkit.report.page`) are separate files.
"""

from cnnkit.report.page import REPORT_DIR, write_report
from cnnkit.report.reading import load_run_weights, read_metrics
from cnnkit.report.run_sections import (
    RunRecipe,
    data_section,
    evaluation_section,
    recipe_section,
    series_data_section,
    series_evaluation_section,
)
from cnnkit.report.sections import ReportSection
from cnnkit.report.series_sections import frames_section, maps_section, profiles_section

__all__ = ["REPORT_DIR", "ReportSection", "RunRecipe", "data_section", "evaluation_section", "frames_section",
           "load_run_weights", "maps_section", "profiles_section", "read_metrics", "recipe_section",
           "series_data_section", "series_evaluation_section", "write_report"]
