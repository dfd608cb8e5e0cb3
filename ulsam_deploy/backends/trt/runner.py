"""TensorRT runner: a serialized engine on TensorRT's Python API (10.x and 11.x).

Written against the name-based I/O tensor API (``num_io_tensors``, ``get_tensor_name``,
``get_tensor_mode``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``), which is
the only one TensorRT 10 and 11 have. Device memory, the stream and the events come from the CUDA
driver through ctypes (:mod:`ulsam_deploy.backends.trt.cuda`): no torch, CuPy or cuda-python.

Timing follows trtexec: one inference = H2D copy, ``execute_async_v3``, D2H copy, stream sync;
CUDA events between the stages give "H2D Latency", "GPU Compute Time" and "D2H Latency"; the
host wall time of the whole call is the "Latency".

Before TensorRT sees the file, the engine sidecar (``model.engine.json``, written by
``build-trt``) is checked against the running TensorRT and GPU (:func:`ulsam_deploy.backends.trt.compat.
check_engine_compat`: one sentence and the rebuild command on a mismatch), and the plugin
library it names is loaded and checked (:func:`ulsam_deploy.backends.trt.plugins.ensure_plugin_library`),
so deserializing never fails on a missing ``SubspaceAttention`` plugin.
Where TensorRT, a GPU or the CUDA driver is missing, :meth:`TrtRunner.load` raises
:class:`RunnerUnavailable` with the reason; nothing crashes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from ulsam_deploy.artifacts import check_input_file
from ulsam_deploy.sidecars import EngineSidecar, read_engine_sidecar, sidecar_path
from ulsam_deploy.errors import BackendUnavailable, UserError
from ulsam_deploy.backends.base import Runner, RunnerUnavailable
from ulsam_deploy.backends.trt.cuda import CudaMemory, open_cuda_memory

BUILD_ENGINE = "build one with 'ulsam-deploy build-trt'"


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


def load_plugin_library(trt, library: str | os.PathLike):
    """Make the engine's plugin known to TensorRT before deserializing (checked; no silent fallback)."""
    from ulsam_deploy.backends.trt.plugins import ensure_plugin_library
    from ulsam_deploy.backends.trt.runtime import version_of

    path = Path(library)
    if not path.exists():
        raise UserError(f"The engine needs the plugin library {path.resolve()}, which does not exist; build it with "
                        "'ulsam-deploy build-plugin' or rebuild the engine without --plugin.")
    return ensure_plugin_library(trt.get_plugin_registry(), path, version_of(trt))


class TrtRunner(Runner):
    name = "trt"

    def __init__(self, engine: str | os.PathLike, device: int = 0, *, sidecar: EngineSidecar | None = None,
                 runtime=None, check: bool = True, cuda: CudaMemory | None = None, trt_module=None,
                 warn: Callable[[str], None] | None = None):
        """``runtime`` (a :class:`ulsam_deploy.backends.trt.compat.RuntimeInfo`), ``trt_module`` and ``cuda`` (a
        :class:`CudaMemory`, then owned by the caller) can be given; by default they are probed here."""
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
        self._buffers: dict[tuple[int, ...], dict] = {}
        self._bound: tuple[int, ...] | None = None

    # -------------------------------------------------------------------------------- loading

    def _note(self, message: str) -> None:
        self.warnings.append(message)
        if self._warn is not None:
            self._warn(message)

    def read_engine_sidecar(self) -> EngineSidecar | None:
        if self.sidecar is not None:
            return self.sidecar
        self.sidecar = read_engine_sidecar(self.engine_path, required=False)
        if self.sidecar is None:
            self._note(f"'{self.engine_path}' has no sidecar ({sidecar_path(self.engine_path).name}), so it is not "
                       "checked against this TensorRT and GPU before loading; build engines with "
                       "'ulsam-deploy build-trt' to get one.")
        return self.sidecar

    def check_compat(self) -> None:
        """Refuse an engine built for another TensorRT/GPU (EngineMismatch: one sentence + rebuild command)."""
        sidecar = self.read_engine_sidecar()
        if sidecar is None or not self.check:
            return
        from ulsam_deploy.backends.trt.compat import check_engine_compat, current_runtime

        if self.runtime is None:
            self.runtime = current_runtime(self.device)
        check_engine_compat(sidecar, runtime=self.runtime, warn=self._note)

    def load(self) -> None:
        check_input_file(self.engine_path, "engine", BUILD_ENGINE)
        if self.trt is None:
            from ulsam_deploy.backends.trt.runtime import import_tensorrt

            try:
                self.trt = import_tensorrt()
            except BackendUnavailable as exc:
                raise RunnerUnavailable(str(exc)) from exc
        trt = self.trt
        self.check_compat()
        sidecar = self.sidecar
        self.precision = sidecar.precision if sidecar is not None else "fp32"
        if self.cuda is None:
            try:
                self.cuda = self._cuda_choice if self._cuda_choice is not None else open_cuda_memory(self.device)
            except BackendUnavailable as exc:
                raise RunnerUnavailable(str(exc)) from exc
        library = sidecar.plugin.library if sidecar is not None and sidecar.plugin else None
        if library:
            self.plugin = load_plugin_library(trt, library)
        # an engine of the Python (QDP) route embeds its AOT kernel: nothing to register at run time
        self.logger = _make_logger(trt)
        try:  # a bindings package over a missing or foreign libnvinfer returns nullptr here
            self.trt_runtime = trt.Runtime(self.logger)
        except (TypeError, RuntimeError) as exc:
            raise RunnerUnavailable(f"TensorRT {getattr(trt, '__version__', '?')} could not create a Runtime "
                                    "(libnvinfer is missing or not a working TensorRT library); check 'ulsam-deploy "
                                    "doctor'.") from exc
        self.engine = self.trt_runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            detail = self.logger.messages[-1] if self.logger.messages else "no message from TensorRT"
            raise UserError(f"TensorRT could not deserialize '{self.engine_path}' ({detail[:240]}); rebuild it on this "
                            f"machine: {(sidecar.rebuild_command if sidecar else None) or 'ulsam-deploy build-trt MODEL.onnx -o ENGINE'}.")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not outputs:
            raise UserError(f"'{self.engine_path}' has {len(inputs)} inputs and {len(outputs)} outputs; bench expects "
                            "one image input and at least one output (logits, or a backbone's feature maps).")
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

    def size_limits(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """((min H, max H), (min W, max W)) of the engine's profile; None for fixed sizes or before load."""
        if self.engine is None or len(self.input_shape) != 4 or min(self.input_shape[2:]) >= 0:
            return None
        lo, _opt, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
        return (int(lo[2]), int(hi[2])), (int(lo[3]), int(hi[3]))

    def _shape_of(self, batch: np.ndarray) -> tuple[int, ...]:
        """The input shape to bind for ``batch``: its batch size, and its H/W where the engine's are dynamic."""
        fixed = tuple(self.input_shape[1:])
        rest = tuple(int(b) if d < 0 else int(d) for d, b in zip(fixed, batch.shape[1:]))
        if rest != tuple(batch.shape[1:]):
            raise UserError(f"'{self.engine_path}' takes inputs of shape [N, {', '.join(map(str, fixed))}], not "
                            f"{list(batch.shape)}; rebuild it for this size.")
        return (int(batch.shape[0]),) + rest

    def _bind(self, shape: tuple[int, ...] | int) -> dict:
        """Buffers and tensor addresses for one input shape (cached); the context's shapes set for it."""
        if isinstance(shape, int):
            shape = (shape,) + tuple(self.input_shape[1:])
        batch_size = shape[0]
        limits = self.batch_limits()
        if limits and not limits[0] <= batch_size <= limits[1]:
            raise UserError(f"'{self.engine_path}' accepts batch {limits[0]}..{limits[1]}, not {batch_size}; rebuild it "
                            f"with 'ulsam-deploy build-trt --batch-profile 1:{batch_size}:{max(batch_size, limits[1])}'.")
        sizes = self.size_limits()
        if sizes and not all(lo <= v <= hi for v, (lo, hi) in zip(shape[2:], sizes)):
            (h0, h1), (w0, w1) = sizes
            raise UserError(f"'{self.engine_path}' accepts {h0}..{h1} x {w0}..{w1} pixels, not {shape[2]}x{shape[3]}; "
                            "rebuild it with a wider 'ulsam-deploy build-trt --size-profile MIN:OPT:MAX'.")
        if not self.context.set_input_shape(self.input_name, shape):
            raise UserError(f"TensorRT rejected input shape {shape} for '{self.engine_path}'.")
        if shape not in self._buffers:
            cuda = self.cuda
            bufs = {"in_host": cuda.host_empty(shape, self.input_dtype),
                    "in_dev": cuda.device_empty(shape, self.input_dtype), "out": {},
                    "events": [cuda.event() for _ in range(4)]}
            for name in self.output_names:
                out_shape = tuple(self.context.get_tensor_shape(name))
                dtype = self.output_dtypes[name]
                bufs["out"][name] = (cuda.host_empty(out_shape, dtype), cuda.device_empty(out_shape, dtype))
            self._buffers[shape] = bufs
        bufs = self._buffers[shape]
        self.context.set_tensor_address(self.input_name, self.cuda.device_ptr(bufs["in_dev"]))
        for name, (_host, dev) in bufs["out"].items():
            self.context.set_tensor_address(name, self.cuda.device_ptr(dev))
        self._bound = shape
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

    def infer_all(self, batch: np.ndarray) -> list[np.ndarray]:
        bufs = self._bind(self._shape_of(batch))
        np.copyto(bufs["in_host"], batch, casting="unsafe")
        self._execute(bufs)
        return [np.array(bufs["out"][name][0], dtype=np.float32, copy=True) for name in self.output_names]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.infer_all(batch)[0]

    def prepare(self, batch: np.ndarray):
        shape = self._shape_of(batch)
        bufs = self._bind(shape)
        np.copyto(bufs["in_host"], batch, casting="unsafe")

        def run():
            if self._bound != shape:  # another shape was bound since
                self._bind(shape)
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
        sidecar = self.sidecar
        if sidecar is not None:
            info["built_with"] = {"tensorrt": sidecar.tensorrt.version if sidecar.tensorrt else None,
                                  "gpu": sidecar.gpu.name if sidecar.gpu else None,
                                  "plugin": sidecar.plugin.library if sidecar.plugin else None}
        if self.engine is not None:
            info["batch_limits"] = self.batch_limits()
            info["size_limits"] = self.size_limits()
        return info

    def close(self) -> None:
        self.context = None
        self.engine = None
        self._buffers.clear()
        if self.cuda is not None and self._cuda_choice is None:
            self.cuda.close()
        self.cuda = None


__all__ = ["TrtRunner", "load_plugin_library"]
