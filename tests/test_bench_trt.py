"""The trt runner without TensorRT: unavailable path, sidecar checks, plugin loading order, and our glue
around the name-based I/O API.

A fake ``tensorrt`` module and a NumPy "device" test only OUR code (which calls we make, in which order,
with which shapes and buffers); they prove nothing about TensorRT itself. Real engines run in the
``tensorrt``-marked test at the end, which skips with the reason where TensorRT or a GPU is absent.
"""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from ulsam_deploy.backends.base import RunnerUnavailable
from ulsam_deploy.backends.trt.runner import CudaMemory, TrtRunner, open_cuda_memory
from ulsam_deploy.errors import UserError
from ulsam_deploy.backends.trt.compat import ENGINE_SIDECAR_FORMAT, EngineMismatch, RuntimeInfo
from ulsam_deploy.backends.trt.cuda_driver import GpuInfo

ORIN = GpuInfo(0, "Orin (nvgpu)", "8.7", 0, True)
RTX4090 = GpuInfo(0, "NVIDIA GeForce RTX 4090", "8.9", 24 << 30, False)
REBUILD = "ulsam-deploy build-trt model.onnx -o model.engine --batch 1:4:8"


def sidecar(version="10.3.0.30", gpu=ORIN, plugin=None, precision="fp16") -> dict:
    return {"format": ENGINE_SIDECAR_FORMAT, "engine": "model.engine", "rebuild_command": REBUILD,
            "tensorrt": {"version": version}, "gpu": {"name": gpu.name, "compute_capability": gpu.compute_capability},
            "build": {}, "precision": precision, "plugin": plugin or {}}


def _tensorrt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


# ------------------------------------------------------------------------- fakes (our glue only)

class NumpyMemory(CudaMemory):
    """'Device' buffers are NumPy arrays addressed by fake pointers; events count calls instead of timing."""

    library = "numpy-fake"

    def __init__(self):
        self.buffers: dict[int, np.ndarray] = {}
        self.next_ptr = 0x1000
        self.clock = 0.0
        self.log: list[str] = []

    def device_empty(self, shape, dtype):
        arr = np.zeros(shape, dtype=dtype)
        self.next_ptr += 0x1000
        self.buffers[self.next_ptr] = arr
        return self.next_ptr

    def device_ptr(self, buf):
        return buf

    def host_empty(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def h2d(self, dev, host):
        self.log.append("h2d")
        self.buffers[dev][...] = host

    def d2h(self, host, dev):
        self.log.append("d2h")
        host[...] = self.buffers[dev]

    def event(self):
        return {"t": None}

    def record(self, event):
        self.clock += 0.5
        event["t"] = self.clock

    def elapsed_ms(self, start, end):
        return end["t"] - start["t"]

    def synchronize(self):
        self.log.append("sync")

    @property
    def stream_handle(self):
        return 42


def fake_tensorrt(memory: NumpyMemory, calls: list, batch_range=(1, 8), weight=None):
    """Just enough of TensorRT's Python API for one engine: input 'images' [-1,1,4,4] fp32, output 'logits' [-1,3] fp16;
    the 'engine' computes logits = mean_hw(x) @ weight."""
    weight = np.arange(3, dtype=np.float32)[None, :] + 1 if weight is None else weight
    trt = types.SimpleNamespace(__version__="10.3.0.30")

    class ILogger:
        Severity = types.SimpleNamespace(ERROR=1, WARNING=2, INFO=3)

        def __init__(self):
            pass

    trt.ILogger = ILogger
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = lambda dt: dt

    class Registry:
        def load_library(self, path):
            calls.append(("load_library", path))
            return object()

    trt.get_plugin_registry = lambda: Registry()

    class Context:
        def __init__(self):
            self.shapes, self.addresses = {}, {}

        def set_input_shape(self, name, shape):
            calls.append(("set_input_shape", name, tuple(shape)))
            if not batch_range[0] <= shape[0] <= batch_range[1]:
                return False
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            assert name == "logits" and "images" in self.shapes, "output shape asked before the input shape was set"
            return (self.shapes["images"][0], 3)

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def execute_async_v3(self, stream):
            calls.append(("execute_async_v3", stream))
            x = memory.buffers[self.addresses["images"]]
            assert x.shape[0] == self.shapes["images"][0]
            memory.buffers[self.addresses["logits"]][...] = (x.mean(axis=(1, 2, 3))[:, None] * weight).astype(np.float16)
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["images", "logits"][i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "images" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return np.float32 if name == "images" else np.float16

        def get_tensor_shape(self, name):
            return (-1, 1, 4, 4) if name == "images" else (-1, 3)

        def get_tensor_profile_shape(self, name, profile):
            return ((batch_range[0], 1, 4, 4), (4, 1, 4, 4), (batch_range[1], 1, 4, 4))

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            calls.append(("deserialize", len(data)))
            return Engine() if data == b"fake-engine" else None

    trt.Runtime = Runtime
    return trt


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


def test_no_cuda_memory_library_is_a_reason_not_a_crash(monkeypatch):
    import ulsam_deploy.backends.trt.runner as tr

    def broken(device):
        raise ImportError("No module named 'fake'")

    monkeypatch.setattr(tr, "_MEMORY_CLASSES", {"torch": broken, "cuda-python": broken, "cupy": broken})
    with pytest.raises(RunnerUnavailable, match="torch: No module named 'fake'; cuda-python: .*pip install cuda-python"):
        open_cuda_memory(0)


def test_sidecar_mismatch_refused_before_tensorrt_reads_the_engine(engine_file):
    calls = []
    runner = TrtRunner(engine_file, sidecar=sidecar("10.3.0.30", ORIN), runtime=RuntimeInfo("10.7.0.23", RTX4090),
                       trt_module=fake_tensorrt(NumpyMemory(), calls), cuda=NumpyMemory())
    with pytest.raises(EngineMismatch) as err:
        runner.load()
    message = str(err.value)
    assert "TensorRT 10.3.0.30 on Orin (nvgpu) (sm_87)" in message and "10.7.0.23" in message
    assert message.endswith(REBUILD) and "\n" not in message
    assert not any(c[0] == "deserialize" for c in calls)


def test_bench_reports_a_mismatched_engine_as_skipped(engine_file, monkeypatch):
    import ulsam_deploy.backends.trt.compat as compat
    import ulsam_deploy.backends.trt.runtime as runtime
    from ulsam_deploy.bench.run import BenchOptions, resolve_model, run_bench
    from ulsam_deploy.bench.latency import TimingConfig

    (engine_file.parent / "model.engine.json").write_text(json.dumps(sidecar("10.3.0.30", ORIN)))
    monkeypatch.setattr(runtime, "import_tensorrt", lambda: fake_tensorrt(NumpyMemory(), []))
    monkeypatch.setattr(compat, "current_runtime", lambda device=0: RuntimeInfo("10.3.0.30", RTX4090))
    spec = resolve_model("mv2x0.35@32", engines=[engine_file])
    report = run_bench([spec], BenchOptions(backends=("torch", "trt"), timing=TimingConfig(0, 2, 0), num_inputs=2))
    (skip,) = report.skipped
    assert skip["backend"] == "trt" and "GPU architecture" in skip["reason"] and REBUILD in skip["reason"]


def test_plugin_library_is_loaded_before_deserializing(engine_file, tmp_path):
    library = tmp_path / "libulsam_plugin.so"
    library.write_bytes(b"\x7fELF")
    calls = []
    memory = NumpyMemory()
    runner = TrtRunner(engine_file, sidecar=sidecar(plugin={"library": str(library)}), runtime=RuntimeInfo("10.3.0.30", ORIN),
                       trt_module=fake_tensorrt(memory, calls), cuda=memory)
    runner.load()
    order = [c[0] for c in calls]
    assert order.index("load_library") < order.index("deserialize")
    assert calls[order.index("load_library")][1] == str(library.resolve())


def test_missing_plugin_library_is_one_sentence(engine_file, tmp_path):
    memory = NumpyMemory()
    runner = TrtRunner(engine_file, sidecar=sidecar(plugin={"library": str(tmp_path / "gone.so")}),
                       runtime=RuntimeInfo("10.3.0.30", ORIN), trt_module=fake_tensorrt(memory, []), cuda=memory)
    with pytest.raises(UserError, match="plugin library .*gone.so, which does not exist"):
        runner.load()


def test_name_based_io_shapes_buffers_and_stage_timings(engine_file):
    calls, memory = [], NumpyMemory()
    runner = TrtRunner(engine_file, sidecar=sidecar(precision="fp16"), runtime=RuntimeInfo("10.3.0.30", ORIN),
                       trt_module=fake_tensorrt(memory, calls), cuda=memory)
    runner.load()
    assert runner.precision == "fp16" and runner.batch_limits() == (1, 8) and runner.label == "trt"
    x = np.random.default_rng(0).standard_normal((3, 1, 4, 4)).astype(np.float32)
    expected = x.mean(axis=(1, 2, 3))[:, None] * np.array([[1.0, 2.0, 3.0]])
    out = runner.infer(x)
    assert out.dtype == np.float32 and out.shape == (3, 3)
    np.testing.assert_allclose(out, expected, rtol=2e-3, atol=2e-3)  # fp16 output, cast back to fp32
    assert ("set_input_shape", "images", (3, 1, 4, 4)) in calls and ("execute_async_v3", 42) in calls
    run, stages = runner.prepare(x[:2])
    memory.log.clear()
    run()
    assert memory.log == ["h2d", "d2h", "sync"]
    assert stages() == {"h2d": 0.5, "compute": 0.5, "d2h": 0.5}
    runner.infer(x)  # another batch size re-binds; the prepared call must re-bind its own
    run()
    assert calls[-2] == ("set_input_shape", "images", (2, 1, 4, 4))
    with pytest.raises(UserError, match=r"accepts batch 1\.\.8, not 9; rebuild it"):
        runner.infer(np.zeros((9, 1, 4, 4), np.float32))
    info = runner.describe()
    assert info["built_with"]["tensorrt"] == "10.3.0.30" and info["cuda_memory"] == "numpy-fake"


def test_engine_tensorrt_cannot_read_is_one_sentence(tmp_path):
    path = tmp_path / "other.engine"
    path.write_bytes(b"not an engine")
    memory = NumpyMemory()
    runner = TrtRunner(path, sidecar=sidecar(), runtime=RuntimeInfo("10.3.0.30", ORIN),
                       trt_module=fake_tensorrt(memory, []), cuda=memory)
    with pytest.raises(UserError, match="could not deserialize .* rebuild it on this machine"):
        runner.load()


def test_missing_sidecar_warns_and_loads(engine_file):
    memory, notes = NumpyMemory(), []
    runner = TrtRunner(engine_file, trt_module=fake_tensorrt(memory, []), cuda=memory, warn=notes.append)
    runner.load()
    assert notes and "has no sidecar" in notes[0] and runner.precision == "fp32"


# ------------------------------------------------------------------------------ real TensorRT

@pytest.mark.tensorrt
def test_real_engine_matches_onnx_runtime(tmp_path):
    """Build a small engine with TensorRT's own API and compare TrtRunner with ONNX Runtime (GPU machines only)."""
    if not _tensorrt_importable():
        pytest.skip("TensorRT's Python package is not installed (pip install tensorrt on an x86 GPU machine)")
    from ulsam_deploy.backends.trt.cuda_driver import probe_cuda_driver

    driver = probe_cuda_driver()
    if not driver.available:
        pytest.skip(f"no usable NVIDIA GPU here ({driver.error})")
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


@pytest.mark.parametrize("value, expected", [("fp16", "fp16"), ({"precision": "int8", "calibration": "x"}, "int8"),
                                             (None, "fp32"), ("FP16", "fp16"), ("mixed?", "fp32")])
def test_engine_precision_read_from_sidecar(value, expected):
    from ulsam_deploy.backends.trt.runner import _sidecar_precision

    assert _sidecar_precision({"precision": value}) == expected
