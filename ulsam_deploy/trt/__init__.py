"""TensorRT: engine building (``build-trt``), engine sidecars and the compatibility check.

Importing this package never imports ``tensorrt`` (an optional dependency); the functions that
need it call :func:`ulsam_deploy.trt.runtime.import_tensorrt`, which explains how to install it.

- :func:`ulsam_deploy.trt.compat.check_engine_compat` - refuse an engine built for another TensorRT/GPU.
- :func:`ulsam_deploy.trt.build.build_engine` - ONNX -> raw engine file + ``.engine.json`` sidecar.
- :mod:`ulsam_deploy.trt.settings` - the thin, testable mapping from options to builder settings.
"""

from .compat import EngineMismatch, RuntimeInfo, check_engine_compat, engine_sidecar_path, read_engine_sidecar
from .runtime import TensorRTUnavailable, import_tensorrt, install_hint

__all__ = ["EngineMismatch", "RuntimeInfo", "TensorRTUnavailable", "check_engine_compat", "engine_sidecar_path",
           "import_tensorrt", "install_hint", "read_engine_sidecar"]
