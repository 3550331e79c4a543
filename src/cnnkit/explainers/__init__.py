"""Explain shapes, weights and parameter counts of layers and whole models."""

from cnnkit.explainers import cnnkit_layers as _cnnkit_layers  # noqa: F401  (registers cnnkit.nn's explainers)
from cnnkit.explainers import layers as _layers  # noqa: F401  (registers the torch explainers)
from cnnkit.explainers.registry import Explanation, LayerReport, explain, find_explainer, register_explainer
from cnnkit.explainers.summary import LayerRow, Summary, summary

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
