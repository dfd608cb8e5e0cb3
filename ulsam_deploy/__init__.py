"""ulsam-deploy: export, fuse, build and benchmark MobileNet + ULSAM models for TensorRT targets."""

__version__ = "0.1.0"

from .models import build_model, load_checkpoint, save_checkpoint  # noqa: E402

__all__ = ["__version__", "build_model", "load_checkpoint", "save_checkpoint"]
