"""Will this engine load here? Checked from its sidecar before TensorRT sees the file.

A serialized TensorRT engine is tied to the TensorRT build that made it (TensorRT compares the
full version, e.g. 10.3.0.30) and to the GPU architecture (compute capability) it was tuned
for, unless it was built version-compatible (``BuilderFlag.VERSION_COMPATIBLE``, TensorRT >= 8.6:
runs on the same or a newer TensorRT of the same major) or hardware-compatible
(``HardwareCompatibilityLevel.AMPERE_PLUS``: any GPU with compute capability >= 8.0).
Deserializing a mismatched engine fails with a cryptic message (or, on another GPU of the same
architecture, works with a warning); :func:`check_engine_compat` refuses it with one sentence
and the command that rebuilds it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ulsam_deploy.artifacts import ENGINE_SIDECAR_FORMAT
from ulsam_deploy.errors import UserError
from ulsam_deploy.backends.trt.cuda import GpuInfo, probe_cuda_driver
from ulsam_deploy.backends.trt.runtime import TensorRTUnavailable, import_tensorrt, parse_version, version_of


class EngineMismatch(UserError):
    """The engine was built for another TensorRT or GPU than the one here."""

    exit_code = 4


@dataclass
class RuntimeInfo:
    """The TensorRT version and GPU that would load an engine (probed, or given in tests)."""

    tensorrt_version: str
    gpu: GpuInfo | None
    extra: dict = field(default_factory=dict)


def engine_sidecar_path(engine: str | os.PathLike) -> Path:
    from ulsam_deploy.artifacts import sidecar_path

    return sidecar_path(engine)


def read_engine_sidecar(engine: str | os.PathLike) -> dict:
    """The ``model.engine.json`` written by ``build-trt`` (validated against :class:`EngineSidecar`, and checked to
    describe this very engine); UserError when missing or unsound."""
    from ulsam_deploy.artifacts import EngineSidecar, check_recorded_sha256, read_sidecar_json, validate_sidecar

    engine = Path(engine)
    path = engine if engine.suffix == ".json" else engine_sidecar_path(engine)
    rebuild = "rebuild the engine with 'ulsam-deploy build-trt'"
    if not path.exists():
        raise UserError(f"'{path}' (written by 'ulsam-deploy build-trt' beside the engine) is missing, so the engine "
                        "cannot be checked against this TensorRT and GPU; rebuild it with 'ulsam-deploy build-trt'.")
    text, data = read_sidecar_json(path, rebuild)
    if not isinstance(data, dict) or data.get("format") != ENGINE_SIDECAR_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise UserError(f"'{path}' is not an engine sidecar of this tool (format {found!r}); {rebuild}.")
    recorded = validate_sidecar(EngineSidecar, text, path, rebuild).engine_sha256
    if recorded and engine.suffix != ".json" and engine.is_file():
        check_recorded_sha256(engine, recorded, path, "engine", "rebuild the engine, or put its own sidecar beside it")
    return data


def current_runtime(device: int = 0) -> RuntimeInfo:
    """TensorRT version (import) and GPU ``device`` (CUDA driver); raises BackendUnavailable when either is absent."""
    trt = import_tensorrt()
    driver = probe_cuda_driver()
    if not driver.available:
        raise TensorRTUnavailable(f"TensorRT is installed but no usable GPU was found ({driver.error}); engines need "
                                  "an NVIDIA GPU and driver.")
    if device >= len(driver.gpus):
        raise UserError(f"GPU {device} does not exist here ({len(driver.gpus)} found); choose --device 0..{len(driver.gpus) - 1}.")
    return RuntimeInfo(version_of(trt), driver.gpus[device], {"driver_version": driver.driver_version})


def _describe(version: str, gpu_name: str | None, cc: str | None) -> str:
    where = f"{gpu_name} (sm_{cc.replace('.', '')})" if gpu_name and cc else (f"sm_{cc.replace('.', '')}" if cc else "an unknown GPU")
    return f"TensorRT {version} on {where}"


def _versions_compatible(built: str, running: str, version_compatible: bool) -> bool:
    b, r = parse_version(built), parse_version(running)
    if version_compatible:  # same major, running >= built (TensorRT's version-compatible engines)
        return bool(b) and bool(r) and b[0] == r[0] and r >= b
    n = min(len(b), len(r))
    return n >= 3 and b[:n] == r[:n]


def _cc_tuple(cc: str) -> tuple[int, int]:
    major, _, minor = str(cc).partition(".")
    return int(major), int(minor or 0)


def check_engine_compat(sidecar: dict | str | os.PathLike, *, runtime: RuntimeInfo | None = None,
                        warn: Callable[[str], None] | None = None, device: int = 0) -> None:
    """Refuse (``EngineMismatch``, one sentence + rebuild command) an engine this TensorRT/GPU cannot load.

    ``sidecar`` is the engine sidecar dict, or the engine / sidecar path. ``runtime`` defaults to
    the running TensorRT and GPU ``device``. Softer differences (same architecture, other GPU
    model; a plugin library changed since the build) go to ``warn`` when given.
    """
    data = sidecar if isinstance(sidecar, dict) else read_engine_sidecar(sidecar)
    engine_name = data.get("engine", "the engine")
    rebuild = data.get("rebuild_command") or "ulsam-deploy build-trt MODEL.onnx -o ENGINE"
    trt_info = data.get("tensorrt") or {}
    gpu_info = data.get("gpu") or {}
    built_version = str(trt_info.get("version") or "")
    built_cc = gpu_info.get("compute_capability")
    if not built_version or not built_cc:
        raise EngineMismatch(f"The sidecar of '{engine_name}' does not record its TensorRT version and GPU, so it "
                             f"cannot be checked; rebuild it: {rebuild}")
    if runtime is None:
        runtime = current_runtime(device)
    gpu = runtime.gpu
    built = _describe(built_version, gpu_info.get("name"), built_cc)
    here = _describe(runtime.tensorrt_version, gpu.name if gpu else None, gpu.compute_capability if gpu else None)
    build_flags = data.get("build", {})
    version_ok = _versions_compatible(built_version, runtime.tensorrt_version, bool(build_flags.get("version_compatible")))
    if gpu is None:
        raise EngineMismatch(f"'{engine_name}' needs an NVIDIA GPU ({built}) and none is usable here.")
    hw_level = str(build_flags.get("hardware_compatibility_level") or "NONE").upper()
    if hw_level.endswith("AMPERE_PLUS"):
        gpu_ok = _cc_tuple(gpu.compute_capability) >= (8, 0)
    else:
        gpu_ok = _cc_tuple(gpu.compute_capability) == _cc_tuple(built_cc)
    if not (version_ok and gpu_ok):
        what = "TensorRT version and GPU" if not version_ok and not gpu_ok else ("TensorRT version" if not version_ok else "GPU architecture")
        raise EngineMismatch(f"'{engine_name}' was built with {built} and cannot run with {here} (other {what}); "
                             f"rebuild it on this machine: {rebuild}")
    if warn is not None:
        if gpu_info.get("name") and gpu.name and gpu_info["name"] != gpu.name and hw_level == "NONE":
            warn(f"'{engine_name}' was tuned on {gpu_info['name']} and runs here on {gpu.name} (same architecture); "
                 f"timings may be worse than a local build: {rebuild}")
        plugin = data.get("plugin") or {}
        library = plugin.get("library")
        if library and not Path(library).exists():
            warn(f"'{engine_name}' uses the plugin library {library}, which is not there now; load the library "
                 "before deserializing or rebuild with 'ulsam-deploy build-plugin'.")
        elif library and plugin.get("library_sha256"):
            from ulsam_deploy.artifacts import sha256_file

            if sha256_file(library) != plugin["library_sha256"]:
                warn(f"The plugin library {library} changed since '{engine_name}' was built; rebuild the engine: {rebuild}")


__all__ = ["ENGINE_SIDECAR_FORMAT", "EngineMismatch", "RuntimeInfo", "TensorRTUnavailable", "check_engine_compat",
           "current_runtime", "engine_sidecar_path", "read_engine_sidecar"]
