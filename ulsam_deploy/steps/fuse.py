"""``fuse``: ONNX -> ONNX with every ULSAM block replaced by one SubspaceAttention node, proven equal on ORT.

The pass itself is :func:`ulsam_deploy.passes.fuse.fuse_model`; this module loads the file, checks the
result with onnx.checker, runs fused and unfused graphs on ONNX Runtime (CPU) on seeded inputs, and
writes the output and its sidecar atomically only when they agree within ``atol``.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
import onnx

from ulsam_deploy.errors import ParityError, UserError
from ulsam_deploy.passes.common import check_model, fit_ir_version, load_onnx, op_counts, opset_of, save_onnx_atomic, sha256_file

Stage = Callable[[str], ContextManager]

_NP_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
             onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32}


@contextlib.contextmanager
def _quiet_stage(_name: str):
    yield


@dataclass
class FuseResult:
    onnx_path: Path
    sidecar_path: Path
    report: dict
    max_abs: float  # over the graph outputs
    blocks_max_abs: float  # over the fused blocks' outputs (meaningful even when logits are tiny)
    batches: tuple[int, ...]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def fused(self) -> int:
        return int(self.report.get("fused", 0))


def default_output(model: Path) -> Path:
    """``model.onnx`` -> ``model.fused.onnx``."""
    return model.with_name(f"{model.stem}.fused{model.suffix or '.onnx'}")


def _input_specs(model: onnx.ModelProto, sidecar: dict | None) -> list[tuple[str, list, type]]:
    """(name, dims with None for the batch axis, dtype) of every real graph input."""
    inits = {t.name for t in model.graph.initializer}
    size = ((sidecar or {}).get("config") or {}).get("input_size")
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tensor = vi.type.tensor_type
        dtype = _NP_TYPES.get(tensor.elem_type)
        if dtype is None:
            raise UserError(f"Input '{vi.name}' has element type {onnx.TensorProto.DataType.Name(tensor.elem_type)}, "
                            "which 'fuse' cannot feed for its parity check; fuse float models.")
        dims = []
        for axis, d in enumerate(tensor.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif axis == 0:
                dims.append(None)  # batch
            elif size and len(tensor.shape.dim) == 4 and axis in (2, 3):
                dims.append(int(size))
            else:
                raise UserError(f"Input '{vi.name}' has a dynamic dimension {axis} ('{d.dim_param or '?'}') that "
                                "'fuse' cannot choose for its parity check; export with a fixed input size.")
        specs.append((vi.name, dims, dtype))
    if not specs:
        raise UserError("The ONNX model has no inputs to feed; it cannot be checked.")
    return specs


def _session(data: bytes, custom: bool):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if custom:
        from ulsam_deploy.backends.onnxrt.custom_ops import prepare_model, register_custom_ops

        register_custom_ops(options)
        data = prepare_model(data)
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]
        raise UserError(f"ONNX Runtime could not load the model ({first}).") from exc


def _with_outputs(model: onnx.ModelProto, names: list[str], types: dict[str, int]) -> onnx.ModelProto:
    out = _copy(model)
    present = {o.name for o in out.graph.output}
    for name in names:
        if name not in present:
            elem = types.get(name, onnx.TensorProto.FLOAT)
            out.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    return out


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - types only pick the declared dtype of probed tensors
        inferred = model
    g = inferred.graph
    return {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.output)
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}


def compare_on_ort(original: onnx.ModelProto, fused: onnx.ModelProto, specs, batches, seed: int = 0,
                   probes: list[str] | tuple[str, ...] = ()) -> tuple[float, float]:
    """(largest |fused - unfused| over the graph outputs, over the ``probes`` tensors: the fused blocks'
    outputs, which keep their names), over all ``batches``; inf when anything is non-finite."""
    from ulsam_deploy.backends.onnxrt.custom_ops import is_fused, take_errors

    take_errors()
    probes = list(probes)
    types = _elem_types(original)
    reference = _session(_with_outputs(fit_ir_version(_copy(original)), probes, types).SerializeToString(),
                         custom=is_fused(original))
    candidate = _session(_with_outputs(fused, probes, types).SerializeToString(), custom=is_fused(fused))
    n_out = len(original.graph.output)
    names = [o.name for o in reference.get_outputs()]
    worst = [0.0, 0.0]
    for batch in batches:
        rng = np.random.default_rng(seed + batch)
        feed = {}
        for name, dims, dtype in specs:
            shape = [batch if d is None else d for d in dims]
            feed[name] = rng.standard_normal(shape).astype(dtype) if np.issubdtype(dtype, np.floating) \
                else np.zeros(shape, dtype)
        for k, (a, b) in enumerate(zip(reference.run(names, feed), candidate.run(names, feed))):
            slot = 0 if k < n_out else 1
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
                worst[slot] = float("inf")
                continue
            worst[slot] = max(worst[slot], float(np.abs(a - b).max(initial=0.0)))
    errors = take_errors()
    if errors:
        raise ParityError(f"The fused op failed on ONNX Runtime ({errors[0]}); nothing was written.")
    return worst[0], worst[1]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def fuse_file(model_path: str | os.PathLike, output: str | os.PathLike | None = None, *, atol: float = 1e-5,
              force: bool = False, seed: int = 0, stage: Stage = _quiet_stage) -> FuseResult:
    """Fuse ``model_path`` into ``output`` (default ``<stem>.fused.onnx``); see the module docstring."""
    from ulsam_deploy.steps.export import read_sidecar, write_json_atomic
    from ulsam_deploy.passes.fuse import fuse_model

    model_path = Path(model_path)
    output = Path(output) if output is not None else default_output(model_path)
    if not atol > 0:
        raise UserError(f"--atol must be positive, not {atol}.")
    if output.exists() and output.is_dir():
        raise UserError(f"'{output}' is a directory; give a file path such as {output / 'model.fused.onnx'}.")
    if output.exists() and not force:
        raise UserError(f"'{output}' already exists; pass --force to overwrite it or choose another -o path.")
    seconds: dict[str, float] = {}

    with stage(f"Loading {model_path}"):
        original = load_onnx(model_path)
        sidecar = read_sidecar(model_path)
        specs = _input_specs(original, sidecar)

    t0 = time.perf_counter()
    with stage("Fusing ULSAM blocks into SubspaceAttention"):
        fused, report = fuse_model(original)
    seconds["fuse"] = time.perf_counter() - t0

    with stage("Checking with onnx.checker"):
        fused = fit_ir_version(fused)
        check_model(fused)

    batch_dims = [dims[0] for _, dims, _ in specs if dims]
    batches = (1, 2) if any(d is None for d in batch_dims) else (batch_dims[0] if batch_dims else 1,)
    t0 = time.perf_counter()
    with stage(f"Proving fused == unfused on ONNX Runtime (batch {', '.join(map(str, batches))})"):
        max_abs, blocks_max_abs = compare_on_ort(original, fused, specs, batches, seed,
                                                 probes=[b["output"] for b in report["blocks"]])
    seconds["parity"] = time.perf_counter() - t0
    worst = max(max_abs, blocks_max_abs)
    if not worst <= atol:
        where = "its outputs" if max_abs >= blocks_max_abs else "the fused blocks' outputs"
        raise ParityError(
            f"The fused graph differs from the unfused one by {worst:.3g} (max abs, at {where}) on ONNX Runtime, "
            f"above --atol {atol:g}; nothing was written. This is a fusion bug; please report it with the model."
        )

    sidecar_path = output.with_name(output.name + ".json")
    with stage(f"Writing {output}"):
        save_onnx_atomic(fused, output)
        data = dict(sidecar) if sidecar else {
            "format": "ulsam-deploy-onnx/1", "source": str(model_path), "config": None,
            "input": {"name": specs[0][0], "shape": [d if d is not None else "batch" for d in specs[0][1]],
                      "dtype": np.dtype(specs[0][2]).name},
        }
        data.update({"onnx": output.name, "sha256": sha256_file(output), "nodes": len(fused.graph.node),
                     "ops": op_counts(fused), "opset": opset_of(fused), "ir_version": fused.ir_version})
        data["fused"] = dict(report, source_onnx=str(model_path), source_sha256=sha256_file(model_path),
                             parity={"reference": "onnxruntime (cpu, unfused)", "candidate": "onnxruntime (cpu, fused)",
                                     "atol": atol, "max_abs": max_abs, "blocks_max_abs": blocks_max_abs,
                                     "batches": list(batches), "seed": seed},
                             created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        try:
            write_json_atomic(data, sidecar_path)
        except BaseException:
            output.unlink(missing_ok=True)
            raise
    return FuseResult(output, sidecar_path, report, max_abs, blocks_max_abs, batches, seconds)


__all__ = ["FuseResult", "compare_on_ort", "default_output", "fuse_file"]
