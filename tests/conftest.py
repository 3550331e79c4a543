"""Shared test fixtures. ``pytest --update-golden`` rewrites the golden files instead of comparing."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import pytest
import torch

CHROMIUM = Path("/usr/bin/chromium")


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite golden files under tests/")


@pytest.fixture
def one_thread():
    """One torch thread for the test: small convolutions run fastest on one, and on a shared 2-core machine a second
    OpenMP thread spins in barriers (``pytestmark = pytest.mark.usefixtures("one_thread")`` for a whole file)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def open_in_chromium(tmp_path):
    """``open_in_chromium(html_path)``: load a page in headless Chromium (skips without it) and check it.

    Takes a 1200×2000 screenshot that must not be blank, dumps the DOM after load and requires every image
    to report ``data-loaded="yes"``, and fails on any console error. Returns ``(screenshot path, states)``.
    """
    if not CHROMIUM.exists():
        pytest.skip("headless check needs /usr/bin/chromium (Debian: apt-get install -y chromium)")

    def check(page: Path) -> tuple[Path, list[str]]:
        from PIL import Image

        url = page.resolve().as_uri()
        shot = tmp_path / "shot.png"
        run = _chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2000", url)
        assert shot.is_file(), run.stderr[-2000:]
        with Image.open(shot) as image:
            colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is None or len(colors) > 50  # not a blank page
        dom = _chromium(tmp_path / "profile", "--run-all-compositor-stages-before-draw",
                        "--virtual-time-budget=5000", "--dump-dom", url)
        states = re.findall(r'data-loaded="([a-z]+)"', dom.stdout)
        assert states and set(states) == {"yes"}, (states, dom.stderr[-2000:])
        for stderr in (run.stderr, dom.stderr):
            bad = [line for line in stderr.splitlines() if "Uncaught" in line or "ERROR:CONSOLE" in line]
            assert not bad, bad
        return shot, states

    return check


def _native_equals_float64(input_shape, kernel_size, stride=1, padding="valid", dilation=1, filters=20,
                           bias=True) -> None:
    """locally_connected_nd in float32 runs the C kernel (its pure-torch functions are refused meanwhile, forward
    and backward) and equals the torch path in float64, output and every gradient, on random tensors of this
    geometry."""
    import cnnkit.nn._lc_torch as torch_path
    from cnnkit.nn import locally_connected_nd
    from cnnkit.shapes import conv_output_size

    x = torch.randn(input_shape, requires_grad=True)
    n = x.dim() - 2
    size = conv_output_size(input_shape[2:], kernel_size, stride, padding, dilation)
    kernel = kernel_size if isinstance(kernel_size, tuple) else (kernel_size,) * n
    weight = torch.randn(math.prod(size), math.prod(kernel) * input_shape[1], filters, requires_grad=True)
    inputs = [x, weight, torch.randn(filters, *size, requires_grad=True)] if bias else [x, weight]
    kw = {"kernel_size": kernel_size, "stride": stride, "dilation": dilation, "padding": padding}
    saved = {name: getattr(torch_path, name) for name in ("forward", "grad_weight", "grad_input")}

    def refuse(*args, **kwargs):
        raise AssertionError("the pure-torch path ran where the C kernel was expected")

    for name in saved:
        setattr(torch_path, name, refuse)
    try:
        out = locally_connected_nd(*inputs, **kw)
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, inputs, g)
    finally:
        for name, fn in saved.items():
            setattr(torch_path, name, fn)
    ref_in = [t.detach().double().requires_grad_() for t in inputs]
    ref = locally_connected_nd(*ref_in, **kw)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, torch.autograd.grad(ref, ref_in, g.double())):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="session")
def native_equals_float64():
    """The check :func:`_native_equals_float64`, for the LocallyConnected C kernel's tests."""
    return _native_equals_float64
