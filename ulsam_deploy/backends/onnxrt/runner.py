"""ONNX Runtime runner (CPU, CUDA and TensorRT execution providers when installed).

It runs an artifact the way its user will:

- an int8 model made for TensorRT (``convert --target tensorrt``) runs with ORT's graph optimizations
  off, so its Q/DQ nodes execute as written: exact simulated quantization, TensorRT's semantics (ORT's
  own int8 kernels would swap in other arithmetic). Its latency is not int8 deployment speed;
- an int8 model made for ONNX Runtime (``--target ort``) runs in a default session, with ORT's int8 kernels;
- a fused graph (``SubspaceAttention`` nodes) gets the NumPy reference op from :mod:`.custom_ops`
  (correct, not fast: its latency is the reference op's);
- fp16-I/O models get float16 inputs and return float32.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ulsam_deploy.backends.base import Runner, RunnerUnavailable
from ulsam_deploy.errors import UserError

PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "trt": "TensorrtExecutionProvider",
                  "tensorrt": "TensorrtExecutionProvider"}
SHORT_NAMES = {v: k for k, v in PROVIDER_NAMES.items() if k != "tensorrt"}
OPTIMIZATIONS = ("none", "basic", "extended", "all")
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def model_facts(proto) -> dict:
    """Precision, int8 target, fused-op count, node count and input dtype of an ONNX model."""
    import onnx

    from ulsam_deploy.onnx_graph import fused_nodes, graph_inputs, int8_target, precision_of

    inputs = graph_inputs(proto)
    io_fp16 = bool(inputs) and inputs[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    return {"precision": precision_of(proto), "int8_target": int8_target(proto),
            "fused_nodes": len(fused_nodes(proto)), "nodes": len(proto.graph.node), "io_fp16": io_fp16}


def execution_mode(facts: dict, optimization: str) -> str:
    """How this runner executes the artifact, in words a report shows beside its figures."""
    if facts.get("int8_target") == "tensorrt" and optimization == "none":
        return "Q/DQ simulated, TensorRT semantics"
    if facts.get("int8_target") == "ort":
        return "ONNX Runtime int8 kernels"
    if facts.get("fused_nodes"):
        return "SubspaceAttention reference op (NumPy)"
    return ""


class OrtRunner(Runner):
    name = "ort"

    def __init__(self, model: str | os.PathLike | bytes, provider: str = "cpu", threads: int | None = None,
                 custom_ops: bool | None = None, optimization: str | None = None, precision: str | None = None,
                 spinning: bool | None = None, extra_outputs: tuple[str, ...] = ()):
        """``custom_ops=None`` enables the reference op only when the graph holds fused nodes;
        ``optimization=None`` picks what the artifact is made for (see the module docstring);
        ``precision=None`` reads it from the model; ``extra_outputs`` exposes intermediate tensors too."""
        if optimization is not None and optimization not in OPTIMIZATIONS:
            raise ValueError(f"optimization must be one of {OPTIMIZATIONS}, not {optimization!r}")
        self.model = model
        self.provider = provider
        self.threads = threads
        self.custom_ops = custom_ops
        self.optimization = optimization
        self.spinning = spinning
        self.extra_outputs = tuple(extra_outputs)
        self.session = None
        self.facts: dict = {}
        self.warnings: list[str] = []
        if precision is not None:
            self.precision = precision
        self._explicit_precision = precision is not None

    @property
    def label(self) -> str:
        return f"ort:{SHORT_NAMES.get(PROVIDER_NAMES.get(self.provider, self.provider), self.provider)}"

    @property
    def mode(self) -> str:
        return execution_mode(self.facts, self.optimization or "all")

    @property
    def latency_meaningful(self) -> bool:
        """False where the latency measures a simulation (TensorRT-style Q/DQ) or the NumPy reference op."""
        return not (self.facts.get("fused_nodes") or (self.facts.get("int8_target") == "tensorrt"
                                                       and self.optimization == "none"))

    def _proto(self):
        import onnx

        if isinstance(self.model, (bytes, bytearray)):
            return onnx.load_from_string(bytes(self.model))
        if isinstance(self.model, onnx.ModelProto):
            return self.model
        from ulsam_deploy.artifacts import load_onnx

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
        if self.optimization is None:
            self.optimization = "none" if self.facts["int8_target"] == "tensorrt" else "all"
        custom = self.custom_ops if self.custom_ops is not None else self.facts["fused_nodes"] > 0
        options = ort.SessionOptions()
        options.log_severity_level = 3
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
        if self.extra_outputs:
            proto = _with_outputs(proto, self.extra_outputs)
        lowered = False
        from ulsam_deploy.onnx_graph import ort_max_ir_version

        if proto.ir_version > ort_max_ir_version():  # a board's older ORT (1.23: IR 11) and a newer exporter's file
            was, proto = proto.ir_version, _copy(proto)
            proto.ir_version, lowered = ort_max_ir_version(), True
            self.warnings.append(f"ONNX IR version {was} lowered to {proto.ir_version} in memory for onnxruntime "
                                 f"{ort.__version__} (the file is unchanged)")
        source = proto.SerializeToString() if (lowered or self.extra_outputs
                                                or not isinstance(self.model, (str, os.PathLike))) \
            else str(Path(self.model))
        if custom:
            try:
                from ulsam_deploy.backends.onnxrt.custom_ops import prepare_model, register_custom_ops
            except ImportError as exc:  # pragma: no cover - part of the package
                raise RunnerUnavailable(f"The SubspaceAttention reference op is not available ({exc}).") from exc
            register_custom_ops(options)
            source = prepare_model(proto)  # constants as inputs, fp16 casts: the Python op's view of the node
        self.custom_ops = custom
        providers = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
        try:
            self.session = ort.InferenceSession(source, options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]
            raise RunnerUnavailable(f"ONNX Runtime could not load the model ({first}).") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise RunnerUnavailable(f"The model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                                    "ulsam-deploy runs image models with exactly one input.")
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        self.input_dtype = _ORT_TYPES.get(inputs[0].type, np.float32)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _feed(self, batch: np.ndarray) -> dict:
        return {self.input_name: np.ascontiguousarray(batch, dtype=self.input_dtype)}

    def _run(self, names: list[str], batch: np.ndarray) -> list:
        """``session.run``; a failure inside ONNX Runtime (a tensor too large for memory, a shape the graph cannot
        take) is one sentence about the model, not an unexpected error."""
        try:
            return self.session.run(names, self._feed(batch))
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types (Fail, RuntimeException...)
            if type(exc).__module__.split(".")[0] != "onnxruntime":
                raise
            text = " ".join(str(exc).split())
            memory = "bfc_arena" in text or "allocate" in text.lower() or "memory" in text.lower()
            cause = ("it ran out of memory: a tensor computed at run time is larger than this machine can hold"
                     if memory else text[:200])
            fix = ("use smaller batches or a smaller input size, or fix the model" if memory else
                   "check that the input shape fits the model, or re-export it")
            raise UserError(f"ONNX Runtime could not run the model on a {list(batch.shape)} input ({cause}); "
                            f"{fix}.") from None

    def infer_all(self, batch: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(o, dtype=np.float32) for o in self._run(self.output_names, batch)]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._run(self.output_names[:1], batch)[0], dtype=np.float32)

    def prepare(self, batch: np.ndarray):
        feed = self._feed(batch)
        run, names = self.session.run, self.output_names
        return (lambda: run(names, feed)), None

    def batch_limits(self) -> tuple[int, int] | None:
        dim = self.input_shape[0] if getattr(self, "input_shape", None) else None
        return (dim, dim) if isinstance(dim, int) and dim > 0 else None

    def size_limits(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        shape = getattr(self, "input_shape", None) or []
        if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[2:]):
            return None  # symbolic H/W: any size the network's stride allows (the sidecar's range is checked by bench)
        return (shape[2], shape[2]), (shape[3], shape[3])

    def describe(self) -> dict:
        import onnxruntime as ort

        info = {"backend": self.name, "label": self.label, "onnxruntime": ort.__version__, "provider": self.provider,
                "threads": self.threads or 0, "optimization": self.optimization, "precision": self.precision,
                "custom_ops": bool(self.custom_ops), "mode": self.mode, "latency_meaningful": self.latency_meaningful}
        if self.spinning is not None:
            info["spinning"] = self.spinning
        if isinstance(self.model, (str, os.PathLike)):
            info["model"] = str(self.model)
        if self.facts:
            info.update(nodes=self.facts["nodes"], fused_nodes=self.facts["fused_nodes"], io_fp16=self.facts["io_fp16"],
                        int8_target=self.facts["int8_target"])
        if self.session is not None:
            info["providers_used"] = self.session.get_providers()
        return info

    def close(self) -> None:
        self.session = None


def _with_outputs(model, names: tuple[str, ...]):
    """A copy of ``model`` that also outputs the tensors ``names`` (types from shape inference)."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - types only pick the declared dtype of probed tensors
        inferred = model
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.output)
             if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}
    for name in names:
        if name not in present:
            out.graph.output.append(onnx.helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT),
                                                                       None))
    return out



def _copy(proto):
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


__all__ = ["OrtRunner", "execution_mode", "model_facts"]
