"""``demo`` end to end on the bundled default model (quick mode: the same code path, fewer images)."""

from __future__ import annotations

import json

import pytest

from ulsam_deploy.cli import app
from ulsam_deploy.data import MissingResource
from ulsam_deploy.data.resources import fashion_mnist_dir

try:
    fashion_mnist_dir()
    HAVE_FMNIST = True
except MissingResource:
    HAVE_FMNIST = False


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_demo_quick_end_to_end(cli_runner, tmp_path):
    out = tmp_path / "report"
    result = cli_runner.invoke(app, ["demo", "--quick", "--out", str(out), "--threads", "2"])
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output and str(out / "README.md") in result.output.replace("\n", "")

    summary = json.loads((out / "demo.json").read_text())
    assert summary["passed"] is True and summary["model"]["name"] == "fashion-mnist"
    steps = {s["name"]: s for s in summary["steps"]}
    for name in ("load", "images", "export", "bench"):
        assert steps[name]["status"] == "ok", steps[name]
    # the CPU steps always run here; only TensorRT's may be skipped, with a reason
    for name in ("fuse", "fp16", "int8", "int8-ort"):
        assert steps[name]["status"] == "ok" and steps[name]["detail"], steps[name]
    assert any(n.startswith("tensorrt") for n in steps)
    for step in summary["steps"]:
        if step["status"] == "skipped":
            assert step["detail"] and step["name"] in result.output
        if step["artifact"]:
            assert (out / step["artifact"]).exists(), step

    # bench on the real held-out images: parity passed and accuracy measured for every runner
    bench = summary["bench"]
    assert bench["passed"] and bench["inputs"]["count"] == bench["inputs"]["labelled"] == 200
    assert str(out) in bench["inputs"]["source"]  # paths name the final folder, not the temp one
    accuracies = [row["accuracy"]["top1"] for row in bench["parity"] if row["accuracy"]]
    assert len(accuracies) >= 2 and min(accuracies) >= 0.85  # the trained model on real test images
    assert any(row["backend"].startswith("ort") for row in bench["parity"])
    assert bench["latency"] and all(row["latency_ms"]["median"] > 0 for row in bench["latency"])

    readme = (out / "README.md").read_text()
    assert "| export | ok |" in readme and "bench.png" in readme
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "images").rglob("*.png"))) == 200
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the temp folder was renamed


def test_demo_refuses_a_used_folder_and_unknown_models(cli_runner, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = cli_runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 2 and "--force" in result.output and "Traceback" not in result.output
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    result = cli_runner.invoke(app, ["demo", "--model", "cifar", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "fashion-mnist" in result.output and not (tmp_path / "x").exists()
    result = cli_runner.invoke(app, ["demo", "--batch-sizes", "0", "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and "--batch-sizes must be integers" in result.output and not (tmp_path / "y").exists()
