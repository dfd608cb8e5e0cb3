"""``export``: checkpoint -> ONNX (export form of ULSAM), simplified, checked, and proven equal to PyTorch."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np

from ulsam_deploy.artifacts import sha256_file
from ulsam_deploy.declared import Flag, check_flags
from ulsam_deploy.sidecars import DynamicRange, ModelInfo, OnnxSidecar, PreprocessSpec, TensorSpec
from ulsam_deploy.errors import UserError
from ulsam_deploy.events import SILENT, Events
from ulsam_deploy.limits import ACTIVATION_FACTOR, fit_count
from ulsam_deploy.steps._step import Step, StepResult

OPSETS = (13, 21)  # the exporter's range; TensorRT 10's ONNX parser reads up to 20
TRT10_MAX_OPSET = 20
MAX_DYNAMIC_BATCH = 4096
# the batch range a dynamic-batch export records: what TensorRT's profile is built for unless --batch-profile says
DEFAULT_BATCH_RANGE = (1, 1, 8)
MAX_INPUT_SIZE = 4096


@dataclass
class ExportOptions:
    opset: int = 17
    batch: Annotated[int | None, Flag("--static-batch", ge=1)] = None  # None: dynamic batch axis
    simplify: bool = True
    atol: Annotated[float, Flag("--atol", gt=0)] = 1e-4
    exporter: Annotated[str, Flag("--exporter", choices=("torchscript", "dynamo"))] = "torchscript"
    force: bool = False
    fuse: bool = False
    seed: int = 0
    parity_batches: tuple[int, ...] = (1, 3)
    input_range: tuple[int, int, int] | None = None  # symbolic H and W, each in (min, opt, max) pixels
    features: str | None = None  # backbone outputs: paper layers "7,14,19" or strides "s8,s16,s32" (no classifier)

    def __post_init__(self) -> None:
        if not OPSETS[0] <= int(self.opset) <= OPSETS[1]:
            raise UserError(f"Opset {self.opset} is not supported; choose an opset from {OPSETS[0]} to {OPSETS[1]} "
                            f"(17 is the default; TensorRT 10 reads up to {TRT10_MAX_OPSET}).")
        check_flags(self)
        if self.input_range is not None:
            self.input_range = check_range(self.input_range)


def check_range(values) -> tuple[int, int, int]:
    """``(min, opt, max)`` as ints with ``1 <= min <= opt <= max <= MAX_INPUT_SIZE``, else one sentence."""
    lo, opt, hi = (int(v) for v in values)
    text = f"{lo}:{opt}:{hi}"
    if lo > hi:
        raise UserError(f"--input-size {text}: the minimum {lo} is larger than the maximum {hi}; give MIN:OPT:MAX in "
                        "increasing order, e.g. 256:320:640.")
    if not lo <= opt <= hi:
        raise UserError(f"--input-size {text}: the opt size {opt} is outside {lo}..{hi}; give MIN <= OPT <= MAX.")
    if lo < 8 or hi > MAX_INPUT_SIZE:
        raise UserError(f"--input-size {text}: sizes must be from 8 to {MAX_INPUT_SIZE} pixels.")
    return lo, opt, hi


def parse_input_size(text: str | int | None) -> tuple[int | None, tuple[int, int, int] | None]:
    """``"224"`` -> ``(224, None)``; ``"256:320:640"`` -> ``(320, (256, 320, 640))`` (symbolic H and W in that range,
    traced and proven at 320); ``None`` -> ``(None, None)``."""
    if text is None or str(text).strip() == "":
        return None, None
    parts = [p.strip() for p in str(text).split(":")]
    if len(parts) not in (1, 3) or not all(p.isdigit() for p in parts):
        raise UserError(f"--input-size takes one size (e.g. 224) or MIN:OPT:MAX for a dynamic height and width "
                        f"(e.g. 256:320:640), not '{text}'.")
    if len(parts) == 1:
        return int(parts[0]), None
    lo, opt, hi = check_range(int(p) for p in parts)
    return opt, (lo, opt, hi)


def nearest_legal(size: int, multiple: int) -> str:
    """The multiples of ``multiple`` around ``size``, in words ("288 or 320")."""
    below = size // multiple * multiple
    return f"{below} or {below + multiple}" if below >= multiple else str(multiple)


def check_sizes(config, taps, input_range) -> int:
    """The stride input sizes must be multiples of (see :func:`~ulsam_deploy.models.config.network_stride`), after
    refusing, in one sentence, a size that is not: a dynamic range, or the size of a backbone (its feature maps would
    not tile the image). A fixed-size classifier keeps any size: its global pool absorbs the rounding."""
    from ulsam_deploy.models.config import network_stride

    stride = network_stride(config, taps)
    deepest = max(t.layer for t in taps) if taps else None
    where = f"the stride of layer {deepest}, the deepest exported map" if deepest else "MobileNet's output stride"
    sizes = list(input_range) if input_range else ([config.input_size] if taps else [])
    for size in sizes:
        if size % stride:
            raise UserError(f"Input size {size} is not a multiple of {stride} ({where}), so the network would round "
                            f"its feature maps and they would not tile the image; use {nearest_legal(size, stride)}.")
    return stride


def parity_sizes(input_range, stride: int, size: int) -> list[tuple[int, int]]:
    """(H, W) pairs an export is proven at: the opt size first, then min, max and one non-square legal size inside
    the range (e.g. 288x608 for 256:320:640), so a reshape that hard-codes one axis cannot pass."""
    if input_range is None:
        return [(size, size)]
    lo, opt, hi = input_range
    odd = (min(lo + stride, hi), max(hi - stride, lo))
    if odd[0] == odd[1]:
        odd = (lo, hi)
    return list(dict.fromkeys([(opt, opt), (lo, lo), (hi, hi), odd]))


def torch_to_onnx(model, input_size: int, in_channels: int, options: ExportOptions,
                  output_names: tuple[str, ...] = ("logits",)):
    """Trace to ONNX with ``input`` (N,C,H,W float32) and ``output_names``; the batch axis is dynamic unless fixed,
    H and W are symbolic (``height``, ``width``) with ``options.input_range``."""
    import onnx
    import torch

    from ulsam_deploy import __version__

    example = torch.zeros(options.batch or 1, in_channels, input_size, input_size)
    spatial = options.input_range is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if options.exporter == "dynamo":
            dims = {} if options.batch else {0: torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)}
            if spatial:
                lo, _, hi = options.input_range
                dims.update({2: torch.export.Dim("height", min=lo, max=hi),
                             3: torch.export.Dim("width", min=lo, max=hi)})
            program = torch.onnx.export(model, (example,), None, dynamo=True, input_names=["input"],
                                        output_names=list(output_names), opset_version=options.opset,
                                        dynamic_shapes={"x": dims} if dims else None, verbose=False)
            proto = program.model_proto
        else:
            buffer = io.BytesIO()
            axes: dict = {}
            batch_axis = {} if options.batch else {0: "batch"}
            axes["input"] = {**batch_axis, **({2: "height", 3: "width"} if spatial else {})}
            for name in output_names:
                axes[name] = {**batch_axis, **({2: f"{name}_height", 3: f"{name}_width"}
                                               if spatial and name != "logits" else {})}
            torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=["input"],
                              output_names=list(output_names), opset_version=options.opset,
                              dynamic_axes={k: v for k, v in axes.items() if v} or None, do_constant_folding=True)
            proto = onnx.load_from_string(buffer.getvalue())
    proto.producer_name = "ulsam-deploy"
    proto.producer_version = __version__
    return proto


def onnx_from_model(model, options: ExportOptions, stage=None):
    """The export pipeline in memory: export form, exporter, onnxsim, optional fusion.

    Returns ``(proto, fusion_report or None)``; the proto is not yet checked (see ``finalize_onnx``).
    """
    import contextlib

    from ulsam_deploy.models.config import feature_taps
    from ulsam_deploy.models.ulsam import to_export_form

    stage = stage or (lambda _t: contextlib.nullcontext())
    config = model.config
    taps = feature_taps(config, options.features) if options.features else None
    with stage("Folding ULSAM into its export form"):
        deploy = to_export_form(model)
        if taps:
            from ulsam_deploy.models.mobilenet import Backbone

            deploy = Backbone(deploy, [t.layer for t in taps])
    names = tuple(t.name for t in taps) if taps else ("logits",)
    with stage(f"Exporting ONNX (opset {options.opset}, {options.exporter})"):
        proto = torch_to_onnx(deploy, config.input_size, config.in_channels, options, names)
    if options.simplify:
        from ulsam_deploy.passes.simplify import simplify_model

        with stage("Simplifying with onnxsim"):
            proto = simplify_model(proto)
    if options.input_range is not None:
        from ulsam_deploy.passes.simplify import tighten_output_shapes

        tighten_output_shapes(proto)
    fusion = None
    if options.fuse:
        from ulsam_deploy.passes.fuse import fuse_model

        with stage("Fusing ULSAM blocks into SubspaceAttention"):
            proto, fusion = fuse_model(proto)
    return proto, fusion


def parity_inputs(batch: int, in_channels: int, size: int | tuple[int, int], seed: int) -> np.ndarray:
    """Seeded inputs shaped like normalized images (roughly N(0,1)); ``size`` is square or (H, W)."""
    h, w = (size, size) if isinstance(size, int) else size
    return np.random.default_rng(seed + batch).standard_normal((batch, in_channels, h, w)).astype(np.float32)


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
    """Export an eval-mode model; write ``output`` and ``output.json`` only when every check passed.

    With ``options.features`` the graph is a backbone (the feature maps, no classifier); with
    ``options.input_range`` its H and W are symbolic. Parity with PyTorch is judged on every output, at every
    batch of ``options.parity_batches`` at the opt size and at the sizes of :func:`parity_sizes`.
    """
    from ulsam_deploy.backends.judge import Tolerances, judge
    from ulsam_deploy.backends.onnxrt.runner import OrtRunner
    from ulsam_deploy.backends.torch.runner import TorchRunner
    from ulsam_deploy.models.config import feature_taps
    from ulsam_deploy.onnx_graph import io_specs

    config = info.config
    taps = feature_taps(config, options.features) if options.features else None
    if options.input_range is not None and options.input_range[1] != config.input_size:
        raise UserError(f"The opt size {options.input_range[1]} of --input-size is not the model's input size "
                        f"{config.input_size}; export with --input-size {options.input_range[0]}:{config.input_size}:"
                        f"{options.input_range[2]} or set the model's size to the opt size.")
    stride = check_sizes(config, taps, options.input_range)
    if options.opset > TRT10_MAX_OPSET:
        events.warn(f"Opset {options.opset}: TensorRT 10's ONNX parser reads opsets up to {TRT10_MAX_OPSET}; export "
                    f"with --opset {TRT10_MAX_OPSET} or lower to build engines on JetPack 6.")
    sizes = parity_sizes(options.input_range, stride, config.input_size)
    biggest = max(h * w for h, w in sizes)
    per_image = config.in_channels * biggest * 4 * ACTIVATION_FACTOR
    batches = (options.batch,) if options.batch else options.parity_batches
    fit_count(max(batches), per_image, "images per parity batch", "--static-batch")
    runs = [(b, sizes[0]) for b in batches] + [(batches[0], hw) for hw in sizes[1:]]
    inputs = [source] if source is not None and Path(source).exists() else []
    with Step("export", output, force=options.force, inputs=inputs, events=events,
              options={k: v for k, v in asdict(options).items() if k != "force"}) as step:
        with step.stage("Exporting", "export"):
            proto, fusion = onnx_from_model(model, options, events.stage)
        proto = step.finalize(proto)
        where = ", ".join(f"batch {b} at {h}x{w}" for b, (h, w) in runs) if options.input_range else \
            f"batch {', '.join(map(str, batches))}"
        with step.stage(f"Proving ONNX Runtime == PyTorch ({where})", "parity"):
            reference_model = model
            if taps:
                from ulsam_deploy.models.mobilenet import Backbone

                reference_model = Backbone(model, [t.layer for t in taps])
            refs, cands, names = [], [], []
            with TorchRunner(reference_model) as reference, \
                    OrtRunner(proto.SerializeToString(), custom_ops=options.fuse) as cand:
                for batch, hw in runs:
                    x = parity_inputs(batch, config.in_channels, hw, options.seed)
                    tag = f"batch {batch}" + (f", {hw[0]}x{hw[1]}" if options.input_range else "")
                    outs_ref, outs_cand = reference.infer_all(x), cand.infer_all(x)
                    refs += outs_ref
                    cands += outs_cand
                    names += [tag] if not taps else [f"{tag}/{n}" for n in cand.output_names]
            verdict = judge(refs, cands, Tolerances(atol=options.atol), names=names, classifier=False)
        step.require(verdict, f"ONNX Runtime differs from PyTorch (max abs {verdict.max_abs:.3g}, --atol "
                     f"{options.atol:g})", "re-export with --no-simplify or --exporter dynamo, or report this model",
                     reference="the checkpoint in PyTorch")
        checkpoint = Path(source).resolve() if source is not None and Path(source).is_file() else None
        graph_inputs, graph_outputs = io_specs(proto)
        by_name = {t.name: t for t in taps or []}
        outputs = [TensorSpec(**spec, **({"layer": by_name[spec["name"]].layer, "stride": by_name[spec["name"]].stride,
                                          "channels": by_name[spec["name"]].channels}
                                         if spec["name"] in by_name else {})) for spec in graph_outputs]
        dynamic = None
        if not options.batch or options.input_range:
            batch_range = DEFAULT_BATCH_RANGE if not options.batch else (options.batch,) * 3
            dynamic = DynamicRange(batch=batch_range, height=options.input_range, width=options.input_range,
                                   multiple_of=stride if (options.input_range or taps) else None)
        sidecar = OnnxSidecar(
            onnx=Path(output).name, sha256="0" * 64,
            model=ModelInfo(config=config.to_dict(), description=config.describe(),
                            class_names=list(info.class_names) if info.class_names and not taps else None,
                            checkpoint=str(checkpoint) if checkpoint else (str(source) if source else None),
                            checkpoint_sha256=sha256_file(checkpoint) if checkpoint else None,
                            meta=_plain(info.meta)),
            preprocess=preprocess_spec(info),
            inputs=[TensorSpec(**spec) for spec in graph_inputs], outputs=outputs, dynamic=dynamic,
            fused_blocks=int((fusion or {}).get("fused", 0)))
        report = {"exporter": options.exporter, "simplified": options.simplify, "fusion": fusion,
                  "features": [t.to_dict() for t in taps] if taps else None,
                  "parity_shapes": [[b, config.in_channels, h, w] for b, (h, w) in runs]}
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
    if options.input_range is not None:
        overrides = {**overrides, "input_size": options.input_range[1]}
    checkpoint = Path(checkpoint)
    output = Path(output) if output is not None else default_output(checkpoint)
    with events.stage(f"Loading {checkpoint}"):
        model, info = load_checkpoint_with_info(checkpoint, **overrides)
    stored = info.meta.get("preprocess", {}).get("size") if isinstance(info.meta.get("preprocess"), dict) else None
    if isinstance(stored, int) and not isinstance(stored, bool) and stored != info.config.input_size:
        # on purpose (a detector's backbone, a larger crop): allowed, said, and recorded in the sidecar's meta
        events.warn(f"The checkpoint was trained at {stored}x{stored}; exporting at {info.config.input_size}x"
                    f"{info.config.input_size} as asked (the preprocessing follows the new size; accuracy at this size "
                    "is not the trained one).")
        info.meta = {**info.meta, "trained_input_size": stored,
                     "preprocess": {**info.meta["preprocess"], "size": info.config.input_size}}
    return export_model(model, info, output, options, events, source=checkpoint)


__all__ = ["DEFAULT_BATCH_RANGE", "ExportOptions", "check_range", "check_sizes", "default_output", "export_checkpoint",
           "export_model", "nearest_legal", "onnx_from_model", "parity_inputs", "parity_sizes", "parse_input_size",
           "torch_to_onnx"]
