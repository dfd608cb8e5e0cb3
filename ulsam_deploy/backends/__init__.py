"""Backends, one folder per framework (loader + runner, as Polygraphy arranges them), behind one
runner interface (:mod:`.base`) and judged by one function (:mod:`.judge`).

Names load lazily: importing this package imports no framework.
"""

from ulsam_deploy._lazy import lazy_exports

_EXPORTS = {
    "Runner": "ulsam_deploy.backends.base",
    "RunnerUnavailable": "ulsam_deploy.backends.base",
    "OrtRunner": "ulsam_deploy.backends.onnxrt.runner",
    "TorchRunner": "ulsam_deploy.backends.torch.runner",
    "TrtRunner": "ulsam_deploy.backends.trt.runner",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
