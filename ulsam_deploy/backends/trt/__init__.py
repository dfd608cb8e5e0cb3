"""TensorRT: engine building (``build-trt``), engine sidecars and the compatibility check.

Importing this package never imports ``tensorrt`` (an optional dependency); the functions that
need it call :func:`ulsam_deploy.backends.trt.runtime.import_tensorrt`, which explains how to install it.

- :func:`ulsam_deploy.backends.trt.compat.check_engine_compat` - refuse an engine built for another TensorRT/GPU.
- :func:`ulsam_deploy.backends.trt.builder.build_serialized` - ONNX -> engine bytes (the file step is
  :mod:`ulsam_deploy.steps.build_trt`).
- :mod:`ulsam_deploy.backends.trt.settings` - the thin, testable mapping from options to builder settings.
"""
