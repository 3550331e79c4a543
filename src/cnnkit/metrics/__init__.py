"""Segmentation metrics over counted pixels: confusion matrix, per-class IoU, mean IoU (on torchmetrics)."""

from cnnkit.metrics.segmentation import SegmentationMetrics, confusion_matrix, iou, mean_iou

__all__ = ["SegmentationMetrics", "confusion_matrix", "iou", "mean_iou"]
