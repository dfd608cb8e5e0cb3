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

from ulsam_deploy.sidecars import EngineSidecar, read_engine_sidecar
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


def check_engine_compat(sidecar: EngineSidecar | str | os.PathLike, *, runtime: RuntimeInfo | None = None,
                        warn: Callable[[str], None] | None = None, device: int = 0) -> None:
    """Refuse (``EngineMismatch``, one sentence + rebuild command) an engine this TensorRT/GPU cannot load.

    ``sidecar`` is the engine's typed sidecar, or the engine / sidecar path. ``runtime`` defaults to
    the running TensorRT and GPU ``device``. Softer differences (same architecture, other GPU
    model; a plugin library changed since the build) go to ``warn`` when given.
    """
    data = sidecar if isinstance(sidecar, EngineSidecar) else read_engine_sidecar(sidecar)
    engine_name = data.engine
    rebuild = data.rebuild_command or "ulsam-deploy build-trt MODEL.onnx -o ENGINE"
    built_version = str(data.tensorrt.version or "") if data.tensorrt else ""
    built_gpu = data.gpu.name if data.gpu else None
    built_cc = data.gpu.compute_capability if data.gpu else None
    if not built_version or not built_cc:
        raise EngineMismatch(f"The sidecar of '{engine_name}' does not record its TensorRT version and GPU, so it "
                             f"cannot be checked; rebuild it: {rebuild}")
    if runtime is None:
        runtime = current_runtime(device)
    gpu = runtime.gpu
    built = _describe(built_version, built_gpu, built_cc)
    here = _describe(runtime.tensorrt_version, gpu.name if gpu else None, gpu.compute_capability if gpu else None)
    version_ok = _versions_compatible(built_version, runtime.tensorrt_version, data.build.version_compatible)
    if gpu is None:
        raise EngineMismatch(f"'{engine_name}' needs an NVIDIA GPU ({built}) and none is usable here.")
    hw_level = data.build.hardware_compatibility_level.upper()
    if hw_level.endswith("AMPERE_PLUS"):
        gpu_ok = _cc_tuple(gpu.compute_capability) >= (8, 0)
    else:
        gpu_ok = _cc_tuple(gpu.compute_capability) == _cc_tuple(built_cc)
    if not (version_ok and gpu_ok):
        what = "TensorRT version and GPU" if not version_ok and not gpu_ok else ("TensorRT version" if not version_ok else "GPU architecture")
        raise EngineMismatch(f"'{engine_name}' was built with {built} and cannot run with {here} (other {what}); "
                             f"rebuild it on this machine: {rebuild}")
    if warn is not None:
        if built_gpu and gpu.name and built_gpu != gpu.name and hw_level == "NONE":
            warn(f"'{engine_name}' was tuned on {built_gpu} and runs here on {gpu.name} (same architecture); "
                 f"timings may be worse than a local build: {rebuild}")
        library = data.plugin.library if data.plugin else None
        if library and not Path(library).exists():
            warn(f"'{engine_name}' uses the plugin library {library}, which is not there now; load the library "
                 "before deserializing or rebuild with 'ulsam-deploy build-plugin'.")
        elif library and data.plugin.library_sha256:
            from ulsam_deploy.artifacts import sha256_file

            if sha256_file(library) != data.plugin.library_sha256:
                warn(f"The plugin library {library} changed since '{engine_name}' was built; rebuild the engine: {rebuild}")


__all__ = ["EngineMismatch", "RuntimeInfo", "TensorRTUnavailable", "check_engine_compat", "current_runtime"]
