"""PyTorch as a bench backend: runs the model's checkpoint (eval mode)."""

from __future__ import annotations

from ulsam_deploy import extras
from ulsam_deploy.backends.registry import Backend, NoArtifact


def _missing() -> str | None:
    if extras.missing("torch"):
        return f"PyTorch is not installed; install it with: {extras.install_command('torch')}"
    return None


def _open(model, options):
    if model.module is None:
        raise NoArtifact("no checkpoint for this model (pass the .pt, or an ONNX whose sidecar names an existing "
                         "checkpoint)")
    from ulsam_deploy.backends.torch.runner import TorchRunner

    yield (TorchRunner(model.module, options.torch_device, options.threads),
           str(model.checkpoint) if model.checkpoint else model.name)


BACKEND = Backend("torch", 0, "PyTorch eager on the checkpoint", _missing, _open)
