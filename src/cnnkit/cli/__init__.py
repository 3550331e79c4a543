"""The ``cnnkit`` command line."""
