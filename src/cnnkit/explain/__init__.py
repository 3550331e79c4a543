"""Explain shapes, weights and parameter counts of layers and whole models."""

from cnnkit.explain import layers as _layers  # noqa: F401  (registers the torch explainers)
from cnnkit.explain.registry import Explanation, LayerReport, explain, find_explainer, register_explainer

__all__ = ["Explanation", "LayerReport", "explain", "find_explainer", "register_explainer"]
