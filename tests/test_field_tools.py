"""Our artifacts open in the field's tools exactly as bench runs them: Polygraphy's ONNX Runtime runner over
``ulsam_deploy.backends.onnxrt.session`` (fused graphs too), and Polygraphy's own CLI flags for the int8 model
made for TensorRT (docs/fusion.md lists the commands)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import randomize_bn
from ulsam_deploy.backends.onnxrt import session
from ulsam_deploy.backends.onnxrt.runner import OrtRunner
from ulsam_deploy.data.sources import ImageSet
from ulsam_deploy.models import build_model, save_checkpoint

polygraphy = pytest.importorskip("polygraphy", reason="Polygraphy is not installed (it is in the [dev] extra)")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from ulsam_deploy.steps.convert import ConvertOptions, convert_file
    from ulsam_deploy.steps.export import ExportOptions, export_checkpoint
    from ulsam_deploy.steps.fuse import fuse_file

    tmp = tmp_path_factory.mktemp("field")
    model = randomize_bn(build_model("mv2", 0.35, "13", 4, num_classes=10, input_size=32, in_channels=1))
    onnx_path = export_checkpoint(save_checkpoint(model, tmp / "ck.pt", mean=(0.5,), std=(0.5,)), tmp / "m.onnx",
                                  ExportOptions(atol=1e-3)).path
    rng = np.random.default_rng(0)
    images = ImageSet(rng.standard_normal((32, 1, 32, 32)).astype(np.float32))
    loose = {"int8": {"min_cosine": 0.5, "min_top1_agreement": None, "max_top1_drop": None}}
    int8 = convert_file(onnx_path, tmp / "m.int8-tensorrt.onnx", ConvertOptions(precision="int8", tolerances=loose),
                        calib_data=images, verify_data=images).path
    return {"fused": fuse_file(onnx_path, tmp / "m.fused.onnx", atol=1e-4).path, "int8": int8}


@pytest.mark.parametrize("kind", ["fused", "int8"])
def test_polygraphy_runs_our_artifacts_as_bench_does(artifacts, kind):
    from polygraphy.backend.onnxrt import OnnxrtRunner

    x = np.random.default_rng(1).standard_normal((3, 1, 32, 32)).astype(np.float32)
    with OnnxrtRunner(session(artifacts[kind])) as runner:
        theirs = runner.infer({"input": x})["logits"]
    with OrtRunner(artifacts[kind]) as ours:
        assert np.array_equal(theirs, ours.infer(x))


def test_polygraphy_cli_flags_reproduce_the_int8_model_for_tensorrt(artifacts):
    """In a default session ONNX Runtime swaps its own int8 kernels in; with graph optimizations off, the Q/DQ
    graph runs as written, which is what bench (and TensorRT's semantics) mean."""
    import onnxruntime as ort
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    x = np.random.default_rng(2).standard_normal((8, 1, 32, 32)).astype(np.float32)
    exact = SessionFromOnnx(str(artifacts["int8"]), graph_optimization_level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    with OnnxrtRunner(exact) as runner:  # what '--graph-optimization-level ORT_DISABLE_ALL' builds
        theirs = runner.infer({"input": x})["logits"]
    with OrtRunner(artifacts["int8"]) as ours:
        assert np.array_equal(theirs, ours.infer(x))
