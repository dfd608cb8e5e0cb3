"""build-trt: engine sidecar compatibility logic, option planning, and our calls on TensorRT's real API.

The ``trt_api`` tests run on TensorRT's real Python bindings (10.3, newest 10.x, newest 11.x; see
tests/test_trt_bindings.py) with fakes made from TensorRT's own classes (tests/trt_fakes.py): a wrong
method, keyword, argument type or enum member fails there. Only the builder's results (the
"engine" bytes, parse results, timing-cache bytes) and the plugin registry are the tests'. No engine
is built: the ``tensorrt``-marked tests at the end do that, and skip where TensorRT or a GPU is absent.
"""

from __future__ import annotations

import json

import pytest

from helpers import one_error_line
from ulsam_deploy.events import Events
from ulsam_deploy.errors import UserError
from ulsam_deploy.backends.trt.compat import EngineMismatch, RuntimeInfo, check_engine_compat
from ulsam_deploy.sidecars import ENGINE_SIDECAR_FORMAT, EnginePlugin, EngineSidecar, read_engine_sidecar
from ulsam_deploy.backends.trt.cuda import GpuInfo

ORIN = GpuInfo(0, "Orin (nvgpu)", "8.7", 0, True)
RTX4090 = GpuInfo(0, "NVIDIA GeForce RTX 4090", "8.9", 24 << 30, False)
L4 = GpuInfo(0, "NVIDIA L4", "8.9", 24 << 30, False)
A100 = GpuInfo(0, "NVIDIA A100-SXM4-40GB", "8.0", 40 << 30, False)


def engine_sidecar(version="10.3.0.30", gpu=ORIN, **build) -> EngineSidecar:
    return EngineSidecar.model_validate(
        {"format": ENGINE_SIDECAR_FORMAT, "engine": "model.engine",
         "rebuild_command": "ulsam-deploy build-trt model.onnx -o model.engine --batch-profile 1:8:32",
         "tensorrt": {"version": version}, "gpu": {"name": gpu.name, "compute_capability": gpu.compute_capability},
         "build": build})


# ------------------------------------------------------------------------------------ compat


def test_same_tensorrt_and_gpu_is_accepted():
    warnings = []
    assert check_engine_compat(engine_sidecar(), runtime=RuntimeInfo("10.3.0.30", ORIN), warn=warnings.append) is None
    assert warnings == []  # nothing soft to say either
    with pytest.raises(EngineMismatch):  # and the same call does refuse another TensorRT
        check_engine_compat(engine_sidecar(), runtime=RuntimeInfo("11.1.0.5", ORIN))


@pytest.mark.parametrize("running", ["10.3.0.26", "10.4.0.26", "11.1.0.5"])
def test_other_tensorrt_version_is_refused_with_rebuild_command(running):
    with pytest.raises(EngineMismatch) as err:
        check_engine_compat(engine_sidecar(), runtime=RuntimeInfo(running, ORIN))
    message = str(err.value)
    assert "10.3.0.30" in message and running in message and "TensorRT version" in message
    assert message.endswith("ulsam-deploy build-trt model.onnx -o model.engine --batch-profile 1:8:32")
    assert "\n" not in message and err.value.exit_code != 0


def test_other_gpu_architecture_is_refused():
    with pytest.raises(EngineMismatch, match=r"sm_87.*sm_89.*GPU architecture"):
        check_engine_compat(engine_sidecar(), runtime=RuntimeInfo("10.3.0.30", RTX4090))


def test_both_differences_named():
    with pytest.raises(EngineMismatch, match="TensorRT version and GPU"):
        check_engine_compat(engine_sidecar(), runtime=RuntimeInfo("10.7.0.23", RTX4090))


def test_same_architecture_other_model_only_warns():
    warnings = []
    check_engine_compat(engine_sidecar("10.7.0.23", RTX4090), runtime=RuntimeInfo("10.7.0.23", L4), warn=warnings.append)
    assert len(warnings) == 1 and "L4" in warnings[0]


def test_version_compatible_engine_runs_on_newer_same_major_only():
    sidecar = engine_sidecar("10.3.0.30", A100, version_compatible=True)
    check_engine_compat(sidecar, runtime=RuntimeInfo("10.7.0.23", A100))
    with pytest.raises(EngineMismatch):
        check_engine_compat(sidecar, runtime=RuntimeInfo("10.2.0.19", A100))
    with pytest.raises(EngineMismatch):
        check_engine_compat(sidecar, runtime=RuntimeInfo("11.1.0.5", A100))


def test_ampere_plus_engine_runs_on_any_cc8_gpu():
    sidecar = engine_sidecar("10.7.0.23", A100, hardware_compatibility_level="AMPERE_PLUS")
    check_engine_compat(sidecar, runtime=RuntimeInfo("10.7.0.23", RTX4090))
    with pytest.raises(EngineMismatch):
        check_engine_compat(sidecar, runtime=RuntimeInfo("10.7.0.23", GpuInfo(0, "Tesla T4", "7.5", 0, False)))


def test_no_gpu_is_refused():
    with pytest.raises(EngineMismatch, match="needs an NVIDIA GPU"):
        check_engine_compat(engine_sidecar(), runtime=RuntimeInfo("10.3.0.30", None))


def test_incomplete_sidecar_is_refused():
    sidecar = engine_sidecar()
    sidecar.gpu = None
    with pytest.raises(EngineMismatch, match="does not record"):
        check_engine_compat(sidecar, runtime=RuntimeInfo("10.3.0.30", ORIN))


def test_sidecar_read_from_engine_path(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0")
    with pytest.raises(UserError, match="missing"):
        read_engine_sidecar(engine)
    (tmp_path / "m.engine.json").write_text("{not json")
    with pytest.raises(UserError, match="not readable JSON"):
        read_engine_sidecar(engine)
    (tmp_path / "m.engine.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(UserError, match="not an engine sidecar"):
        read_engine_sidecar(engine)
    (tmp_path / "m.engine.json").write_text(engine_sidecar().to_json())
    check_engine_compat(engine, runtime=RuntimeInfo("10.3.0.30", ORIN))


def test_changed_plugin_library_warns(tmp_path):
    lib = tmp_path / "libulsam_plugin.so"
    lib.write_bytes(b"v2")
    sidecar = engine_sidecar()
    sidecar.plugin = EnginePlugin(route="lib", library=str(lib), library_sha256="0" * 64)
    warnings = []
    check_engine_compat(sidecar, runtime=RuntimeInfo("10.3.0.30", ORIN), warn=warnings.append)
    assert any("changed" in w for w in warnings)
    lib.unlink()
    warnings.clear()
    check_engine_compat(sidecar, runtime=RuntimeInfo("10.3.0.30", ORIN), warn=warnings.append)
    assert any("not there" in w for w in warnings)


def test_probing_without_tensorrt_says_how_to_install():
    pytest.importorskip("ulsam_deploy")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="pip install tensorrt|python3-libnvinfer"):
            check_engine_compat(engine_sidecar())
    else:
        pytest.skip("TensorRT is installed here; the missing-TensorRT path is not reachable")


# ===================================================================================== build-trt

import types  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from ulsam_deploy.errors import BackendUnavailable  # noqa: E402
from ulsam_deploy.backends.trt import explain, plugins  # noqa: E402
from ulsam_deploy.backends.trt.settings import (BatchProfile, BuildOptions, apply_plan, describe_onnx,  # noqa: E402
                                       network_creation_flags, plan_build, rebuild_command)


def tiny_onnx(path: Path, batch="batch", qdq=False, fused=False, size=8) -> Path:
    """A real (tiny) classifier graph: Conv -> GlobalAveragePool -> Flatten; batch axis dynamic or fixed."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes, inits = [], [w]
    conv_in = "input"
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.02, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
        nodes += [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"])]
        conv_in = "dq"
    nodes.append(helper.make_node("Conv", [conv_in, "w"], ["c"], pads=[1, 1, 1, 1], name="conv"))
    feat = "c"
    if fused:
        nodes.append(helper.make_node("SubspaceAttention", ["c"], ["sa"], domain="ai.onnx.contrib", name="sa", groups=1))
        feat = "sa"
    nodes += [helper.make_node("GlobalAveragePool", [feat], ["g"]), helper.make_node("Flatten", ["g"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4])], inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("ai.onnx.contrib", 1)] if fused else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=10), path)
    return path


def info_of(path: Path):
    return describe_onnx(onnx.load(path), path)


# --------------------------------------------------------------------------- options and plan


def test_batch_profile_parsing():
    assert BatchProfile.parse("1:8:32") == BatchProfile(1, 8, 32)
    assert BatchProfile.parse("4") == BatchProfile(4, 4, 4) and BatchProfile.parse("4").static
    assert BatchProfile.parse(None) is None
    for bad in ("0:1:2", "8:4:16", "1:2", "a:b:c", "-1"):
        with pytest.raises(UserError, match="--batch"):
            BatchProfile.parse(bad)


@pytest.mark.parametrize("kwargs,match", [
    ({"fp16": True}, "--fp16 is a builder flag of TensorRT 10's weakly typed mode; add --weakly-typed"),
    ({"int8": True}, "--precision int8"),
    ({"gpu_fallback": True}, "--gpu-fallback only applies with --dla-core"),
    ({"opt_level": 6}, "--opt-level must be from 0 to 5, not 6."),
    ({"workspace_mib": 0}, "--workspace must be from 1 to 16777216, not 0."),
    ({"dla_core": -1}, "--dla-core must be from 0 to 15, not -1."),
    ({"plugin": "cuda"}, "--plugin must be one of auto, lib, python"),
    ({"plugin": "python", "plugin_lib": "x.so"}, "does not go with --plugin python"),
])
def test_option_mistakes_are_one_sentence(kwargs, match):
    with pytest.raises(UserError, match=match):
        BuildOptions(**kwargs)


def test_default_plan_is_strongly_typed_with_profile(tmp_path):
    info = info_of(tiny_onnx(tmp_path / "m.onnx"))
    plan = plan_build(BuildOptions(batch="1:8:32", workspace_mib=512, opt_level=5), info, "10.3.0.30")
    assert plan.strongly_typed and plan.network_flags == ["STRONGLY_TYPED"] and plan.builder_flags == []
    assert plan.profile == {"input": ((1, 3, 8, 8), (8, 3, 8, 8), (32, 3, 8, 8))}
    assert plan.memory_pools == {"WORKSPACE": 512 << 20} and plan.opt_level == 5
    assert plan.default_device == "GPU" and plan.precision == "fp32 (from the ONNX)"
    assert plan_build(BuildOptions(batch="4"), info, "11.1.0").profile == {"input": ((4, 3, 8, 8),) * 3}


def test_weakly_typed_mode_is_tensorrt10_only(tmp_path):
    info = info_of(tiny_onnx(tmp_path / "m.onnx"))
    plan = plan_build(BuildOptions(batch="1", weakly_typed=True, fp16=True), info, "10.3.0.30")
    assert plan.network_flags == [] and plan.builder_flags == ["FP16"] and not plan.strongly_typed
    with pytest.raises(UserError, match="strongly typed networks only"):
        plan_build(BuildOptions(batch="1", weakly_typed=True, fp16=True), info, "11.1.0.5")
    with pytest.raises(UserError, match="needs a calibrator|would need a calibrator"):
        plan_build(BuildOptions(batch="1", weakly_typed=True, int8=True), info, "10.3.0")
    qdq = info_of(tiny_onnx(tmp_path / "q.onnx", qdq=True))
    assert plan_build(BuildOptions(batch="1", weakly_typed=True, int8=True), qdq, "10.3.0").builder_flags == ["INT8"]
    assert plan_build(BuildOptions(batch="1"), qdq, "11.1").precision == "int8 (from the ONNX)"


def test_shape_mistakes(tmp_path):
    dynamic = info_of(tiny_onnx(tmp_path / "d.onnx"))
    with pytest.raises(UserError, match="dynamic batch axis and TensorRT needs an optimization profile for it; pass --batch"):
        plan_build(BuildOptions(), dynamic, "10.3")
    static = info_of(tiny_onnx(tmp_path / "s.onnx", batch=2))
    assert plan_build(BuildOptions(), static, "10.3").static_shapes == {"input": (2, 3, 8, 8)}
    assert plan_build(BuildOptions(batch="2"), static, "10.3").profile is None
    with pytest.raises(UserError, match="static batch of 2, so --batch-profile 1:8:32 cannot apply"):
        plan_build(BuildOptions(batch="1:8:32"), static, "10.3")
    spatial = tiny_onnx(tmp_path / "hw.onnx")
    model = onnx.load(spatial)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    onnx.save(model, spatial)
    with pytest.raises(UserError, match="dynamic height and width and no sidecar records their range; pass --size"):
        plan_build(BuildOptions(batch="1"), info_of(spatial), "10.3")
    plan = plan_build(BuildOptions(batch="1", sizes="8x8:16x8:32x8"), info_of(spatial), "10.3")
    assert plan.profile == {"input": ((1, 3, 8, 8), (1, 3, 16, 8), (1, 3, 32, 8))}
    with pytest.raises(UserError, match="changes the fixed width 8 of input 'input'; keep it at 8"):
        plan_build(BuildOptions(batch="1", sizes="8:16:32"), info_of(spatial), "10.3")
    with pytest.raises(UserError, match="fixed size 8x8, so --size-profile 8:16:32 cannot apply"):
        plan_build(BuildOptions(batch="1", sizes="8:16:32"), dynamic, "10.3")
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "c"
    onnx.save(model, spatial)
    with pytest.raises(UserError, match=r"dynamic axes \[0, 1, 2\].*dynamic batch, height and width"):
        plan_build(BuildOptions(batch="1"), info_of(spatial), "10.3")


def test_versions_and_fused_graphs(tmp_path):
    info = info_of(tiny_onnx(tmp_path / "m.onnx"))
    with pytest.raises(UserError, match="needs TensorRT 10 or 11"):
        plan_build(BuildOptions(batch="1"), info, "8.6.2.3")
    fused = info_of(tiny_onnx(tmp_path / "f.onnx", fused=True))
    with pytest.raises(UserError, match="1 fused SubspaceAttention node.*--plugin lib"):
        plan_build(BuildOptions(batch="1"), fused, "10.3")
    plan = plan_build(BuildOptions(batch="1", plugin="python"), fused, "10.9.0", python_plugin=True)
    assert plan.network_flags == ["STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS"]


def test_dla_planning(tmp_path):
    fp32 = info_of(tiny_onnx(tmp_path / "m.onnx", batch=1))
    with pytest.raises(UserError, match="no DLA cores"):
        plan_build(BuildOptions(dla_core=0), fp32, "10.3", num_dla_cores=0)
    with pytest.raises(UserError, match="--dla-core 2 does not exist; this device has 2 DLA core"):
        plan_build(BuildOptions(dla_core=2), fp32, "10.3", num_dla_cores=2)
    with pytest.raises(UserError, match="DLA runs fp16 and int8 layers only"):
        plan_build(BuildOptions(dla_core=0), fp32, "10.3", num_dla_cores=2)
    plan = plan_build(BuildOptions(dla_core=1, gpu_fallback=True), fp32, "10.3", num_dla_cores=2)
    assert plan.default_device == "DLA" and plan.dla_core == 1 and plan.builder_flags == ["GPU_FALLBACK"]
    assert any("falls back to the GPU" in w for w in plan.warnings)
    weak = plan_build(BuildOptions(dla_core=0, weakly_typed=True, fp16=True), fp32, "10.3", num_dla_cores=2)
    assert weak.builder_flags == ["FP16"] and not weak.warnings


def test_rebuild_command_reproduces_options(tmp_path):
    options = BuildOptions(batch="1:8:32", workspace_mib=256, opt_level=4, timing_cache=tmp_path / "t.cache",
                           dla_core=0, gpu_fallback=True, weakly_typed=True, fp16=True)
    cmd = rebuild_command("m v.onnx", "m.engine", options)
    assert cmd.startswith("ulsam-deploy build-trt 'm v.onnx' -o m.engine --batch-profile 1:8:32 --workspace 256 --opt-level 4")
    assert "--dla-core 0 --gpu-fallback" in cmd and "--weakly-typed --fp16" in cmd and cmd.endswith("--force")




def test_tf32_is_cleared_unless_asked_for(tmp_path):
    info = info_of(tiny_onnx(tmp_path / "m.onnx"))
    plan = plan_build(BuildOptions(batch="1"), info, "10.3.0.30")
    assert plan.clear_flags == ["TF32"] and not plan.tf32 and plan.precision == "fp32 (from the ONNX)"
    allowed = plan_build(BuildOptions(batch="1", tf32=True), info, "11.4.0")
    assert allowed.clear_flags == [] and allowed.tf32 and "TF32 allowed" in allowed.precision
    assert rebuild_command("m.onnx", "m.engine", BuildOptions(batch="1", tf32=True)).endswith("--tf32 --force")
    assert "--tf32" not in rebuild_command("m.onnx", "m.engine", BuildOptions(batch="1"))


def test_weakly_typed_qdq_build_sets_int8_by_itself(tmp_path):
    qdq = info_of(tiny_onnx(tmp_path / "q.onnx", qdq=True))
    plan = plan_build(BuildOptions(batch="1", weakly_typed=True), qdq, "10.3.0.30")
    assert plan.builder_flags == ["INT8"] and "/int8" in plan.precision
    fp16 = plan_build(BuildOptions(batch="1", weakly_typed=True, fp16=True), qdq, "10.16.1")
    assert fp16.builder_flags == ["FP16", "INT8"]
    plain = info_of(tiny_onnx(tmp_path / "m.onnx"))
    assert plan_build(BuildOptions(batch="1", weakly_typed=True), plain, "10.3.0").builder_flags == []
    assert plan_build(BuildOptions(batch="1"), qdq, "10.3.0").builder_flags == []  # strongly typed: from the ONNX


def test_dla_with_plugin_needs_gpu_fallback_before_any_tensorrt_work():
    for kwargs in ({"plugin": "lib"}, {"plugin_lib": "x.so"}, {"plugin": "python"}):
        with pytest.raises(UserError) as err:
            BuildOptions(dla_core=0, **kwargs)
        assert str(err.value) == ("The SubspaceAttention plugin runs on the GPU only, so --dla-core with --plugin fails "
                                  "without GPU fallback; add --gpu-fallback, or drop --dla-core.")
    assert BuildOptions(dla_core=0, plugin="lib", gpu_fallback=True).gpu_fallback


def test_opset_above_20_is_refused_on_tensorrt10_only(tmp_path):
    path = tiny_onnx(tmp_path / "m.onnx")
    model = onnx.load(path)
    model.opset_import[0].version = 21
    onnx.save(model, path)
    info = info_of(path)
    with pytest.raises(UserError) as err:
        plan_build(BuildOptions(batch="1"), info, "10.16.1.11")
    assert str(err.value) == ("'m.onnx' uses ONNX opset 21 and TensorRT 10.16.1.11's ONNX parser supports opsets 9 to "
                              "20; re-export it with 'ulsam-deploy export --opset 20' (or build with TensorRT 11).")
    assert plan_build(BuildOptions(batch="1"), info, "11.4.0").trt_major == 11
    assert plan_build(BuildOptions(batch="1"), info, None).trt_major == 0  # unknown TensorRT: decided after import


# ------------------------------------------------- TensorRT's real API (tests/test_trt_bindings.py runs these)

import trt_fakes as F  # noqa: E402
from ulsam_deploy.backends.trt.runtime import parse_version  # noqa: E402


def fused_tiny_onnx(path: Path, channels=4, groups=2, size=8) -> Path:
    """Conv -> SubspaceAttention (every attribute the fusion pass writes) -> GlobalAveragePool -> Flatten."""
    from ulsam_deploy import op_spec

    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w")
    attrs = {op_spec.ATTR_GROUPS: groups, op_spec.ATTR_RELU_DW: 1, op_spec.ATTR_RELU_PW: 1,
             op_spec.ATTR_DW_SCALE: rng.uniform(0.5, 1.5, channels).tolist(),
             op_spec.ATTR_DW_SHIFT: rng.uniform(-0.1, 0.1, channels).tolist(),
             op_spec.ATTR_PW_WEIGHT: rng.standard_normal(channels).tolist(),
             op_spec.ATTR_PW_BIAS: rng.standard_normal(groups).tolist()}
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node(op_spec.OP_TYPE, ["c"], ["sa"], domain=op_spec.DOMAIN, name="sa", **attrs),
             helper.make_node("GlobalAveragePool", ["sa"], ["g"]), helper.make_node("Flatten", ["g"], ["logits"])]
    graph = helper.make_graph(nodes, "fused", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                              [1, 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, channels])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(op_spec.DOMAIN, 1)],
                              ir_version=10)
    onnx.save(model, path)
    return path


class Build:
    """Strict fakes for one build: TensorRT's real classes, only the builder's results given by the test."""

    def __init__(self, trt, monkeypatch, *, dla_cores=None, parse_errors=(), log_on_build=None, registry=None):
        self.trt = trt
        self.log: list[str] = []
        self.parsed: list[bytes] = []
        self.builder = F.strict(F.real(trt, "Builder"), trt, **({"num_DLA_cores": dla_cores} if dla_cores is not None else {}))
        self.network = F.strict(trt.INetworkDefinition, trt)
        self.config = F.strict(trt.IBuilderConfig, trt)
        self.profile = F.strict(trt.IOptimizationProfile, trt)
        self.parser = F.strict(F.real(trt, "OnnxParser"), trt, num_errors=len(parse_errors))
        self.registry = registry or F.Registry(trt)
        self.builder.create_network.return_value = self.network
        self.builder.create_builder_config.return_value = self.config
        self.builder.create_optimization_profile.return_value = self.profile
        self.builder.get_plugin_registry.return_value = self.registry.fake
        self.config.add_optimization_profile.return_value = 0
        self.cache = None

        def parse(model, path=None):
            self.parsed.append(bytes(model))
            return not parse_errors

        def error(index):
            code, desc, node, name, op = parse_errors[index]
            err = F.strict(trt.ParserError, trt)
            err.code.return_value = getattr(trt.ErrorCode, code)  # a missing member fails here
            err.desc.return_value, err.node.return_value = desc, node
            err.node_name.return_value, err.node_operator.return_value = name, op
            return err

        def create_timing_cache(serialized_timing_cache):
            self.cache = F.strict(trt.ITimingCache, trt)
            data = bytes(serialized_timing_cache)
            F.on(self.cache, "serialize", lambda: data + b"+tuned")
            return self.cache

        def build(network, config):
            assert network is self.network and config is self.config
            monitor = config.progress_monitor
            monitor.phase_start("Building", None, 2)
            monitor.step_complete("Building", 0)
            monitor.step_complete("Building", 1)
            monitor.phase_finish("Building")
            if log_on_build:
                self.builder_logger.log(trt.ILogger.Severity.ERROR, log_on_build)
                return None
            return b"NOT-AN-ENGINE: marker bytes of the fake builder"

        F.on(self.parser, "parse", parse)
        F.on(self.parser, "get_error", error)
        F.on(self.config, "create_timing_cache", create_timing_cache)
        F.on(self.config, "set_timing_cache", lambda cache, ignore_mismatch: not bytes(
            cache.serialize()).startswith(b"other-gpu"))
        F.on(self.config, "get_timing_cache", lambda: self.cache)
        F.on(self.builder, "build_serialized_network", build)
        self.factories = F.install_factories(monkeypatch, trt, builder=self.builder, parser=self.parser)

    @property
    def builder_logger(self):
        (args, _), = self.factories["Builder"].made
        return args[0]

    def calls(self, fake) -> list:
        return [c for c in fake.method_calls]


@pytest.mark.trt_api
def test_apply_plan_maps_options_to_real_builder_calls(trt, tmp_path, monkeypatch):
    if trt.__version__.startswith("11"):
        plan = plan_build(BuildOptions(batch="1:4:16"), info_of(tiny_onnx(tmp_path / "m.onnx")), trt.__version__)
        with pytest.raises(UserError, match="strongly typed networks only"):
            plan_build(BuildOptions(batch="1", weakly_typed=True), info_of(tiny_onnx(tmp_path / "m.onnx")),
                       trt.__version__)
        expected_flags = []
    else:
        options = BuildOptions(batch="1:4:16", workspace_mib=64, opt_level=2, timing_cache=tmp_path / "c.cache",
                               weakly_typed=True, int8=True)
        plan = plan_build(options, info_of(tiny_onnx(tmp_path / "m.onnx", qdq=True)), trt.__version__)
        expected_flags = [trt.BuilderFlag.INT8]
    b = Build(trt, monkeypatch)
    applied = apply_plan(trt, b.builder, b.config, plan, b"old")
    calls = b.config.method_calls
    assert [c.args[0] for c in calls if c[0] == "set_flag"] == expected_flags
    assert [c.args[0] for c in calls if c[0] == "clear_flag"] == [trt.BuilderFlag.TF32]
    assert b.profile.method_calls == [mock_call("set_shape", "input", (1, 3, 8, 8), (4, 3, 8, 8), (16, 3, 8, 8))]
    assert applied["cleared_builder_flags"] == ["TF32"] and applied["profiles"] == 1
    if expected_flags:
        assert mock_call("set_memory_pool_limit", trt.MemoryPoolType.WORKSPACE, 64 << 20) in calls
        assert b.config.builder_optimization_level == 2
        assert mock_call("create_timing_cache", b"old") in calls and mock_call("set_timing_cache", b.cache, False) in calls
        assert applied["builder_flags"] == ["INT8"] and applied["memory_pools"] == {"WORKSPACE": 64 << 20}
        b.cache = None
        with pytest.raises(UserError, match="made by another TensorRT version or GPU; delete it"):
            apply_plan(trt, b.builder, b.config, plan, b"other-gpu cache")
    with pytest.raises(AssertionError, match="never set"):
        b.config.default_device_type  # noqa: B018 - no DLA was asked for, so it was never set


def mock_call(name, *args, **kwargs):
    from unittest import mock

    return getattr(mock.call, name)(*args, **kwargs)


@pytest.mark.trt_api
def test_dla_settings_on_the_real_config(trt, tmp_path, monkeypatch):
    info = info_of(tiny_onnx(tmp_path / "m.onnx", batch=2))
    plan = plan_build(BuildOptions(dla_core=1, gpu_fallback=True), info, trt.__version__, num_dla_cores=2)
    b = Build(trt, monkeypatch, dla_cores=2)
    apply_plan(trt, b.builder, b.config, plan)
    assert b.config.default_device_type == trt.DeviceType.DLA and b.config.DLA_core == 1
    assert mock_call("set_flag", trt.BuilderFlag.GPU_FALLBACK) in b.config.method_calls


@pytest.mark.trt_api
def test_network_flags_from_the_real_enum(trt, tmp_path):
    info = info_of(tiny_onnx(tmp_path / "m.onnx"))
    plan = plan_build(BuildOptions(batch="1"), info, trt.__version__)
    assert network_creation_flags(trt, plan) == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    fused = info_of(tiny_onnx(tmp_path / "f.onnx", fused=True))
    aot = plan_build(BuildOptions(batch="1", plugin="python"), fused, trt.__version__, python_plugin=True)
    if parse_version(trt.__version__) >= (10, 9):
        flags = trt.NetworkDefinitionCreationFlag
        assert network_creation_flags(trt, aot) == (1 << int(flags.STRONGLY_TYPED)) | (
            1 << int(flags.PREFER_AOT_PYTHON_PLUGINS))
    else:
        assert aot.network_flags == ["STRONGLY_TYPED"]


def test_a_future_tensorrt11_without_the_deprecated_flag(tmp_path):
    """Hypothetical (no such release yet): 11.x dropping STRONGLY_TYPED, which 11.0 deprecated."""
    info = info_of(tiny_onnx(tmp_path / "m.onnx"))
    future = types.SimpleNamespace(NetworkDefinitionCreationFlag=types.SimpleNamespace())
    assert network_creation_flags(future, plan_build(BuildOptions(batch="1"), info, "11.9.0")) == 0
    with pytest.raises(UserError, match="no NetworkDefinitionCreationFlag.STRONGLY_TYPED; upgrade TensorRT"):
        network_creation_flags(future, plan_build(BuildOptions(batch="1"), info, "10.3.0"))


# ------------------------------------------------------------------------------- error sentences


def _issue(code, desc, op="", name="n0"):
    return explain.ParserIssue(code, desc, 3, name, op)


def test_parser_errors_mapped_to_sentences():
    plugin = explain.explain_parser_errors([_issue("UNSUPPORTED_NODE", "No importer registered for op: SubspaceAttention."
                                                   " Attempting to import as plugin.", "SubspaceAttention", "sa_1")],
                                           "m.onnx", "10.3.0")
    assert "could not find the SubspaceAttention plugin for node 'sa_1'" in plugin and "build-plugin" in plugin
    op = explain.explain_parser_errors([_issue("UNSUPPORTED_NODE", "No importer registered for op: Foo", "Foo")], "m.onnx", "10.3")
    assert "does not support op Foo" in op
    opset = explain.explain_parser_errors([_issue("UNSUPPORTED_GRAPH", "Unsupported ONNX opset 23")], "m.onnx", "10.3")
    assert "--opset 17" in opset
    other = explain.explain_parser_errors([_issue("INVALID_NODE", "weird thing", "Conv", "c")], "m.onnx", "10.3")
    assert other.endswith("failed at node 'c' (Conv): weird thing.")
    for sentence in (plugin, op, opset, other):
        assert "\n" not in sentence


@pytest.mark.parametrize("log,expect", [
    ("Network has dynamic or shape inputs, but no optimization profile has been defined.", "--batch-profile MIN:OPT:MAX"),
    ("Requested amount of GPU memory (1073741824 bytes) could not be allocated. out of memory", "--workspace"),
    ("Layer foo is not supported on DLA and GPU fallback is disabled.", "--gpu-fallback"),
    ("CUDA initialization failure with error: 35", "could not initialise CUDA"),
    ("getPluginCreator could not find plugin SubspaceAttention version 1", "build-plugin"),
    ("something unexpected", "could not build the engine: something unexpected"),
])
def test_build_failures_mapped_to_sentences(log, expect):
    assert expect in explain.explain_build_failure([log], "10.3.0")


# ------------------------------------------------------------------------------------ plugin routes

PLUGIN_KEY = ("SubspaceAttention", "1", "ulsam")


def P_sha(path):
    from ulsam_deploy.artifacts import sha256_file

    return sha256_file(path)


def test_plugin_routes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(plugins.PLUGIN_LIBRARY_ENV, raising=False)
    with pytest.raises(UserError, match="does not exist; build it with 'ulsam-deploy build-plugin'"):
        plugins.resolve_route("lib", "10.3.0", tmp_path / "missing.so")
    with pytest.raises(UserError, match="No SubspaceAttention plugin library found"):
        plugins.resolve_route("lib", "10.3.0")
    with pytest.raises(BackendUnavailable, match="needs TensorRT 10.9 or newer"):
        plugins.resolve_route("auto", "10.3.0")
    lib = tmp_path / "libulsam.so"
    lib.write_bytes(b"\x7fELF")
    monkeypatch.setenv(plugins.PLUGIN_LIBRARY_ENV, str(lib))
    route = plugins.resolve_route("auto", "10.3.0")
    assert route.route == "lib" and route.library == lib


@pytest.mark.trt_api
def test_plugin_library_is_looked_up_first_loaded_once_and_checked(trt, tmp_path):
    lib = tmp_path / "libulsam.so"
    lib.write_bytes(b"\x7fELF")
    registry = F.Registry(trt, {str(lib.resolve()): [PLUGIN_KEY]})
    route = plugins.PluginRoute("lib", lib)
    info = plugins.activate(trt, registry.fake, route)
    assert info["library_sha256"] == P_sha(lib) and info["library"] == str(lib.resolve())
    assert registry.loads == [str(lib.resolve())] and PLUGIN_KEY in registry.creators
    # a second build in the same process: the creator is there, so nothing is loaded (TensorRT would refuse it)
    plugins.activate(trt, registry.fake, route)
    assert registry.loads == [str(lib.resolve())]
    assert [c[0] for c in registry.fake.method_calls] == ["get_creator", "load_library", "get_creator", "get_creator"]


@pytest.mark.trt_api
def test_plugin_library_that_registers_nothing_is_refused(trt, tmp_path):
    from ulsam_deploy.backends.trt.plugin_build import TensorRTHeaders, write_build_record

    lib = tmp_path / "libulsam.so"
    lib.write_bytes(b"\x7fELF")
    write_build_record(lib, TensorRTHeaders(tmp_path, "10.3"))
    empty = F.Registry(trt, {str(lib.resolve()): [("OtherPlugin", "1", "")]})
    with pytest.raises(UserError) as err:
        plugins.ensure_plugin_library(empty.fake, lib, trt.__version__)
    assert str(err.value) == (f"The plugin library '{lib}' loaded into TensorRT {trt.__version__} but registered no "
                              "'SubspaceAttention' version 1 in namespace 'ulsam' (it was built against TensorRT 10.3 "
                              "headers); rebuild it on this machine with 'ulsam-deploy build-plugin'.")
    refused = F.Registry(trt)  # loadLibrary returns null (other TensorRT major, no getCreators)
    (tmp_path / "libulsam.so.json").unlink()
    with pytest.raises(UserError, match=r"could not load the plugin library .* \(built against an unrecorded TensorRT "
                                        r"version \(no build record beside it\);"):
        plugins.ensure_plugin_library(refused.fake, lib, trt.__version__)
    with pytest.raises(BackendUnavailable, match="has no plugin registry here"):
        plugins.ensure_plugin_library(None, lib, trt.__version__)  # what get_plugin_registry() gives without libnvinfer


def test_build_record_falls_back_to_the_cmake_cache(tmp_path):
    from ulsam_deploy.backends.trt.plugin_build import read_build_record

    include = tmp_path / "trt" / "include"
    include.mkdir(parents=True)
    (include / "NvInferVersion.h").write_text("#define NV_TENSORRT_MAJOR 10\n#define NV_TENSORRT_MINOR 16\n")
    (tmp_path / "CMakeCache.txt").write_text(f"TensorRT_INCLUDE_DIR:PATH={include}\n")
    assert read_build_record(tmp_path / "libulsam.so")["tensorrt"] == "10.16"
    (tmp_path / "CMakeCache.txt").unlink()
    assert read_build_record(tmp_path / "libulsam.so") is None



def _no_real_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001
        return True
    return False


def test_build_without_tensorrt_writes_nothing(tmp_path):
    if not _no_real_tensorrt():
        pytest.skip("TensorRT is installed here")
    from ulsam_deploy.steps.build_trt import build_engine
    from ulsam_deploy.backends.trt.runtime import TensorRTUnavailable

    model = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(TensorRTUnavailable, match="pip install tensorrt"):
        build_engine(model, tmp_path / "m.engine", BuildOptions(batch="1:2:4"))
    # option mistakes are still reported first, as such
    with pytest.raises(UserError, match="pass --batch"):
        build_engine(model, tmp_path / "m.engine", BuildOptions())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]



class _Details(Events):
    """Events keeping the long texts (the parser's errors in full)."""

    def __init__(self, sink: list):
        self.sink = sink

    def detail(self, text: str) -> None:
        self.sink.append(text)


@pytest.mark.trt_api
def test_build_error_paths_on_the_real_api(trt, tmp_path, monkeypatch):
    from ulsam_deploy.backends.trt.builder import ParserFailed
    from ulsam_deploy.steps.build_trt import build_engine

    model = tiny_onnx(tmp_path / "m.onnx", fused=True)
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"x")
    Build(trt, monkeypatch, registry=F.Registry(trt, {str(lib.resolve()): [PLUGIN_KEY]}), parse_errors=[
        ("UNSUPPORTED_NODE", "No importer registered for op: SubspaceAttention. Attempting to import as plugin.", 1,
         "sa", "SubspaceAttention"),
        ("UNSUPPORTED_NODE", "Plugin not found, are the plugin name, version, and namespace correct?", 1, "sa",
         "SubspaceAttention")])
    shown = []
    with pytest.raises(ParserFailed) as err:
        build_engine(model, tmp_path / "m.engine", BuildOptions(batch="1", plugin_lib=lib),
                     events=_Details(shown))
    assert "could not find the SubspaceAttention plugin" in str(err.value)
    assert "Plugin not found, are the plugin name" in err.value.details and "Plugin not found" in shown[0]
    Build(trt, monkeypatch, log_on_build="Requested amount of GPU memory could not be allocated: out of memory")
    with pytest.raises(UserError, match="ran out of GPU memory"):
        build_engine(tiny_onnx(tmp_path / "p.onnx"), tmp_path / "m.engine", BuildOptions(batch="1"))
    assert not (tmp_path / "m.engine").exists() and not (tmp_path / "m.engine.json").exists()


@pytest.mark.trt_api
def test_no_tensorrt_work_before_the_version_checks(trt, tmp_path, monkeypatch):
    """Opset and weak-typing limits are refused right after import: the Builder is never constructed."""
    from ulsam_deploy.steps.build_trt import build_engine

    b = Build(trt, monkeypatch)
    path = tiny_onnx(tmp_path / "m.onnx")
    model = onnx.load(path)
    model.opset_import[0].version = 21
    onnx.save(model, path)
    if trt.__version__.startswith("10"):
        with pytest.raises(UserError, match="supports opsets 9 to 20"):
            build_engine(path, tmp_path / "m.engine", BuildOptions(batch="1"))
    else:
        with pytest.raises(UserError, match="strongly typed networks only"):
            build_engine(path, tmp_path / "m.engine", BuildOptions(batch="1", weakly_typed=True, fp16=True))
    assert b.factories["Builder"].made == []


@pytest.mark.trt_api
def test_builder_factory_failure_is_one_sentence(trt, tmp_path):
    """The real trt.Builder over the stub libnvinfer: 'factory function returned nullptr' becomes a sentence."""
    import os

    from trt_bindings import ACTIVE_ENV
    from ulsam_deploy.steps.build_trt import build_engine

    if not os.environ.get(ACTIVE_ENV):
        pytest.skip("needs the stub libnvinfer of tests/test_trt_bindings.py (a real one builds)")
    with pytest.raises(BackendUnavailable) as err:
        build_engine(tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", BuildOptions(batch="1"))
    assert str(err.value) == (f"TensorRT {trt.__version__} could not create a Builder (libnvinfer is missing or not a "
                              "working TensorRT library); check 'ulsam-deploy doctor'.")
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.trt_api
def test_file_handling_on_the_real_api(trt, tmp_path, monkeypatch):
    """Our side only (sidecar, raw bytes written atomically, timing cache round trip, progress, TF32); the
    'engine' is the fake builder's marker bytes, so this says nothing about TensorRT building engines."""
    from ulsam_deploy.steps.build_trt import build_engine
    from ulsam_deploy.events import Recorder

    b = Build(trt, monkeypatch)
    model = tiny_onnx(tmp_path / "m.onnx")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"previous")
    progress = Recorder()
    result = build_engine(model, tmp_path / "m.engine", BuildOptions(batch="1:2:4", timing_cache=cache),
                          events=progress)
    assert (tmp_path / "m.engine").read_bytes() == b"NOT-AN-ENGINE: marker bytes of the fake builder"
    assert cache.read_bytes() == b"previous+tuned"
    assert ("build_phase", {"phase": "Building", "parent": None, "steps": 2}) in progress.events
    assert ("build_phase_done", {"phase": "Building"}) in progress.events
    assert isinstance(b.config.progress_monitor, trt.IProgressMonitor)
    assert mock_call("clear_flag", trt.BuilderFlag.TF32) in b.config.method_calls
    assert b.builder.create_network.call_args == mock_call(
        "create_network", 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    assert b.parsed == [model.read_bytes()]
    data = json.loads((tmp_path / "m.engine.json").read_text())
    assert read_engine_sidecar(tmp_path / "m.engine") == result.sidecar and data["format"] == ENGINE_SIDECAR_FORMAT
    assert [s["step"] for s in data["steps"]] == ["build-trt"] and data["steps"][0]["report"]["precision"] == "fp32"
    assert data["tensorrt"]["version"] == trt.__version__ and data["precision_details"]["strongly_typed"]
    assert data["precision"] == "fp32" and data["precision_details"]["tf32"] is False
    assert data["build"]["tf32"] is False and data["build"]["cleared_builder_flags"] == ["TF32"]
    assert data["profiles"] == [{"input": "input", "min": [1, 3, 8, 8], "opt": [2, 3, 8, 8], "max": [4, 3, 8, 8],
                                 "source": {"batch": "--batch-profile"}}]
    assert data["onnx"]["sha256"] == P_sha(model) and data["engine_sha256"] == P_sha(tmp_path / "m.engine")
    assert data["build"]["timing_cache"] == {"path": str(cache), "loaded_bytes": 8, "saved_bytes": 14}
    assert data["rebuild_command"].startswith(f"ulsam-deploy build-trt {model} -o {tmp_path / 'm.engine'} --batch-profile 1:2:4")
    with pytest.raises(UserError, match="already exists; pass --force"):
        build_engine(model, tmp_path / "m.engine", BuildOptions(batch="1:2:4"))
    b2 = Build(trt, monkeypatch)
    tf32 = build_engine(model, tmp_path / "t.engine", BuildOptions(batch="1:2:4", tf32=True))
    assert not any(c[0] == "clear_flag" for c in b2.config.method_calls)
    assert tf32.sidecar.precision_details["tf32"] is True and "--tf32" in tf32.sidecar.rebuild_command


@pytest.mark.trt_api
def test_dynamic_hw_profile_from_the_sidecar_on_the_real_api(trt, tmp_path, monkeypatch):
    """A symbolic-H/W ONNX whose sidecar records its ranges: the profile's set_shape gets them, flags win."""
    from ulsam_deploy.artifacts import sha256_file
    from ulsam_deploy.sidecars import DynamicRange, OnnxSidecar, TensorSpec, sidecar_path
    from ulsam_deploy.steps.build_trt import build_engine

    model = tiny_onnx(tmp_path / "d.onnx", size="height")
    proto = onnx.load(model)
    proto.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "width"
    onnx.save(proto, model)
    side = OnnxSidecar(onnx="d.onnx", sha256=sha256_file(model),
                       inputs=[TensorSpec(name="input", shape=["batch", 3, "height", "width"])],
                       outputs=[TensorSpec(name="logits", shape=["batch", 4])],
                       dynamic=DynamicRange(batch=(1, 2, 4), height=(32, 64, 96), width=(32, 64, 128), multiple_of=32))
    sidecar_path(model).write_text(side.to_json())
    b = Build(trt, monkeypatch)
    result = build_engine(model, tmp_path / "d.engine", BuildOptions())
    assert mock_call("set_shape", "input", (1, 3, 32, 32), (2, 3, 64, 64), (4, 3, 96, 128)) in b.profile.method_calls
    assert result.sidecar.profiles[0]["source"] == {"batch": "sidecar", "sizes": "sidecar"}
    assert "--batch-profile 1:2:4 --size-profile 32:64:96x128" in result.sidecar.rebuild_command
    b2 = Build(trt, monkeypatch)
    build_engine(model, tmp_path / "e.engine", BuildOptions(batch="1", sizes="64"))
    assert mock_call("set_shape", "input", (1, 3, 64, 64), (1, 3, 64, 64), (1, 3, 64, 64)) in b2.profile.method_calls
    with pytest.raises(UserError, match="not a multiple of 32"):
        build_engine(model, tmp_path / "f.engine", BuildOptions(sizes="32:40:96"))
    assert not (tmp_path / "f.engine").exists()


@pytest.mark.trt_api
def test_weakly_typed_qdq_build_sets_int8_on_the_real_config(trt, tmp_path, monkeypatch):
    from ulsam_deploy.steps.build_trt import build_engine

    model = tiny_onnx(tmp_path / "q.onnx", qdq=True)
    b = Build(trt, monkeypatch)
    if trt.__version__.startswith("11"):
        with pytest.raises(UserError, match="strongly typed networks only"):
            build_engine(model, tmp_path / "q.engine", BuildOptions(batch="1", weakly_typed=True))
        return
    result = build_engine(model, tmp_path / "q.engine", BuildOptions(batch="1", weakly_typed=True))
    assert mock_call("set_flag", trt.BuilderFlag.INT8) in b.config.method_calls
    assert b.builder.create_network.call_args == mock_call("create_network", 0)
    assert result.sidecar.precision == "int8" and result.sidecar.build.builder_flags == ["INT8"]


# ---------------------------------------------------------------------------- real TensorRT (GPU)


@pytest.mark.tensorrt
def test_real_engine_build_and_compat(tmp_path):
    import tensorrt as trt

    from ulsam_deploy.steps.build_trt import build_engine

    model = tiny_onnx(tmp_path / "m.onnx", size=16)
    cache = tmp_path / "t.cache"
    result = build_engine(model, tmp_path / "m.engine", BuildOptions(batch="1:2:4", timing_cache=cache, opt_level=1))
    assert cache.stat().st_size > 0
    check_engine_compat(result.sidecar)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine((tmp_path / "m.engine").read_bytes())
    assert engine is not None and engine.num_io_tensors == 2


# ----------------------------------------------------------------------------------------- CLI


def test_cli_build_trt_error_paths(cli_runner, tmp_path):
    from ulsam_deploy.cli import app

    model = tiny_onnx(tmp_path / "m.onnx")
    engine = tmp_path / "m.engine"
    if _no_real_tensorrt():
        result = cli_runner.invoke(app, ["build-trt", str(model), "-o", str(engine), "--batch-profile", "1:2:4"])
        line = one_error_line(result.output)
        assert result.exit_code == 4 and "TensorRT's Python package is not installed" in line
        assert "pip install tensorrt" in line or "python3-libnvinfer" in line
    for args, code, text in (
            (["--batch-profile", "4:2:1"], 2, "1 <= MIN <= OPT <= MAX"),
            (["--batch-profile", "1", "--fp16"], 2, "--weakly-typed"),
            (["--batch-profile", "1", "--gpu-fallback"], 2, "--dla-core"),
            (["--batch-profile", "1", "--opt-level", "9"], 2, "--opt-level must be from 0 to 5"),
            ([], 2, "pass --batch"),
    ):
        result = cli_runner.invoke(app, ["build-trt", str(model), "-o", str(engine)] + args)
        assert result.exit_code == code and text in one_error_line(result.output), (args, result.output)
    result = cli_runner.invoke(app, ["build-trt", str(tmp_path / "missing.onnx")])
    assert result.exit_code == 2 and "does not exist" in one_error_line(result.output)
    engine.write_bytes(b"old")
    result = cli_runner.invoke(app, ["build-trt", str(model), "-o", str(engine), "--batch-profile", "1"])
    assert result.exit_code == 2 and "--force" in one_error_line(result.output) and engine.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.onnx"]


@pytest.mark.trt_api
def test_cli_build_trt_shows_parser_errors_in_full(trt, cli_runner, tmp_path, monkeypatch):
    from ulsam_deploy.cli import app

    Build(trt, monkeypatch, parse_errors=[
        ("UNSUPPORTED_NODE", "No importer registered for op: Foo. Attempting to import as plugin.", 2, "foo_1", "Foo"),
        ("UNSUPPORTED_NODE", "creator for Foo version 1 not found", 2, "foo_1", "Foo")])
    model = tiny_onnx(tmp_path / "m.onnx")
    result = cli_runner.invoke(app, ["build-trt", str(model), "--batch-profile", "1"])
    assert result.exit_code == 2
    assert "No importer registered for op: Foo" in result.output and "creator for Foo version 1 not found" in result.output
    assert "does not support op Foo (node 'foo_1')" in one_error_line(result.output)
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.trt_api
def test_cli_build_trt_tf32_flag(trt, cli_runner, tmp_path, monkeypatch):
    from ulsam_deploy.cli import app

    b = Build(trt, monkeypatch)
    model = tiny_onnx(tmp_path / "m.onnx")
    result = cli_runner.invoke(app, ["build-trt", str(model), "--batch-profile", "1", "--tf32"])
    assert result.exit_code == 0, result.output
    assert not any(c[0] == "clear_flag" for c in b.config.method_calls)
    assert json.loads((tmp_path / "m.engine.json").read_text())["build"]["tf32"] is True


def test_plugin_build_of_an_unfusable_fp16_graph_says_fuse_first(tmp_path, monkeypatch):
    """fp16 Casts split a ULSAM block, so build-trt --plugin cannot fuse it: refused before any TensorRT call
    (the stand-in module has a version and nothing else, so any TensorRT use would fail here)."""
    pytest.importorskip("onnxruntime_extensions")
    from ulsam_deploy.models.ulsam import to_export_form
    from ulsam_deploy.steps.export import ExportOptions, torch_to_onnx
    from ulsam_deploy.onnx_graph import fit_ir_version
    from ulsam_deploy.passes.fp16 import to_fp16
    from ulsam_deploy.passes.simplify import simplify_model
    from ulsam_deploy.models import build_model
    from ulsam_deploy.backends.trt import runtime as trt_runtime
    from ulsam_deploy.steps.build_trt import build_engine

    import torch

    torch.manual_seed(0)
    proto = simplify_model(torch_to_onnx(to_export_form(build_model("mv2", 0.35, "14", 4, 10, 64).eval()), 64, 3,
                                         ExportOptions()))
    fp16, _ = to_fp16(proto)
    path = tmp_path / "m.fp16.onnx"
    onnx.save(fit_ir_version(fp16), path)
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"x")
    monkeypatch.setattr(trt_runtime, "import_tensorrt", lambda: types.SimpleNamespace(__version__="10.3.0.30"))
    with pytest.raises(UserError, match=r"cannot be fused as they are \(fp16 Casts split them\); fuse before converting"):
        build_engine(path, tmp_path / "m.engine", BuildOptions(batch="1", plugin_lib=lib))
    assert not (tmp_path / "m.engine").exists()


@pytest.fixture(scope="module")
def fused_small(tmp_path_factory):
    pytest.importorskip("onnxruntime_extensions")
    import torch

    from ulsam_deploy.models.ulsam import to_export_form
    from ulsam_deploy.steps.export import ExportOptions, torch_to_onnx
    from ulsam_deploy.onnx_graph import fit_ir_version
    from ulsam_deploy.passes.fuse import fuse_model
    from ulsam_deploy.passes.simplify import simplify_model
    from ulsam_deploy.models import build_model

    torch.manual_seed(0)
    proto = simplify_model(torch_to_onnx(to_export_form(build_model("mv2", 0.35, "14", 4, 10, 64).eval()), 64, 3,
                                         ExportOptions(batch=1)))
    fused, report = fuse_model(proto)
    assert report["fused"] == 1
    path = tmp_path_factory.mktemp("fused") / "m.fused.onnx"
    onnx.save(fit_ir_version(fused), path)
    return path


def test_qdp_rewrite_of_fused_nodes(fused_small):
    from ulsam_deploy import op_spec
    from ulsam_deploy.kernels import qdp_plugin as qdp
    from ulsam_deploy.passes.qdp import to_qdp_model

    model = onnx.load(fused_small)
    source = next(n for n in model.graph.node if n.op_type == op_spec.OP_TYPE)
    attrs = {a.name: helper.get_attribute_value(a) for a in source.attribute}
    rewritten, count = to_qdp_model(model)
    assert count == 1 and not any(n.op_type == op_spec.OP_TYPE for n in rewritten.graph.node)
    node = next(n for n in rewritten.graph.node if n.op_type == qdp.QDP_NAME)
    assert len(node.input) == 5 and node.input[0] == source.input[0]
    assert len(node.output) == 2 and node.output[0] == source.output[0]
    inits = {t.name: numpy_helper.to_array(t) for t in rewritten.graph.initializer}
    for name, key in zip(node.input[1:], op_spec.FLOAT_LIST_ATTRS):
        np.testing.assert_array_equal(inits[name], np.asarray(attrs[key], np.float32))
    got = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert got["groups"] == attrs["groups"] and got["aot"] == 1 and got["plugin_namespace"] in (b"ulsam", "ulsam")


@pytest.mark.trt_api(below="10.9")
def test_python_plugin_route_is_refused_before_10_9(trt, tmp_path, monkeypatch):
    from ulsam_deploy.steps.build_trt import build_engine

    b = Build(trt, monkeypatch)
    with pytest.raises(BackendUnavailable, match="needs TensorRT 10.9 or newer"):
        build_engine(fused_tiny_onnx(tmp_path / "m.fused.onnx"), tmp_path / "m.engine", BuildOptions(plugin="python"))
    assert b.factories["Builder"].made == []


@pytest.mark.trt_api(min="10.9")
def test_python_plugin_route_on_the_real_api(trt, fresh_qdp, tmp_path, monkeypatch):
    """--plugin python: the QDP plugin registers with the real tensorrt.plugin (registry replaced by a recorder),
    QDP nodes go to the parser, the network prefers AOT plugins. On 10.3 (no aot_impl) it is refused."""
    from ulsam_deploy.steps.build_trt import build_engine
    from ulsam_deploy.kernels import qdp_plugin as qdp

    model = fused_tiny_onnx(tmp_path / "m.fused.onnx")
    b = Build(trt, monkeypatch)
    recorder = fresh_qdp.recorder  # what tensorrt.plugin registers with
    result = build_engine(model, tmp_path / "m.engine", BuildOptions(plugin="python"))
    parsed = onnx.load_from_string(b.parsed[-1])
    assert [n.op_type for n in parsed.graph.node].count(qdp.QDP_NAME) == 1
    flags = trt.NetworkDefinitionCreationFlag
    assert b.builder.create_network.call_args == mock_call(
        "create_network", (1 << int(flags.STRONGLY_TYPED)) | (1 << int(flags.PREFER_AOT_PYTHON_PLUGINS)))
    assert ("SubspaceAttentionAOT", "1", "ulsam") in recorder.creators
    plugin = result.sidecar.plugin
    assert plugin.route == "python" and plugin.plugin_id == qdp.QDP_PLUGIN_ID and plugin.library is None
    assert result.sidecar.build.fusion["qdp_nodes"] == 1
    again = build_engine(model, tmp_path / "n.engine", BuildOptions(plugin="python"))  # same process: harmless
    assert again.sidecar.plugin.plugin_id == qdp.QDP_PLUGIN_ID
