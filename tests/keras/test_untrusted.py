"""Hostile Keras files (issue 17): nothing outside the file is read, no hang, bounded memory, clear errors.

A generator writes each hostile variant from a fixture: weights whose bytes live in another file (HDF5
external storage, external links, virtual datasets), soft links, link cycles, deep groups, odd dtypes,
unwritten (sparse) datasets, archive members that lie about their size or would spool far more than
the config needs, huge declared shapes, a 16,000-layer config listed in reverse, and the damaged file
that made HDF5 loop forever.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import cnnkit.keras as ck
from cnnkit.cli.main import app
from cnnkit.errors import CnnkitError, ShapeError

FIXTURES = Path(__file__).parent / "fixtures"
runner = CliRunner()


# --- the generator -----------------------------------------------------------------------------------


def keras_weights_edit(src: Path, dst: Path, edit) -> Path:
    """Copy a .keras archive, editing its model.weights.h5 with ``edit(h5file, folder)``."""
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    tmp = dst.with_suffix(".weights.h5")
    tmp.write_bytes(members["model.weights.h5"])
    with h5py.File(tmp, "r+") as f:
        edit(f, "layers/dense/vars")
    members["model.weights.h5"] = tmp.read_bytes()
    with zipfile.ZipFile(dst, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    return dst


def h5_weights_edit(src: Path, dst: Path, edit) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f, "model_weights/dense/sequential/dense")
    return dst


def dense_bias_path(fmt: str) -> tuple[str, str]:
    """(group, name) of the classifier's Dense bias (5 float32) in each format."""
    return ("layers/dense/vars", "1") if fmt == "keras" else ("model_weights/dense/sequential/dense", "bias")


def hostile(tmp_path: Path, fmt: str, kind: str, secret: bytes) -> Path:
    """The classifier fixture with its Dense bias (5 float32) replaced by the ``kind`` of hostile dataset."""
    secret_raw = tmp_path / "secret.bin"
    secret_raw.write_bytes(secret)
    secret_h5 = tmp_path / "secret.h5"
    with h5py.File(secret_h5, "w") as s:
        s.create_dataset("d", data=np.frombuffer(secret[:20], dtype="<f4"))
    group_name, name = dense_bias_path(fmt)

    def edit(f, _):
        group = f[group_name]
        del group[name]
        if kind == "external_storage":
            group.create_dataset(name, shape=(5,), dtype="<f4", external=[(str(secret_raw), 0, 20)])
        elif kind == "external_link":
            group[name] = h5py.ExternalLink(str(secret_h5), "/d")
        elif kind == "virtual":
            layout = h5py.VirtualLayout(shape=(5,), dtype="<f4")
            layout[:] = h5py.VirtualSource(str(secret_h5), "d", shape=(5,))
            group.create_virtual_dataset(name, layout)
        elif kind == "soft_link":
            f.create_dataset("hidden", data=np.frombuffer(secret[:20], dtype="<f4"))
            group[name] = h5py.SoftLink("/hidden")
        else:  # pragma: no cover
            raise ValueError(kind)

    src = FIXTURES / f"classifier.{'keras' if fmt == 'keras' else 'h5'}"
    dst = tmp_path / f"{kind}.{'keras' if fmt == 'keras' else 'h5'}"
    return (keras_weights_edit if fmt == "keras" else h5_weights_edit)(src, dst, edit)


# --- 1. nothing outside the file is ever read ------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["keras", "h5"])
@pytest.mark.parametrize("kind", ["external_storage", "external_link", "virtual", "soft_link"])
def test_no_bytes_from_outside_the_file_reach_any_output(tmp_path, fmt, kind):
    token = secrets.token_hex(10).encode()  # 20 bytes: exactly the Dense bias
    secret = token * 4
    path = hostile(tmp_path, fmt, kind, secret)
    words = {"external_storage": "external storage", "external_link": "external link",
             "virtual": "virtual dataset", "soft_link": "soft link"}

    with pytest.raises(CnnkitError, match=words[kind]) as info:
        ck.load(path)
    assert token.decode() not in str(info.value)

    out = tmp_path / "out.safetensors"
    converted = runner.invoke(app, ["convert", str(path), str(out), "-v"])
    explained = runner.invoke(app, ["keras-explain", str(path)])
    for result in (converted, explained):
        assert result.exit_code == 2, result.output
        assert token.decode() not in result.output
        assert token not in result.output.encode()
    assert not out.exists() or token not in out.read_bytes()


# --- links, cycles, deep groups ------------------------------------------------------------------------


def test_link_cycles_and_deep_groups_are_refused_without_recursion(tmp_path):
    def hard_cycle(f, where):
        f["layers/dense"]["cell"] = f["layers/dense"]  # a hard link back to the layer's own group

    def soft_cycle(f, where):
        f["layers/dense"]["loop"] = h5py.SoftLink("/layers/dense")

    def deep(f, where):
        g = f["layers/dense"]
        for _ in range(40):
            g = g.create_group("a")

    cases = {"cycle": (hard_cycle, "hard-link cycle"), "soft": (soft_cycle, "soft link"),
             "deep": (deep, "nested more than 16 groups deep")}
    for name, (edit, message) in cases.items():
        path = keras_weights_edit(FIXTURES / "classifier.keras", tmp_path / f"{name}.keras", edit)
        with pytest.raises(ck.KerasFileError, match=message):
            ck.load(path)


# --- dtypes --------------------------------------------------------------------------------------------


def test_big_endian_weights_are_converted_to_native(tmp_path, keras_outputs):
    def big_endian(f, _):
        found = []
        f["model_weights"].visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
        for name in found:
            data = f["model_weights"][name][()]
            del f["model_weights"][name]
            f["model_weights"].create_dataset(name, data=data.astype(data.dtype.newbyteorder(">")))

    path = h5_weights_edit(FIXTURES / "classifier.h5", tmp_path / "be.h5", big_endian)
    with h5py.File(path) as f:
        assert f["model_weights/dense/sequential/dense/kernel"].dtype.byteorder == ">"
    model, report = ck.load(path, channels_last_input=True)
    keras_outputs.check_channels_last(model, report, FIXTURES / "classifier.npz")  # Keras's own outputs


@pytest.mark.parametrize(("kind", "message"), [
    ("float128", "extended float"), ("compound", "compound"), ("opaque", "opaque"),
    ("vlen", "variable-length"), ("reference", "reference"), ("enum", "enum")])
def test_odd_dtypes_are_refused_by_name(tmp_path, kind, message):
    def odd(f, _):
        group = f["layers/dense/vars"]
        del group["1"]
        if kind == "float128":
            group.create_dataset("1", data=np.zeros(5, dtype=np.longdouble))
        elif kind == "compound":
            group.create_dataset("1", data=np.zeros(5, dtype=[("a", "<f4"), ("b", "<i4")]))
        elif kind == "opaque":
            group.create_dataset("1", data=np.zeros(5, dtype="V4"))
        elif kind == "vlen":
            group.create_dataset("1", shape=(5,), dtype=h5py.vlen_dtype(np.float32))
        elif kind == "reference":
            group.create_dataset("1", data=[f.ref] * 5, dtype=h5py.ref_dtype)
        else:
            group.create_dataset("1", data=np.zeros(5, "i1"), dtype=h5py.enum_dtype({"a": 0, "b": 1}, basetype="i1"))

    path = keras_weights_edit(FIXTURES / "classifier.keras", tmp_path / f"{kind}.keras", odd)
    with pytest.raises(ck.KerasFileError, match=rf"weight 'layers/dense/vars/1'.*{message}"):
        ck.load(path)


# --- 3. memory: sparse datasets, budgets, archive members ------------------------------------------------------


@pytest.mark.parametrize("layout", ["contiguous", "chunked"])
def test_unwritten_datasets_are_refused(tmp_path, layout):
    def sparse(f, _):
        group = f["layers/dense/vars"]
        del group["0"]
        if layout == "chunked":
            d = group.create_dataset("0", shape=(64, 5), dtype="<f4", chunks=(8, 5))
            d[:8] = 1.0  # one chunk of eight written
        else:
            group.create_dataset("0", shape=(64, 5), dtype="<f4")  # declared, never written

    path = keras_weights_edit(FIXTURES / "classifier.keras", tmp_path / f"{layout}.keras", sparse)
    with pytest.raises(ck.KerasFileError, match=r"declares shape \(64, 5\).*never written"):
        ck.load(path)


def write_legacy_bn(path: Path, channels: int) -> Path:
    """A ~KB legacy .h5: Input(channels) → BatchNormalization, its four arrays declared but never written."""
    config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, channels], "name": "in"}},
        {"class_name": "BatchNormalization", "config": {"name": "bn"}}]}}
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "2.15.0"
        g = f.create_group("model_weights/bn")
        names = [f"bn/{w}:0" for w in ("gamma", "beta", "moving_mean", "moving_variance")]
        g.attrs["weight_names"] = [n.encode() for n in names]
        for n in names:
            g.create_dataset(n, shape=(channels,), dtype="<f4")
    return path


def test_small_file_declaring_gigabytes_is_refused_before_reading(tmp_path, in_children):
    # 3e8 channels: 1.2 GB per array, 4.8 GB of weights and buffers, in a 3 KB file. The old reader
    # counted parameters only (6e8 < 1e9 per layer) and read the unwritten arrays: gigabytes of zeros.
    budget = write_legacy_bn(tmp_path / "budget.h5", 300_000_000)
    sparse = write_legacy_bn(tmp_path / "sparse.h5", 20_000_000)  # 320 MB, under the budget: sparse
    assert budget.stat().st_size < 10_000
    with pytest.raises(ShapeError, match=r"asks for 4,800,000,\d+ bytes of weights and buffers; the budget is "
                                         r"max_bytes=4,294,967,296"):
        ck.load(budget)
    with pytest.raises(ck.KerasFileError, match="never written"):
        ck.load(sparse)
    records = in_children([budget, sparse], batch=2, parallel=1)
    assert [r["outcome"] for r in records] == ["cnnkit", "cnnkit"], records
    assert max(r["peak_rss_mb"] for r in records) < 1024


def test_max_bytes_is_a_total_over_all_layers_and_buffers():
    with pytest.raises(ShapeError, match=r"max_bytes=1,000.*largest layers: 'dense' 1,300"):
        ck.load(FIXTURES / "classifier.keras", max_bytes=1000)
    model, _ = ck.load(FIXTURES / "classifier.keras", max_bytes=10_000)
    total = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    assert total <= 10_000
    with pytest.raises(ShapeError, match="max_bytes must be a positive integer"):
        ck.load(FIXTURES / "classifier.keras", max_bytes=0)


def test_archive_member_bigger_than_the_config_needs_is_refused_before_spooling(tmp_path, monkeypatch):
    # A valid model.weights.h5 followed by 64 MiB of zeros: ~70 KB compressed. The old reader spooled
    # every byte (the limit was 16 GiB) and loaded the model.
    with zipfile.ZipFile(FIXTURES / "classifier.keras") as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["model.weights.h5"] += bytes(64 * 2**20)
    path = tmp_path / "padded.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in members.items():
            z.writestr(n, data)
    assert path.stat().st_size < 2**20
    written = []

    class Counting(tempfile.SpooledTemporaryFile):
        def write(self, data):
            written.append(len(data))
            return super().write(data)

    monkeypatch.setattr(tempfile, "SpooledTemporaryFile", Counting)
    with pytest.raises(ck.KerasFileError, match=r"model.weights.h5 declares 67,[\d,]+ bytes uncompressed; at most"):
        ck.load(path)
    assert sum(written) == 0


def test_archive_members_that_lie_about_their_size(tmp_path):
    data = (FIXTURES / "classifier.keras").read_bytes()
    with zipfile.ZipFile(FIXTURES / "classifier.keras") as z:
        info = z.getinfo("model.weights.h5")
    # Patch the uncompressed size in the central directory (and the local header) to half the truth.
    true = info.file_size.to_bytes(4, "little")
    lie = (info.file_size // 2).to_bytes(4, "little")
    assert data.count(true) >= 1
    path = tmp_path / "lie.keras"
    path.write_bytes(data.replace(true, lie))
    with pytest.raises(ck.KerasFileError):
        ck.load(path)


# --- 2. bounded time ---------------------------------------------------------------------------------


def test_damaged_global_heap_is_refused_instead_of_hanging(tmp_path, in_children):
    # Issue 17: classifier.h5 with ~1 KB duplicated at offset 5244 made HDF5 loop forever at 100 % CPU
    # reading model_config (a free-space object of size 0 in the global heap). Loaded in a child with a
    # time limit, so the old code fails this test instead of hanging it.
    data = (FIXTURES / "classifier.h5").read_bytes()
    paths = []
    for n in (1000, 1024):
        path = tmp_path / f"dup{n}.h5"
        path.write_bytes(data[:5244] + data[:n] + data[5244:])
        paths.append(path)
    records = in_children(paths, batch=2, parallel=1)
    assert [r["outcome"] for r in records] == ["cnnkit", "cnnkit"], records
    assert all("global heap" in r["message"] for r in records)
    assert all(r["seconds"] < 10 for r in records)


# --- 5. linear-time graph, errors at the boundary ------------------------------------------------------------


def reversed_chain(path: Path, n: int) -> Path:
    """A functional model: Input(8) → n ReLU layers in a chain, listed in the config in reverse order."""
    layers = [{"class_name": "InputLayer", "name": "in", "config": {"name": "in", "batch_input_shape": [None, 8]},
               "inbound_nodes": []}]
    prev = "in"
    for i in range(n):
        layers.append({"class_name": "ReLU", "name": f"r{i}", "config": {"name": f"r{i}"},
                       "inbound_nodes": [[[prev, 0, 0, {}]]]})
        prev = f"r{i}"
    config = {"class_name": "Functional", "config": {
        "name": "chain", "layers": [layers[0], *reversed(layers[1:])],
        "input_layers": [["in", 0, 0]], "output_layers": [[prev, 0, 0]]}}
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "2.15.0"
        f.create_group("model_weights")
    return path


@pytest.mark.slow
def test_sixteen_thousand_layers_in_reverse_load_in_linear_time(tmp_path):
    path = reversed_chain(tmp_path / "chain.h5", 16_000)
    start = time.perf_counter()
    model, report = ck.load(path)
    seconds = time.perf_counter() - start
    assert len(report.layers) == 16_000
    x = torch.randn(3, 8)
    torch.testing.assert_close(model(x), x.clamp(min=0), rtol=0, atol=0)  # relu of relu … is relu
    assert seconds < 60, f"{seconds:.1f} s (the quadratic sort took 181 s)"


def test_deep_json_and_raw_library_errors_become_keras_file_errors(tmp_path):
    # A valid file whose model_weights group is replaced by a dataset: h5py raised raw errors before.
    def clobber(f, _):
        del f["model_weights/dense"]
        f["model_weights"].create_dataset("dense", data=np.zeros(3))

    path = h5_weights_edit(FIXTURES / "classifier.h5", tmp_path / "clobber.h5", clobber)
    with pytest.raises(ck.KerasFileError, match=str(path)):
        ck.load(path)


def test_convert_to_an_unwritable_path_gives_a_clear_error(tmp_path):
    target = "/proc/cnnkit-test/model.safetensors"
    result = runner.invoke(app, ["convert", str(FIXTURES / "classifier.keras"), target])
    assert result.exit_code == 2
    assert "Cannot write safetensors to '/proc/cnnkit-test/model.safetensors'" in result.output
    with pytest.raises(CnnkitError, match="Cannot write safetensors"):
        ck.save_safetensors(torch.nn.Linear(2, 2), "/proc/model.safetensors")


def test_keras_explain_answers_shape_questions_without_allocating(tmp_path):
    # Input(2e9) → Conv1D(2, 3) → GlobalMaxPooling1D: a few weights, but 8 GB of zeros per activation.
    config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 2_000_000_000, 1], "name": "in"}},
        {"class_name": "Conv1D", "config": {"name": "conv", "filters": 2, "kernel_size": [3]}},
        {"class_name": "GlobalMaxPooling1D", "config": {"name": "pool"}}]}}
    path = tmp_path / "wide.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "2.15.0"
        g = f.create_group("model_weights/conv")
        g.attrs["weight_names"] = [b"conv/kernel:0", b"conv/bias:0"]
        g.create_dataset("conv/kernel:0", data=np.ones((3, 1, 2), "<f4"))
        g.create_dataset("conv/bias:0", data=np.zeros(2, "<f4"))
    # In a child limited to 3 GiB of address space above what torch and cnnkit map at import: the old command ran
    # the model on 8 GB zeros tensors.
    code = ("import resource, sys, torch, cnnkit.keras.convert; from cnnkit.cli.main import app; "
            "mapped = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize:')); "
            "resource.setrlimit(resource.RLIMIT_AS, (mapped + 3 * 2**30, mapped + 3 * 2**30)); "
            "sys.argv = ['cnnkit', 'keras-explain', sys.argv[1]]; app()")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "COLUMNS": "160"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "1999999998" in result.stdout.replace(",", "").replace(" ", "")  # the conv's output length
