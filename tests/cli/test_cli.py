"""The command line, through typer's runner and once as a real subprocess."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from cnnkit import CnnkitError
from cnnkit.cli.layer_expr import parse_input_shape, parse_layer
from cnnkit.cli.main import app

runner = CliRunner()


def test_explain_command_prints_the_derivation():
    result = runner.invoke(app, ["explain", "Conv2d(3, 32, 5)", "--input", "3x32x32"])
    assert result.exit_code == 0, result.output
    assert "output (32, 28, 28)" in result.output
    assert "kernel (5, 5, 3, 32)" in result.output


def test_summary_command_loads_a_factory_from_a_file(tmp_path):
    path = tmp_path / "mymodel.py"
    path.write_text(textwrap.dedent("""
        from torch import nn

        def build_model():
            return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 2))
    """))
    result = runner.invoke(app, ["summary", f"{path}:build_model", "--input", "3x8x8"])
    assert result.exit_code == 0, result.output
    assert "Total params: 802" in result.output  # (8·3·3·3 + 8) + (8·6·6·2 + 2)
    assert "Tensor.flatten" not in result.output and "Flatten" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["explain", "Conv2d(3, 32, 5)", "--input", "3x0x32"], "--input must look like 3x32x32"),
        (["explain", "Conv9d(3, 32, 5)", "--input", "3x32x32"], "Unknown layer 'Conv9d'"),
        (["explain", "conv2d(3, 32, 5)", "--input", "3x32x32"], "Did you mean 'Conv2d'"),
        (["explain", "Conv2d(3, 32, 5)", "--input", "4x32x32"], "in_channels=3"),
        (["summary", "nofile.py:build", "--input", "3x8x8"], "No such file"),
        (["summary", "build_model", "--input", "3x8x8"], "MODEL must look like"),
    ],
)
def test_errors_are_one_line_and_exit_2(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output


def test_layer_expressions_never_run_code(tmp_path):
    marker = tmp_path / "ran"
    attempts = [
        f"__import__('pathlib').Path({str(marker)!r}).touch()",
        f"Conv2d(__import__('pathlib').Path({str(marker)!r}).touch(), 3, 3)",
        "Conv2d(*[3, 8, 3])",
        "Conv2d(3, 8, 3) if True else 0",
        "Conv2d(3, 8, lambda: 3)",
        "Conv2d(3, 8, 3).__class__",
        "torch.load('x')",
    ]
    for text in attempts:
        with pytest.raises(CnnkitError):
            parse_layer(text)
    assert not marker.exists()


def test_parse_layer_builds_nested_layers_and_keywords():
    m = parse_layer("nn.Sequential(Conv2d(1, 4, kernel_size=(3, 5), padding='same'), torch.nn.ReLU())")
    assert m[0].kernel_size == (3, 5) and m[0].padding == "same"


def test_parse_input_shape_variants():
    assert parse_input_shape("3×32×32") == parse_input_shape("3,32,32") == (3, 32, 32)


def test_help_golden(golden):
    result = runner.invoke(app, ["--help"], prog_name="cnnkit", terminal_width=100,
                           env={"COLUMNS": "100", "NO_COLOR": "1"})
    assert result.exit_code == 0
    golden("cli/golden/help.txt", result.output)


def test_real_subprocess_entry_point():
    out = subprocess.run([sys.executable, "-m", "cnnkit", "explain", "Linear(2000, 4800)", "-i", "2000"],
                         capture_output=True, text=True, check=True)
    assert "kernel (2000, 4800)" in out.stdout


# --- Keras commands ----------------------------------------------------------------------------------

KERAS_FIXTURES = __import__("pathlib").Path(__file__).parents[1] / "keras" / "fixtures"


def test_convert_writes_safetensors_that_load_into_the_converted_model(tmp_path):
    from safetensors.torch import load_file

    from cnnkit.keras import load

    out = tmp_path / "classifier.safetensors"
    result = runner.invoke(app, ["convert", str(KERAS_FIXTURES / "classifier.keras"), str(out), "-v"])
    assert result.exit_code == 0, result.output
    assert "445 parameters" in result.output and "torch momentum 0.1" in result.output
    model, _ = load(KERAS_FIXTURES / "classifier.keras")
    state = load_file(out)
    assert state.keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert (state[k] == v).all()


def test_keras_explain_shows_both_layouts_of_the_seed_layers():
    result = runner.invoke(app, ["keras-explain", str(KERAS_FIXTURES / "seed_dense.keras")], terminal_width=160)
    assert result.exit_code == 0, result.output
    assert "kernel (2000, 4800)" in result.output and "weight (4800, 2000)" in result.output
    result = runner.invoke(app, ["keras-explain", str(KERAS_FIXTURES / "seed_conv1d.keras")], terminal_width=160)
    assert "kernel (5, 300, 111)" in result.output and "weight (111, 300, 5)" in result.output
    assert "(1, 111, 36)" in result.output


def test_keras_explain_with_several_inputs_prints_the_report_only():
    result = runner.invoke(app, ["keras-explain", str(KERAS_FIXTURES / "conv2d_same.h5")])
    assert result.exit_code == 0, result.output
    assert "no summary table" in result.output and "KerasConv2d" in result.output


@pytest.mark.parametrize("command", ["convert", "keras-explain"])
def test_keras_commands_refuse_bad_files_in_one_line(tmp_path, command):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"PK\x03\x04 truncated")
    args = [command, str(bad)] + ([str(tmp_path / "out.safetensors")] if command == "convert" else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "error:" in result.output and "truncated" in result.output
    assert not (tmp_path / "out.safetensors").exists()


# --- typical mistakes: one line, exit code 2, no traceback ------------------------------------------------

FACTORIES = {
    "raises.py": "raise RuntimeError('broken at import')\n",
    "syntax.py": "def build(:\n",
    "needs_args.py": "from torch import nn\n\ndef build(width):\n    return nn.Linear(width, 2)\n",
    "not_callable.py": "build = 3\n",
    "gives_int.py": "def build():\n    return 3\n",
    "ok.py": "from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())\n",
}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["explain", "Transformer(16, 2, 1, 1, 32)", "-i", "5x16"], "Transformer.forward needs 2 inputs (src, tgt)"),
        (["explain", "PixelShuffle(3)", "-i", "8x4x4"], "divisible by 3² = 9"),
        (["explain", "Unflatten(1, (3, 4))", "-i", "8x4"], "must multiply to input_shape[0]=8"),
        (["explain", "Conv2d(3, 8, 3)", "-i", "1x3x32x32"], "leave the batch dimension out"),
        (["summary", "{tmp}/raises.py:build", "-i", "3x8x8"], "raised RuntimeError: broken at import"),
        (["summary", "{tmp}/syntax.py:build", "-i", "3x8x8"], "raised SyntaxError"),
        (["summary", "{tmp}/needs_args.py:build", "-i", "3x8x8"], "raised TypeError"),
        (["summary", "{tmp}/not_callable.py:build", "-i", "3x8x8"], "is a int: expected a torch.nn.Module"),
        (["summary", "{tmp}/gives_int.py:build", "-i", "3x8x8"], "gave a int, not a torch.nn.Module"),
        (["summary", "{tmp}/ok.py:nothing", "-i", "3x8x8"], "has no attribute 'nothing'"),
        (["summary", "no_such_package_xyz.models:build", "-i", "3x8x8"], "Cannot import 'no_such_package_xyz.models'"),
        (["summary", "{tmp}/ok.py:build", "-i", "1x3x8x8"], "leave the batch dimension out"),
        (["summary", "{tmp}/ok.py:build", "-i", "4x8x8"], "failed in layer '0' (Conv2d)"),
        (["report", "{tmp}/nope"], "run_dir must be an existing folder"),
        (["report", "{tmp}", "--model", "{tmp}/raises.py:build"], "broken at import"),
    ],
)
def test_typical_mistakes_are_one_line_errors(tmp_path, args, message):
    for name, text in FACTORIES.items():
        (tmp_path / name).write_text(text)
    result = runner.invoke(app, [a.replace("{tmp}", str(tmp_path)) for a in args], terminal_width=400)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "Traceback" not in result.output
    assert message in " ".join(result.output.split())


def test_summary_builds_the_factory_on_meta(tmp_path):
    (tmp_path / "big.py").write_text("from torch import nn\n\ndef build():\n"
                                     "    return nn.Sequential(nn.Linear(60000, 60000), nn.ReLU())\n")
    result = runner.invoke(app, ["summary", f"{tmp_path}/big.py:build", "-i", "60000"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert f"Total params: {60000 * 60000 + 60000:,}" in result.output


@pytest.mark.parametrize("command", ["summary", "report"])
def test_help_says_that_the_model_file_is_run(command):
    result = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "is your own Python code: it is imported and its function called" in text
    assert "only on code you trust" in text


def test_help_and_version_do_not_import_torch():
    """`cnnkit --help` and `--version` answer without importing torch (3–9 s on a busy machine before)."""
    import subprocess
    import sys

    import cnnkit

    code = ("import sys; from cnnkit.cli.main import main; sys.argv = ['cnnkit', '{}']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'lightning' in sys.modules)")
    for flag in ("--help", "--version"):
        done = subprocess.run([sys.executable, "-c", code.format(flag)], capture_output=True, text=True, check=True)
        assert done.stdout.strip().endswith("False False"), done.stdout
    assert cnnkit.__version__ in subprocess.run([sys.executable, "-m", "cnnkit.cli", "--version"],
                                                capture_output=True, text=True, check=True).stdout


def test_model_args_are_json_keyword_arguments(tmp_path):
    source = tmp_path / "net.py"
    source.write_text("import torch\n\ndef build(in_channels, width=8):\n"
                      "    return torch.nn.Conv2d(in_channels, width, 3)\n")
    from typer.testing import CliRunner

    runner = CliRunner()
    done = runner.invoke(app, ["summary", f"{source}:build", "--input", "4x16x16", "--model-args",
                               '{"in_channels": 4, "width": 6}'])
    assert done.exit_code == 0, done.output
    assert "(1, 6, 14, 14)" in done.output and str(4 * 6 * 9 + 6) in done.output.replace(",", "")
    missing = runner.invoke(app, ["summary", f"{source}:build", "--input", "4x16x16"])
    assert missing.exit_code == 2 and "--model-args" in " ".join(missing.output.split())
    bad = runner.invoke(app, ["summary", f"{source}:build", "--input", "4x16x16", "--model-args", "in_channels=4"])
    assert bad.exit_code == 2 and "must be a JSON object" in " ".join(bad.output.split())


@pytest.mark.parametrize("command", [[], ["demo"], ["train"], ["predict"], ["convert"], ["report"]])
def test_help_shows_no_type_tag_for_flags(command):
    """Flags take no value: typer's `<bool>` tag beside --overwrite or --help is noise (issue #18)."""
    result = runner.invoke(app, [*command, "--help"], terminal_width=200, env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert "--help" in result.output and "<bool>" not in result.output
    if command == ["demo"]:
        assert "--time-series" in result.output and "<int range>" in result.output  # other types still shown


def test_train_help_names_the_series_layout():
    result = runner.invoke(app, ["train", "--help"], terminal_width=200, env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert "series/" in result.output and "--time-series" in result.output


def test_heavy_imports_freeze_what_they_import_and_leave_the_collector_on(monkeypatch):
    import gc

    from cnnkit.cli import common
    from cnnkit.cli.common import import_heavy

    monkeypatch.setattr(common, "FREEZE", True)  # as in the `cnnkit` process (main() sets it)
    sys.modules.pop("colorsys", None)
    gc.unfreeze()
    try:
        import_heavy("colorsys")
        assert "colorsys" in sys.modules
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0  # the imported module's objects (and everything before) are frozen
    finally:
        gc.unfreeze()
        gc.enable()


def test_heavy_imports_inside_another_process_freeze_nothing():
    import gc

    from cnnkit.cli.common import import_heavy

    gc.unfreeze()
    import_heavy("colorsys")
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_heavy_imports_reenable_the_collector_when_an_import_fails():
    import gc

    from cnnkit.cli.common import import_heavy

    try:
        with pytest.raises(ModuleNotFoundError):
            import_heavy("cnnkit_no_such_module")
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()


# --- errors that teach: the likely mistake named (golden files; pytest --update-golden rewrites them) -----------

MYMODELS = """\
from torch import nn


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.features(x))


def build_small():
    return Small()


def build_wide():
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))


def _helper():
    return None


net = nn.Linear(2, 2)
"""


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("error_channels_last", ["explain", "Conv2d(5,32,3)", "--input", "128x128x5"]),
        ("error_summary_first_layer_channels", ["summary", "{tmp}/mymodels.py:build_small", "--input", "3x64x64"]),
        ("error_summary_channels_last", ["summary", "{tmp}/mymodels.py:build_small", "--input", "64x64x1"]),
        ("error_summary_inner_layer_channels", ["summary", "{tmp}/mymodels.py:build_wide", "--input", "3x64x64"]),
        ("error_model_name", ["summary", "{tmp}/mymodels.py:build_smal", "--input", "1x64x64"]),
    ],
)
def test_errors_name_the_likely_mistake(golden, tmp_path, name, args):
    (tmp_path / "mymodels.py").write_text(MYMODELS)
    result = runner.invoke(app, [a.replace("{tmp}", str(tmp_path)) for a in args], terminal_width=80)
    assert result.exit_code == 2, result.output
    golden(f"cli/golden/{name}.txt", result.output.replace(str(tmp_path), "{tmp}"))


def test_model_name_suggestions_leave_out_private_and_imported_names(tmp_path):
    (tmp_path / "mymodels.py").write_text(MYMODELS)
    result = runner.invoke(app, ["summary", f"{tmp_path}/mymodels.py:zzz", "-i", "1x8x8"], terminal_width=400)
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "Did you mean" not in text  # nothing is close to 'zzz'
    assert "It defines: Small, build_small, build_wide, net." in text  # not _helper, not nn
    result = runner.invoke(app, ["summary", "cnnkit.models:TinySegNt", "-i", "4x8x8"], terminal_width=400)
    assert "Did you mean 'TinySegNet'?" in " ".join(result.output.split())  # a package: the names of its __all__
