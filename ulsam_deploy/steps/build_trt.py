"""``build-trt``: ONNX -> raw TensorRT engine (trtexec-readable) + ``<engine>.json`` sidecar, through the one
step driver (output checks, lock, atomic write of both files). TensorRT's part is
:func:`ulsam_deploy.backends.trt.builder.build_serialized`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ulsam_deploy.artifacts import json_text, load_onnx
from ulsam_deploy.events import SILENT, Events
from ulsam_deploy.steps._step import Step


@dataclass
class BuildResult:
    engine_path: Path
    sidecar_path: Path
    sidecar: dict
    seconds: float
    warnings: list[str] = field(default_factory=list)


def default_output(model: Path) -> Path:
    return model.with_suffix(".engine")


def build_engine(onnx_path: str | os.PathLike, output: str | os.PathLike | None = None, options=None, *,
                 events: Events = SILENT, progress=None) -> BuildResult:
    """Build ``output`` (raw engine) and ``output.json`` from ``onnx_path``; nothing is written on failure."""
    from ulsam_deploy.backends.trt.builder import build_serialized, engine_sidecar
    from ulsam_deploy.backends.trt.settings import BuildOptions

    options = options or BuildOptions()
    onnx_path = Path(onnx_path)
    output = Path(output) if output is not None else default_output(onnx_path)
    with Step("build-trt", output, force=options.force, inputs=[onnx_path], events=events,
              options=options.to_dict()) as step:
        model = load_onnx(onnx_path)
        build = build_serialized(model, onnx_path, options, events=events, progress=progress)
        sidecar = engine_sidecar(output, onnx_path, build, options)
        step.write(build.engine_bytes, json_text(sidecar))
    return BuildResult(output, step.sidecar_file, sidecar, build.seconds, build.warnings)


__all__ = ["BuildResult", "build_engine", "default_output"]
