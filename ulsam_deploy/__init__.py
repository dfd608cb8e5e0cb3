"""ulsam-deploy: export, fuse, build and benchmark MobileNet + ULSAM models for TensorRT targets.

Importing the package is cheap: the model API (torch) loads on first use of its names.
"""

from ulsam_deploy._lazy import lazy_exports
from ulsam_deploy._version import __version__

__all__ = ["__version__", "build_model", "calibrate_batchnorm", "load_checkpoint", "save_checkpoint"]
__getattr__ = lazy_exports(__name__, {name: "ulsam_deploy.models" for name in __all__[1:]})
