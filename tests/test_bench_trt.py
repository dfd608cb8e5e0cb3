"""The trt runner: unavailable paths, sidecar checks, plugin loading order, and our glue around the
name-based I/O API - on TensorRT's real classes.

The ``trt_api`` tests run on TensorRT's real Python bindings (tests/test_trt_bindings.py) with
fakes made from TensorRT's own classes (tests/trt_fakes.py); only the C++ boundary is the tests'
(``trt.Runtime``'s engine, the registry). Memory, the stream and the events are the real ctypes
code on a stub libcuda (host memory; tests/stubs/libcuda.c). None of it runs a real engine: the
``tensorrt``-marked test at the end does, and skips with the reason where TensorRT or a GPU is absent.
"""

from __future__ import annotations

import ctypes
import json

import numpy as np
import pytest

import trt_fakes as F
from trt_bindings import Unavailable, libcuda_stub
from ulsam_deploy.backends.base import RunnerUnavailable
from ulsam_deploy.backends.trt.cuda import GpuInfo, open_cuda_memory
from ulsam_deploy.backends.trt.runner import TrtRunner
from ulsam_deploy.errors import UserError
from ulsam_deploy.backends.trt.compat import EngineMismatch, RuntimeInfo
from ulsam_deploy.sidecars import ENGINE_SIDECAR_FORMAT, EngineSidecar

ORIN = GpuInfo(0, "Orin (nvgpu)", "8.7", 0, True)
RTX4090 = GpuInfo(0, "NVIDIA GeForce RTX 4090", "8.9", 24 << 30, False)
REBUILD = "ulsam-deploy build-trt model.onnx -o model.engine --batch-profile 1:4:8"
PLUGIN_KEY = ("SubspaceAttention", "1", "ulsam")


def sidecar(version="10.3.0.30", gpu=ORIN, plugin=None, precision="fp16") -> EngineSidecar:
    return EngineSidecar.model_validate(
        {"format": ENGINE_SIDECAR_FORMAT, "engine": "model.engine", "rebuild_command": REBUILD,
         "tensorrt": {"version": version}, "gpu": {"name": gpu.name, "compute_capability": gpu.compute_capability},
         "build": {}, "precision": precision, "plugin": plugin})


def _tensorrt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


@pytest.fixture(scope="module")
def libcuda():
    try:
        return str(libcuda_stub())
    except Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def memory(libcuda):
    mem = open_cuda_memory(0, [libcuda])
    yield mem
    mem.close()


class Engine:
    """One engine on the real classes: input 'images' [-1,1,4,4] fp32, output 'logits' [-1,3] fp16; its
    'execution' (the C++ side) computes logits = mean_hw(x) @ weight on the stub's host-memory buffers."""

    def __init__(self, trt, monkeypatch, batch_range=(1, 8), weight=None, deserializes=True):
        self.trt, self.log, self.batch_range = trt, [], batch_range
        self.weight = np.arange(3, dtype=np.float32)[None, :] + 1 if weight is None else weight
        self.engine = F.strict(trt.ICudaEngine, trt, num_io_tensors=2)
        self.context = F.strict(trt.IExecutionContext, trt)
        self.runtime = F.strict(F.real(trt, "Runtime"), trt)
        self.shapes, self.addresses = {}, {}
        e, c = self.engine, self.context
        F.on(e, "get_tensor_name", lambda index: ["images", "logits"][index])
        F.on(e, "get_tensor_mode", lambda name: trt.TensorIOMode.INPUT if name == "images" else trt.TensorIOMode.OUTPUT)
        F.on(e, "get_tensor_dtype", lambda name: trt.float32 if name == "images" else trt.float16)
        F.on(e, "get_tensor_shape", lambda name: trt.Dims([-1, 1, 4, 4] if name == "images" else [-1, 3]))
        F.on(e, "get_tensor_profile_shape", lambda name, profile_index: [
            trt.Dims([batch_range[0], 1, 4, 4]), trt.Dims([4, 1, 4, 4]), trt.Dims([batch_range[1], 1, 4, 4])])
        F.on(e, "create_execution_context", lambda *a, **k: c)
        F.on(c, "set_input_shape", self.set_input_shape)
        F.on(c, "get_tensor_shape", self.output_shape)
        F.on(c, "set_tensor_address", lambda name, memory: self.addresses.__setitem__(name, memory) or True)
        F.on(c, "execute_async_v3", self.execute)

        def deserialize(serialized_engine):
            self.log.append(("deserialize", bytes(serialized_engine)))
            return e if deserializes and bytes(serialized_engine) == b"fake-engine" else None

        F.on(self.runtime, "deserialize_cuda_engine", deserialize)
        self.factories = F.install_factories(monkeypatch, trt, runtime=self.runtime)

    def set_input_shape(self, name, shape):
        self.log.append(("set_input_shape", name, tuple(shape)))
        if not self.batch_range[0] <= shape[0] <= self.batch_range[1]:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def output_shape(self, name):
        assert name == "logits" and "images" in self.shapes, "output shape asked before the input shape was set"
        return self.trt.Dims([self.shapes["images"][0], 3])

    def execute(self, stream_handle):
        self.log.append(("execute_async_v3", stream_handle))
        n = self.shapes["images"][0]
        x = np.ctypeslib.as_array((ctypes.c_float * (n * 16)).from_address(self.addresses["images"])).reshape(n, 1, 4, 4)
        y = np.ctypeslib.as_array((ctypes.c_uint16 * (n * 3)).from_address(self.addresses["logits"])).view(np.float16)
        y[...] = (x.mean(axis=(1, 2, 3))[:, None] * self.weight).astype(np.float16).reshape(-1)
        return True


@pytest.fixture
def engine_file(tmp_path):
    path = tmp_path / "model.engine"
    path.write_bytes(b"fake-engine")
    return path


# ------------------------------------------------------------------------------------- tests

@pytest.mark.skipif(_tensorrt_importable(), reason="TensorRT is installed here: the unavailable path cannot be shown")
def test_without_tensorrt_the_runner_is_unavailable_with_the_reason(engine_file):
    with pytest.raises(RunnerUnavailable, match="TensorRT's Python package is not installed; install it"):
        TrtRunner(engine_file).load()


@pytest.mark.skipif(_tensorrt_importable(), reason="TensorRT is installed here: the unavailable path cannot be shown")
def test_bench_lists_trt_as_skipped_and_carries_on(engine_file, cli_runner, tmp_path):
    from ulsam_deploy.cli import app

    out = tmp_path / "r.json"
    result = cli_runner.invoke(app, ["bench", "mv2x0.35@32", "--engine", str(engine_file), "--backends", "torch,trt",
                                     "--warmup", "0", "--duration", "0", "--iterations", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    skipped = json.loads(out.read_text())["skipped"]
    assert skipped[0]["backend"] == "trt" and "TensorRT" in skipped[0]["reason"]


@pytest.mark.trt_api
def test_no_cuda_driver_is_a_reason_not_a_crash(trt, engine_file, monkeypatch):
    monkeypatch.setenv("ULSAM_LIBCUDA", "/nonexistent/libcuda.so.1")
    runner = TrtRunner(engine_file, sidecar=sidecar(trt.__version__), runtime=RuntimeInfo(trt.__version__, ORIN),
                       trt_module=trt)
    with pytest.raises(RunnerUnavailable) as err:
        runner.load()
    assert str(err.value).startswith("No NVIDIA driver was found (libcuda.so.1 is not loadable)")
    assert err.value.exit_code == 4


@pytest.mark.trt_api
def test_sidecar_mismatch_refused_before_tensorrt_reads_the_engine(trt, engine_file, memory, monkeypatch):
    fake = Engine(trt, monkeypatch)
    runner = TrtRunner(engine_file, sidecar=sidecar("10.3.0.30", ORIN), runtime=RuntimeInfo("10.7.0.23", RTX4090),
                       trt_module=trt, cuda=memory)
    with pytest.raises(EngineMismatch) as err:
        runner.load()
    message = str(err.value)
    assert "TensorRT 10.3.0.30 on Orin (nvgpu) (sm_87)" in message and "10.7.0.23" in message
    assert message.endswith(REBUILD) and "\n" not in message
    assert fake.factories["Runtime"].made == [] and fake.log == []


def test_bench_reports_a_mismatched_engine_as_skipped(engine_file, monkeypatch):
    """The sidecar check comes before any TensorRT call (the stand-in module has a version and nothing else)."""
    import types

    import ulsam_deploy.backends.trt.compat as compat
    import ulsam_deploy.backends.trt.runtime as runtime
    from ulsam_deploy.bench.options import BenchOptions
    from ulsam_deploy.bench.models import resolve_model
    from ulsam_deploy.bench.run import run_bench
    from ulsam_deploy.bench.latency import TimingConfig

    (engine_file.parent / "model.engine.json").write_text(sidecar("10.3.0.30", ORIN).to_json())
    monkeypatch.setattr(runtime, "import_tensorrt", lambda: types.SimpleNamespace(__version__="10.3.0.30"))
    monkeypatch.setattr(compat, "current_runtime", lambda device=0: RuntimeInfo("10.3.0.30", RTX4090))
    spec = resolve_model("mv2x0.35@32", engines=[engine_file])
    report = run_bench([spec], BenchOptions(backends=("torch", "trt"), timing=TimingConfig(0, 2, 0), num_inputs=2))
    (skip,) = report.skipped
    assert skip["backend"] == "trt" and "GPU architecture" in skip["reason"] and REBUILD in skip["reason"]


@pytest.mark.trt_api
def test_plugin_library_is_loaded_and_checked_before_deserializing(trt, engine_file, tmp_path, memory, monkeypatch):
    library = tmp_path / "libulsam_plugin.so"
    library.write_bytes(b"\x7fELF")
    fake = Engine(trt, monkeypatch)
    registry = F.Registry(trt, {str(library.resolve()): [PLUGIN_KEY]})
    F.on(registry.fake, "load_library", lambda plugin_path: fake.log.append(("load_library", plugin_path))
         or registry.load_library(plugin_path))
    F.install_factories(monkeypatch, trt, registry=registry.fake)
    runner = TrtRunner(engine_file, sidecar=sidecar(plugin={"library": str(library)}),
                       runtime=RuntimeInfo("10.3.0.30", ORIN), trt_module=trt, cuda=memory)
    runner.load()
    assert [entry[0] for entry in fake.log] == ["load_library", "deserialize"]
    assert fake.log[0][1] == str(library.resolve())
    TrtRunner(engine_file, sidecar=sidecar(plugin={"library": str(library)}), runtime=RuntimeInfo("10.3.0.30", ORIN),
              trt_module=trt, cuda=memory).load()  # a second runner in this process: found, not loaded again
    assert [entry[0] for entry in fake.log].count("load_library") == 1


@pytest.mark.trt_api
def test_a_plugin_library_that_registers_nothing_is_refused_not_dlopened(trt, engine_file, tmp_path, memory,
                                                                          monkeypatch):
    library = tmp_path / "libother.so"
    library.write_bytes(b"\x7fELF")
    fake = Engine(trt, monkeypatch)
    F.install_factories(monkeypatch, trt, registry=F.Registry(trt, {str(library.resolve()): [("Other", "1", "")]}).fake)
    runner = TrtRunner(engine_file, sidecar=sidecar(plugin={"library": str(library)}),
                       runtime=RuntimeInfo("10.3.0.30", ORIN), trt_module=trt, cuda=memory)
    with pytest.raises(UserError, match=r"loaded into TensorRT .* but registered no 'SubspaceAttention' version 1"):
        runner.load()
    assert fake.log == []  # never deserialized


@pytest.mark.trt_api
def test_missing_plugin_library_is_one_sentence(trt, engine_file, tmp_path, memory, monkeypatch):
    Engine(trt, monkeypatch)
    runner = TrtRunner(engine_file, sidecar=sidecar(plugin={"library": str(tmp_path / "gone.so")}),
                       runtime=RuntimeInfo("10.3.0.30", ORIN), trt_module=trt, cuda=memory)
    with pytest.raises(UserError, match="plugin library .*gone.so, which does not exist"):
        runner.load()


@pytest.mark.trt_api
def test_name_based_io_shapes_buffers_and_stage_timings(trt, engine_file, memory, monkeypatch):
    fake = Engine(trt, monkeypatch)
    runner = TrtRunner(engine_file, sidecar=sidecar(precision="fp16"), runtime=RuntimeInfo("10.3.0.30", ORIN),
                       trt_module=trt, cuda=memory)
    runner.load()
    assert runner.precision == "fp16" and runner.batch_limits() == (1, 8) and runner.label == "trt"
    x = np.random.default_rng(0).standard_normal((3, 1, 4, 4)).astype(np.float32)
    expected = x.mean(axis=(1, 2, 3))[:, None] * np.array([[1.0, 2.0, 3.0]])
    out = runner.infer(x)
    assert out.dtype == np.float32 and out.shape == (3, 3)
    np.testing.assert_allclose(out, expected, rtol=2e-3, atol=2e-3)  # fp16 output, cast back to fp32
    assert ("set_input_shape", "images", (3, 1, 4, 4)) in fake.log
    assert ("execute_async_v3", memory.stream_handle) in fake.log and memory.stream_handle != 0
    run, stages = runner.prepare(x[:2])
    run()
    timings = stages()
    assert set(timings) == {"h2d", "compute", "d2h"} and all(v >= 0 for v in timings.values())
    runner.infer(x)  # another batch size re-binds; the prepared call must re-bind its own
    run()
    assert [e for e in fake.log if e[0] == "set_input_shape"][-1] == ("set_input_shape", "images", (2, 1, 4, 4))
    with pytest.raises(UserError, match=r"accepts batch 1\.\.8, not 9; rebuild it"):
        runner.infer(np.zeros((9, 1, 4, 4), np.float32))
    info = runner.describe()
    assert info["built_with"]["tensorrt"] == "10.3.0.30" and info["cuda_memory"] == "cuda-driver"
    runner.close()


class BackboneEngine:
    """A backbone engine on the real classes: input 'input' [-1,2,-1,-1] fp32 with a profile of batch 1..4 and
    H/W 8..32; outputs 'feat_s2' = x[:, :, ::2, ::2] and 'feat_s4' = 2 * x[:, :1, ::4, ::4] (fp32)."""

    OUTS = {"feat_s2": (2, 2), "feat_s4": (1, 4)}  # channels, stride

    def __init__(self, trt, monkeypatch):
        self.trt, self.log, self.shape = trt, [], None
        self.engine = F.strict(trt.ICudaEngine, trt, num_io_tensors=3)
        self.context = F.strict(trt.IExecutionContext, trt)
        self.runtime = F.strict(F.real(trt, "Runtime"), trt)
        self.addresses = {}
        e, c = self.engine, self.context
        names = ["input", "feat_s2", "feat_s4"]
        F.on(e, "get_tensor_name", lambda index: names[index])
        F.on(e, "get_tensor_mode", lambda name: trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT)
        F.on(e, "get_tensor_dtype", lambda name: trt.float32)
        F.on(e, "get_tensor_shape", lambda name: trt.Dims([-1, 2, -1, -1] if name == "input" else
                                                          [-1, self.OUTS[name][0], -1, -1]))
        F.on(e, "get_tensor_profile_shape", lambda name, profile_index: [
            trt.Dims([1, 2, 8, 8]), trt.Dims([2, 2, 16, 16]), trt.Dims([4, 2, 32, 32])])
        F.on(e, "create_execution_context", lambda *a, **k: c)
        F.on(c, "set_input_shape", self.set_input_shape)
        F.on(c, "get_tensor_shape", self.output_shape)
        F.on(c, "set_tensor_address", lambda name, memory: self.addresses.__setitem__(name, memory) or True)
        F.on(c, "execute_async_v3", self.execute)
        F.on(self.runtime, "deserialize_cuda_engine", lambda serialized_engine: e)
        self.factories = F.install_factories(monkeypatch, trt, runtime=self.runtime)

    def set_input_shape(self, name, shape):
        self.log.append(tuple(shape))
        self.shape = tuple(shape)
        return True

    def output_shape(self, name):
        n, _, h, w = self.shape
        channels, stride = self.OUTS[name]
        return self.trt.Dims([n, channels, -(-h // stride), -(-w // stride)])

    def _array(self, name, shape):
        count = int(np.prod(shape))
        return np.ctypeslib.as_array((ctypes.c_float * count).from_address(self.addresses[name])).reshape(shape)

    def execute(self, stream_handle):
        x = self._array("input", self.shape)
        for name, (channels, stride) in self.OUTS.items():
            y = x[:, :channels, ::stride, ::stride] * (1.0 if stride == 2 else 2.0)
            self._array(name, y.shape)[...] = y
        return True


@pytest.mark.trt_api
def test_dynamic_hw_engine_binds_each_shape_and_returns_every_output(trt, engine_file, memory, monkeypatch):
    fake = BackboneEngine(trt, monkeypatch)
    runner = TrtRunner(engine_file, sidecar=sidecar(precision="fp32"), runtime=RuntimeInfo("10.3.0.30", ORIN),
                       trt_module=trt, cuda=memory)
    runner.load()
    assert runner.batch_limits() == (1, 4) and runner.size_limits() == ((8, 32), (8, 32))
    for shape in ((2, 2, 16, 24), (1, 2, 8, 32), (2, 2, 16, 24)):
        x = np.random.default_rng(shape[3]).standard_normal(shape).astype(np.float32)
        a, b = runner.infer_all(x)
        np.testing.assert_array_equal(a, x[:, :, ::2, ::2])
        np.testing.assert_array_equal(b, 2 * x[:, :1, ::4, ::4])
        np.testing.assert_array_equal(runner.infer(x), a)
    assert fake.log[-1] == (2, 2, 16, 24) and len(runner._buffers) == 2  # buffers cached per shape
    run, _ = runner.prepare(np.zeros((1, 2, 8, 8), np.float32))
    runner.infer_all(np.ones((1, 2, 16, 16), np.float32))
    run()  # the prepared call re-binds its own shape
    assert fake.log[-1] == (1, 2, 8, 8)
    with pytest.raises(UserError, match=r"accepts 8\.\.32 x 8\.\.32 pixels, not 40x16; rebuild it with a wider"):
        runner.infer(np.zeros((1, 2, 40, 16), np.float32))
    with pytest.raises(UserError, match=r"takes inputs of shape \[N, 2, -1, -1\], not \[1, 3, 16, 16\]"):
        runner.infer(np.zeros((1, 3, 16, 16), np.float32))
    assert runner.describe()["size_limits"] == ((8, 32), (8, 32))
    runner.close()


@pytest.mark.trt_api
def test_runner_owns_the_memory_it_opens(trt, engine_file, libcuda, monkeypatch):
    lib = ctypes.CDLL(libcuda)
    lib.stub_live.restype = ctypes.c_long
    before = [lib.stub_live(i) for i in range(5)]
    monkeypatch.setenv("ULSAM_LIBCUDA", libcuda)
    Engine(trt, monkeypatch)
    runner = TrtRunner(engine_file, sidecar=sidecar(), runtime=RuntimeInfo("10.3.0.30", ORIN), trt_module=trt)
    runner.load()
    runner.infer(np.ones((2, 1, 4, 4), np.float32))
    assert lib.stub_live(0) > before[0]
    runner.close()
    assert [lib.stub_live(i) for i in range(5)] == before


@pytest.mark.trt_api
def test_engine_tensorrt_cannot_read_is_one_sentence(trt, tmp_path, memory, monkeypatch):
    path = tmp_path / "other.engine"
    path.write_bytes(b"not an engine")
    Engine(trt, monkeypatch)
    runner = TrtRunner(path, sidecar=sidecar(), runtime=RuntimeInfo("10.3.0.30", ORIN), trt_module=trt, cuda=memory)
    with pytest.raises(UserError, match="could not deserialize .* rebuild it on this machine"):
        runner.load()


@pytest.mark.trt_api
def test_missing_sidecar_warns_and_loads(trt, engine_file, memory, monkeypatch):
    Engine(trt, monkeypatch)
    notes = []
    runner = TrtRunner(engine_file, trt_module=trt, cuda=memory, warn=notes.append)
    runner.load()
    assert notes and "has no sidecar" in notes[0] and runner.precision == "fp32"


# ------------------------------------------------------------------------------ real TensorRT

@pytest.mark.tensorrt
def test_real_engine_matches_onnx_runtime(tmp_path):
    """Build a small engine with TensorRT's own API and compare TrtRunner with ONNX Runtime (GPU machines only)."""
    import tensorrt as trt

    from ulsam_deploy.backends import OrtRunner
    from ulsam_deploy.steps.export import ExportOptions, export_model
    from ulsam_deploy.models import build_model
    from ulsam_deploy.models.checkpoint import CheckpointInfo
    from ulsam_deploy.backends.trt.compat import current_runtime

    model = build_model("mv2", 0.35, "17:1", 4, num_classes=10, input_size=64).eval()
    onnx_path = tmp_path / "m.onnx"
    export_model(model, CheckpointInfo(config=model.config), onnx_path, ExportOptions())
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if hasattr(
        trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED") else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_path.read_bytes()), [parser.get_error(i).desc() for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64))
    config.add_optimization_profile(profile)
    engine_path = tmp_path / "m.engine"
    engine_path.write_bytes(bytes(builder.build_serialized_network(network, config)))
    here = current_runtime(0)
    engine_path.with_name("m.engine.json").write_text(json.dumps(
        {"format": ENGINE_SIDECAR_FORMAT, "engine": "m.engine", "tensorrt": {"version": here.tensorrt_version},
         "gpu": {"name": here.gpu.name, "compute_capability": here.gpu.compute_capability}, "build": {},
         "precision": "fp32"}))
    x = np.random.default_rng(0).standard_normal((8, 3, 64, 64)).astype(np.float32)
    with TrtRunner(engine_path) as runner, OrtRunner(str(onnx_path)) as ort_runner:
        np.testing.assert_allclose(runner.infer(x), ort_runner.infer(x), atol=1e-2, rtol=1e-2)
        run, stages = runner.prepare(x[:1])
        run()
        timings = stages()
        assert set(timings) == {"h2d", "compute", "d2h"} and all(v >= 0 for v in timings.values())


@pytest.mark.parametrize("value, ok", [("fp16", True), ("int8", True), ({"precision": "int8"}, False),
                                       (None, False), ("FP16", False), ("mixed?", False)])
def test_engine_precision_is_one_word_of_the_schema(tmp_path, value, ok):
    """The runner labels rows with the sidecar's precision as written: a word the schema knows, nothing guessed."""
    from ulsam_deploy.sidecars import read_engine_sidecar

    side = tmp_path / "m.engine.json"
    side.write_text(json.dumps({"format": ENGINE_SIDECAR_FORMAT, "engine": "m.engine", "precision": value}))
    if ok:
        assert read_engine_sidecar(side).precision == value
    else:
        with pytest.raises(UserError, match="field 'precision'"):
            read_engine_sidecar(side)
