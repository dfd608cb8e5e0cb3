"""Detection-ready backbones: symbolic H/W exports, feature-map outputs, and every later step on them (fuse,
convert, build-trt's profile, bench), with the refusals for ranges and layers that cannot be."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from helpers import randomize_bn
from ulsam_deploy import op_spec
from ulsam_deploy.sidecars import DynamicRange, read_onnx_sidecar
from ulsam_deploy.backends.judge import Tolerances, judge, tolerances_for
from ulsam_deploy.cli import app
from ulsam_deploy.errors import ConfigError, UserError
from ulsam_deploy.models import Backbone, ModelConfig, build_model, feature_taps, save_checkpoint
from ulsam_deploy.steps.export import ExportOptions, check_sizes, export_checkpoint, parity_sizes, parse_input_size

RANGE = (32, 64, 96)  # multiples of 32: parity at 64 (opt), 32, 96 and 32x96
ATOL = 5e-4  # feature maps of calibrated random weights reach |6|: fp32 reorderings differ by ~1e-4 there


def _ck(tmp_path, arch="mv2", width=0.25, ulsam="7:1,14,17:1", groups=4, size=64, name="ck.pt"):
    model = randomize_bn(build_model(arch, width, ulsam, groups=groups, num_classes=10, input_size=size))
    return save_checkpoint(model, tmp_path / name), model.eval()


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _x(h, w, batch=2, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, h, w)).astype(np.float32)


# ------------------------------------------------------------------------------ feature layers (no torch)

def test_strides_name_the_last_layer_at_each_stride():
    mv2 = feature_taps(ModelConfig(arch="mv2"), "s8,s16,s32")
    assert [(t.layer, t.stride, t.channels, t.name) for t in mv2] == [
        (7, 8, 32, "feat_s8"), (14, 16, 96, "feat_s16"), (19, 32, 1280, "feat_s32")]
    assert feature_taps(ModelConfig(arch="mv2"), "19,7,14") == mv2  # layer numbers, any order
    mv1 = feature_taps(ModelConfig(arch="mv1", width=0.5), "s8,12,s32")
    assert [(t.layer, t.stride, t.channels) for t in mv1] == [(6, 8, 128), (12, 16, 256), (14, 32, 512)]
    earlier = feature_taps(ModelConfig(arch="mv2"), "5,s8")
    assert [t.name for t in earlier] == ["feat_s8_l5", "feat_s8"]  # an earlier layer at a stride says which


@pytest.mark.parametrize("arch,text,needle", [
    ("mv2", "20", "MobileNet-V2 has no feature layer 20 (the classifier); choose layers 1-19 or strides s2 (layer 2)"),
    ("mv2", "0", "no feature layer 0"),
    ("mv1", "15", "MobileNet-V1 has no feature layer 15; choose layers 1-14"),
    ("mv2", "s64", "no feature map at stride 64"),
    ("mv2", "7,s8", "names layer 7 twice"),
    ("mv2", "p5", "neither a paper layer number nor a stride"),
    ("mv2", " , ", "--features is empty"),
])
def test_a_feature_layer_that_does_not_exist_is_one_sentence(arch, text, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)) as info:
        feature_taps(ModelConfig(arch=arch), text)
    message = str(info.value)
    assert message.endswith(".") and not re.search(r"\.\s+[A-Z]", message)  # one sentence


@pytest.mark.parametrize("text,needle", [
    ("640:320:256", "the minimum 640 is larger than the maximum 256"),
    ("256:700:640", "the opt size 700 is outside 256..640"),
    ("4:8:16", "sizes must be from 8 to 4096"),
    ("256:320", "one size (e.g. 224) or MIN:OPT:MAX"),
    ("a:b:c", "one size (e.g. 224) or MIN:OPT:MAX"),
])
def test_bad_ranges_are_refused(text, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        parse_input_size(text)


def test_input_size_forms():
    assert parse_input_size("224") == (224, None)
    assert parse_input_size("256:320:640") == (320, (256, 320, 640))
    assert parse_input_size(None) == (None, None)


def test_sizes_not_divisible_by_the_stride_are_refused_naming_the_nearest():
    config = ModelConfig(arch="mv2", input_size=320)
    with pytest.raises(UserError, match=r"Input size 300 is not a multiple of 32 .*use 288 or 320\.$"):
        check_sizes(config, None, (256, 300, 640))
    with pytest.raises(UserError, match="use 32.$"):
        check_sizes(config, None, (16, 320, 640))
    taps = feature_taps(config, "s8,s16")  # the deepest map is at stride 16: multiples of 16 suffice
    assert check_sizes(config, taps, (240, 320, 640)) == 16
    with pytest.raises(UserError, match="multiple of 16 .*layer 14, the deepest"):
        check_sizes(ModelConfig(arch="mv2", input_size=200), taps, None)  # a fixed-size backbone must tile too
    assert check_sizes(ModelConfig(arch="mv2", input_size=200), None, None) == 32  # a fixed classifier keeps any


def test_parity_sizes_cover_min_opt_max_and_a_non_square_size():
    assert parity_sizes((256, 320, 640), 32, 320) == [(320, 320), (256, 256), (640, 640), (288, 608)]
    assert parity_sizes(RANGE, 32, 64) == [(64, 64), (32, 32), (96, 96), (32, 96)]
    assert parity_sizes((64, 64, 64), 32, 64) == [(64, 64)]
    assert parity_sizes(None, 32, 96) == [(96, 96)]


def test_dynamic_range_validates_multiples():
    assert DynamicRange(height=(32, 64, 96), width=(32, 64, 96), multiple_of=32).multiple_of == 32
    with pytest.raises(ValueError, match="not multiples of 32"):
        DynamicRange(height=(32, 60, 96), width=(32, 64, 96), multiple_of=32)


def test_feature_tolerances_drop_top1_even_when_overridden():
    t = tolerances_for("fp16", {"fp16": {"min_top1_agreement": 0.9, "min_cosine": 0.998}}, features=True)
    assert t.min_top1_agreement is None and t.max_top1_drop is None and t.min_top5_overlap is None
    assert t.min_cosine == 0.998
    fp32 = tolerances_for("fp32", features=True)
    assert (fp32.atol, fp32.rtol, fp32.min_cosine) == (1e-4, 1e-3, 0.99999)


def test_judge_names_the_failing_feature_map():
    rng = np.random.default_rng(0)
    a = [rng.standard_normal((2, 4, 8, 8)), rng.standard_normal((2, 8, 4, 4))]
    b = [a[0].copy(), a[1] + 0.5]
    verdict = judge(a, b, Tolerances(atol=1e-3), names=["feat_s8", "feat_s16"], classifier=False)
    assert not verdict.passed and len(verdict.failures) == 1 and verdict.failures[0].startswith("feat_s16: ")
    assert verdict.outputs[0].comparison.max_abs == 0.0 and not verdict.outputs[1].classifier


# ----------------------------------------------------------------------------------- export (torch)

@pytest.mark.parametrize("arch,width,ulsam,groups", [
    pytest.param("mv2", 0.25, "7:1,14,17:1", 4, marks=pytest.mark.slow),
    ("mv1", 0.25, "8:1,9:1,11", 4),
    pytest.param("mv2", 0.25, "13,16", 8, marks=pytest.mark.slow),
    pytest.param("mv1", 0.25, "13:1", 16, marks=pytest.mark.slow),
])
def test_symbolic_hw_export_matches_pytorch_at_every_legal_size(tmp_path, arch, width, ulsam, groups):
    ck, model = _ck(tmp_path, arch, width, ulsam, groups)
    result = export_checkpoint(ck, tmp_path / "m.onnx", ExportOptions(atol=ATOL, input_range=RANGE))
    assert [o.name for o in result.verdict.outputs] == ["batch 1, 64x64", "batch 3, 64x64", "batch 1, 32x32",
                                                        "batch 1, 96x96", "batch 1, 32x96"]
    assert result.verdict.max_abs < 1e-4
    proto = onnx.load(str(result.path))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert sum(n.op_type == "Softmax" for n in proto.graph.node) == len(ulsam.split(","))
    side = read_onnx_sidecar(result.path)
    assert side.dynamic.height == RANGE and side.dynamic.width == RANGE and side.dynamic.multiple_of == 32
    assert side.dynamic.batch == (1, 1, 8) and side.preprocess.size == 64 and side.model.config["input_size"] == 64
    sess = _session(result.path)
    for h, w in ((96, 64), (64, 32)):  # sizes the export did not prove: the graph must still be the model's
        x = _x(h, w)
        with torch.no_grad():
            np.testing.assert_allclose(sess.run(None, {"input": x})[0], model(torch.from_numpy(x)).numpy(), atol=1e-4)


@pytest.mark.slow
def test_backbone_export_outputs_each_feature_map(tmp_path):
    ck, model = _ck(tmp_path)
    result = export_checkpoint(ck, tmp_path / "b.onnx", ExportOptions(atol=ATOL, features="s8,14,s32", input_range=RANGE))
    side = json.loads(result.sidecar_path.read_text())
    outs = side["outputs"]
    assert [(o["name"], o["layer"], o["stride"], o["channels"]) for o in outs] == [
        ("feat_s8", 7, 8, 8), ("feat_s16", 14, 16, 24), ("feat_s32", 19, 32, 1280)]
    assert all(o["shape"][1] == o["channels"] and isinstance(o["shape"][2], str) for o in outs)  # channels stay static
    assert side["model"]["class_names"] is None and not read_onnx_sidecar(result.path).is_classifier
    names = [o.name for o in result.verdict.outputs]
    assert len(names) == 5 * 3 and "batch 1, 32x96/feat_s16" in names  # every output at every proven size
    assert side["steps"][0]["report"]["features"][0]["layer"] == 7
    proto = onnx.load(str(result.path))
    assert not {"Gemm", "MatMul", "GlobalAveragePool"} & {n.op_type for n in proto.graph.node}  # no classifier
    sess = _session(result.path)
    x = _x(96, 32)
    got = sess.run(None, {"input": x})
    with torch.no_grad():
        ref = Backbone(model, [7, 14, 19])(torch.from_numpy(x))
    for g, r, stride in zip(got, ref, (8, 16, 32)):
        assert g.shape[2:] == (96 // stride, 32 // stride)
        np.testing.assert_allclose(g, r.numpy(), atol=1e-4)


def test_static_backbone_any_subset(tmp_path):
    ck, _ = _ck(tmp_path, size=64)
    result = export_checkpoint(ck, tmp_path / "s.onnx", ExportOptions(atol=ATOL, features="2,s16"))
    side = read_onnx_sidecar(result.path)
    assert [(o.name, o.shape) for o in side.outputs] == [("feat_s2", ["batch", 8, 32, 32]),
                                                         ("feat_s16", ["batch", 24, 4, 4])]
    assert side.dynamic.height is None and side.dynamic.multiple_of == 16
    proto = onnx.load(str(result.path))
    assert sum(n.op_type == "Softmax" for n in proto.graph.node) == 2  # 7:1 and 14; 17:1 is past the deepest layer


@pytest.mark.parametrize("options,needle", [
    (dict(features="21"), "no feature layer 21"),
    (dict(input_range=(32, 48, 96)), "Input size 48 is not a multiple of 32"),
    (dict(features="s16", input_range=(24, 32, 64)), "Input size 24 is not a multiple of 16"),
])
def test_bad_backbone_requests_write_nothing(tmp_path, options, needle):
    ck, _ = _ck(tmp_path)  # a range's opt size overrides the checkpoint's 64
    with pytest.raises(UserError, match=needle):
        export_checkpoint(ck, tmp_path / "x.onnx", ExportOptions(**options))
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "x.onnx.json").exists()


def test_cli_export_refusals_exit_2_in_one_sentence(cli_runner, tmp_path):
    ck, _ = _ck(tmp_path)
    for args, needle in ((["--features", "7,30"], "no feature layer 30"),
                         (["--input-size", "96:64:32"], "the minimum 96 is larger than the maximum 32"),
                         (["--input-size", "32:64:100"], "Input size 100 is not a multiple of 32")):
        result = cli_runner.invoke(app, ["export", str(ck), "-o", str(tmp_path / "c.onnx"), *args])
        assert result.exit_code == 2 and needle in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output and not (tmp_path / "c.onnx").exists()


@pytest.fixture(scope="module")
def dynamic_backbone(tmp_path_factory):
    """MV2 x0.25 + ULSAM 7:1,14,17:1 (g=4) as a backbone with symbolic H/W in 32..96 (opt 64)."""
    tmp = tmp_path_factory.mktemp("backbone")
    ck, _ = _ck(tmp)
    export_checkpoint(ck, tmp / "bb.onnx", ExportOptions(atol=ATOL, features="s8,s16,s32", input_range=RANGE))
    return tmp / "bb.onnx"


def test_fusion_with_symbolic_hw(dynamic_backbone, tmp_path):
    from ulsam_deploy.steps.fuse import fuse_file, parity_shapes

    model, side = onnx.load(str(dynamic_backbone)), read_onnx_sidecar(dynamic_backbone)
    shapes = parity_shapes(model, side)
    assert shapes == [(1, 3, 64, 64), (2, 3, 64, 64), (1, 3, 32, 32), (1, 3, 96, 96), (1, 3, 32, 96)]
    result = fuse_file(dynamic_backbone, tmp_path / "f.onnx", atol=ATOL / 10)
    assert result.report["fused"] == 3 and not result.report["left_alone"]
    judged = {o.name.split("/")[0] for o in result.verdict.outputs}
    assert judged == {"x".join(map(str, s)) for s in shapes}  # graph outputs and blocks at every size
    fused = onnx.load(str(result.path))
    assert [d.dim_param for d in fused.graph.input[0].type.tensor_type.shape.dim][2:] == ["height", "width"]
    from ulsam_deploy.backends.onnxrt.runner import OrtRunner

    x = _x(96, 64, batch=1)
    with OrtRunner(str(dynamic_backbone)) as plain, OrtRunner(str(result.path)) as op:
        assert op.custom_ops and len(op.output_names) == 3
        for a, b in zip(plain.infer_all(x), op.infer_all(x)):
            np.testing.assert_allclose(a, b, atol=ATOL / 10)


def test_fusion_needs_a_range_for_symbolic_hw(dynamic_backbone):
    from ulsam_deploy.steps.fuse import parity_shapes

    with pytest.raises(UserError, match="dynamic height .* and no sidecar gives its range"):
        parity_shapes(onnx.load(str(dynamic_backbone)), None)


def test_fp16_backbone_is_judged_per_feature_map(dynamic_backbone, tmp_path):
    from ulsam_deploy.steps.convert import ConvertOptions, convert_file

    result = convert_file(dynamic_backbone, tmp_path / "h.onnx", ConvertOptions(precision="fp16", fuse=True))
    verdict = result.verdict
    assert [o.name for o in verdict.outputs] == ["feat_s8", "feat_s16", "feat_s32"]
    assert verdict.tolerances.min_top1_agreement is None and verdict.tolerances.min_cosine == 0.999
    assert all(not o.classifier and o.comparison.cosine > 0.999 for o in verdict.outputs)
    assert result.report["kept_fp32"]["outputs_isolated"] == 2  # feat_s8 and feat_s16 also feed the next layer
    side = read_onnx_sidecar(result.path)
    assert side.precision == "fp16" and [o.layer for o in side.outputs] == [7, 14, 19]
    assert side.dynamic.height == RANGE and side.fused_blocks == 3
    x = _x(32, 96, batch=1)  # the fp16 graph keeps its symbolic H/W
    from ulsam_deploy.backends.onnxrt.runner import OrtRunner

    with OrtRunner(str(result.path)) as runner:
        assert [o.shape for o in runner.infer_all(x)] == [(1, 8, 4, 12), (1, 24, 2, 6), (1, 1280, 1, 3)]


def test_fp16_gate_fails_on_a_broken_feature_map(dynamic_backbone, tmp_path, monkeypatch):
    import ulsam_deploy.passes.fp16 as fp16
    from ulsam_deploy.errors import ParityError
    from ulsam_deploy.steps.convert import ConvertOptions, convert_file

    real = fp16.to_fp16

    def broken(model, **kw):  # negate feat_s16 where it leaves the graph (its Identity), not where layer 15 reads it
        converted, kept = real(model, **kw)
        node = next(n for n in converted.graph.node if n.name == "feat_s16::output")
        node.op_type = "Neg"
        return converted, kept

    monkeypatch.setattr(fp16, "to_fp16", broken)
    with pytest.raises(ParityError, match="feat_s16: cosine"):
        convert_file(dynamic_backbone, tmp_path / "bad.onnx", ConvertOptions(precision="fp16"))
    assert not (tmp_path / "bad.onnx").exists()


def test_int8_backbone_calibrates_at_the_opt_size(dynamic_backbone, tmp_path, monkeypatch):
    import ulsam_deploy.passes.int8 as int8
    from ulsam_deploy.data.sources import ImageSet
    from ulsam_deploy.steps.convert import ConvertOptions, convert_file

    seen = {}
    real = int8.to_int8

    def spy(model, images, **kw):
        seen["shape"] = images.shape
        return real(model, images, **kw)

    monkeypatch.setattr(int8, "to_int8", spy)
    calib = np.random.default_rng(1).standard_normal((24, 3, 64, 64)).astype(np.float32) * 0.5
    verify = np.random.default_rng(2).standard_normal((8, 3, 64, 64)).astype(np.float32) * 0.5
    # random weights and inputs: the gate is loosened, the point is the sizes and the per-map judging
    result = convert_file(dynamic_backbone, tmp_path / "q.onnx",
                          ConvertOptions(precision="int8", tolerances={"int8": {"min_cosine": 0.5}}),
                          calib_data=ImageSet(calib), verify_data=ImageSet(verify))
    assert seen["shape"][1:] == (3, 64, 64)  # the sidecar's opt size
    assert [o.name for o in result.verdict.outputs] == ["feat_s8", "feat_s16", "feat_s32"]
    assert result.verdict.tolerances.max_top1_drop is None and read_onnx_sidecar(result.path).precision == "int8"


# ------------------------------------------------------------------------------------ build-trt plan

def test_profiles_derive_from_the_sidecar_and_flags_override(dynamic_backbone):
    from ulsam_deploy.backends.trt.settings import BuildOptions, describe_onnx, plan_build, rebuild_command

    side = read_onnx_sidecar(dynamic_backbone)
    info = describe_onnx(onnx.load(str(dynamic_backbone)), dynamic_backbone, side.dynamic.model_dump())
    plan = plan_build(BuildOptions(), info, "10.3.0")
    assert plan.profile == {"input": ((1, 3, 32, 32), (1, 3, 64, 64), (8, 3, 96, 96))}
    assert plan.profile_source == {"batch": "sidecar", "sizes": "sidecar"} and not plan.warnings
    command = rebuild_command(dynamic_backbone, "bb.engine", BuildOptions(), plan)
    assert "--batch-profile 1:1:8 --size-profile 32:64:96" in command  # the rebuild does not need the sidecar
    plan = plan_build(BuildOptions(batch="2:4:4", sizes="32x64:64x64:128x96"), info, "10.3.0")
    assert plan.profile == {"input": ((2, 3, 32, 64), (4, 3, 64, 64), (4, 3, 128, 96))}
    assert plan.profile_source == {"batch": "--batch-profile", "sizes": "--size-profile"}
    assert plan.warnings and "outside 32..96 x 32..96" in plan.warnings[0]
    with pytest.raises(UserError, match="--size-profile 32:48:96: 48 is not a multiple of 32.*use 32 or 64"):
        plan_build(BuildOptions(sizes="32:48:96"), info, "10.3.0")
    with pytest.raises(UserError, match="must satisfy 1 <= MIN <= OPT <= MAX"):
        BuildOptions(sizes="96:64:32")
    bare = describe_onnx(onnx.load(str(dynamic_backbone)), dynamic_backbone)  # no sidecar: the flags are required
    with pytest.raises(UserError, match="pass --size-profile MIN:OPT:MAX"):
        plan_build(BuildOptions(batch="1"), bare, "10.3.0")


# ----------------------------------------------------------------------------------------- bench

def _fast(**kw):
    from ulsam_deploy.bench.latency import TimingConfig
    from ulsam_deploy.bench.options import BenchOptions

    kw.setdefault("timing", TimingConfig(warmup_s=0.0, min_iters=3, min_seconds=0.0, block_s=0.01))
    return BenchOptions(**kw)


@pytest.mark.slow
def test_bench_backbone_per_output_and_per_size(dynamic_backbone, tmp_path):
    from ulsam_deploy.bench.report import chart_png, csv_text, markdown, output_rows
    from ulsam_deploy.bench.run import run_bench

    report = run_bench([str(dynamic_backbone)], _fast(backends=("torch", "ort"), sizes=((32, 32), (64, 96)),
                                                      num_inputs=2))
    assert report.passed and not report.skipped
    (ref, ort_row) = report.parity
    assert ref.is_reference and ref.backend == "torch:cpu"  # the checkpoint, cut at the same layers
    assert [o.name for o in ort_row.outputs] == [f"{s}/feat_s{k}" for s in ("32x32", "64x96") for k in (8, 16, 32)]
    assert ort_row.tolerances.min_top1_agreement is None and ort_row.worst["top1_agreement"] is None
    assert {(r.backend, r.size) for r in report.latency} == {(b, s) for b in ("torch:cpu", "ort:cpu")
                                                             for s in ((32, 32), (64, 96))}
    assert len(output_rows(report)) == 6 and "## Parity per output" in markdown(report)
    assert ",64x96," in csv_text(report)
    assert chart_png(report)[:4] == b"\x89PNG"
    assert report.models[0]["features"] == [7, 14, 19]


def test_bench_refuses_sizes_the_network_cannot_take_and_skips_fixed_ones(dynamic_backbone, tmp_path):
    from ulsam_deploy.bench.run import run_bench

    with pytest.raises(UserError, match="--input-size 48x48: 48 is not a multiple of 32.*use 32 or 64"):
        run_bench([str(dynamic_backbone)], _fast(backends=("ort",), sizes=((48, 48),), num_inputs=1))
    ck, _ = _ck(tmp_path, size=64)
    fixed = export_checkpoint(ck, tmp_path / "fixed.onnx", ExportOptions(atol=ATOL, features="s8,s16,s32")).path
    report = run_bench([str(fixed)], _fast(backends=("ort",), sizes=((64, 64), (96, 96)), num_inputs=1,
                                           parity=False))
    assert [r.size for r in report.latency] == [(64, 64)]
    assert report.skipped and "96x96 is outside the sizes it takes (64..64 x 64..64)" in report.skipped[0]["reason"]


@pytest.mark.slow
def test_bench_classifier_at_several_sizes_keeps_top1(tmp_path):
    from ulsam_deploy.bench.run import run_bench

    ck, _ = _ck(tmp_path, size=64)
    onnx_path = export_checkpoint(ck, tmp_path / "c.onnx", ExportOptions(atol=ATOL, input_range=RANGE)).path
    report = run_bench([str(onnx_path)], _fast(backends=("torch", "ort"), sizes=((32, 32), (96, 96)), num_inputs=3))
    row = report.parity[1]
    assert [o.name for o in row.outputs] == ["32x32/logits", "96x96/logits"] and all(o.classifier for o in row.outputs)
    assert row.tolerances.min_top1_agreement == 1.0 and row.worst["top1_agreement"] == 1.0


def test_cli_bench_input_sizes(dynamic_backbone, cli_runner, tmp_path):
    out = tmp_path / "rep"
    result = cli_runner.invoke(app, ["bench", str(dynamic_backbone), "--backends", "torch,ort",
                                     "--input-size", "32,64x96", "--num-inputs", "1", "--iterations", "2", "--duration", "0", "--warmup", "0",
                                     "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "parity per output" in result.output
    data = json.loads((out / "bench.json").read_text())
    assert sorted(r["input_size"] for r in data["latency"]) == [[32, 32], [32, 32], [64, 96], [64, 96]]
    assert data["settings"]["sizes"] == [[32, 32], [64, 96]]
    bad = cli_runner.invoke(app, ["bench", str(dynamic_backbone), "--input-size", "32,6x"])
    assert bad.exit_code == 2 and "not a comma-separated list of sizes" in bad.output


def test_torch_runner_returns_every_output():
    from ulsam_deploy.backends.torch.runner import TorchRunner

    model = Backbone(build_model("mv2", 0.25, "", num_classes=10, input_size=64).eval(), [4, 7])
    with TorchRunner(model) as runner:
        outs = runner.infer_all(_x(64, 32, batch=1))
        assert [o.shape for o in outs] == [(1, 8, 16, 8), (1, 8, 8, 4)]
        assert np.array_equal(runner.infer(_x(64, 32, batch=1)), outs[0])


def test_fused_op_node_count_is_unchanged_by_symbolic_hw(dynamic_backbone, tmp_path):
    """The fused graph's SubspaceAttention nodes carry no size: the same node serves every H and W."""
    from ulsam_deploy.passes.fuse import fuse_model

    fused, report = fuse_model(onnx.load(str(dynamic_backbone)))
    nodes = [n for n in fused.graph.node if n.op_type == op_spec.OP_TYPE]
    assert len(nodes) == report["fused"] == 3
    assert {b["channels"] for b in report["blocks"]} == {8, 24, 40}


@pytest.mark.slow
def test_dynamo_exporter_symbolic_hw_backbone_fuses(tmp_path):
    from ulsam_deploy.steps.fuse import fuse_file

    ck, _ = _ck(tmp_path, ulsam="14")
    result = export_checkpoint(ck, tmp_path / "d.onnx", ExportOptions(atol=ATOL, exporter="dynamo", opset=18, input_range=RANGE,
                                                                     features="s8,s32"))
    assert result.verdict.max_abs < ATOL and [o.channels for o in result.sidecar.outputs] == [8, 1280]
    assert result.sidecar.outputs[1].shape[1] == 1280 and isinstance(result.sidecar.outputs[1].shape[2], str)
    fused = fuse_file(result.path, tmp_path / "f.onnx", atol=ATOL / 10)
    assert fused.report["fused"] == 1 and fused.verdict.passed


@pytest.mark.slow
def test_bench_spec_exports_symbolic_hw_in_memory_for_other_sizes():
    from ulsam_deploy.bench.run import run_bench

    report = run_bench(["mv2x0.25+14@64"], _fast(backends=("torch", "ort"), sizes=((32, 32), (96, 64)), num_inputs=2))
    assert report.passed and not report.skipped
    assert sorted((r.backend, r.size) for r in report.latency) == [
        ("ort:cpu", (32, 32)), ("ort:cpu", (96, 64)), ("torch:cpu", (32, 32)), ("torch:cpu", (96, 64))]
    assert [o.name for o in report.parity[1].outputs] == ["32x32/logits", "96x64/logits"]
