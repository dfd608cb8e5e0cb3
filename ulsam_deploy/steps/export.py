"""``export``: checkpoint -> ONNX (export form of ULSAM), simplified, checked, and proven equal to PyTorch."""

from __future__ import annotations

import copy
import io
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ulsam_deploy.artifacts import ModelInfo, OnnxSidecar, PreprocessSpec, TensorSpec, DynamicRange, sha256_file
from ulsam_deploy.errors import UserError
from ulsam_deploy.events import SILENT, Events
from ulsam_deploy.limits import fit_count
from ulsam_deploy.steps._step import Step, StepResult

OPSETS = (13, 21)  # the exporter's range; TensorRT 10's ONNX parser reads up to 20
TRT10_MAX_OPSET = 20
MAX_DYNAMIC_BATCH = 4096
ACTIVATION_FACTOR = 64  # bytes of activations per input byte a MobileNet needs, roughly (parity runs both)


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
        if not OPSETS[0] <= int(self.opset) <= OPSETS[1]:
            raise UserError(f"Opset {self.opset} is not supported; choose an opset from {OPSETS[0]} to {OPSETS[1]} "
                            f"(17 is the default; TensorRT 10 reads up to {TRT10_MAX_OPSET}).")
        if self.batch is not None and int(self.batch) < 1:
            raise UserError(f"--static-batch must be a positive integer, not {self.batch}.")
        if self.exporter not in ("torchscript", "dynamo"):
            raise UserError(f"Unknown exporter '{self.exporter}'; choose 'torchscript' or 'dynamo'.")
        if not (np.isfinite(self.atol) and self.atol > 0):
            raise UserError(f"--atol must be a positive number, not {self.atol}.")


def to_export_form(model):
    """A copy of ``model`` (eval) whose ULSAM blocks are :class:`ULSAMExport` (BN folded, one branch)."""
    from ulsam_deploy.models import ULSAM, ULSAMExport

    deploy = copy.deepcopy(model).eval()
    for index, layer in enumerate(deploy.features):
        if isinstance(layer, ULSAM):
            deploy.features[index] = ULSAMExport.from_ulsam(layer)
    for key in list(deploy.ulsam_after.keys()):
        deploy.ulsam_after[key] = ULSAMExport.from_ulsam(deploy.ulsam_after[key])
    return deploy


def torch_to_onnx(model, input_size: int, in_channels: int, options: ExportOptions):
    """Trace to ONNX with ``input`` (N,C,H,W float32) and ``logits``; batch axis dynamic unless fixed."""
    import onnx
    import torch

    from ulsam_deploy import __version__

    example = torch.zeros(options.batch or 1, in_channels, input_size, input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if options.exporter == "dynamo":
            dynamic = None if options.batch else {"x": {0: torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)}}
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
    proto.producer_version = __version__
    return proto


def onnx_from_model(model, options: ExportOptions, stage=None):
    """The export pipeline in memory: export form, exporter, onnxsim, optional fusion.

    Returns ``(proto, fusion_report or None)``; the proto is not yet checked (see ``finalize_onnx``).
    """
    import contextlib

    stage = stage or (lambda _t: contextlib.nullcontext())
    config = model.config
    with stage("Folding ULSAM into its export form"):
        deploy = to_export_form(model)
    with stage(f"Exporting ONNX (opset {options.opset}, {options.exporter})"):
        proto = torch_to_onnx(deploy, config.input_size, config.in_channels, options)
    if options.simplify:
        from ulsam_deploy.passes.simplify import simplify_model

        with stage("Simplifying with onnxsim"):
            proto = simplify_model(proto)
    fusion = None
    if options.fuse:
        from ulsam_deploy.passes.fuse import fuse_model

        with stage("Fusing ULSAM blocks into SubspaceAttention"):
            proto, fusion = fuse_model(proto)
    return proto, fusion


def parity_inputs(batch: int, in_channels: int, size: int, seed: int) -> np.ndarray:
    """Seeded inputs shaped like normalized images (roughly N(0,1))."""
    return np.random.default_rng(seed + batch).standard_normal((batch, in_channels, size, size)).astype(np.float32)


def preprocess_spec(info) -> PreprocessSpec:
    """The checkpoint's preprocessing (stored recipe, else its size, channels and mean/std)."""
    from ulsam_deploy.data.images import Preprocess
    from ulsam_deploy.data.sources import resolve_preprocess

    config = info.config
    stored = (info.meta or {}).get("preprocess")
    base = None
    if isinstance(stored, dict):
        try:
            base = Preprocess.from_dict(stored)
        except (KeyError, TypeError, ValueError, UserError):
            base = None
    pre = resolve_preprocess(config.input_size, config.in_channels, base=base,
                             mean=None if base else info.mean, std=None if base else info.std)
    return PreprocessSpec(size=pre.size, in_channels=pre.in_channels, crop_pct=pre.crop_pct, mean=list(pre.mean),
                          std=list(pre.std))


def export_model(model, info, output: str | os.PathLike, options: ExportOptions, events: Events = SILENT,
                 source: str | os.PathLike | None = None) -> StepResult:
    """Export an eval-mode model; write ``output`` and ``output.json`` only when every check passed."""
    from ulsam_deploy.backends.judge import Tolerances, judge
    from ulsam_deploy.backends.onnxrt.runner import OrtRunner
    from ulsam_deploy.backends.torch.runner import TorchRunner

    config = info.config
    if options.opset > TRT10_MAX_OPSET:
        events.warn(f"Opset {options.opset}: TensorRT 10's ONNX parser reads opsets up to {TRT10_MAX_OPSET}; export "
                    f"with --opset {TRT10_MAX_OPSET} or lower to build engines on JetPack 6.")
    per_image = config.in_channels * config.input_size ** 2 * 4 * ACTIVATION_FACTOR
    batches = (options.batch,) if options.batch else options.parity_batches
    fit_count(max(batches), per_image, "images per parity batch", "--batch")
    inputs = [source] if source is not None and Path(source).exists() else []
    with Step("export", output, force=options.force, inputs=inputs, events=events,
              options={k: v for k, v in asdict(options).items() if k != "force"}) as step:
        with step.stage("Exporting", "export"):
            proto, fusion = onnx_from_model(model, options, events.stage)
        proto = step.finalize(proto)
        with step.stage(f"Proving ONNX Runtime == PyTorch (batch {', '.join(map(str, batches))})", "parity"):
            refs, cands, names = [], [], []
            with TorchRunner(model) as reference, OrtRunner(proto.SerializeToString(), custom_ops=options.fuse) as cand:
                for batch in batches:
                    x = parity_inputs(batch, config.in_channels, config.input_size, options.seed)
                    refs.append(reference.infer(x))
                    cands.append(cand.infer(x))
                    names.append(f"batch {batch}")
            verdict = judge(refs, cands, Tolerances(atol=options.atol), names=names, classifier=False)
        step.require(verdict, f"ONNX Runtime differs from PyTorch (max abs {verdict.max_abs:.3g}, --atol "
                     f"{options.atol:g})", "re-export with --no-simplify or --exporter dynamo, or report this model")
        batch_dim: int | str = options.batch or "batch"
        checkpoint = Path(source).resolve() if source is not None and Path(source).is_file() else None
        sidecar = OnnxSidecar(
            onnx=Path(output).name, sha256="0" * 64,
            model=ModelInfo(config=config.to_dict(), description=config.describe(),
                            class_names=list(info.class_names) if info.class_names else None,
                            checkpoint=str(checkpoint) if checkpoint else (str(source) if source else None),
                            checkpoint_sha256=sha256_file(checkpoint) if checkpoint else None,
                            meta=_plain(info.meta)),
            preprocess=preprocess_spec(info),
            inputs=[TensorSpec(name="input", shape=[batch_dim, config.in_channels, config.input_size,
                                                    config.input_size])],
            outputs=[TensorSpec(name="logits", shape=[batch_dim, config.num_classes])],
            dynamic=None if options.batch else DynamicRange(batch=(1, 1, MAX_DYNAMIC_BATCH)),
            fused_blocks=int((fusion or {}).get("fused", 0)))
        report = {"exporter": options.exporter, "simplified": options.simplify, "fusion": fusion}
        record = step.record(source=checkpoint, report=report, verdict=verdict, versions=("torch", "onnx",
                                                                                       "onnxruntime", "onnxsim"))
        return step.write_onnx(proto, sidecar, record, verdict=verdict, report=report)


def _plain(data):
    import json

    from ulsam_deploy.artifacts import json_default

    return json.loads(json.dumps(data or {}, default=json_default))


def default_output(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(".onnx")


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike | None = None,
                      options: ExportOptions | None = None, events: Events = SILENT, **overrides) -> StepResult:
    """Load any accepted checkpoint and export it (see :func:`export_model`)."""
    from ulsam_deploy.models.checkpoint import load_checkpoint_with_info

    options = options or ExportOptions()
    checkpoint = Path(checkpoint)
    output = Path(output) if output is not None else default_output(checkpoint)
    with events.stage(f"Loading {checkpoint}"):
        model, info = load_checkpoint_with_info(checkpoint, **overrides)
    stored = info.meta.get("preprocess", {}).get("size") if isinstance(info.meta.get("preprocess"), dict) else None
    if stored and int(stored) != info.config.input_size:
        events.warn(f"The checkpoint was trained at {stored}x{stored}; exporting at {info.config.input_size}x"
                    f"{info.config.input_size} as asked (the preprocessing follows the new size).")
        info.meta = {**info.meta, "preprocess": {**info.meta["preprocess"], "size": info.config.input_size}}
    return export_model(model, info, output, options, events, source=checkpoint)


__all__ = ["ExportOptions", "default_output", "export_checkpoint", "export_model", "onnx_from_model", "parity_inputs",
           "to_export_form", "torch_to_onnx"]
