"""The one way this package reaches CUDA: the driver API (``libcuda.so.1``) through ``ctypes``.

No torch, CuPy or cuda-python is needed, so ``bench --engine`` runs from a torch-free install (a
Jetson with JetPack's TensorRT). ``libcuda.so.1`` is the driver's own library: present wherever
an NVIDIA driver is installed (x86 or Jetson), absent on CPU-only machines.

- :func:`probe_cuda_driver`: driver version and GPUs, or the reason there are none (never raises);
  what ``doctor``, engine sidecars and the compatibility check read.
- :class:`CudaMemory`: what the TensorRT runner needs on one device, in the device's primary
  context (the one TensorRT's runtime API uses): device buffers, pinned host buffers, one stream,
  timing events.

Entry points are the plain / ``_v2`` names every driver since CUDA 11 exports (not the header
macros, which may map to names newer than JetPack 6's driver has).
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
import threading
from dataclasses import asdict, dataclass, field

import numpy as np

from ulsam_deploy.errors import BackendUnavailable

# CUdevice_attribute values (cuda.h; unchanged since CUDA 3.x)
_ATTR_INTEGRATED = 18
_ATTR_CC_MAJOR = 75
_ATTR_CC_MINOR = 76
_EVENT_DEFAULT = 0
_STREAM_NON_BLOCKING = 1

DRIVER_LIBRARIES = ("libcuda.so.1", "libcuda.so")
RUNTIME_LIBRARIES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0")
LIBRARY_ENV = "ULSAM_LIBCUDA"  # another driver library to use (tests point it at a stub)

_c_ptr = ctypes.c_void_p
_u64 = ctypes.c_uint64  # CUdeviceptr
_size = ctypes.c_size_t
_int = ctypes.c_int
_uint = ctypes.c_uint
_ref = ctypes.POINTER

# name -> argument types (return type is CUresult = int)
_SIGNATURES = {
    "cuInit": [_uint],
    "cuDriverGetVersion": [_ref(_int)],
    "cuDeviceGetCount": [_ref(_int)],
    "cuDeviceGet": [_ref(_int), _int],
    "cuDeviceGetName": [ctypes.c_char_p, _int, _int],
    "cuDeviceGetAttribute": [_ref(_int), _int, _int],
    "cuDeviceTotalMem_v2": [_ref(_size), _int],
    "cuDevicePrimaryCtxRetain": [_ref(_c_ptr), _int],
    "cuDevicePrimaryCtxRelease_v2": [_int],
    "cuCtxSetCurrent": [_c_ptr],
    "cuMemAlloc_v2": [_ref(_u64), _size],
    "cuMemFree_v2": [_u64],
    "cuMemHostAlloc": [_ref(_c_ptr), _size, _uint],
    "cuMemFreeHost": [_c_ptr],
    "cuMemcpyHtoDAsync_v2": [_u64, _c_ptr, _size, _c_ptr],
    "cuMemcpyDtoHAsync_v2": [_c_ptr, _u64, _size, _c_ptr],
    "cuStreamCreate": [_ref(_c_ptr), _uint],
    "cuStreamSynchronize": [_c_ptr],
    "cuStreamDestroy_v2": [_c_ptr],
    "cuEventCreate": [_ref(_c_ptr), _uint],
    "cuEventRecord": [_c_ptr, _c_ptr],
    "cuEventSynchronize": [_c_ptr],
    "cuEventElapsedTime": [_ref(ctypes.c_float), _c_ptr, _c_ptr],
    "cuEventDestroy_v2": [_c_ptr],
    "cuGetErrorName": [_int, _ref(ctypes.c_char_p)],
}
_PROBE = ("cuInit", "cuDriverGetVersion", "cuDeviceGetCount", "cuDeviceGet", "cuDeviceGetName",
          "cuDeviceGetAttribute")


class CudaUnavailable(BackendUnavailable):
    """No usable CUDA driver or GPU here; the message says which and why."""


class CudaError(BackendUnavailable):
    """A CUDA driver call failed after the driver was found (out of memory, a lost device...)."""


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


def _candidates(libraries=None) -> tuple[str, ...]:
    if libraries is not None:
        return tuple(libraries)
    if os.environ.get(LIBRARY_ENV):
        return (os.environ[LIBRARY_ENV],)
    if sys.platform != "linux" and os.name == "nt":
        return ("nvcuda.dll",)
    return DRIVER_LIBRARIES


def _load(names) -> tuple[ctypes.CDLL | None, str | None, str | None]:
    last = None
    for name in names:
        try:
            return ctypes.CDLL(name), name, None
        except OSError as exc:
            last = str(exc)
    return None, None, last


class CudaDriver:
    """``libcuda`` with typed entry points; every failing call raises :class:`CudaError` naming it."""

    def __init__(self, libraries=None, needed=tuple(_SIGNATURES)):
        lib, name, _err = _load(_candidates(libraries))
        if lib is None:
            raise CudaUnavailable("No NVIDIA driver was found (libcuda.so.1 is not loadable); install the NVIDIA "
                                  "driver (JetPack includes it) and check 'nvidia-smi'.")
        self.lib, self.library = lib, name
        missing = []
        for fn in needed:
            try:
                func = getattr(lib, fn)
            except AttributeError:
                missing.append(fn)
                continue
            func.restype = ctypes.c_int
            func.argtypes = _SIGNATURES[fn]
        if missing:
            raise CudaUnavailable(f"{name} is not a usable CUDA driver (it lacks {', '.join(missing[:3])}); "
                                  "reinstall the NVIDIA driver.")

    def error_name(self, code: int) -> str:
        text = ctypes.c_char_p()
        try:
            if self.lib.cuGetErrorName(code, ctypes.byref(text)) == 0 and text.value:
                return text.value.decode(errors="replace")
        except (AttributeError, ctypes.ArgumentError):
            pass
        return f"CUDA error {code}"

    def call(self, fn: str, *args) -> None:
        code = getattr(self.lib, fn)(*args)
        if code != 0:
            name = self.error_name(code)
            error = CudaError(f"The CUDA driver call {fn} failed with {name}; check 'nvidia-smi' and free GPU memory.")
            error.function, error.code_name = fn, name
            raise error

    def version(self) -> str:
        value = ctypes.c_int(0)
        self.call("cuDriverGetVersion", ctypes.byref(value))
        return _version_text(value.value)

    def gpus(self) -> list[GpuInfo]:
        self.call("cuInit", 0)
        count = ctypes.c_int(0)
        self.call("cuDeviceGetCount", ctypes.byref(count))
        found = []
        for index in range(count.value):
            device = ctypes.c_int(0)
            self.call("cuDeviceGet", ctypes.byref(device), index)
            buf = ctypes.create_string_buffer(256)
            self.call("cuDeviceGetName", buf, 256, device)
            major, minor, integrated = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
            self.call("cuDeviceGetAttribute", ctypes.byref(major), _ATTR_CC_MAJOR, device)
            self.call("cuDeviceGetAttribute", ctypes.byref(minor), _ATTR_CC_MINOR, device)
            self.call("cuDeviceGetAttribute", ctypes.byref(integrated), _ATTR_INTEGRATED, device)
            total = ctypes.c_size_t(0)
            if hasattr(self.lib, "cuDeviceTotalMem_v2"):
                self.call("cuDeviceTotalMem_v2", ctypes.byref(total), device)
            found.append(GpuInfo(index, buf.value.decode(errors="replace").strip(), f"{major.value}.{minor.value}",
                                 int(total.value), bool(integrated.value)))
        return found


def probe_cuda_driver(libraries=None) -> CudaDriverInfo:
    """Driver version and GPUs, or ``available=False`` with the reason (never raises)."""
    try:
        driver = CudaDriver(libraries, needed=_PROBE)
    except CudaUnavailable as exc:
        lib, name, _ = _load(_candidates(libraries))
        if lib is None:
            return CudaDriverInfo(False, error="no NVIDIA driver (libcuda.so.1 not found)")
        return CudaDriverInfo(False, library=name, error=str(exc))
    info = CudaDriverInfo(False, library=driver.library)
    try:
        info.driver_version = driver.version()
        info.gpus = driver.gpus()
    except CudaError as exc:
        info.error = f"{getattr(exc, 'function', 'a driver call')} failed: {getattr(exc, 'code_name', exc)}"
        return info
    if not info.gpus:
        info.error = "the NVIDIA driver reports no GPU"
        return info
    info.available = True
    return info


def compute_capability(device: int = 0) -> int | None:
    """Compute capability of GPU ``device`` as an int (87 for 8.7), or None without one."""
    info = probe_cuda_driver()
    if not info.available or device >= len(info.gpus):
        return None
    major, _, minor = info.gpus[device].compute_capability.partition(".")
    return int(major) * 10 + int(minor or 0)


# ------------------------------------------------------------------------------ runner memory


@dataclass
class DeviceBuffer:
    ptr: int
    nbytes: int
    shape: tuple
    dtype: np.dtype


class CudaMemory:
    """Device buffers, pinned host buffers, one stream and timing events on one GPU (its primary context).

    Everything allocated here is freed by :meth:`close`; host arrays returned by :meth:`host_empty`
    must not be used after it.
    """

    library = "cuda-driver"

    def __init__(self, device: int = 0, driver: CudaDriver | None = None):
        self.driver = driver or CudaDriver()
        self.driver.call("cuInit", 0)
        count = ctypes.c_int(0)
        self.driver.call("cuDeviceGetCount", ctypes.byref(count))
        if count.value == 0:
            raise CudaUnavailable("The NVIDIA driver reports no GPU here; check 'nvidia-smi'.")
        if not 0 <= device < count.value:
            raise CudaUnavailable(f"GPU {device} does not exist here ({count.value} found); choose --device "
                                  f"0..{count.value - 1}.")
        self.device = ctypes.c_int(0)
        self.driver.call("cuDeviceGet", ctypes.byref(self.device), device)
        self.context = ctypes.c_void_p()
        self.driver.call("cuDevicePrimaryCtxRetain", ctypes.byref(self.context), self.device)
        self._device_bufs: list[int] = []
        self._host_bufs: list[int] = []
        self._events: list[int] = []
        self.stream = ctypes.c_void_p()
        self._closed = False
        self._thread = None
        self.activate()
        self.driver.call("cuStreamCreate", ctypes.byref(self.stream), _STREAM_NON_BLOCKING)

    def activate(self) -> None:
        """Make this device's primary context current in the calling thread."""
        self.driver.call("cuCtxSetCurrent", self.context)
        self._thread = threading.get_ident()

    def _here(self) -> None:
        """A context is current per thread: a call from another thread (a timing loop's) makes ours current there."""
        if threading.get_ident() != self._thread:
            self.activate()

    def device_empty(self, shape, dtype) -> DeviceBuffer:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        ptr = ctypes.c_uint64(0)
        self.activate()
        self.driver.call("cuMemAlloc_v2", ctypes.byref(ptr), max(nbytes, 1))
        self._device_bufs.append(ptr.value)
        return DeviceBuffer(ptr.value, nbytes, tuple(shape), dtype)

    def device_ptr(self, buf: DeviceBuffer) -> int:
        return int(buf.ptr)

    def host_empty(self, shape, dtype) -> np.ndarray:
        """A NumPy array in pinned (page-locked) host memory, so async copies really are asynchronous."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        ptr = ctypes.c_void_p()
        self.activate()
        self.driver.call("cuMemHostAlloc", ctypes.byref(ptr), max(count * dtype.itemsize, 1), 0)
        self._host_bufs.append(ptr.value)
        raw = (ctypes.c_byte * max(count * dtype.itemsize, 1)).from_address(ptr.value)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def h2d(self, dev: DeviceBuffer, host: np.ndarray) -> None:
        if host.nbytes > dev.nbytes:
            raise ValueError(f"host array of {host.nbytes} bytes does not fit the {dev.nbytes}-byte device buffer")
        self._here()
        self.driver.call("cuMemcpyHtoDAsync_v2", dev.ptr, host.ctypes.data, host.nbytes, self.stream)

    def d2h(self, host: np.ndarray, dev: DeviceBuffer) -> None:
        if host.nbytes > dev.nbytes:
            raise ValueError(f"host array of {host.nbytes} bytes is larger than the {dev.nbytes}-byte device buffer")
        self._here()
        self.driver.call("cuMemcpyDtoHAsync_v2", host.ctypes.data, dev.ptr, host.nbytes, self.stream)

    def event(self) -> ctypes.c_void_p:
        event = ctypes.c_void_p()
        self._here()
        self.driver.call("cuEventCreate", ctypes.byref(event), _EVENT_DEFAULT)
        self._events.append(event.value)
        return event

    def record(self, event) -> None:
        self._here()
        self.driver.call("cuEventRecord", event, self.stream)

    def elapsed_ms(self, start, end) -> float:
        ms = ctypes.c_float(0.0)
        self.driver.call("cuEventElapsedTime", ctypes.byref(ms), start, end)
        return float(ms.value)

    def synchronize(self) -> None:
        self.driver.call("cuStreamSynchronize", self.stream)

    @property
    def stream_handle(self) -> int:
        return int(self.stream.value or 0)

    def close(self) -> None:
        """Free every buffer, event and the stream, and release the primary context (errors ignored)."""
        if self._closed:
            return
        self._closed = True
        lib = self.driver.lib
        for ptr in self._device_bufs:
            lib.cuMemFree_v2(ptr)
        for ptr in self._host_bufs:
            lib.cuMemFreeHost(ptr)
        for event in self._events:
            lib.cuEventDestroy_v2(event)
        if self.stream.value:
            lib.cuStreamDestroy_v2(self.stream)
        lib.cuDevicePrimaryCtxRelease_v2(self.device)
        self._device_bufs, self._host_bufs, self._events = [], [], []


def open_cuda_memory(device: int = 0, library=None) -> CudaMemory:
    """:class:`CudaMemory` on GPU ``device``; :class:`CudaUnavailable` (one sentence) where there is none."""
    try:
        return CudaMemory(device, CudaDriver(library))
    except CudaError as exc:
        raise CudaUnavailable(f"The CUDA driver is installed but GPU {device} is not usable ({exc})") from exc


# ----------------------------------------------------------------------------- machine facts


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


__all__ = ["CudaDriver", "CudaDriverInfo", "CudaError", "CudaMemory", "CudaUnavailable", "DeviceBuffer", "GpuInfo",
           "compute_capability", "cuda_runtime_version", "is_jetson", "jetson_release", "open_cuda_memory",
           "probe_cuda_driver"]
