"""``fuse``: ONNX -> ONNX with every ULSAM block replaced by one SubspaceAttention node, proven equal on ORT.

The pass is :func:`ulsam_deploy.passes.fuse.fuse_model`. The proof runs fused and unfused graphs on ONNX
Runtime (CPU) on seeded inputs, and judges both the graph outputs and every fused block's output (untrained
logits can be ~1e-14 and hide errors), with one absolute tolerance.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ulsam_deploy.sidecars import OnnxSidecar, TensorSpec
from ulsam_deploy.errors import UserError
from ulsam_deploy.events import SILENT, Events
from ulsam_deploy.steps._step import Step, StepResult, load_with_sidecar

DEFAULT_PROBE_SIZE = 64


def default_output(model: Path) -> Path:
    """``model.onnx`` -> ``model.fused.onnx``."""
    return model.with_name(f"{model.stem}.fused{model.suffix or '.onnx'}")


def parity_shapes(model, sidecar: OnnxSidecar | None) -> list[tuple[int, ...]]:
    """Input shapes the proof runs: batch 1 and 2 (for a dynamic batch) at the opt size; for a dynamic H/W also
    batch 1 at the sidecar's min, max and a non-square (min H, max W) size."""
    from ulsam_deploy.onnx_graph import dims_of, graph_inputs

    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise UserError(f"The model has {len(inputs)} inputs; ulsam-deploy handles image models with exactly one.")
    dims = dims_of(inputs[0])
    if len(dims) != 4:
        raise UserError(f"Input '{inputs[0].name}' has shape {dims}; ulsam-deploy handles [N, C, H, W] image models.")
    if not isinstance(dims[1], int):
        raise UserError(f"Input '{inputs[0].name}' has a dynamic channel axis; export with a fixed channel count.")
    batches = (1, 2) if isinstance(dims[0], str) else (dims[0],)
    ranges = []
    for axis, what in ((2, "height"), (3, "width")):
        if isinstance(dims[axis], int):
            ranges.append((dims[axis],) * 3)
            continue
        rng = getattr(sidecar.dynamic, what, None) if sidecar is not None and sidecar.dynamic is not None else None
        if rng is None:
            raise UserError(f"Input '{inputs[0].name}' has a dynamic {what} ('{dims[axis]}') and no sidecar gives its "
                            "range; export with ulsam-deploy (it records the range) or with a fixed input size.")
        ranges.append(tuple(rng))
    (h_lo, h_opt, h_hi), (w_lo, w_opt, w_hi) = ranges
    sizes = list(dict.fromkeys([(h_opt, w_opt), (h_lo, w_lo), (h_hi, w_hi), (h_lo, w_hi)]))
    shapes = [(b, dims[1], h_opt, w_opt) for b in batches]
    shapes += [(batches[0], dims[1], h, w) for h, w in sizes[1:]]
    from ulsam_deploy.limits import ACTIVATION_FACTOR, require_memory

    n, c, h, w = max(shapes, key=lambda s: s[0] * s[2] * s[3])  # bounded before any tensor is made
    require_memory(n * c * h * w * 4 * ACTIVATION_FACTOR * 2, f"Proving parity at {h}x{w} (the largest size the "
                   "model allows)", "re-export it with a smaller --input-size MIN:OPT:MAX range")
    return shapes


def prove_on_ort(original, candidate, shapes, tolerances, seed: int = 0, probes: tuple[str, ...] = (), labels=None):
    """The judge's verdict on ``candidate`` vs ``original`` run on ONNX Runtime CPU on seeded inputs of ``shapes``,
    over the graph outputs and the ``probes`` tensors (present in both graphs)."""
    from ulsam_deploy.backends.judge import judge
    from ulsam_deploy.backends.onnxrt.custom_ops import take_errors
    from ulsam_deploy.backends.onnxrt.runner import OrtRunner
    from ulsam_deploy.errors import ParityError

    take_errors()
    refs, cands, names = [], [], []
    with OrtRunner(original.SerializeToString(), extra_outputs=probes) as ref, \
            OrtRunner(candidate.SerializeToString(), extra_outputs=probes) as cand:
        for shape in shapes:
            x = np.random.default_rng(seed + shape[0]).standard_normal(shape).astype(np.float32)
            a, b = ref.infer_all(x), cand.infer_all(x)
            tag = "x".join(map(str, shape))
            refs += a
            cands += b
            names += [f"{tag}/{n}" for n in ref.output_names]
    errors = take_errors()
    if errors:
        raise ParityError(f"The fused op failed on ONNX Runtime ({errors[0]}); nothing was written.")
    return judge(refs, cands, tolerances, names=names, classifier=False, labels=labels)


def fuse_file(model_path: str | os.PathLike, output: str | os.PathLike | None = None, *, atol: float = 1e-5,
              rtol: float = 1e-5,
              force: bool = False, seed: int = 0, events: Events = SILENT) -> StepResult:
    """Fuse ``model_path`` into ``output`` (default ``<stem>.fused.onnx``); see the module docstring."""
    from ulsam_deploy.backends.judge import Tolerances
    from ulsam_deploy.onnx_graph import io_specs
    from ulsam_deploy.passes.fuse import fuse_model

    model_path = Path(model_path)
    output = Path(output) if output is not None else default_output(model_path)
    if not (np.isfinite(atol) and atol > 0):
        raise UserError(f"--atol must be a positive number, not {atol}.")
    with Step("fuse", output, force=force, inputs=[model_path], events=events,
              options={"atol": atol, "rtol": rtol, "seed": seed}) as step:
        with step.stage(f"Loading {model_path}"):
            original, sidecar = load_with_sidecar(model_path, required=False)
            shapes = parity_shapes(original, sidecar)
        with step.stage("Fusing ULSAM blocks into SubspaceAttention", "fuse"):
            fused, report = fuse_model(original)
        fused = step.finalize(fused)
        where = ", ".join("x".join(map(str, s)) for s in shapes)
        with step.stage(f"Proving fused == unfused on ONNX Runtime ({where})", "parity"):
            verdict = prove_on_ort(original, fused, shapes, Tolerances(atol=atol, rtol=rtol), seed,
                                   probes=tuple(b["output"] for b in report["blocks"]))
        step.require(verdict, f"The fused graph differs from the unfused one on ONNX Runtime (max abs "
                     f"{verdict.max_abs:.3g}, --atol {atol:g} or --rtol {rtol:g} per element)", "this is a fusion bug; please report it with the model",
                     reference="the unfused model on ONNX Runtime")
        if sidecar is None:
            inputs, outputs = io_specs(original)
            sidecar = OnnxSidecar(onnx=model_path.name, sha256="0" * 64, inputs=[TensorSpec(**i) for i in inputs],
                                  outputs=[TensorSpec(**o) for o in outputs])
        sidecar = sidecar.model_copy(deep=True)
        sidecar.fused_blocks = sidecar.fused_blocks + int(report["fused"])
        record = step.record(source=model_path, report=report, verdict=verdict)
        return step.write_onnx(fused, sidecar, record, verdict=verdict, report=report)


__all__ = ["default_output", "fuse_file", "parity_shapes", "prove_on_ort"]
