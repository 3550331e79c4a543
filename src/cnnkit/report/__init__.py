"""A static HTML report of a training run: curves, IoU, summary, filters, activations, Grad-CAM, t-SNE, masks.

One file, ``run_dir/report/report.html``, with its PNG images beside it: no network requests, no
scripts beyond inline ``onload`` markers, readable offline in any browser. See ``docs/report.md``.
"""

from cnnkit.report.html import REPORT_DIR, ReportSection, load_run_weights, read_metrics, write_report

__all__ = ["REPORT_DIR", "ReportSection", "load_run_weights", "read_metrics", "write_report"]
