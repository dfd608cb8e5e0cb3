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

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ulsam_deploy.errors import UserError
from ulsam_deploy.backends.trt.cuda import GpuInfo, probe_cuda_driver
from ulsam_deploy.backends.trt.runtime import TensorRTUnavailable, import_tensorrt, parse_version, version_of

ENGINE_SIDECAR_FORMAT = "ulsam-deploy-engine/1"


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
    """The ``model.engine.json`` written by ``build-trt``; UserError when missing or unreadable."""
    engine = Path(engine)
    path = engine if engine.suffix == ".json" else engine_sidecar_path(engine)
    if not path.exists():
        raise UserError(f"'{path}' (written by 'ulsam-deploy build-trt' beside the engine) is missing, so the engine "
                        "cannot be checked against this TensorRT and GPU; rebuild it with 'ulsam-deploy build-trt'.")
    if not path.is_file() or path.stat().st_size > 64 << 20:
        raise UserError(f"'{path}' is not a regular file of at most 64 MiB, so it is not an engine sidecar; rebuild "
                        "the engine with 'ulsam-deploy build-trt'.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError, json.JSONDecodeError) as exc:
        raise UserError(f"'{path}' is not readable JSON ({type(exc).__name__}); rebuild the engine with "
                        "'ulsam-deploy build-trt'.") from exc
    if not isinstance(data, dict) or data.get("format") != ENGINE_SIDECAR_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise UserError(f"'{path}' is not an engine sidecar of this tool (format {found!r}); rebuild the "
                        "engine with 'ulsam-deploy build-trt'.")
    problem = _engine_sidecar_problem(data)
    if problem:
        raise UserError(f"The engine sidecar '{path}' is invalid ({problem}); rebuild the engine with "
                        "'ulsam-deploy build-trt'.")
    recorded = data.get("engine_sha256")
    if recorded and engine.suffix != ".json" and engine.is_file():
        from ulsam_deploy.artifacts import sha256_file

        actual = sha256_file(engine)
        if actual != recorded:
            raise UserError(f"The sidecar '{path}' describes another engine than '{engine}' (sha256 {recorded[:12]}... "
                            f"recorded, {actual[:12]}... found); rebuild the engine, or put its own sidecar beside it.")
    return data


# the fields read back from an engine sidecar, and the JSON types they must have (the rest is informational)
_ENGINE_FIELDS = {"engine": str, "engine_sha256": str, "rebuild_command": str, "tensorrt": dict, "gpu": dict,
                  "build": dict, "plugin": dict, "precision": (str, dict), "onnx": (str, dict), "model": dict,
                  "profiles": list}
_ENGINE_SUBFIELDS = {("tensorrt", "version"): str, ("gpu", "name"): str, ("gpu", "compute_capability"): str,
                     ("plugin", "library"): str, ("plugin", "library_sha256"): str,
                     ("build", "hardware_compatibility_level"): str, ("build", "version_compatible"): bool}


def _engine_sidecar_problem(data: dict) -> str | None:
    """The first field of an engine sidecar with the wrong JSON type (None when every field read back is sound)."""
    for key, kind in _ENGINE_FIELDS.items():
        if data.get(key) is not None and not isinstance(data[key], kind):
            return f"field '{key}' has the wrong type"
    for (section, key), kind in _ENGINE_SUBFIELDS.items():
        value = (data.get(section) or {}).get(key)
        if value is not None and not isinstance(value, kind):
            return f"field '{section}.{key}' has the wrong type"
    sha = data.get("engine_sha256")
    if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        return "field 'engine_sha256' is not a sha256"
    return None


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
