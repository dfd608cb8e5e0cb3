"""``build-trt``: ONNX -> raw TensorRT engine (trtexec-readable) + ``<engine>.json`` sidecar, a step like the others.

Order: the ONNX and its sidecar (which must describe it) -> option and model mistakes, said before TensorRT is
touched -> TensorRT's version limits -> for ``--plugin``, the fusion pass (unless the file is fused already) and,
for the Python plugin, the QDP pass -> the build (:func:`ulsam_deploy.backends.trt.builder.build_serialized`,
TensorRT only) -> the typed engine sidecar with the ONNX's step history plus this step's record -> both files
written atomically by the one step driver.
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
from pathlib import Path

from ulsam_deploy.artifacts import now, sha256_file
from ulsam_deploy.errors import UserError
from ulsam_deploy.events import SILENT, Events
from ulsam_deploy.sidecars import EngineSidecar, OnnxSidecar
from ulsam_deploy.steps._step import Step, StepResult, load_with_sidecar


def default_output(model: Path) -> Path:
    return model.with_suffix(".engine")


def engine_precision(onnx_precision: str, builder_flags: list[str]) -> str:
    """fp32 / fp16 / int8: the ONNX's precision (strongly typed), or the widest a weakly typed build allows."""
    if "INT8" in builder_flags or onnx_precision == "int8":
        return "int8"
    if "FP16" in builder_flags or onnx_precision == "fp16":
        return "fp16"
    return onnx_precision


def prepare_for_plugin(model, onnx_path: Path, info, route, *, step: Step, warn):
    """The model TensorRT parses for plugin ``route``: fused (the fusion pass) and, for the Python plugin,
    rewritten to its node signature (the QDP pass). Returns ``(model, info, route, fusion)``; ``route`` becomes
    None when there is nothing to fuse."""
    from ulsam_deploy.backends.trt.settings import describe_onnx

    fusion = None
    if route is None:
        return model, info, None, None
    if not info.fused_nodes:
        with step.stage("Fusing ULSAM blocks into SubspaceAttention for the plugin", "fuse"):
            try:
                from ulsam_deploy.passes.fuse import fuse_model
            except ImportError as exc:
                raise UserError("The fusion pass (ulsam_deploy.passes.fuse) is not in this install; pass an "
                                "already fused ONNX.") from exc
            fused, fusion = fuse_model(model)
        if not (fusion or {}).get("fused"):
            from ulsam_deploy.passes.ulsam_pattern import find_ulsam_blocks

            if (fusion or {}).get("left_alone") or find_ulsam_blocks(model).blocks:
                raise UserError(f"'{onnx_path.name}' has ULSAM blocks that cannot be fused as they are"
                                f"{' (fp16 Casts split them)' if info.precision == 'fp16' else ''}; fuse before "
                                f"converting: 'ulsam-deploy convert MODEL.onnx --precision {info.precision} --fuse' "
                                "(or 'ulsam-deploy fuse' on the fp32 export), then build that file.")
            warn("No ULSAM block was found to fuse; the engine is built without the plugin.")
            return model, info, None, None
        model = fused
        info = describe_onnx(model, onnx_path, info.dynamic)
    if route.route == "python":  # the AOT Python plugin has its own node signature
        from ulsam_deploy.passes.qdp import to_qdp_model

        model, converted = to_qdp_model(model)
        fusion = {**(fusion or {}), "fused": (fusion or {}).get("fused", info.fused_nodes), "qdp_nodes": converted}
    return model, info, route, fusion


def engine_sidecar(output: Path, onnx_path: Path, onnx_sidecar: OnnxSidecar | None, build, options, fusion,
                   warnings: list[str]) -> EngineSidecar:
    """What the engine is, what built it, and how to rebuild it (read by check_engine_compat, the runner, bench)."""
    import onnx

    from ulsam_deploy import __version__
    from ulsam_deploy.backends.trt.cuda import cuda_runtime_version, jetson_release, probe_cuda_driver
    from ulsam_deploy.backends.trt.runtime import parse_version, version_of
    from ulsam_deploy.backends.trt.settings import rebuild_command

    info, plan, trt = build.info, build.plan, build.trt
    driver = probe_cuda_driver()
    model_info: dict = {}
    verification = None
    if onnx_sidecar is not None:
        described = onnx_sidecar.model
        model_info = {"config": described.config if described else None,
                      "description": described.description if described else None,
                      "class_names": described.class_names if described else None,
                      "inputs": [s.model_dump() for s in onnx_sidecar.inputs],
                      "outputs": [s.model_dump() for s in onnx_sidecar.outputs],
                      "preprocess": onnx_sidecar.preprocess.model_dump() if onnx_sidecar.preprocess else None}
        converts = [s for s in onnx_sidecar.steps if s.step == "convert"]
        verification = converts[-1].verdict if converts else None
    profiles = [{"input": name, "min": list(v[0]), "opt": list(v[1]), "max": list(v[2]),
                 "source": dict(plan.profile_source)} for name, v in (plan.profile or {}).items()]
    profiles += [{"input": name, "min": list(v), "opt": list(v), "max": list(v), "static": True}
                 for name, v in plan.static_shapes.items()]
    plugin = ({**build.plugin_info, "fused_blocks": (fusion or {}).get("fused", info.fused_nodes)}
              if build.plugin_info else None)
    return EngineSidecar.model_validate({
        "engine": output.name,
        "engine_sha256": hashlib.sha256(build.engine_bytes).hexdigest(),
        "engine_bytes": len(build.engine_bytes),
        # a sidecar's sha256 was checked against the file when it was read
        "onnx": {"file": str(onnx_path), "sha256": onnx_sidecar.sha256 if onnx_sidecar else sha256_file(onnx_path),
                 "precision": info.precision, "fused_nodes": info.fused_nodes, "opset": info.opset},
        "model": model_info,
        "tensorrt": {"version": version_of(trt), "major": parse_version(version_of(trt))[0],
                     "module": getattr(trt, "__file__", None)},
        "cuda": {"driver_version": driver.driver_version, "runtime_version": cuda_runtime_version()},
        "gpu": driver.gpus[0].to_dict() if driver.gpus else None,
        "jetson": jetson_release(),
        "precision": engine_precision(info.precision, plan.builder_flags),
        "precision_details": {"mode": plan.precision, "strongly_typed": plan.strongly_typed, "onnx": info.precision,
                              "builder_flags": [f for f in plan.builder_flags if f in ("FP16", "INT8")],
                              "tf32": plan.tf32, "onnx_verification": verification},
        "profiles": profiles,
        "plugin": plugin,
        "build": {"options": options.to_dict(), "network_flags": plan.network_flags,
                  "builder_flags": plan.builder_flags, "cleared_builder_flags": plan.clear_flags, "tf32": plan.tf32,
                  "applied": build.applied, "timing_cache": build.cache_record, "fusion": fusion,
                  "default_device": plan.default_device, "dla_core": plan.dla_core,
                  "version_compatible": False, "hardware_compatibility_level": "NONE",
                  "seconds": round(build.seconds, 3), "warnings": warnings},
        "rebuild_command": rebuild_command(onnx_path, output, options, plan),
        "versions": {"ulsam_deploy": __version__, "onnx": onnx.__version__, "python": platform.python_version()},
        "host": {"machine": platform.machine(), "system": platform.system()},
        "created": now(),
        "steps": list(onnx_sidecar.steps) if onnx_sidecar is not None else [],
    })


def build_engine(onnx_path: str | os.PathLike, output: str | os.PathLike | None = None, options=None, *,
                 events: Events = SILENT) -> StepResult:
    """Build ``output`` (raw engine) and ``output.json`` from ``onnx_path``; nothing is written on failure.
    The result's ``sidecar`` is the typed :class:`EngineSidecar`; ``report`` holds the build seconds and warnings."""
    from ulsam_deploy.backends.trt.builder import build_serialized
    from ulsam_deploy.backends.trt.plugins import resolve_route
    from ulsam_deploy.backends.trt.runtime import import_tensorrt, version_of
    from ulsam_deploy.backends.trt.settings import BuildOptions, describe_onnx, plan_build

    options = options or BuildOptions()
    onnx_path = Path(onnx_path)
    output = Path(output) if output is not None else default_output(onnx_path)
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        events.warn(message)

    with Step("build-trt", output, force=options.force, inputs=[onnx_path], events=events,
              options=options.to_dict()) as step:
        model, onnx_sidecar = load_with_sidecar(onnx_path, required=False)
        dynamic = onnx_sidecar.dynamic.model_dump() if onnx_sidecar is not None and onnx_sidecar.dynamic else None
        info = describe_onnx(model, onnx_path, dynamic)
        plan_build(options, info, None)  # option/model mistakes first: reported even where TensorRT is missing
        trt = import_tensorrt()
        trt_version = version_of(trt)
        plan_build(options, info, trt_version)  # version limits (opset, weak typing) before any TensorRT work
        route = resolve_route(options.plugin, trt_version, options.plugin_lib) if options.plugin else None
        model, info, route, fusion = prepare_for_plugin(model, onnx_path, info, route, step=step, warn=warn)
        started = time.perf_counter()
        build = build_serialized(trt, model, onnx_path, info, options, route=route, events=events)
        step.seconds["build"] = time.perf_counter() - started
        warnings += build.warnings
        sidecar = engine_sidecar(output, onnx_path, onnx_sidecar, build, options, fusion, warnings)
        report = {"engine_bytes": len(build.engine_bytes), "precision": sidecar.precision,
                  "fused_blocks": sidecar.plugin.fused_blocks if sidecar.plugin else 0, "warnings": warnings}
        sidecar.steps.append(step.record(source=onnx_path, report=report, versions=("onnx", "tensorrt")))
        step.write(build.engine_bytes, sidecar.to_json())
    return StepResult(output, step.sidecar_file, sidecar, report=report, seconds=dict(step.seconds))


__all__ = ["build_engine", "default_output", "engine_precision", "engine_sidecar", "prepare_for_plugin"]
