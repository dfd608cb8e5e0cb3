"""``export``: checkpoint -> ONNX (export form of ULSAM), simplified, checked, and proven equal to PyTorch."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
import onnx
import torch

from ulsam_deploy.backends import OrtRunner, TorchRunner
from ulsam_deploy.backends.judge import Comparison, compare_outputs
from ulsam_deploy.errors import ParityError, UserError
from ulsam_deploy.passes.common import check_model, fit_ir_version, op_counts, opset_of, save_onnx_atomic, sha256_file
from ulsam_deploy.passes.simplify import simplify_model
from ulsam_deploy.models import ULSAM, ULSAMExport
from ulsam_deploy.models.checkpoint import CheckpointInfo, load_checkpoint_with_info
from ulsam_deploy.models.mobilenet import MobileNetULSAM

Stage = Callable[[str], ContextManager]


@contextlib.contextmanager
def _quiet_stage(_name: str):
    yield


@dataclass
class ExportOptions:
    opset: int = 17
    batch: int | None = None  # None: dynamic batch axis
    simplify: bool = True
    atol: float = 1e-4
    exporter: str = "torchscript"  # or "dynamo"
    force: bool = False
    fuse: bool = False
    seed: int = 0
    parity_batches: tuple[int, ...] = (1, 3)

    def __post_init__(self) -> None:
        if not 13 <= int(self.opset) <= 21:
            raise UserError(f"Opset {self.opset} is not supported; choose an opset from 13 to 21 (17 is the default).")
        if self.batch is not None and int(self.batch) < 1:
            raise UserError(f"--batch must be a positive integer, not {self.batch}.")
        if self.exporter not in ("torchscript", "dynamo"):
            raise UserError(f"Unknown exporter '{self.exporter}'; choose 'torchscript' or 'dynamo'.")
        if not self.atol > 0:
            raise UserError(f"--atol must be positive, not {self.atol}.")


@dataclass
class ExportResult:
    onnx_path: Path
    sidecar_path: Path
    parity: dict[int, Comparison]
    nodes: int
    ops: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    fusion: dict | None = None
    sidecar: dict = field(default_factory=dict)

    @property
    def max_abs(self) -> float:
        return max(c.max_abs for c in self.parity.values())


def to_export_form(model: MobileNetULSAM) -> MobileNetULSAM:
    """A copy of ``model`` (eval) whose ULSAM blocks are :class:`ULSAMExport` (BN folded, one branch)."""
    deploy = copy.deepcopy(model).eval()
    for index, layer in enumerate(deploy.features):
        if isinstance(layer, ULSAM):
            deploy.features[index] = ULSAMExport.from_ulsam(layer)
    for key in list(deploy.ulsam_after.keys()):
        deploy.ulsam_after[key] = ULSAMExport.from_ulsam(deploy.ulsam_after[key])
    return deploy


def torch_to_onnx(model: torch.nn.Module, input_size: int, in_channels: int, options: ExportOptions) -> onnx.ModelProto:
    """Trace to ONNX with ``input`` (N,C,H,W float32) and ``logits``; batch axis dynamic unless fixed."""
    example = torch.zeros(options.batch or 1, in_channels, input_size, input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if options.exporter == "dynamo":
            dynamic = None if options.batch else {"x": {0: torch.export.Dim("batch", min=1, max=4096)}}
            program = torch.onnx.export(model, (example,), None, dynamo=True, input_names=["input"],
                                        output_names=["logits"], opset_version=options.opset,
                                        dynamic_shapes=dynamic, verbose=False)
            proto = program.model_proto
        else:
            buffer = io.BytesIO()
            axes = None if options.batch else {"input": {0: "batch"}, "logits": {0: "batch"}}
            torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=["input"],
                              output_names=["logits"], opset_version=options.opset, dynamic_axes=axes,
                              do_constant_folding=True)
            proto = onnx.load_from_string(buffer.getvalue())
    proto.producer_name = "ulsam-deploy"
    from ulsam_deploy import __version__

    proto.producer_version = __version__
    return proto


def parity_inputs(batch: int, in_channels: int, size: int, seed: int) -> np.ndarray:
    """Seeded inputs shaped like normalized images (roughly N(0,1))."""
    return np.random.default_rng(seed + batch).standard_normal((batch, in_channels, size, size)).astype(np.float32)


def check_parity(reference: TorchRunner, candidate: OrtRunner, batches, in_channels: int, size: int,
                 atol: float, seed: int = 0) -> dict[int, Comparison]:
    results = {}
    for batch in batches:
        x = parity_inputs(batch, in_channels, size, seed)
        results[batch] = compare_outputs(reference.infer(x), candidate.infer(x), atol=atol, rtol=atol)
    return results


def tool_versions() -> dict[str, str]:
    import onnxruntime

    from ulsam_deploy import __version__

    versions = {"ulsam_deploy": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}
    try:
        import onnxsim

        versions["onnxsim"] = getattr(onnxsim, "__version__", "unknown")
    except ImportError:
        pass
    return versions


def export_model(model: MobileNetULSAM, info: CheckpointInfo, output: str | os.PathLike, options: ExportOptions,
                 stage: Stage = _quiet_stage, source: str | None = None) -> ExportResult:
    """Export an eval-mode model; write ``output`` and ``output.json`` only when every check passed."""
    output = Path(output)
    sidecar_path = output.with_name(output.name + ".json")
    if output.exists() and not options.force:
        raise UserError(f"'{output}' already exists; pass --force to overwrite it or choose another -o path.")
    if output.exists() and output.is_dir():
        raise UserError(f"'{output}' is a directory; give a file path such as {output / 'model.onnx'}.")
    config = info.config
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    with stage("Folding ULSAM into its export form"):
        deploy = to_export_form(model)
    with stage(f"Exporting ONNX (opset {options.opset}, {options.exporter})"):
        proto = torch_to_onnx(deploy, config.input_size, config.in_channels, options)
    seconds["export"] = time.perf_counter() - t0

    if options.simplify:
        t0 = time.perf_counter()
        with stage("Simplifying with onnxsim"):
            proto = simplify_model(proto)
        seconds["simplify"] = time.perf_counter() - t0

    fusion = None
    if options.fuse:
        t0 = time.perf_counter()
        with stage("Fusing ULSAM blocks into SubspaceAttention"):
            from ulsam_deploy.passes.fuse import fuse_model  # the fusion pass

            proto, fusion = fuse_model(proto)
        seconds["fuse"] = time.perf_counter() - t0

    with stage("Checking with onnx.checker"):
        proto = fit_ir_version(proto)
        check_model(proto)

    t0 = time.perf_counter()
    batches = (options.batch,) if options.batch else options.parity_batches
    with stage(f"Proving ONNX Runtime == PyTorch (batch {', '.join(map(str, batches))})"):
        data = proto.SerializeToString()
        with TorchRunner(model) as reference, OrtRunner(data, custom_ops=options.fuse) as candidate:
            parity = check_parity(reference, candidate, batches, config.in_channels, config.input_size,
                                  options.atol, options.seed)
    seconds["parity"] = time.perf_counter() - t0
    worst = max(parity.values(), key=lambda c: c.max_abs)
    if worst.max_abs > options.atol or not np.isfinite(worst.max_abs):
        raise ParityError(
            f"ONNX Runtime differs from PyTorch by {worst.max_abs:.3g} (max abs), above --atol {options.atol:g}; "
            "nothing was written. Re-export with --no-simplify or --exporter dynamo, or report this model."
        )

    with stage(f"Writing {output}"):
        save_onnx_atomic(proto, output)
        sidecar = {
            "format": "ulsam-deploy-onnx/1",
            "onnx": output.name,
            "sha256": sha256_file(output),
            "source": source,
            "config": config.to_dict(),
            "description": config.describe(),
            "input": {"name": "input", "shape": [options.batch or "batch", config.in_channels, config.input_size,
                                                 config.input_size], "dtype": "float32"},
            "output": {"name": "logits", "shape": [options.batch or "batch", config.num_classes], "dtype": "float32"},
            "mean": list(info.mean),
            "std": list(info.std),
            "class_names": info.class_names,
            "opset": opset_of(proto),
            "ir_version": proto.ir_version,
            "exporter": options.exporter,
            "simplified": options.simplify,
            "fused": fusion,
            "nodes": len(proto.graph.node),
            "ops": op_counts(proto),
            "parity": {"reference": "torch (cpu, eval)", "candidate": "onnxruntime (cpu)", "atol": options.atol,
                       "batches": {str(b): c.to_dict() for b, c in parity.items()}},
            "checkpoint_meta": info.meta,
            "versions": tool_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        try:
            write_json_atomic(sidecar, sidecar_path)
        except BaseException:
            output.unlink(missing_ok=True)
            raise
    return ExportResult(output, sidecar_path, parity, len(proto.graph.node), op_counts(proto), seconds, fusion, sidecar)


def write_json_atomic(data: dict, path: Path) -> Path:
    from ulsam_deploy.passes.common import write_bytes_atomic

    return write_bytes_atomic((json.dumps(data, indent=2, default=_json_default) + "\n").encode(), path)


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike, options: ExportOptions | None = None,
                      stage: Stage = _quiet_stage, **overrides) -> ExportResult:
    """Load any accepted checkpoint and export it (see :func:`export_model`)."""
    options = options or ExportOptions()
    with stage(f"Loading {checkpoint}"):
        model, info = load_checkpoint_with_info(checkpoint, **overrides)
    return export_model(model, info, output, options, stage, source=str(checkpoint))


def read_sidecar(onnx_path: str | os.PathLike) -> dict | None:
    """The ``model.onnx.json`` written by export, or None when absent/unreadable."""
    path = Path(str(onnx_path) + ".json")
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


__all__ = ["ExportOptions", "ExportResult", "export_checkpoint", "export_model", "read_sidecar", "to_export_form"]
