"""Explain shapes, weights and parameter counts of layers and whole models."""

from cnnkit.explain import layers as _layers  # noqa: F401  (registers the torch explainers)
from cnnkit.explain.registry import Explanation, LayerReport, explain, find_explainer, register_explainer
from cnnkit.explain.summary import LayerRow, Summary, summary

__all__ = [
    "Explanation",
    "LayerReport",
    "LayerRow",
    "Summary",
    "explain",
    "find_explainer",
    "register_explainer",
    "summary",
]
