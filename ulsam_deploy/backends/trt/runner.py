"""TensorRT runner: a serialized engine on TensorRT's Python API (10.x and 11.x).

Written against the name-based I/O tensor API (``num_io_tensors``, ``get_tensor_name``,
``get_tensor_mode``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``), which is
the only one TensorRT 10 and 11 have. Device memory, streams and events come from whichever of
``torch.cuda``, cuda-python (``cuda.bindings.runtime`` or the older ``cuda.cudart``) or CuPy is
importable, in that order.

Timing follows trtexec: one inference = H2D copy, ``execute_async_v3``, D2H copy, stream sync;
CUDA events between the stages give "H2D Latency", "GPU Compute Time" and "D2H Latency"; the
host wall time of the whole call is the "Latency".

Before TensorRT sees the file, the engine sidecar (``model.engine.json``, written by
``build-trt``) is checked against the running TensorRT and GPU (:func:`ulsam_deploy.backends.trt.compat.
check_engine_compat`: one sentence and the rebuild command on a mismatch), and the plugin
library it names is loaded, so deserializing never fails on a missing ``SubspaceAttention`` plugin.
Where TensorRT, a GPU or a CUDA memory library is missing, :meth:`TrtRunner.load` raises
:class:`RunnerUnavailable` with the reason; nothing crashes.
"""

from __future__ import annotations

import ctypes
import importlib
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ulsam_deploy.errors import BackendUnavailable, UserError
from ulsam_deploy.backends.base import Runner, RunnerUnavailable

CUDA_LIBRARIES = ("torch", "cuda-python", "cupy")


# ------------------------------------------------------------------------------ CUDA memory

class CudaMemory:
    """Device buffers, pinned host buffers, one stream and timing events (the minimum a runner needs)."""

    library = "none"

    def device_empty(self, shape, dtype) -> object: ...
    def device_ptr(self, buf) -> int: ...
    def host_empty(self, shape, dtype) -> np.ndarray: ...
    def h2d(self, dev, host: np.ndarray) -> None: ...
    def d2h(self, host: np.ndarray, dev) -> None: ...
    def event(self) -> object: ...
    def record(self, event) -> None: ...
    def elapsed_ms(self, start, end) -> float: ...
    def synchronize(self) -> None: ...

    @property
    def stream_handle(self) -> int: ...

    def close(self) -> None:
        pass


class TorchCudaMemory(CudaMemory):
    library = "torch"

    def __init__(self, device: int = 0):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("torch.cuda sees no GPU")
        self.torch = torch
        self.device = torch.device("cuda", device)
        torch.cuda.set_device(self.device)
        self.stream = torch.cuda.Stream(self.device)
        self._pinned: dict[int, object] = {}  # host pointer -> pinned torch tensor owning it

    def _dtype(self, dtype):
        return self.torch.from_numpy(np.zeros(0, dtype=dtype)).dtype

    def device_empty(self, shape, dtype):
        return self.torch.empty(tuple(shape), dtype=self._dtype(dtype), device=self.device)

    def device_ptr(self, buf) -> int:
        return int(buf.data_ptr())

    def host_empty(self, shape, dtype) -> np.ndarray:
        tensor = self.torch.empty(tuple(shape), dtype=self._dtype(dtype)).pin_memory()
        array = tensor.numpy()
        self._pinned[array.ctypes.data] = tensor
        return array

    def _host(self, array: np.ndarray):
        return self._pinned.get(array.ctypes.data) if array.ctypes.data in self._pinned else self.torch.from_numpy(array)

    def h2d(self, dev, host):
        with self.torch.cuda.stream(self.stream):
            dev.copy_(self._host(host), non_blocking=True)

    def d2h(self, host, dev):
        with self.torch.cuda.stream(self.stream):
            self._host(host).copy_(dev, non_blocking=True)

    def close(self):
        self._pinned.clear()

    def event(self):
        return self.torch.cuda.Event(enable_timing=True)

    def record(self, event):
        event.record(self.stream)

    def elapsed_ms(self, start, end) -> float:
        return float(start.elapsed_time(end))

    def synchronize(self):
        self.stream.synchronize()

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)


class CudaPythonMemory(CudaMemory):
    """NVIDIA's cuda-python runtime bindings (``cuda.bindings.runtime``; ``cuda.cudart`` before 12.6)."""

    library = "cuda-python"

    def __init__(self, device: int = 0):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # older cuda-python
        self.cudart = cudart
        self._call(cudart.cudaSetDevice(device))
        self.stream = self._call(cudart.cudaStreamCreate())
        self._device_bufs: list[int] = []
        self._host_bufs: list[int] = []

    def _call(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.cudart.cudaError_t.cudaSuccess:
            name = getattr(err, "name", str(err))
            raise RuntimeError(f"CUDA runtime error {name}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def device_empty(self, shape, dtype):
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = int(self._call(self.cudart.cudaMalloc(max(nbytes, 1))))
        self._device_bufs.append(ptr)
        return ptr

    def device_ptr(self, buf) -> int:
        return int(buf)

    def host_empty(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        ptr = int(self._call(self.cudart.cudaMallocHost(max(count * dtype.itemsize, 1))))
        self._host_bufs.append(ptr)
        raw = (ctypes.c_byte * (count * dtype.itemsize)).from_address(ptr)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def h2d(self, dev, host):
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self.cudart.cudaMemcpyAsync(int(dev), host.ctypes.data, host.nbytes, kind, self.stream))

    def d2h(self, host, dev):
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self.cudart.cudaMemcpyAsync(host.ctypes.data, int(dev), host.nbytes, kind, self.stream))

    def event(self):
        return self._call(self.cudart.cudaEventCreate())

    def record(self, event):
        self._call(self.cudart.cudaEventRecord(event, self.stream))

    def elapsed_ms(self, start, end) -> float:
        return float(self._call(self.cudart.cudaEventElapsedTime(start, end)))

    def synchronize(self):
        self._call(self.cudart.cudaStreamSynchronize(self.stream))

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def close(self):
        for ptr in self._device_bufs:
            self.cudart.cudaFree(ptr)
        for ptr in self._host_bufs:
            self.cudart.cudaFreeHost(ptr)
        self._device_bufs, self._host_bufs = [], []


class CupyMemory(CudaMemory):
    library = "cupy"

    def __init__(self, device: int = 0):
        import cupy
        import cupyx

        self.cupy, self.cupyx = cupy, cupyx
        cupy.cuda.Device(device).use()
        self.stream = cupy.cuda.Stream(non_blocking=True)

    def device_empty(self, shape, dtype):
        return self.cupy.empty(tuple(shape), dtype=dtype)

    def device_ptr(self, buf) -> int:
        return int(buf.data.ptr)

    def host_empty(self, shape, dtype) -> np.ndarray:
        return self.cupyx.empty_pinned(tuple(shape), dtype=dtype)

    def h2d(self, dev, host):
        dev.set(host, stream=self.stream)

    def d2h(self, host, dev):
        dev.get(stream=self.stream, out=host)

    def event(self):
        return self.cupy.cuda.Event()

    def record(self, event):
        event.record(self.stream)

    def elapsed_ms(self, start, end) -> float:
        return float(self.cupy.cuda.get_elapsed_time(start, end))

    def synchronize(self):
        self.stream.synchronize()

    @property
    def stream_handle(self) -> int:
        return int(self.stream.ptr)


_MEMORY_CLASSES = {"torch": TorchCudaMemory, "cuda-python": CudaPythonMemory, "cupy": CupyMemory}


def open_cuda_memory(device: int = 0, prefer: str | None = None) -> CudaMemory:
    """The first CUDA memory library that works here; RunnerUnavailable listing why each one did not."""
    order = [prefer] if prefer else list(CUDA_LIBRARIES)
    reasons = []
    for name in order:
        if name not in _MEMORY_CLASSES:
            raise UserError(f"Unknown CUDA memory library '{name}'; choose one of {', '.join(CUDA_LIBRARIES)}.")
        try:
            return _MEMORY_CLASSES[name](device)
        except Exception as exc:  # noqa: BLE001 - ImportError, no GPU, driver errors alike
            reasons.append(f"{name}: {(str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]}")
    raise RunnerUnavailable("The trt backend needs CUDA memory from torch (CUDA build), cuda-python or CuPy, and none "
                            f"works here ({'; '.join(reasons)}); pip install cuda-python.")


# ------------------------------------------------------------------------------------ runner

def _make_logger(trt):
    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity, msg):  # noqa: D401 - TensorRT's callback
            if severity in keep:
                self.messages.append(str(msg))

    levels = trt.ILogger.Severity
    keep = {getattr(levels, name) for name in ("INTERNAL_ERROR", "ERROR", "WARNING") if hasattr(levels, name)}

    return _Logger()


def load_plugin_library(trt, library: str | os.PathLike) -> object:
    """Register a plugin library with TensorRT (``IPluginRegistry.load_library``, TensorRT >= 10),
    falling back to a global ``dlopen`` for libraries that register their creators statically."""
    path = str(Path(library).resolve())
    if not Path(path).exists():
        raise UserError(f"The engine needs the plugin library {path}, which does not exist; build it with "
                        "'ulsam-deploy build-plugin' or rebuild the engine without --plugin.")
    registry = trt.get_plugin_registry()
    if hasattr(registry, "load_library"):
        handle = registry.load_library(path)
        if handle is not None:
            return handle
    return ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def _sidecar_precision(sidecar: dict) -> str:
    """The engine's precision from its sidecar: a string, or a section such as {"precision": "fp16", ...}."""
    value = sidecar.get("precision")
    if isinstance(value, dict):
        value = value.get("precision") or value.get("mode") or value.get("name")
    value = str(value or "fp32").lower()
    return value if value in ("fp32", "fp16", "int8", "bf16", "fp8") else "fp32"


class TrtRunner(Runner):
    name = "trt"

    def __init__(self, engine: str | os.PathLike, device: int = 0, *, sidecar: dict | None = None,
                 runtime=None, check: bool = True, cuda: CudaMemory | str | None = None, trt_module=None,
                 warn: Callable[[str], None] | None = None):
        """``runtime`` (a :class:`ulsam_deploy.backends.trt.compat.RuntimeInfo`), ``trt_module`` and ``cuda`` are
        injectable for tests; by default they are probed on this machine."""
        self.engine_path = Path(engine)
        self.device = int(device)
        self.sidecar = sidecar
        self.runtime = runtime
        self.check = check
        self._cuda_choice = cuda
        self.trt = trt_module
        self.warnings: list[str] = []
        self._warn = warn
        self.cuda: CudaMemory | None = None
        self.engine = None
        self.context = None
        self.plugin = None
        self._buffers: dict[int, dict] = {}
        self._bound: int | None = None

    # -------------------------------------------------------------------------------- loading

    def _note(self, message: str) -> None:
        self.warnings.append(message)
        if self._warn is not None:
            self._warn(message)

    def read_sidecar(self) -> dict | None:
        if self.sidecar is not None:
            return self.sidecar
        from ulsam_deploy.backends.trt.compat import engine_sidecar_path, read_engine_sidecar

        if not engine_sidecar_path(self.engine_path).exists():
            self._note(f"'{self.engine_path}' has no sidecar ({engine_sidecar_path(self.engine_path).name}), so it is "
                       "not checked against this TensorRT and GPU before loading; build engines with "
                       "'ulsam-deploy build-trt' to get one.")
            return None
        self.sidecar = read_engine_sidecar(self.engine_path)
        return self.sidecar

    def check_compat(self) -> None:
        """Refuse an engine built for another TensorRT/GPU (EngineMismatch: one sentence + rebuild command)."""
        sidecar = self.read_sidecar()
        if sidecar is None or not self.check:
            return
        from ulsam_deploy.backends.trt.compat import check_engine_compat, current_runtime

        if self.runtime is None:
            self.runtime = current_runtime(self.device)
        check_engine_compat(sidecar, runtime=self.runtime, warn=self._note)

    def load(self) -> None:
        if not self.engine_path.exists():
            raise UserError(f"Engine '{self.engine_path}' does not exist; build one with 'ulsam-deploy build-trt'.")
        if self.trt is None:
            from ulsam_deploy.backends.trt.runtime import import_tensorrt

            try:
                self.trt = import_tensorrt()
            except BackendUnavailable as exc:
                raise RunnerUnavailable(str(exc)) from exc
        trt = self.trt
        self.check_compat()
        sidecar = self.sidecar or {}
        self.precision = _sidecar_precision(sidecar)
        if self.cuda is None:
            self.cuda = (self._cuda_choice if isinstance(self._cuda_choice, CudaMemory)
                         else open_cuda_memory(self.device, self._cuda_choice))
        plugin = sidecar.get("plugin") or {}
        if plugin.get("library"):
            self.plugin = load_plugin_library(trt, plugin["library"])
        if plugin.get("python_module"):  # Python (QDP) plugins register on import
            importlib.import_module(plugin["python_module"])
        self.logger = _make_logger(trt)
        self.trt_runtime = trt.Runtime(self.logger)
        self.engine = self.trt_runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            detail = self.logger.messages[-1] if self.logger.messages else "no message from TensorRT"
            raise UserError(f"TensorRT could not deserialize '{self.engine_path}' ({detail[:240]}); rebuild it on this "
                            f"machine: {sidecar.get('rebuild_command') or 'ulsam-deploy build-trt MODEL.onnx -o ENGINE'}.")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not outputs:
            raise UserError(f"'{self.engine_path}' has {len(inputs)} inputs and {len(outputs)} outputs; bench expects "
                            "one image input and a logits output.")
        self.input_name, self.output_names = inputs[0], outputs
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.output_dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in outputs}
        self.input_shape = tuple(self.engine.get_tensor_shape(self.input_name))
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise UserError(f"TensorRT could not create an execution context for '{self.engine_path}' (out of GPU "
                            "memory?); close other GPU programs and retry.")
        if self.precision == "fp32" and self.input_dtype == np.float16:
            self.precision = "fp16"

    def batch_limits(self) -> tuple[int, int] | None:
        if self.engine is None:
            return None
        if self.input_shape[0] >= 0:
            return int(self.input_shape[0]), int(self.input_shape[0])
        lo, _opt, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
        return int(lo[0]), int(hi[0])

    # ------------------------------------------------------------------------------ inference

    def _bind(self, batch_size: int) -> dict:
        """Buffers and tensor addresses for one batch size (cached); the context's shapes set for it."""
        limits = self.batch_limits()
        if limits and not limits[0] <= batch_size <= limits[1]:
            raise UserError(f"'{self.engine_path}' accepts batch {limits[0]}..{limits[1]}, not {batch_size}; rebuild it "
                            f"with 'ulsam-deploy build-trt --batch 1:{batch_size}:{max(batch_size, limits[1])}'.")
        shape = (batch_size,) + tuple(self.input_shape[1:])
        if not self.context.set_input_shape(self.input_name, shape):
            raise UserError(f"TensorRT rejected input shape {shape} for '{self.engine_path}'.")
        if batch_size not in self._buffers:
            cuda = self.cuda
            bufs = {"in_host": cuda.host_empty(shape, self.input_dtype),
                    "in_dev": cuda.device_empty(shape, self.input_dtype), "out": {},
                    "events": [cuda.event() for _ in range(4)]}
            for name in self.output_names:
                out_shape = tuple(self.context.get_tensor_shape(name))
                dtype = self.output_dtypes[name]
                bufs["out"][name] = (cuda.host_empty(out_shape, dtype), cuda.device_empty(out_shape, dtype))
            self._buffers[batch_size] = bufs
        bufs = self._buffers[batch_size]
        self.context.set_tensor_address(self.input_name, self.cuda.device_ptr(bufs["in_dev"]))
        for name, (_host, dev) in bufs["out"].items():
            self.context.set_tensor_address(name, self.cuda.device_ptr(dev))
        self._bound = batch_size
        return bufs

    def _execute(self, bufs: dict) -> None:
        cuda, events = self.cuda, bufs["events"]
        cuda.record(events[0])
        cuda.h2d(bufs["in_dev"], bufs["in_host"])
        cuda.record(events[1])
        if not self.context.execute_async_v3(cuda.stream_handle):
            raise UserError(f"TensorRT failed to run '{self.engine_path}'"
                            + (f" ({self.logger.messages[-1][:200]})" if self.logger.messages else "") + ".")
        cuda.record(events[2])
        for host, dev in bufs["out"].values():
            cuda.d2h(host, dev)
        cuda.record(events[3])
        cuda.synchronize()

    def _stages(self, bufs: dict) -> dict:
        e = bufs["events"]
        cuda = self.cuda
        return {"h2d": cuda.elapsed_ms(e[0], e[1]), "compute": cuda.elapsed_ms(e[1], e[2]),
                "d2h": cuda.elapsed_ms(e[2], e[3])}

    def infer(self, batch: np.ndarray) -> np.ndarray:
        bufs = self._bind(int(batch.shape[0]))
        np.copyto(bufs["in_host"], batch, casting="unsafe")
        self._execute(bufs)
        host = bufs["out"][self.output_names[0]][0]
        return np.array(host, dtype=np.float32, copy=True)

    def prepare(self, batch: np.ndarray):
        size = int(batch.shape[0])
        bufs = self._bind(size)
        np.copyto(bufs["in_host"], batch, casting="unsafe")

        def run():
            if self._bound != size:  # another batch size was bound since
                self._bind(size)
            self._execute(bufs)

        return run, (lambda: self._stages(bufs))

    def describe(self) -> dict:
        info = {"backend": self.name, "label": self.label, "engine": str(self.engine_path), "device": self.device,
                "precision": self.precision, "cuda_memory": self.cuda.library if self.cuda else None}
        if self.trt is not None:
            info["tensorrt"] = str(getattr(self.trt, "__version__", "?"))
        if self.runtime is not None and getattr(self.runtime, "gpu", None) is not None:
            info["gpu"] = self.runtime.gpu.name
            info["compute_capability"] = self.runtime.gpu.compute_capability
        sidecar = self.sidecar or {}
        if sidecar:
            info["built_with"] = {"tensorrt": (sidecar.get("tensorrt") or {}).get("version"),
                                  "gpu": (sidecar.get("gpu") or {}).get("name"),
                                  "plugin": (sidecar.get("plugin") or {}).get("library")}
        if self.engine is not None:
            info["batch_limits"] = self.batch_limits()
        return info

    def close(self) -> None:
        self.context = None
        self.engine = None
        self._buffers.clear()
        if self.cuda is not None and not isinstance(self._cuda_choice, CudaMemory):
            self.cuda.close()
        self.cuda = None


__all__ = ["CudaMemory", "CudaPythonMemory", "CupyMemory", "TorchCudaMemory", "TrtRunner", "load_plugin_library",
           "open_cuda_memory"]
