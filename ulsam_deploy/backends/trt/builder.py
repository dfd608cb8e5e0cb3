"""TensorRT's side of ``build-trt``: an ONNX model -> the serialized engine bytes and what built them.

The file side (output checks, atomic write, the sidecar) is the step :mod:`ulsam_deploy.steps.build_trt`.

Flow (TensorRT Python API 10.x and 11.x; the calls are checked by the tests against the real Python bindings of
10.3.0, 10.16.1 and 11.4.0 - see tests/test_trt_bindings.py - but no engine is built there):
``trt.Builder(logger)`` -> ``builder.create_network(flags)`` (STRONGLY_TYPED unless --weakly-typed on
10.x) -> ``trt.OnnxParser(network, logger).parse(bytes, path)`` -> ``builder.create_builder_config()``
configured by :func:`ulsam_deploy.backends.trt.settings.apply_plan` -> ``config.progress_monitor`` ->
``builder.build_serialized_network(network, config)`` (an ``IHostMemory``, None on failure) -> the bytes
written as they are (no header of ours: trtexec ``--loadEngine`` and C++ ``deserializeCudaEngine``
read the file) -> the timing cache (``config.get_timing_cache().serialize()``) saved.
"""

from __future__ import annotations

import contextlib
import platform
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import onnx

from ulsam_deploy.artifacts import sha256_file, write_bytes
from ulsam_deploy.backends.trt.compat import ENGINE_SIDECAR_FORMAT
from ulsam_deploy.backends.trt.cuda import cuda_runtime_version, jetson_release, probe_cuda_driver
from ulsam_deploy.backends.trt.explain import explain_build_failure, explain_parser_errors, format_parser_errors, read_parser_errors
from ulsam_deploy.backends.trt.plugins import PluginRoute, activate, resolve_route
from ulsam_deploy.backends.trt.progress import BuildPhases, make_progress_monitor
from ulsam_deploy.backends.trt.runtime import import_tensorrt, parse_version, version_of
from ulsam_deploy.backends.trt.settings import (BuildOptions, apply_plan, describe_onnx, network_creation_flags,
                                               plan_build, rebuild_command)
from ulsam_deploy.errors import BackendUnavailable, UserError
from ulsam_deploy.events import SILENT, Events

Say = Callable[[str], None]


def _nothing(_message: str) -> None:
    pass


@dataclass
class BuiltEngine:
    """What TensorRT built and everything the engine sidecar records about it."""

    engine_bytes: bytes
    model: onnx.ModelProto  # as parsed (fused for the plugin, or rewritten for the Python plugin)
    info: object  # settings.OnnxInfo
    plan: object  # settings.BuildPlan
    applied: dict
    trt: object
    seconds: float
    plugin_info: dict | None
    fusion: dict | None
    cache_record: dict | None
    warnings: list[str] = field(default_factory=list)


class ParserFailed(UserError):
    """The ONNX parser rejected the model; ``details`` holds every parser error in full."""

    def __init__(self, message: str, details: str):
        super().__init__(message)
        self.details = details


def make_logger(trt, verbose: bool = False, echo: Say = _nothing):
    """An ``ILogger`` keeping every message (errors feed :func:`explain_build_failure`), echoing warnings+."""
    severity = trt.ILogger.Severity
    loud = {severity.INTERNAL_ERROR, severity.ERROR, severity.WARNING}

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.lock = threading.Lock()
            self.messages: list[tuple[str, str]] = []

        def log(self, sev, msg):
            with self.lock:
                self.messages.append((str(sev).split(".")[-1], str(msg)))
            if verbose or sev in loud:
                echo(f"[TensorRT {str(sev).split('.')[-1]}] {msg}")

        @property
        def errors(self) -> list[str]:
            return [m for s, m in self.messages if s in ("ERROR", "INTERNAL_ERROR")]

    return _Logger()


@contextlib.contextmanager
def _cancel_on_sigint(progress: BuildPhases):
    """Ctrl-C during the build asks TensorRT to stop (step_complete returns False) instead of killing Python."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum, _frame):
        progress.cancelled = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def build_serialized(model: onnx.ModelProto, onnx_path: Path, options: BuildOptions, *, events: Events = SILENT,
                     progress: BuildPhases | None = None) -> BuiltEngine:
    """Parse ``model`` (read from ``onnx_path``) and build it with TensorRT; the engine's bytes and facts.

    ``events`` gets stages, one-line warnings (``warn``) and long texts (``detail``: the parser's errors in full,
    TensorRT's warnings); ``progress`` receives TensorRT's build phases (a silent sink when None).
    """
    stage, warn, details = events.stage, events.warn, events.detail
    from ulsam_deploy.artifacts import read_sidecar

    onnx_sidecar = read_sidecar(onnx_path, required=False)  # its ranges are the profile flags' defaults
    dynamic = onnx_sidecar.dynamic.model_dump() if onnx_sidecar is not None and onnx_sidecar.dynamic else None
    info = describe_onnx(model, onnx_path, dynamic)
    plan_build(options, info, None)  # option/model mistakes first: reported even where TensorRT is missing

    trt = import_tensorrt()
    trt_version = version_of(trt)
    plan_build(options, info, trt_version)  # version limits (opset, weak typing) before any TensorRT work
    warnings: list[str] = []

    def _warn(message: str) -> None:
        warnings.append(message)
        warn(message)

    route: PluginRoute | None = None
    fusion = None
    data = None
    if options.plugin:
        route = resolve_route(options.plugin, trt_version, options.plugin_lib)
        if not info.fused_nodes:
            with stage("Fusing ULSAM blocks into SubspaceAttention for the plugin"):
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
                _warn("No ULSAM block was found to fuse; the engine is built without the plugin.")
                route, fusion = None, None
            else:
                model = fused
                info = describe_onnx(model, onnx_path, dynamic)
                data = model.SerializeToString()
    if route is not None and route.route == "python":  # the AOT Python plugin has its own node signature
        from ulsam_deploy.backends.trt.plugins import to_qdp_model

        model, converted = to_qdp_model(model)
        data = model.SerializeToString()
        fusion = {**(fusion or {}), "fused": (fusion or {}).get("fused", info.fused_nodes), "qdp_nodes": converted}
    if data is None:
        data = model.SerializeToString()

    start = time.perf_counter()
    logger = make_logger(trt, options.verbose, details)
    with stage(f"Starting TensorRT {trt_version}"):
        try:
            builder = trt.Builder(logger)
        except Exception as exc:  # noqa: BLE001 - e.g. "CUDA initialization failure with error: 35"
            raise BackendUnavailable(explain_build_failure(logger.errors + [str(exc)], trt_version)) from exc
        if builder is None:
            raise BackendUnavailable(explain_build_failure(logger.errors, trt_version))
        plan = plan_build(options, info, trt_version, int(getattr(builder, "num_DLA_cores", 0) or 0)
                          if options.dla_core is not None else None, python_plugin=route is not None and
                          route.route == "python")
        for message in plan.warnings:
            _warn(message)
        plugin_info = activate(trt, builder.get_plugin_registry(), route) if route is not None else None
        network = builder.create_network(network_creation_flags(trt, plan))
        parser = trt.OnnxParser(network, logger)

    with stage(f"Parsing {onnx_path.name} with TensorRT's ONNX parser"):
        ok = parser.parse(data, str(onnx_path.resolve()))
        if not ok:
            issues = read_parser_errors(parser)
            full = format_parser_errors(issues)
            details(f"TensorRT's ONNX parser reported {len(issues)} error(s):\n{full}")
            raise ParserFailed(explain_parser_errors(issues, onnx_path.name, trt_version), full)

    config = builder.create_builder_config()
    cache_bytes = None
    if plan.timing_cache is not None and plan.timing_cache.is_file():
        cache_bytes = plan.timing_cache.read_bytes()
    applied = apply_plan(trt, builder, config, plan, cache_bytes)

    progress = progress or BuildPhases()
    monitor = make_progress_monitor(trt, progress)
    if monitor is not None:
        config.progress_monitor = monitor  # TensorRT 10.0+; must outlive the build (kept referenced here)
    build_stage = stage if monitor is None else (lambda _t: contextlib.nullcontext())  # a spinner only without a monitor
    cancel = _cancel_on_sigint(progress) if monitor is not None else contextlib.nullcontext()  # only a monitor can stop it
    with build_stage("Building the engine (TensorRT tunes kernels; this takes a while)"), progress, cancel:
        serialized = builder.build_serialized_network(network, config)
    if progress.cancelled:
        raise UserError("The build was cancelled; nothing was written.", exit_code=130)
    if serialized is None:
        raise UserError(explain_build_failure(logger.errors, trt_version,
                                              str(plan.timing_cache) if plan.timing_cache else None))
    seconds = time.perf_counter() - start
    engine_bytes = bytes(memoryview(serialized))
    if not engine_bytes:
        raise UserError(f"TensorRT {trt_version} returned an empty engine; re-run with --verbose and report it.")

    cache_record = None
    if plan.timing_cache is not None:
        try:
            cache = config.get_timing_cache()
            blob = bytes(memoryview(cache.serialize()))
            write_bytes(blob, plan.timing_cache)
            cache_record = {"path": str(plan.timing_cache), "loaded_bytes": len(cache_bytes or b""), "saved_bytes": len(blob)}
        except Exception as exc:  # noqa: BLE001 - the engine is fine; say the cache was not saved
            _warn(f"The timing cache could not be saved to '{plan.timing_cache}' ({type(exc).__name__}: {exc}).")
    return BuiltEngine(engine_bytes, model, info, plan, applied, trt, seconds, plugin_info, fusion, cache_record,
                       warnings)


def engine_precision(onnx_precision: str, builder_flags: list[str]) -> str:
    """fp32 / fp16 / int8: the ONNX's precision (strongly typed), or the widest a weakly typed build allows."""
    if "INT8" in builder_flags or onnx_precision == "int8":
        return "int8"
    if "FP16" in builder_flags or onnx_precision == "fp16":
        return "fp16"
    return onnx_precision


def engine_sidecar(output: Path, onnx_path: Path, build: BuiltEngine, options: BuildOptions) -> dict:
    """What the engine is, what built it, and how to rebuild it (read by check_engine_compat and bench)."""
    import hashlib

    info, plan, applied, trt = build.info, build.plan, build.applied, build.trt
    seconds, plugin_info, fusion = build.seconds, build.plugin_info, build.fusion
    cache_record, warnings = build.cache_record, build.warnings
    from ulsam_deploy import __version__
    from ulsam_deploy.artifacts import read_sidecar

    driver = probe_cuda_driver()
    gpu = driver.gpus[0].to_dict() if driver.gpus else {}
    onnx_sidecar = read_sidecar(onnx_path, required=False)
    model_info = {}
    verification = None
    if onnx_sidecar is not None:
        model_info = {"config": onnx_sidecar.model.config if onnx_sidecar.model else None,
                      "description": onnx_sidecar.model.description if onnx_sidecar.model else None,
                      "class_names": onnx_sidecar.model.class_names if onnx_sidecar.model else None,
                      "inputs": [s.model_dump() for s in onnx_sidecar.inputs],
                      "outputs": [s.model_dump() for s in onnx_sidecar.outputs],
                      "preprocess": onnx_sidecar.preprocess.model_dump() if onnx_sidecar.preprocess else None}
        converts = [s for s in onnx_sidecar.steps if s.step == "convert"]
        verification = converts[-1].verdict if converts else None
    profiles = [{"input": name, "min": list(v[0]), "opt": list(v[1]), "max": list(v[2]),
                 "source": dict(plan.profile_source)} for name, v in (plan.profile or {}).items()]
    profiles += [{"input": name, "min": list(v), "opt": list(v), "max": list(v), "static": True}
                 for name, v in plan.static_shapes.items()]
    return {
        "format": ENGINE_SIDECAR_FORMAT,
        "engine": output.name,
        "engine_sha256": hashlib.sha256(build.engine_bytes).hexdigest(),
        "engine_bytes": len(build.engine_bytes),
        "onnx": {"file": str(onnx_path), "sha256": sha256_file(onnx_path), "precision": info.precision,
                 "fused_nodes": info.fused_nodes, "opset": info.opset},
        "model": model_info,
        "tensorrt": {"version": version_of(trt), "major": parse_version(version_of(trt))[0],
                     "module": getattr(trt, "__file__", None)},
        "cuda": {"driver_version": driver.driver_version, "runtime_version": cuda_runtime_version()},
        "gpu": gpu,
        "jetson": jetson_release(),
        # one word (what bench labels rows with), details beside it
        "precision": engine_precision(info.precision, plan.builder_flags),
        "precision_details": {"mode": plan.precision, "strongly_typed": plan.strongly_typed, "onnx": info.precision,
                              "builder_flags": [f for f in plan.builder_flags if f in ("FP16", "INT8")],
                              "tf32": plan.tf32,
                              "onnx_verification": verification},
        "profiles": profiles,
        "plugin": ({**plugin_info, "fused_blocks": (fusion or {}).get("fused", info.fused_nodes)}
                   if plugin_info else None),
        "build": {"options": options.to_dict(), "network_flags": plan.network_flags,
                  "builder_flags": plan.builder_flags, "cleared_builder_flags": plan.clear_flags, "tf32": plan.tf32,
                  "applied": applied, "timing_cache": cache_record,
                  "default_device": plan.default_device, "dla_core": plan.dla_core,
                  "version_compatible": False, "hardware_compatibility_level": "NONE",
                  "seconds": round(seconds, 3), "warnings": warnings},
        "rebuild_command": rebuild_command(onnx_path, output, options, plan),
        "versions": {"ulsam_deploy": __version__, "onnx": onnx.__version__, "python": platform.python_version()},
        "host": {"machine": platform.machine(), "system": platform.system()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


__all__ = ["BuiltEngine", "ParserFailed", "build_serialized", "engine_precision", "engine_sidecar", "make_logger"]
