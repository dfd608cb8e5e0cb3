"""build-trt without TensorRT: engine sidecar compatibility logic, option mapping (fake builder), error paths.

A fake ``tensorrt`` module here only checks OUR mapping from options to builder calls; it proves
nothing about engines building. Real builds are in the ``tensorrt``-marked tests at the end, which
skip (with the reason) where TensorRT or a GPU is absent.
"""

from __future__ import annotations

import json

import pytest

from ulsam_deploy.errors import UserError
from ulsam_deploy.backends.trt.compat import (ENGINE_SIDECAR_FORMAT, EngineMismatch, RuntimeInfo, check_engine_compat,
                                     read_engine_sidecar)
from ulsam_deploy.backends.trt.cuda_driver import GpuInfo

ORIN = GpuInfo(0, "Orin (nvgpu)", "8.7", 0, True)
RTX4090 = GpuInfo(0, "NVIDIA GeForce RTX 4090", "8.9", 24 << 30, False)
L4 = GpuInfo(0, "NVIDIA L4", "8.9", 24 << 30, False)
A100 = GpuInfo(0, "NVIDIA A100-SXM4-40GB", "8.0", 40 << 30, False)


def engine_sidecar(version="10.3.0.30", gpu=ORIN, **build) -> dict:
    return {"format": ENGINE_SIDECAR_FORMAT, "engine": "model.engine",
            "rebuild_command": "ulsam-deploy build-trt model.onnx -o model.engine --batch 1:8:32",
            "tensorrt": {"version": version}, "gpu": {"name": gpu.name, "compute_capability": gpu.compute_capability},
            "build": build}


# ------------------------------------------------------------------------------------ compat


def test_same_tensorrt_and_gpu_is_accepted():
    check_engine_compat(engine_sidecar(), runtime=RuntimeInfo("10.3.0.30", ORIN))


@pytest.mark.parametrize("running", ["10.3.0.26", "10.4.0.26", "11.1.0.5"])
def test_other_tensorrt_version_is_refused_with_rebuild_command(running):
    with pytest.raises(EngineMismatch) as err:
        check_engine_compat(engine_sidecar(), runtime=RuntimeInfo(running, ORIN))
    message = str(err.value)
    assert "10.3.0.30" in message and running in message and "TensorRT version" in message
    assert message.endswith("ulsam-deploy build-trt model.onnx -o model.engine --batch 1:8:32")
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
    del sidecar["gpu"]
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
    (tmp_path / "m.engine.json").write_text(json.dumps(engine_sidecar()))
    check_engine_compat(engine, runtime=RuntimeInfo("10.3.0.30", ORIN))


def test_changed_plugin_library_warns(tmp_path):
    lib = tmp_path / "libulsam_plugin.so"
    lib.write_bytes(b"v2")
    sidecar = engine_sidecar()
    sidecar["plugin"] = {"route": "lib", "library": str(lib), "library_sha256": "0" * 64}
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

import sys  # noqa: E402
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
    ({"opt_level": 6}, "--opt-level must be 0 to 5"),
    ({"workspace_mib": 0}, "--workspace"),
    ({"dla_core": -1}, "--dla-core"),
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
    with pytest.raises(UserError, match="static batch of 2, so --batch 1:8:32 cannot apply"):
        plan_build(BuildOptions(batch="1:8:32"), static, "10.3")
    spatial = tiny_onnx(tmp_path / "hw.onnx")
    model = onnx.load(spatial)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    onnx.save(model, spatial)
    with pytest.raises(UserError, match="dynamic batch axis only"):
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
    assert cmd.startswith("ulsam-deploy build-trt 'm v.onnx' -o m.engine --batch 1:8:32 --workspace 256 --opt-level 4")
    assert "--dla-core 0 --gpu-fallback" in cmd and "--weakly-typed --fp16" in cmd and cmd.endswith("--force")


# ------------------------------------------------------------------- a fake tensorrt (mapping only)


class _Member(int):
    def __new__(cls, owner, name, value):
        obj = int.__new__(cls, value)
        obj.label = f"{owner}.{name}"
        return obj

    def __str__(self):
        return self.label

    __repr__ = __str__


def _enum(owner, **members):
    return types.SimpleNamespace(**{k: _Member(owner, k, v) for k, v in members.items()})


def fake_tensorrt(version="10.3.0.30", parse_errors=(), build_fails_with=None, dla_cores=0):
    """A stand-in for OUR mapping tests: records calls; its 'engine' is a marker, not an engine."""
    calls = []
    m = types.ModuleType("tensorrt")
    m.__version__ = version
    m.calls = calls
    flags = {"STRONGLY_TYPED": 1} if version.startswith("10") else {"STRONGLY_TYPED": 1, "PREFER_AOT_PYTHON_PLUGINS": 2}
    m.NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag", **flags)
    bflags = {"GPU_FALLBACK": 4, "DEBUG": 1}
    if version.startswith("10"):
        bflags.update(FP16=0, INT8=2)
    m.BuilderFlag = _enum("BuilderFlag", **bflags)
    m.MemoryPoolType = _enum("MemoryPoolType", WORKSPACE=0, DLA_MANAGED_SRAM=1)
    m.DeviceType = _enum("DeviceType", GPU=0, DLA=1)

    class ILogger:
        Severity = _enum("Severity", INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self):
            pass

    class IProgressMonitor:
        def __init__(self):
            pass

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("profile.set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

    class Cache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+tuned"

    class Config:
        def __setattr__(self, key, value):
            calls.append(("config." + key, value))
            object.__setattr__(self, key, value)

        def set_memory_pool_limit(self, pool, size):
            calls.append(("config.set_memory_pool_limit", str(pool), size))

        def set_flag(self, flag):
            calls.append(("config.set_flag", str(flag)))

        def add_optimization_profile(self, profile):
            calls.append(("config.add_optimization_profile",))
            return 0

        def create_timing_cache(self, data):
            calls.append(("config.create_timing_cache", bytes(data)))
            return Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("config.set_timing_cache", ignore_mismatch))
            object.__setattr__(self, "_cache", cache)
            return not cache.data.startswith(b"other-gpu")

        def get_timing_cache(self):
            return self._cache

    class Registry:
        def load_library(self, path):
            calls.append(("registry.load_library", path))
            return object()

        def get_creator(self, name, version, namespace):
            calls.append(("registry.get_creator", name, version, namespace))
            return object()

    class Builder:
        num_DLA_cores = dla_cores

        def __init__(self, logger):
            self.logger = logger
            calls.append(("Builder",))

        def create_network(self, flags):
            calls.append(("builder.create_network", flags))
            return object()

        def get_plugin_registry(self):
            return Registry()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            monitor = getattr(config, "progress_monitor", None)
            if monitor is not None:
                monitor.phase_start("Building", None, 2)
                monitor.step_complete("Building", 0)
                monitor.step_complete("Building", 1)
                monitor.phase_finish("Building")
            if build_fails_with:
                self.logger.log(ILogger.Severity.ERROR, build_fails_with)
                return None
            return b"NOT-AN-ENGINE: fake marker bytes"

    class Err:
        def __init__(self, code, desc, node, name, op):
            self._v = (code, desc, node, name, op)

        def code(self):
            return f"ErrorCode.{self._v[0]}"

        def desc(self):
            return self._v[1]

        def node(self):
            return self._v[2]

        def node_name(self):
            return self._v[3]

        def node_operator(self):
            return self._v[4]

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = len(parse_errors)

        def parse(self, data, path=None):
            calls.append(("parser.parse", len(data), path))
            m.parsed.append(bytes(data))
            return not parse_errors

        def get_error(self, i):
            return Err(*parse_errors[i])

    m.parsed = []
    m.ILogger, m.IProgressMonitor, m.Builder, m.OnnxParser = ILogger, IProgressMonitor, Builder, OnnxParser
    return m


def test_apply_plan_maps_options_to_builder_calls(tmp_path):
    trt = fake_tensorrt("10.3.0.30", dla_cores=2)
    info = info_of(tiny_onnx(tmp_path / "m.onnx", qdq=True))
    options = BuildOptions(batch="1:4:16", workspace_mib=64, opt_level=2, timing_cache=tmp_path / "c.cache",
                           weakly_typed=True, int8=True)
    plan = plan_build(options, info, trt.__version__)
    assert network_creation_flags(trt, plan) == 0
    applied = apply_plan(trt, trt.Builder(None), trt.Builder(None).create_builder_config(), plan, b"old")
    assert ("config.set_memory_pool_limit", "MemoryPoolType.WORKSPACE", 64 << 20) in trt.calls
    assert ("config.builder_optimization_level", 2) in trt.calls
    assert ("config.set_flag", "BuilderFlag.INT8") in trt.calls
    assert ("profile.set_shape", "input", (1, 3, 8, 8), (4, 3, 8, 8), (16, 3, 8, 8)) in trt.calls
    assert ("config.create_timing_cache", b"old") in trt.calls and ("config.set_timing_cache", False) in trt.calls
    assert applied["builder_flags"] == ["INT8"] and applied["memory_pools"] == {"WORKSPACE": 64 << 20}
    assert not any(c[0] == "config.default_device_type" for c in trt.calls)
    with pytest.raises(UserError, match="made by another TensorRT version or GPU; delete it"):
        apply_plan(trt, trt.Builder(None), trt.Builder(None).create_builder_config(), plan, b"other-gpu cache")

    dla = fake_tensorrt("10.3.0.30", dla_cores=2)
    plan = plan_build(BuildOptions(batch="2", dla_core=1, gpu_fallback=True, weakly_typed=True, fp16=True),
                      info, dla.__version__, num_dla_cores=2)
    assert network_creation_flags(dla, plan) == 0
    apply_plan(dla, dla.Builder(None), dla.Builder(None).create_builder_config(), plan)
    assert ("config.default_device_type", dla.DeviceType.DLA) in dla.calls and ("config.DLA_core", 1) in dla.calls
    assert {("config.set_flag", "BuilderFlag.FP16"), ("config.set_flag", "BuilderFlag.GPU_FALLBACK")} <= set(dla.calls)


def test_engine_precision_word():
    from ulsam_deploy.backends.trt.build import engine_precision

    assert engine_precision("fp32", []) == "fp32" and engine_precision("fp16", []) == "fp16"
    assert engine_precision("int8", []) == "int8" and engine_precision("fp32", ["FP16"]) == "fp16"
    assert engine_precision("int8", ["INT8"]) == "int8" and engine_precision("fp32", ["FP16", "INT8"]) == "int8"


def test_network_flags_strongly_typed_on_10_and_11(tmp_path):
    info = info_of(tiny_onnx(tmp_path / "m.onnx"))
    trt10 = fake_tensorrt("10.3.0.30")
    assert network_creation_flags(trt10, plan_build(BuildOptions(batch="1"), info, "10.3.0.30")) == 1 << 1
    trt11 = fake_tensorrt("11.1.0.5")
    del trt11.NetworkDefinitionCreationFlag.STRONGLY_TYPED  # a future 11.x dropping the deprecated flag
    assert network_creation_flags(trt11, plan_build(BuildOptions(batch="1"), info, "11.1.0.5")) == 0


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
    ("Network has dynamic or shape inputs, but no optimization profile has been defined.", "--batch MIN:OPT:MAX"),
    ("Requested amount of GPU memory (1073741824 bytes) could not be allocated. out of memory", "--workspace"),
    ("Layer foo is not supported on DLA and GPU fallback is disabled.", "--gpu-fallback"),
    ("CUDA initialization failure with error: 35", "could not initialise CUDA"),
    ("getPluginCreator could not find plugin SubspaceAttention version 1", "build-plugin"),
    ("something unexpected", "could not build the engine: something unexpected"),
])
def test_build_failures_mapped_to_sentences(log, expect):
    assert expect in explain.explain_build_failure([log], "10.3.0")


# ------------------------------------------------------------------------------------ plugin routes


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
    trt = fake_tensorrt()
    info = plugins.activate(trt, trt.Builder(None).get_plugin_registry(), route)
    assert info["library_sha256"] == P_sha(lib) and ("registry.load_library", str(lib)) in trt.calls
    assert ("registry.get_creator", "SubspaceAttention", "1", "ulsam") in trt.calls


def P_sha(path):
    from ulsam_deploy.passes.common import sha256_file

    return sha256_file(path)


# ------------------------------------------------------------ build_engine: our side of the build


def _no_real_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001
        return True
    return False


def test_build_without_tensorrt_writes_nothing(tmp_path):
    if not _no_real_tensorrt():
        pytest.skip("TensorRT is installed here")
    from ulsam_deploy.backends.trt.build import build_engine
    from ulsam_deploy.backends.trt.runtime import TensorRTUnavailable

    model = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(TensorRTUnavailable, match="pip install tensorrt"):
        build_engine(model, tmp_path / "m.engine", BuildOptions(batch="1:2:4"))
    # option mistakes are still reported first, as such
    with pytest.raises(UserError, match="pass --batch"):
        build_engine(model, tmp_path / "m.engine", BuildOptions())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_build_error_paths_with_fake_tensorrt(tmp_path, monkeypatch):
    from ulsam_deploy.backends.trt.build import ParserFailed, build_engine

    model = tiny_onnx(tmp_path / "m.onnx", fused=True)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(parse_errors=[
        ("UNSUPPORTED_NODE", "No importer registered for op: SubspaceAttention. Attempting to import as plugin.", 1,
         "sa", "SubspaceAttention"),
        ("UNSUPPORTED_NODE", "Plugin not found, are the plugin name, version, and namespace correct?", 1, "sa",
         "SubspaceAttention")]))
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"x")
    shown = []
    with pytest.raises(ParserFailed) as err:
        build_engine(model, tmp_path / "m.engine", BuildOptions(batch="1", plugin_lib=lib), details=shown.append)
    assert "could not find the SubspaceAttention plugin" in str(err.value)
    assert "Plugin not found, are the plugin name" in err.value.details and "Plugin not found" in shown[0]
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(build_fails_with="out of memory while tuning"))
    with pytest.raises(UserError, match="ran out of GPU memory"):
        build_engine(tiny_onnx(tmp_path / "p.onnx"), tmp_path / "m.engine", BuildOptions(batch="1"))
    assert not (tmp_path / "m.engine").exists() and not (tmp_path / "m.engine.json").exists()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version="11.1.0.5"))
    with pytest.raises(UserError, match="strongly typed networks only"):
        build_engine(tiny_onnx(tmp_path / "p.onnx"), tmp_path / "m.engine",
                     BuildOptions(batch="1", weakly_typed=True, fp16=True))


def test_file_handling_with_fake_tensorrt(tmp_path, monkeypatch):
    """Our side only (sidecar, raw bytes written atomically, timing cache round trip, progress); the fake's
    'engine' is a marker string, so this says nothing about TensorRT building engines."""
    from ulsam_deploy.backends.trt.build import build_engine
    from ulsam_deploy.backends.trt.progress import BuildProgress

    trt = fake_tensorrt("10.3.0.30")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    model = tiny_onnx(tmp_path / "m.onnx")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"previous")
    progress = BuildProgress(live=False)
    result = build_engine(model, tmp_path / "m.engine", BuildOptions(batch="1:2:4", timing_cache=cache),
                          progress=progress)
    assert (tmp_path / "m.engine").read_bytes() == b"NOT-AN-ENGINE: fake marker bytes"
    assert cache.read_bytes() == b"previous+tuned"
    assert progress.phases == [("Building", None, 2)]
    data = json.loads((tmp_path / "m.engine.json").read_text())
    assert data == result.sidecar and data["format"] == ENGINE_SIDECAR_FORMAT
    assert data["tensorrt"]["version"] == "10.3.0.30" and data["precision_details"]["strongly_typed"]
    assert data["precision"] == "fp32"
    assert data["profiles"] == [{"input": "input", "min": [1, 3, 8, 8], "opt": [2, 3, 8, 8], "max": [4, 3, 8, 8]}]
    assert data["onnx"]["sha256"] == P_sha(model) and data["engine_sha256"] == P_sha(tmp_path / "m.engine")
    assert data["build"]["timing_cache"] == {"path": str(cache), "loaded_bytes": 8, "saved_bytes": 14}
    assert data["rebuild_command"].startswith(f"ulsam-deploy build-trt {model} -o {tmp_path / 'm.engine'} --batch 1:2:4")
    assert ("builder.create_network", 1 << 1) in trt.calls
    with pytest.raises(UserError, match="already exists; pass --force"):
        build_engine(model, tmp_path / "m.engine", BuildOptions(batch="1:2:4"))


# ---------------------------------------------------------------------------- real TensorRT (GPU)


def _real_tensorrt_and_gpu() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"TensorRT is not installed ({type(exc).__name__})"
    from ulsam_deploy.backends.trt.cuda_driver import probe_cuda_driver

    driver = probe_cuda_driver()
    return None if driver.available else f"no usable GPU: {driver.error}"


@pytest.mark.tensorrt
def test_real_engine_build_and_compat(tmp_path):
    reason = _real_tensorrt_and_gpu()
    if reason:
        pytest.skip(reason)
    import tensorrt as trt

    from ulsam_deploy.backends.trt.build import build_engine

    model = tiny_onnx(tmp_path / "m.onnx", size=16)
    cache = tmp_path / "t.cache"
    result = build_engine(model, tmp_path / "m.engine", BuildOptions(batch="1:2:4", timing_cache=cache, opt_level=1))
    assert cache.stat().st_size > 0
    check_engine_compat(result.sidecar)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine((tmp_path / "m.engine").read_bytes())
    assert engine is not None and engine.num_io_tensors == 2


# ----------------------------------------------------------------------------------------- CLI


def _one_error_line(output: str) -> str:
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


def test_cli_build_trt_error_paths(cli_runner, tmp_path):
    from ulsam_deploy.cli import app

    model = tiny_onnx(tmp_path / "m.onnx")
    engine = tmp_path / "m.engine"
    if _no_real_tensorrt():
        result = cli_runner.invoke(app, ["build-trt", str(model), "-o", str(engine), "--batch", "1:2:4"])
        line = _one_error_line(result.output)
        assert result.exit_code == 4 and "TensorRT's Python package is not installed" in line
        assert "pip install tensorrt" in line or "python3-libnvinfer" in line
    for args, code, text in (
            (["--batch", "4:2:1"], 2, "1 <= MIN <= OPT <= MAX"),
            (["--batch", "1", "--fp16"], 2, "--weakly-typed"),
            (["--batch", "1", "--gpu-fallback"], 2, "--dla-core"),
            (["--batch", "1", "--opt-level", "9"], 2, "0 to 5"),
            ([], 2, "pass --batch"),
    ):
        result = cli_runner.invoke(app, ["build-trt", str(model), "-o", str(engine)] + args)
        assert result.exit_code == code and text in _one_error_line(result.output), (args, result.output)
    result = cli_runner.invoke(app, ["build-trt", str(tmp_path / "missing.onnx")])
    assert result.exit_code == 2 and "does not exist" in _one_error_line(result.output)
    engine.write_bytes(b"old")
    result = cli_runner.invoke(app, ["build-trt", str(model), "-o", str(engine), "--batch", "1"])
    assert result.exit_code == 2 and "--force" in _one_error_line(result.output) and engine.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.onnx"]


def test_cli_build_trt_shows_parser_errors_in_full(cli_runner, tmp_path, monkeypatch):
    from ulsam_deploy.cli import app

    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(parse_errors=[
        ("UNSUPPORTED_NODE", "No importer registered for op: Foo. Attempting to import as plugin.", 2, "foo_1", "Foo"),
        ("UNSUPPORTED_NODE", "creator for Foo version 1 not found", 2, "foo_1", "Foo")]))
    model = tiny_onnx(tmp_path / "m.onnx")
    result = cli_runner.invoke(app, ["build-trt", str(model), "--batch", "1"])
    assert result.exit_code == 2
    assert "No importer registered for op: Foo" in result.output and "creator for Foo version 1 not found" in result.output
    assert "does not support op Foo (node 'foo_1')" in _one_error_line(result.output)
    assert not (tmp_path / "m.engine").exists()


def test_plugin_build_of_an_unfusable_fp16_graph_says_fuse_first(tmp_path, monkeypatch):
    """fp16 Casts split a ULSAM block, so build-trt --plugin cannot fuse it: the sentence says to fuse first."""
    pytest.importorskip("onnxruntime_extensions")
    from ulsam_deploy.steps.export import ExportOptions, to_export_form, torch_to_onnx
    from ulsam_deploy.passes.common import fit_ir_version
    from ulsam_deploy.passes.precision import to_fp16
    from ulsam_deploy.passes.simplify import simplify_model
    from ulsam_deploy.models import build_model
    from ulsam_deploy.backends.trt.build import build_engine

    import torch

    torch.manual_seed(0)
    proto = simplify_model(torch_to_onnx(to_export_form(build_model("mv2", 0.35, "14", 4, 10, 64).eval()), 64, 3,
                                         ExportOptions()))
    fp16, _ = to_fp16(proto)
    path = tmp_path / "m.fp16.onnx"
    onnx.save(fit_ir_version(fp16), path)
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt())
    with pytest.raises(UserError, match=r"cannot be fused as they are \(fp16 Casts split them\); fuse before converting"):
        build_engine(path, tmp_path / "m.engine", BuildOptions(batch="1", plugin_lib=lib))
    assert not (tmp_path / "m.engine").exists()


@pytest.fixture(scope="module")
def fused_small(tmp_path_factory):
    pytest.importorskip("onnxruntime_extensions")
    import torch

    from ulsam_deploy.steps.export import ExportOptions, to_export_form, torch_to_onnx
    from ulsam_deploy.passes.common import fit_ir_version
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
    from ulsam_deploy.backends.trt.plugins import to_qdp_model

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


def test_python_plugin_route_with_fake_tensorrt(fused_small, tmp_path, monkeypatch):
    """Our mapping for --plugin python: QDP registration called, QDP nodes handed to the parser, AOT flag set."""
    from ulsam_deploy.kernels import qdp_plugin as qdp
    from ulsam_deploy.backends.trt.build import build_engine

    registered = []
    monkeypatch.setattr(qdp, "register_qdp_plugin", lambda *a, **k: registered.append(1) or qdp.QDP_PLUGIN_ID)
    trt = fake_tensorrt("10.9.0.34")
    trt.NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag", STRONGLY_TYPED=1,
                                              PREFER_AOT_PYTHON_PLUGINS=2)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    result = build_engine(fused_small, tmp_path / "m.engine", BuildOptions(plugin="python"))
    assert registered == [1]
    parsed = onnx.load_from_string(trt.parsed[-1])
    assert [n.op_type for n in parsed.graph.node].count(qdp.QDP_NAME) == 1
    assert ("builder.create_network", (1 << 1) | (1 << 2)) in trt.calls
    plugin = result.sidecar["plugin"]
    assert plugin["route"] == "python" and plugin["plugin_id"] == qdp.QDP_PLUGIN_ID and plugin["library"] is None
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("10.3.0.30"))
    with pytest.raises(UserError, match="needs TensorRT 10.9 or newer"):
        build_engine(fused_small, tmp_path / "n.engine", BuildOptions(plugin="python"))
