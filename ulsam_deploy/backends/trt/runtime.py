"""Finding TensorRT's Python package (an optional dependency) and saying how to get it when absent."""

from __future__ import annotations

import re
from types import ModuleType

from ulsam_deploy.errors import BackendUnavailable
from ulsam_deploy.backends.trt.cuda_driver import is_jetson

INSTALL_X86 = "pip install tensorrt (x86_64 / SBSA; the wheel brings its own TensorRT libraries)"
INSTALL_JETSON = ("sudo apt-get install python3-libnvinfer (JetPack's TensorRT bindings), then recreate the venv with "
                  "'python3 -m venv --system-site-packages .venv' so it sees them")


class TensorRTUnavailable(BackendUnavailable):
    """TensorRT's Python package cannot be imported here."""


def install_hint(jetson: bool | None = None) -> str:
    return INSTALL_JETSON if (is_jetson() if jetson is None else jetson) else INSTALL_X86


def import_tensorrt() -> ModuleType:
    """``import tensorrt`` or raise :class:`TensorRTUnavailable` with one sentence on how to get it."""
    try:
        import tensorrt as trt  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise TensorRTUnavailable(f"TensorRT's Python package is not installed; install it: {install_hint()}.") from exc
    except Exception as exc:  # noqa: BLE001 - a broken install (missing libnvinfer, stub package) raises anything
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise TensorRTUnavailable(f"TensorRT's Python package is installed but does not load ({first}); "
                                  f"reinstall it: {install_hint()}.") from exc
    if not hasattr(trt, "Builder"):
        raise TensorRTUnavailable(f"The installed 'tensorrt' package has no Builder (a stub or a lean/dispatch-only "
                                  f"runtime); install the full package: {install_hint()}.")
    return trt


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except TensorRTUnavailable:
        return False
    return True


def parse_version(text: str) -> tuple[int, ...]:
    """'10.3.0.30' -> (10, 3, 0, 30); suffixes such as 'post1' or 'rc1' are ignored."""
    return tuple(int(part) for part in re.findall(r"\d+", str(text).split("+")[0])[:4])


def version_of(trt: ModuleType) -> str:
    return str(getattr(trt, "__version__", "0"))


def major_of(trt: ModuleType) -> int:
    version = parse_version(version_of(trt))
    return version[0] if version else 0
