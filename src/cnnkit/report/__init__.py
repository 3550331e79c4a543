"""A static HTML report of a training run: curves, IoU, predictions per sample, t-SNE, activations, filters.

One file, ``run_dir/report/report.html``, with its PNG images beside it: no network requests, no
scripts beyond inline ``onload`` markers, readable offline in any browser, in light and dark mode. See
``docs/report.md``. Reading the run (:mod:`~cnnkit.report.reading`), building the sections
(:mod:`~cnnkit.report.sections`) and writing the page (:mod:`~cnnkit.report.page`) are three files.
"""

from cnnkit.report.page import REPORT_DIR, write_report
from cnnkit.report.reading import load_run_weights, read_metrics
from cnnkit.report.sections import ReportSection

__all__ = ["REPORT_DIR", "ReportSection", "load_run_weights", "read_metrics", "write_report"]
