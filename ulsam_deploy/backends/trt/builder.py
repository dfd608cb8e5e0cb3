"""TensorRT's side of ``build-trt``: a ready ONNX model -> the serialized engine bytes and what built them.

Everything else (the ONNX's sidecar, the fusion and QDP passes, output checks, atomic write, the engine sidecar) is
the step :mod:`ulsam_deploy.steps.build_trt`.

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
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import onnx

from ulsam_deploy.artifacts import write_bytes
from ulsam_deploy.backends.trt.explain import explain_build_failure, explain_parser_errors, format_parser_errors, read_parser_errors
from ulsam_deploy.backends.trt.plugins import PluginRoute, activate
from ulsam_deploy.backends.trt.progress import BuildPhases, make_progress_monitor
from ulsam_deploy.backends.trt.runtime import version_of
from ulsam_deploy.backends.trt.settings import BuildOptions, apply_plan, network_creation_flags, plan_build
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


def build_serialized(trt, model: onnx.ModelProto, onnx_path: Path, info, options: BuildOptions, *,
                     route: PluginRoute | None = None, events: Events = SILENT) -> BuiltEngine:
    """Build the ready ``model`` (read from ``onnx_path``; already fused and rewritten for ``route``'s plugin, see
    :mod:`ulsam_deploy.steps.build_trt`) with TensorRT module ``trt``; the engine's bytes and facts.

    ``events`` gets stages, one-line warnings (``warn``) and long texts (``detail``: the parser's errors in full,
    TensorRT's warnings) and TensorRT's build phases (:class:`BuildPhases`: ``build_phase`` events and progress).
    """
    stage, warn, details = events.stage, events.warn, events.detail
    trt_version = version_of(trt)
    warnings: list[str] = []

    def _warn(message: str) -> None:
        warnings.append(message)
        warn(message)

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

    progress = BuildPhases(events)
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
    return BuiltEngine(engine_bytes, model, info, plan, applied, trt, seconds, plugin_info, cache_record, warnings)


__all__ = ["BuiltEngine", "ParserFailed", "build_serialized", "make_logger"]
