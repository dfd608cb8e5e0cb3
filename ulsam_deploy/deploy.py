"""Checkpoint to engine in one command (``ulsam-deploy deploy``), the way ``yolo export format=engine`` and
mmdeploy's ``tools/deploy.py`` do it: export, then fuse and/or convert, then build-trt, and bench if asked, into one
folder. Each step is the same step the separate commands run, with the same checks and gates; where TensorRT (or a
GPU) is missing the run stops at that boundary and says why, with every ONNX artifact written and verified.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from ulsam_deploy.declared import Flag, check_flags
from ulsam_deploy.errors import BackendUnavailable, UserError
from ulsam_deploy.events import SILENT, Events
from ulsam_deploy.op_spec import PLUGIN_ROUTES
from ulsam_deploy.passes import INT8_TARGETS

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class DeployOptions:
    precision: Annotated[str, Flag("--precision", choices=PRECISIONS)] = "fp16"
    # int8: the runtime the Q/DQ layout is made for
    target: Annotated[str, Flag("--target", choices=INT8_TARGETS)] = "tensorrt"
    fuse: bool = True  # the ULSAM blocks as the plugin's SubspaceAttention op
    calib_data: str | None = None  # int8 [default: Fashion-MNIST's training split for 1-channel 10-class models]
    verify_data: str | None = None  # [default: the real images convert verifies on]
    batch_profile: str | None = None  # build-trt's MIN:OPT:MAX [default: the export's batch range]
    # how the engine gets the fused op
    plugin: Annotated[str | None, Flag("--plugin", choices=PLUGIN_ROUTES)] = "auto"
    engine: bool = True  # build the engine (where TensorRT is)
    require_engine: bool = False  # no TensorRT here is an error (exit 4) rather than a stop at the boundary
    bench: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        check_flags(self)
        if self.precision != "int8" and self.calib_data is not None:
            raise UserError("--calib-data is for --precision int8.")
        if self.require_engine and not self.engine:
            raise UserError("--require-engine asks for the engine that --no-engine leaves out; drop one of them.")


@dataclass
class DeployStep:
    name: str
    status: str  # ok, skipped
    detail: str
    path: Path | None = None
    seconds: float = 0.0


@dataclass
class DeployResult:
    folder: Path
    steps: list[DeployStep] = field(default_factory=list)
    onnx: Path | None = None  # the artifact the engine is built from (or would be)
    engine: Path | None = None
    bench: object | None = None  # bench.results.BenchReport

    @property
    def stopped_at(self) -> DeployStep | None:
        return next((s for s in self.steps if s.status == "skipped"), None)


def run_deploy(checkpoint: str | os.PathLike, out: str | os.PathLike, options: DeployOptions,
               events: Events = SILENT, **overrides) -> DeployResult:
    """Export ``checkpoint`` into ``out`` and carry it to an engine; see the module docstring. ``overrides`` are
    export's model flags (arch, width, ...), for checkpoints that do not describe themselves."""
    from ulsam_deploy.steps.convert import artifact_tag

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is not a folder; give a folder for the artifacts.")
    fused = options.fuse
    tag = artifact_tag(options.precision, options.target, fused)
    final = out / (f"model.{tag}.onnx" if tag else "model.onnx")
    engine = final.with_suffix(".engine")
    from ulsam_deploy.artifacts import check_output
    from ulsam_deploy.sidecars import sidecar_path

    for path in {out / "model.onnx", final, engine}:  # every output, before any work
        check_output(path, force=options.force, what="deploy output")
        check_output(sidecar_path(path), force=options.force, what="sidecar")
    result = DeployResult(out)
    made = _onnx_steps(checkpoint, out, final, options, events, result, overrides)
    result.onnx = made.path
    if not options.engine:
        result.steps.append(DeployStep("build-trt", "skipped", "--no-engine"))
    else:
        plugin = options.plugin if made.sidecar.fused_blocks else None  # the plugin runs fused nodes only
        result.engine = _engine_step(result.onnx, engine, plugin, options, events, result)
    if options.bench:
        result.bench = _bench_step(checkpoint, result, options, out)
    return result


def _onnx_steps(checkpoint, out: Path, final: Path, options: DeployOptions, events: Events, result: DeployResult,
                overrides: dict):
    """Export, then fuse or convert; the last step's StepResult (the engine is built from its file)."""
    from ulsam_deploy.steps.export import ExportOptions, export_checkpoint

    t0 = time.perf_counter()
    exported = export_checkpoint(checkpoint, out / "model.onnx", ExportOptions(force=options.force), events,
                                 **overrides)
    result.steps.append(DeployStep("export", "ok", f"{exported.sidecar.graph['nodes']} nodes, ONNX Runtime == "
                                   f"PyTorch (max abs {exported.verdict.max_abs:.2g})", exported.path,
                                   time.perf_counter() - t0))
    if options.precision == "fp32" and not options.fuse:
        return exported
    t0 = time.perf_counter()
    if options.precision == "fp32":
        from ulsam_deploy.steps.fuse import fuse_file

        fused = fuse_file(exported.path, final, force=options.force, events=events)
        result.steps.append(DeployStep("fuse", "ok", f"{fused.report['fused']} ULSAM block(s) -> SubspaceAttention "
                                       f"(max abs {fused.verdict.max_abs:.2g})", fused.path, time.perf_counter() - t0))
        return fused
    from ulsam_deploy.steps.convert import ConvertOptions, convert_file

    converted = convert_file(exported.path, final, ConvertOptions(precision=options.precision, target=options.target,
                                                                  fuse=options.fuse, force=options.force),
                             calib_data=options.calib_data, verify_data=options.verify_data, events=events)
    main = converted.verdict.main
    detail = f"top-1 agreement {main.comparison.top1_agreement:.2%}" if main.classifier else \
        f"cosine {main.comparison.cosine:.5f}"
    result.steps.append(DeployStep(f"convert ({options.precision}{', fused' if options.fuse else ''})", "ok",
                                   f"verified on {main.comparison.samples} real images: {detail}", converted.path,
                                   time.perf_counter() - t0))
    return converted


def _engine_step(onnx_path: Path, engine: Path, plugin: str | None, options: DeployOptions, events: Events,
                 result: DeployResult) -> Path | None:
    from ulsam_deploy.backends.trt.settings import BuildOptions
    from ulsam_deploy.steps.build_trt import build_engine

    t0 = time.perf_counter()
    try:
        built = build_engine(onnx_path, engine, BuildOptions(batch=options.batch_profile, plugin=plugin,
                                                             force=options.force), events=events)
    except BackendUnavailable as exc:
        if options.require_engine:
            raise
        result.steps.append(DeployStep("build-trt", "skipped", f"stopped at the TensorRT boundary: {exc}",
                                       seconds=time.perf_counter() - t0))
        return None
    result.steps.append(DeployStep("build-trt", "ok", f"engine built in {built.seconds['build']:.0f} s", built.path,
                                   time.perf_counter() - t0))
    return built.path


def _bench_step(checkpoint, result: DeployResult, options: DeployOptions, out: Path):
    from ulsam_deploy.bench.report import write_reports
    from ulsam_deploy.bench.options import BenchOptions
    from ulsam_deploy.bench.models import resolve_model
    from ulsam_deploy.bench.run import run_bench

    t0 = time.perf_counter()
    onnx = [p for p in dict.fromkeys([out / "model.onnx", result.onnx]) if p is not None]
    spec = resolve_model(checkpoint, onnx=onnx, engines=[result.engine] if result.engine else [])
    report = run_bench([spec], BenchOptions(inputs=options.verify_data))
    write_reports(report, json_path=out / "bench.json", markdown_path=out / "bench.md", force=options.force,
                  csv_path=None, chart_path=None)
    failures = report.parity_failures
    result.steps.append(DeployStep("bench", "ok", f"{len(report.parity)} parity rows "
                                   f"({'all passed' if not failures else f'{len(failures)} FAILED'}), "
                                   f"{len(report.latency)} latency rows", out / "bench.md", time.perf_counter() - t0))
    report.raise_for_parity()
    return report


__all__ = ["DeployOptions", "DeployResult", "DeployStep", "run_deploy"]
