"""Layers PyTorch lacks (filled in by the layers issue)."""

__all__: list[str] = []
