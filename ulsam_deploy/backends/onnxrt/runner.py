"""ONNX Runtime runner (CPU, CUDA and TensorRT execution providers when installed).

Handles fp16-I/O models (inputs cast to float16, outputs back to float32), reports the model's
precision (fp32 / fp16 / int8 from its tensors and Q/DQ nodes), and enables our custom-op library
by itself when the graph holds fused ``SubspaceAttention`` nodes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ulsam_deploy.backends.base import Runner, RunnerUnavailable

PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "trt": "TensorrtExecutionProvider",
                  "tensorrt": "TensorrtExecutionProvider"}
SHORT_NAMES = {v: k for k, v in PROVIDER_NAMES.items() if k != "tensorrt"}
INT8_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
            "DynamicQuantizeLinear", "QLinearAdd", "QLinearMul", "QGemm"}
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def model_facts(proto) -> dict:
    """Precision, fused-op count, node count and input dtype of an ONNX model (no weights are read)."""
    import onnx

    from ulsam_deploy.op_spec import OP_TYPE

    ops = [node.op_type for node in proto.graph.node]
    fused = sum(op == OP_TYPE for op in ops)
    fp16_tensors = any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    io_fp16 = bool(inputs) and inputs[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    if any(op in INT8_OPS for op in ops):
        precision = "int8"
    elif fp16_tensors or io_fp16:
        precision = "fp16"
    else:
        precision = "fp32"
    return {"precision": precision, "fused_nodes": fused, "nodes": len(ops), "io_fp16": io_fp16}


class OrtRunner(Runner):
    name = "ort"

    def __init__(self, model: str | os.PathLike | bytes, provider: str = "cpu", threads: int | None = None,
                 custom_ops: bool | None = None, optimization: str = "all", precision: str | None = None,
                 spinning: bool | None = None):
        """``custom_ops=None`` enables the custom-op library only when the graph holds fused nodes;
        ``precision=None`` reads it from the model; ``spinning=None`` keeps ONNX Runtime's default."""
        self.model = model
        self.provider = provider
        self.threads = threads
        self.custom_ops = custom_ops
        self.optimization = optimization
        self.spinning = spinning
        self.session = None
        self.facts: dict = {}
        if precision is not None:
            self.precision = precision
        self._explicit_precision = precision is not None

    @property
    def label(self) -> str:
        return f"ort:{SHORT_NAMES.get(PROVIDER_NAMES.get(self.provider, self.provider), self.provider)}"

    def _proto(self):
        import onnx

        if isinstance(self.model, (bytes, bytearray)):
            return onnx.load_from_string(bytes(self.model))
        from ulsam_deploy.passes.common import load_onnx

        return load_onnx(self.model)

    def load(self) -> None:
        import onnxruntime as ort

        provider = PROVIDER_NAMES.get(self.provider, self.provider)
        available = ort.get_available_providers()
        if provider not in available:
            raise RunnerUnavailable(
                f"ONNX Runtime here has no {provider} (available: {', '.join(available)}); "
                "install onnxruntime-gpu for CUDA/TensorRT providers or use --ort-provider cpu."
            )
        proto = self._proto()
        self.facts = model_facts(proto)
        if not self._explicit_precision:
            self.precision = self.facts["precision"]
        custom = self.custom_ops if self.custom_ops is not None else self.facts["fused_nodes"] > 0
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
            options.inter_op_num_threads = 1
        if self.spinning is not None:
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        options.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization]
        if custom:
            try:
                from ulsam_deploy.backends.onnxrt.custom_ops import register_custom_ops  # created with the fusion pass
            except ImportError as exc:
                raise RunnerUnavailable(
                    f"This ONNX model holds {self.facts['fused_nodes']} fused SubspaceAttention node(s) and the custom-op "
                    f"library is not available here ({exc}); install 'ulsam-deploy[kernels]' or bench the unfused ONNX."
                ) from exc
            register_custom_ops(options)
        self.custom_ops = custom
        source = bytes(self.model) if isinstance(self.model, (bytes, bytearray)) else str(Path(self.model))
        if custom:  # the Python op cannot read FLOATS attributes: run ORT's view (constants as inputs, fp16 casts)
            from ulsam_deploy.backends.onnxrt.custom_ops import prepare_model

            source = prepare_model(proto)
        providers = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
        try:
            self.session = ort.InferenceSession(source, options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]
            raise RunnerUnavailable(f"ONNX Runtime could not load the model ({first}).") from exc
        first_input = self.session.get_inputs()[0]
        self.input_name = first_input.name
        self.input_shape = list(first_input.shape)
        self.input_dtype = _ORT_TYPES.get(first_input.type, np.float32)
        self.output_names = [self.session.get_outputs()[0].name]

    def _feed(self, batch: np.ndarray) -> dict:
        return {self.input_name: np.ascontiguousarray(batch, dtype=self.input_dtype)}

    def infer(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(self.output_names, self._feed(batch))[0]
        return np.asarray(out, dtype=np.float32)

    def prepare(self, batch: np.ndarray):
        feed = self._feed(batch)
        run, names = self.session.run, self.output_names
        return (lambda: run(names, feed)), None

    def batch_limits(self) -> tuple[int, int] | None:
        dim = self.input_shape[0] if getattr(self, "input_shape", None) else None
        return (dim, dim) if isinstance(dim, int) and dim > 0 else None

    def describe(self) -> dict:
        import onnxruntime as ort

        info = {"backend": self.name, "label": self.label, "onnxruntime": ort.__version__, "provider": self.provider,
                "threads": self.threads or 0, "optimization": self.optimization, "precision": self.precision,
                "custom_ops": bool(self.custom_ops)}
        if self.spinning is not None:
            info["spinning"] = self.spinning
        if not isinstance(self.model, (bytes, bytearray)):
            info["model"] = str(self.model)
        if self.facts:
            info.update(nodes=self.facts["nodes"], fused_nodes=self.facts["fused_nodes"], io_fp16=self.facts["io_fp16"])
        if self.session is not None:
            info["providers_used"] = self.session.get_providers()
        return info

    def close(self) -> None:
        self.session = None
