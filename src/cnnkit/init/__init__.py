"""Keras-compatible initialisation (being written)."""
