"""Shared test fixtures. ``pytest --update-golden`` rewrites the golden files instead of comparing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite golden files under tests/")


@pytest.fixture
def golden(request):
    """``golden(path, text)``: compare text with the file at ``path`` (relative to tests/)."""
    update = request.config.getoption("--update-golden")

    def check(relative: str, text: str) -> None:
        path = Path(__file__).parent / relative
        if update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        if not path.exists():
            pytest.fail(f"golden file {relative} is missing; run pytest --update-golden to create it")
        assert text == path.read_text(encoding="utf-8"), (
            f"output differs from {relative}; if the change is intended, run pytest --update-golden"
        )

    return check


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
