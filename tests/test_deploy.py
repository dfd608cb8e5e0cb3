"""``deploy``: checkpoint to engine in one command, with every step's own checks; it stops at the TensorRT
boundary (or exits 4 with --require-engine) and writes nothing when an output is refused."""

from __future__ import annotations

import json

import pytest

from helpers import clean_error, needs_fmnist
from ulsam_deploy.backends.trt.runtime import tensorrt_available
from ulsam_deploy.cli import app
no_tensorrt = pytest.mark.skipif(tensorrt_available(), reason="checks the stop at the TensorRT boundary")


@needs_fmnist
@no_tensorrt
@pytest.mark.slow  # export, int8 calibration on 512 training images, verification on 10,000 test images
def test_checkpoint_to_the_tensorrt_boundary_in_one_command(cli_runner, tmp_path):
    out = tmp_path / "dep"
    result = cli_runner.invoke(app, ["deploy", "fashion-mnist", "--out", str(out), "--precision", "int8"])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in out.iterdir())
    assert files == ["model.int8-tensorrt.fused.onnx", "model.int8-tensorrt.fused.onnx.json", "model.onnx",
                     "model.onnx.json"]
    side = json.loads((out / "model.int8-tensorrt.fused.onnx.json").read_text())
    assert side["precision"] == "int8" and side["int8_target"] == "tensorrt" and side["fused_blocks"] == 1
    assert "stopped at the TensorRT boundary" in result.output and "ulsam-deploy build-trt" in result.output


@no_tensorrt
def test_require_engine_and_refused_outputs(cli_runner, tmp_path):
    out = tmp_path / "dep"
    out.mkdir()
    (out / "model.onnx").write_text("mine")
    clean_error(cli_runner.invoke(app, ["deploy", "fashion-mnist", "--out", str(out)]), 2, "already exists",
                "--force")
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"]  # refused before any work
    clean_error(cli_runner.invoke(app, ["deploy", "fashion-mnist", "--out", str(out), "--precision", "fp32",
                                        "--no-fuse", "--require-engine", "--force"]), 4, "TensorRT")
    assert (out / "model.onnx.json").is_file()  # the export itself was made and verified
    clean_error(cli_runner.invoke(app, ["deploy", "fashion-mnist", "--precision", "int4"]), 2, "--precision")
