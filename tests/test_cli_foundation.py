"""CLI: export and inspect, happy paths and every bad input (one sentence, exit code, no traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import clean_error, randomize_bn
from ulsam_deploy.cli import app
from ulsam_deploy.models import build_model, save_checkpoint


@pytest.fixture
def ckpt(tmp_path):
    model = randomize_bn(build_model("mv2", 0.5, "14,17:1", groups=4, num_classes=10, input_size=96))
    return save_checkpoint(model, tmp_path / "ck.pt")


def test_export_happy_path(cli_runner, ckpt, tmp_path):
    result = cli_runner.invoke(app, ["export", str(ckpt), "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.onnx").exists() and (tmp_path / "out.onnx.json").exists()
    assert "max |diff|" in result.output and "Wrote" in result.output


@pytest.mark.slow
def test_export_default_output_path(cli_runner, ckpt):
    result = cli_runner.invoke(app, ["export", str(ckpt)])
    assert result.exit_code == 0, result.output
    assert ckpt.with_suffix(".onnx").exists()


@pytest.mark.slow
def test_export_refuses_overwrite(cli_runner, ckpt, tmp_path):
    out = tmp_path / "out.onnx"
    assert cli_runner.invoke(app, ["export", str(ckpt), "-o", str(out)]).exit_code == 0
    clean_error(cli_runner.invoke(app, ["export", str(ckpt), "-o", str(out)]), 2, "--force")
    assert cli_runner.invoke(app, ["export", str(ckpt), "-o", str(out), "--force"]).exit_code == 0


def test_export_missing_and_corrupt_files(cli_runner, tmp_path):
    clean_error(cli_runner.invoke(app, ["export", str(tmp_path / "nope.pt")]), 2, "does not exist")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    clean_error(cli_runner.invoke(app, ["export", str(bad)]), 2, "corrupt")
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.slow
def test_export_wrong_architecture_for_foreign_checkpoint(cli_runner, tmp_path):
    model = randomize_bn(build_model("mv2", 0.5, "17:1", num_classes=10, input_size=32))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "sd.pt")
    result = cli_runner.invoke(app, ["export", str(tmp_path / "sd.pt"), "--arch", "mv1"])
    clean_error(result, 2, "does not fit MobileNet-V1")
    assert "--arch mv2" in result.output
    assert not (tmp_path / "sd.onnx").exists()
    # without flags the config is inferred from the shapes and the export works
    ok = cli_runner.invoke(app, ["export", str(tmp_path / "sd.pt"), "--input-size", "32"])
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize("args,needle", [
    (["--opset", "5"], "Opset 5"), (["--static-batch", "0"], "--static-batch"), (["--exporter", "x"], "exporter"),
])
def test_export_bad_flag_values(cli_runner, ckpt, tmp_path, args, needle):
    result = cli_runner.invoke(app, ["export", str(ckpt), "-o", str(tmp_path / "o.onnx"), *args])
    clean_error(result, 2, needle)
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.slow  # fresh Python processes
def test_debug_shows_traceback(tmp_path):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "ulsam_deploy", "export", str(tmp_path / "nope.pt")]
    env = {**os.environ, "PYTHONPATH": str(root)}
    plain = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
    debug = subprocess.run([cmd[0], cmd[1], cmd[2], "--debug", *cmd[3:]], capture_output=True, text=True, env=env,
                           timeout=120, check=False)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "does not exist" in plain.stderr
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr
    assert "CheckpointError" in debug.stderr


def test_inspect_json_from_flags(cli_runner):
    result = cli_runner.invoke(app, ["inspect", "--arch", "mv2", "--ulsam", "14,17", "--groups", "4", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"params", "macs", "layers"} <= set(data)
    assert data["params"] == sum(r["params"] for r in data["layers"])
    ulsam_rows = [r for r in data["layers"] if r["ulsam"]]
    assert [r["layer"] for r in ulsam_rows] == ["14", "17"]


def test_inspect_vanilla_table_shows_paper_totals(cli_runner):
    result = cli_runner.invoke(app, ["inspect", "--arch", "mv1"])
    assert result.exit_code == 0, result.output
    assert "4.21 M parameters, 568.74 M MACs" in result.output


def test_inspect_checkpoint(cli_runner, ckpt):
    result = cli_runner.invoke(app, ["inspect", str(ckpt), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["config"]["ulsam"] == "14,17:1"


@pytest.mark.parametrize("args,needle", [
    (["--arch", "mv3"], "Unknown architecture"), (["--arch", "mv2", "--ulsam", "19"], "layer 19"),
    (["--arch", "mv2", "--groups", "3"], "groups"), ([], "Give a checkpoint"),
    (["--arch", "mv1", "--width", "-1"], "Width multiplier"),
])
def test_inspect_bad_input(cli_runner, args, needle):
    clean_error(cli_runner.invoke(app, ["inspect", *args]), 2, needle)


def test_build_plugin_without_tensorrt_is_one_sentence(cli_runner, tmp_path):
    result = cli_runner.invoke(app, ["build-plugin", "--tensorrt-root", str(tmp_path / "none"),
                                     "--build-dir", str(tmp_path / "b")])
    clean_error(result, 2, "No NvInfer.h")
