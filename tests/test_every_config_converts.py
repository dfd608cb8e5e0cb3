"""Every MV1/MV2 paper configuration (and widths 0.5 / 0.75 / 1.0) goes through export, fuse, fp16 and int8 for both
targets, with and without ``--fuse``, on a model whose outputs mean something (BatchNorm statistics from a few
batches): no crash, no checker failure, a verdict from the judge. Shared initializers (equal folded biases merged by
the exporter) and zero-range tensors are what used to break these.

Random weights lose more to int8 than trained ones, so the int8 gate is loosened here: the point is that every
configuration converts and is judged, not its accuracy (docs/benchmarks.md has the trained model's figures).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from helpers import PAPER_CONFIGS, randomize_bn
from ulsam_deploy.data.sources import ImageSet
from ulsam_deploy.models import build_model, save_checkpoint
from ulsam_deploy.onnx_graph import check_model
from ulsam_deploy.steps.convert import ConvertOptions, convert_file
from ulsam_deploy.steps.export import ExportOptions, export_checkpoint
from ulsam_deploy.steps.fuse import fuse_file

CONFIGS = PAPER_CONFIGS + [("mv2", 0.5, "17:1"), ("mv2", 0.75, "13,14,16,17"), ("mv2", 0.5, "13")]
LOOSE = {"int8": {"min_cosine": 0.5, "min_top1_agreement": None, "max_top1_drop": None},
         "fp16": {"min_top1_agreement": 0.9}}  # random logits lie close together: near-ties flip in fp16
SIZE = 64


@pytest.mark.slow  # 16 configurations x (export, fuse, fp16 x2, int8 x4): about 75 s
@pytest.mark.parametrize("arch,width,ulsam", CONFIGS, ids=[f"{a}x{w}+{u}" for a, w, u in CONFIGS])
def test_every_configuration_exports_fuses_and_converts(tmp_path, arch, width, ulsam):
    model = randomize_bn(build_model(arch, width, ulsam, groups=4, num_classes=10, input_size=SIZE))
    ck = save_checkpoint(model, tmp_path / "ck.pt")
    onnx_path = export_checkpoint(ck, tmp_path / "m.onnx", ExportOptions(atol=1e-3)).path
    fused = fuse_file(onnx_path, tmp_path / "m.fused.onnx", atol=1e-4)
    assert fused.report["fused"] == len(ulsam.split(","))
    rng = np.random.default_rng(0)
    calib = ImageSet(rng.standard_normal((64, 3, SIZE, SIZE)).astype(np.float32))
    verify = ImageSet(rng.standard_normal((32, 3, SIZE, SIZE)).astype(np.float32))
    runs = [("fp16", "tensorrt", fuse) for fuse in (False, True)]
    runs += [("int8", target, fuse) for target in ("tensorrt", "ort") for fuse in (False, True)]
    for precision, target, fuse in runs:
        name = f"m.{precision}{'-' + target if precision == 'int8' else ''}{'.fused' if fuse else ''}.onnx"
        result = convert_file(onnx_path, tmp_path / name,
                              ConvertOptions(precision=precision, target=target, fuse=fuse, tolerances=LOOSE),
                              calib_data=calib if precision == "int8" else None, verify_data=verify)
        check_model(onnx.load(str(result.path)))  # a valid graph, typed consistently
        assert result.verdict.passed, (name, result.verdict.sentence())
        if precision == "int8" and target == "tensorrt":  # TensorRT's fusions, predicted from the Q/DQ graph
            fusions = result.report["int8"]["tensorrt_fusions"]
            assert fusions["residual_adds_fusable"] == fusions["residual_adds"] and not fusions["qdq_not_absorbed"]
        if precision == "fp16":
            assert "initializers_unshared" in result.report["kept_fp32"]


def _share_a_bias_across_the_block_boundary(model: onnx.ModelProto) -> onnx.ModelProto:
    """What the exporter does with equal folded biases: one initializer read by a Conv inside a ULSAM block (kept
    fp32) and a Conv outside it (converted)."""
    from ulsam_deploy.onnx_graph import name_nodes
    from ulsam_deploy.passes.ulsam_pattern import find_ulsam_blocks

    model = name_nodes(model)
    inside = set(find_ulsam_blocks(model).blocks[0].nodes)
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    block_conv = next(n for n in model.graph.node if n.name in inside and n.op_type == "Conv" and len(n.input) > 2)
    outer = next(n for n in model.graph.node if n.name not in inside and n.op_type == "Conv" and len(n.input) > 2
                 and shapes[n.input[2]] == shapes[block_conv.input[2]])
    outer.input[2] = block_conv.input[2]
    return model


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_an_initializer_shared_inside_and_outside_a_block(tmp_path, precision):
    from ulsam_deploy.passes.fp16 import to_fp16
    from ulsam_deploy.passes.int8 import to_int8

    model = randomize_bn(build_model("mv2", 0.5, "13", groups=4, num_classes=10, input_size=32))
    path = export_checkpoint(save_checkpoint(model, tmp_path / "ck.pt"), tmp_path / "m.onnx",
                             ExportOptions(atol=1e-3)).path
    shared = _share_a_bias_across_the_block_boundary(onnx.load(str(path)))
    images = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    converted, facts = to_fp16(shared) if precision == "fp16" else to_int8(shared, images)
    check_model(converted)  # before: "B has inconsistent type tensor(float16)" from onnx.checker
    assert facts["initializers_unshared"] >= 1


@pytest.mark.parametrize("target", ["tensorrt", "ort"])
def test_a_tensor_with_a_near_zero_range_is_calibrated_by_minmax_and_said(tmp_path, target):
    """0.25 + 1e-7 * x spans a few float32 steps: no histogram of 2048 finite bins exists for it (numpy's 'Too many
    bins for data range' used to end convert)."""
    from onnx import helper, numpy_helper

    from helpers import tiny_onnx
    from ulsam_deploy.passes.int8 import to_int8

    model = onnx.load(str(tiny_onnx(tmp_path / "t.onnx", sidecar=False)))
    model.graph.initializer.extend([numpy_helper.from_array(np.array([1e-7], np.float32), "tiny"),
                                    numpy_helper.from_array(np.array([0.25], np.float32), "quarter")])
    model.graph.node[0].input[0] = "shifted"
    model.graph.node.insert(0, helper.make_node("Add", ["scaled", "quarter"], ["shifted"]))
    model.graph.node.insert(0, helper.make_node("Mul", ["input", "tiny"], ["scaled"]))
    images = np.random.default_rng(0).standard_normal((16, 1, 32, 32)).astype(np.float32)
    quantized, facts = to_int8(model, images, target=target, calib_method="percentile")
    check_model(quantized)
    assert "calibrated with minmax instead" in facts["calibration_fallback"]
    assert facts["qdq"]["quantize_nodes"] > 0


def test_the_tensorrt_int8_layout_fuses_every_residual_add(tmp_path, monkeypatch):
    """TensorRT fuses Conv + Add only when the Conv side of the Add carries no Q/DQ; ONNX Runtime's quantizer puts
    Q/DQ on both inputs (the old layout), which the structural check must call out."""
    import ulsam_deploy.passes.int8 as int8
    from ulsam_deploy.passes.int8 import tensorrt_fusions, to_int8

    model = randomize_bn(build_model("mv2", 0.5, "13", groups=4, num_classes=10, input_size=32))
    path = export_checkpoint(save_checkpoint(model, tmp_path / "ck.pt"), tmp_path / "m.onnx",
                             ExportOptions(atol=1e-3)).path
    images = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    laid_out, facts = to_int8(onnx.load(str(path)), images, target="tensorrt")
    check = facts["tensorrt_fusions"]
    assert check["residual_adds"] == facts["residual_qdq_removed"] == check["residual_adds_fusable"] > 0
    assert check["weighted_ops_int8"] == check["weighted_ops"] - 2  # the ULSAM block's two convs stay float
    assert not check["qdq_not_absorbed"] and check["summary"].endswith("cannot fuse: none")
    monkeypatch.setattr(int8, "place_for_tensorrt", lambda m: 0)  # ONNX Runtime's layout, as it was
    _, old = to_int8(onnx.load(str(path)), images, target="tensorrt")
    assert old["tensorrt_fusions"]["residual_adds_fusable"] == 0
    assert len(old["tensorrt_fusions"]["residual_adds_not_fusable"]) == check["residual_adds"]
    _, ort = to_int8(onnx.load(str(path)), images, target="ort")  # another runtime, its own layout: unchanged
    assert "residual_qdq_removed" not in ort
