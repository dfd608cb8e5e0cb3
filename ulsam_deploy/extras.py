"""Optional dependency groups: the base install runs ONNX-side commands without torch (a Jetson board);
commands that need more say so in one sentence with the exact install command."""

from __future__ import annotations

import importlib.util

from ulsam_deploy.errors import BackendUnavailable

# module -> the extra of pyproject.toml that installs it
EXTRA_OF = {"torch": "export", "onnxsim": "export", "triton": "kernels", "onnxruntime_extensions": "ort-ops"}


def missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(command: str, *modules: str) -> None:
    """Raise BackendUnavailable (exit 4) naming the first missing module and the extra that brings it."""
    absent = missing(*modules)
    if absent:
        extra = EXTRA_OF.get(absent[0], "all")
        raise BackendUnavailable(f"'ulsam-deploy {command}' needs {absent[0]}, which this install lacks; install it "
                                 f"with: pip install 'ulsam-deploy[{extra}]'.")


__all__ = ["EXTRA_OF", "missing", "require"]
