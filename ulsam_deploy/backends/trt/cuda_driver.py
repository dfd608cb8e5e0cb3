"""CUDA driver and GPU facts through ``ctypes`` (no CUDA Python package, no torch.cuda needed).

``libcuda.so.1`` is the driver's own library: present wherever an NVIDIA driver is installed
(x86 or Jetson), absent on CPU-only machines. We call only stable driver-API entry points:
``cuInit``, ``cuDriverGetVersion``, ``cuDeviceGetCount``, ``cuDeviceGet``, ``cuDeviceGetName``,
``cuDeviceGetAttribute`` and ``cuDeviceTotalMem_v2``.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from dataclasses import asdict, dataclass, field

# CUdevice_attribute values (cuda.h; unchanged since CUDA 3.x)
_ATTR_INTEGRATED = 18
_ATTR_CC_MAJOR = 75
_ATTR_CC_MINOR = 76

DRIVER_LIBRARIES = ("libcuda.so.1", "libcuda.so")
RUNTIME_LIBRARIES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0")


@dataclass
class GpuInfo:
    index: int
    name: str
    compute_capability: str  # "8.7"
    total_memory_bytes: int
    integrated: bool  # Jetson's iGPU shares memory with the CPU

    @property
    def sm(self) -> str:
        return "sm_" + self.compute_capability.replace(".", "")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["sm"] = self.sm
        return data


@dataclass
class CudaDriverInfo:
    available: bool
    driver_version: str | None = None  # highest CUDA version the driver supports, e.g. "12.6"
    gpus: list[GpuInfo] = field(default_factory=list)
    library: str | None = None
    error: str | None = None  # why not available, in words

    def to_dict(self) -> dict:
        return {"available": self.available, "driver_version": self.driver_version, "library": self.library,
                "error": self.error, "gpus": [g.to_dict() for g in self.gpus]}


def _version_text(value: int) -> str:
    return f"{value // 1000}.{(value % 1000) // 10}"


def _load(names) -> tuple[ctypes.CDLL | None, str | None, str | None]:
    last = None
    for name in names:
        try:
            return ctypes.CDLL(name), name, None
        except OSError as exc:
            last = str(exc)
    return None, None, last


def _error_name(lib, code: int) -> str:
    try:
        ptr = ctypes.c_char_p()
        if lib.cuGetErrorName(ctypes.c_int(code), ctypes.byref(ptr)) == 0 and ptr.value:
            return ptr.value.decode(errors="replace")
    except AttributeError:
        pass
    return f"CUDA error {code}"


def probe_cuda_driver(libraries=DRIVER_LIBRARIES) -> CudaDriverInfo:
    """Driver version and GPUs, or ``available=False`` with the reason (never raises)."""
    if sys.platform != "linux":
        libraries = ("nvcuda.dll",) if os.name == "nt" else libraries
    lib, name, err = _load(libraries)
    if lib is None:
        return CudaDriverInfo(False, error="no NVIDIA driver (libcuda.so.1 not found)")
    info = CudaDriverInfo(False, library=name)
    version = ctypes.c_int(0)
    try:
        if lib.cuDriverGetVersion(ctypes.byref(version)) == 0:
            info.driver_version = _version_text(version.value)
        code = lib.cuInit(0)
        if code != 0:
            info.error = f"cuInit failed: {_error_name(lib, code)}"
            return info
        count = ctypes.c_int(0)
        code = lib.cuDeviceGetCount(ctypes.byref(count))
        if code != 0:
            info.error = f"cuDeviceGetCount failed: {_error_name(lib, code)}"
            return info
        for index in range(count.value):
            device = ctypes.c_int(0)
            if lib.cuDeviceGet(ctypes.byref(device), index) != 0:
                continue
            buf = ctypes.create_string_buffer(256)
            lib.cuDeviceGetName(buf, 256, device)
            major, minor, integrated = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
            lib.cuDeviceGetAttribute(ctypes.byref(major), _ATTR_CC_MAJOR, device)
            lib.cuDeviceGetAttribute(ctypes.byref(minor), _ATTR_CC_MINOR, device)
            lib.cuDeviceGetAttribute(ctypes.byref(integrated), _ATTR_INTEGRATED, device)
            total = ctypes.c_size_t(0)
            try:
                lib.cuDeviceTotalMem_v2(ctypes.byref(total), device)
            except AttributeError:
                pass
            info.gpus.append(GpuInfo(index, buf.value.decode(errors="replace").strip(), f"{major.value}.{minor.value}",
                                     int(total.value), bool(integrated.value)))
    except (AttributeError, OSError) as exc:  # a broken or foreign libcuda
        info.error = f"{name} is not a usable CUDA driver ({exc})"
        return info
    if not info.gpus:
        info.error = "the NVIDIA driver reports no GPU"
        return info
    info.available = True
    return info


def cuda_runtime_version() -> str | None:
    """Version of a loadable CUDA runtime (libcudart: the toolkit's, or pip's nvidia-cuda-runtime), else None."""
    candidates = list(RUNTIME_LIBRARIES)
    for root in sys.path:  # pip wheels: site-packages/nvidia/cuda_runtime/lib/libcudart.so.12
        candidates += sorted(glob.glob(os.path.join(root, "nvidia", "cuda_runtime", "lib", "libcudart.so*")))
        candidates += sorted(glob.glob(os.path.join(root, "nvidia", "cu1*", "lib", "libcudart.so*")))
    lib, _, _ = _load(candidates)
    if lib is None:
        return None
    version = ctypes.c_int(0)
    try:
        if lib.cudaRuntimeGetVersion(ctypes.byref(version)) != 0:
            return None
    except AttributeError:
        return None
    return _version_text(version.value)


def is_jetson() -> bool:
    """True on an NVIDIA Jetson (L4T): ``/etc/nv_tegra_release`` or a Jetson device-tree model."""
    if os.path.exists("/etc/nv_tegra_release"):
        return True
    try:
        with open("/proc/device-tree/model", "rb") as fh:
            model = fh.read().decode(errors="replace").lower()
        return "jetson" in model or "orin" in model
    except OSError:
        return False


def jetson_release() -> str | None:
    """The L4T release line from ``/etc/nv_tegra_release`` (e.g. '# R36 (release), REVISION: 4.0'), if any."""
    try:
        with open("/etc/nv_tegra_release") as fh:
            return fh.readline().strip() or None
    except OSError:
        return None
