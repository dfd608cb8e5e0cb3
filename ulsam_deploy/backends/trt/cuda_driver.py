"""Old import path of :mod:`ulsam_deploy.backends.trt.cuda` (``bench`` still imports it from here)."""

from ulsam_deploy.backends.trt.cuda import (CudaDriverInfo, GpuInfo, cuda_runtime_version, is_jetson,  # noqa: F401
                                            jetson_release, probe_cuda_driver)
