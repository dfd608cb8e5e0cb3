"""ONNX Runtime runner (CPU, CUDA and TensorRT execution providers when installed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import Runner, RunnerUnavailable

PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "trt": "TensorrtExecutionProvider"}


class OrtRunner(Runner):
    name = "ort"

    def __init__(self, model: str | os.PathLike | bytes, provider: str = "cpu", threads: int | None = None,
                 custom_ops: bool = False, optimization: str = "all"):
        self.model = model
        self.provider = provider
        self.threads = threads
        self.custom_ops = custom_ops
        self.optimization = optimization
        self.session = None

    def load(self) -> None:
        import onnxruntime as ort

        provider = PROVIDER_NAMES.get(self.provider, self.provider)
        available = ort.get_available_providers()
        if provider not in available:
            raise RunnerUnavailable(
                f"ONNX Runtime here has no {provider} (available: {', '.join(available)}); "
                "install onnxruntime-gpu for CUDA/TensorRT providers or use --ort-provider cpu."
            )
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
            options.inter_op_num_threads = 1
        options.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization]
        if self.custom_ops:
            from ..graph.custom_ops import register_custom_ops  # created with the fusion pass

            register_custom_ops(options)
        source = self.model if isinstance(self.model, bytes) else str(Path(self.model))
        providers = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
        self.session = ort.InferenceSession(source, options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def infer(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float32)

    def describe(self) -> dict:
        import onnxruntime as ort

        info = {"backend": self.name, "onnxruntime": ort.__version__, "provider": self.provider,
                "threads": self.threads or 0, "optimization": self.optimization}
        if self.session is not None:
            info["providers_used"] = self.session.get_providers()
        return info
