"""Checkpoint I/O.

Our format is self-describing (config, class names, input size, mean/std, state dict), so
``export ckpt.pt`` needs no flags. Foreign layouts are accepted too: a bare state dict,
``{"state_dict": ...}``, ``{"model": ...}``, keys prefixed by ``module.`` or ``model.``; their
config comes from flags, or is inferred from the tensor shapes when flags are absent.
Files are always read with ``weights_only=True``: nothing in a checkpoint is executed.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ulsam_deploy.errors import CheckpointError, ConfigError
from ulsam_deploy.artifacts import atomic_target
from ulsam_deploy.models.config import ModelConfig
from ulsam_deploy.models.mobilenet import MobileNetULSAM
from ulsam_deploy.models.ulsam import ULSAM

FORMAT = "ulsam-deploy/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class CheckpointInfo:
    """What a checkpoint says about itself, beside the weights."""

    config: ModelConfig
    class_names: list[str] | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    meta: dict = field(default_factory=dict)
    source_format: str = FORMAT
    inferred: bool = False  # config inferred from tensor shapes rather than stored or given

    @property
    def input_size(self) -> int:
        return self.config.input_size


def save_checkpoint(model: MobileNetULSAM, path: str | os.PathLike, *, class_names=None,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD, **meta) -> Path:
    """Write a self-describing checkpoint atomically (temp file, then rename)."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "config": model.config.to_dict(),
        "class_names": list(class_names) if class_names is not None else None,
        "input_size": model.config.input_size,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "meta": meta,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_target(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint_file(path: str | os.PathLike) -> object:
    """``torch.load(weights_only=True)`` with one-sentence errors for missing/corrupt/unsafe/foreign files.

    The sentences are ours, never PyTorch's (its messages run to paragraphs about ``weights_only``)."""
    from ulsam_deploy.artifacts import check_input_file
    from ulsam_deploy.limits import HEADROOM, available_memory

    path = check_input_file(path, "checkpoint", "check the path", remake="re-export or re-download it",
                            error=CheckpointError)
    size = path.stat().st_size
    if size * 2 > available_memory() * HEADROOM:  # the file's bytes and the tensors read from them
        raise CheckpointError(f"Checkpoint '{path}' is {size / 2**30:.1f} GiB, more than this machine can load; it is "
                              "not a MobileNet checkpoint, or load it on a larger machine.")
    unpacked = _unpacked_size(path)
    if unpacked * 2 > available_memory() * HEADROOM:
        raise CheckpointError(f"Checkpoint '{path}' unpacks to {unpacked / 2**30:.1f} GiB ({size / 2**20:.1f} MiB on "
                              "disk), more than this machine can load; it is not a MobileNet checkpoint (a zip bomb?), "
                              "or load it on a larger machine.")
    kind = _foreign_kind(path)
    if kind is not None:
        where = (" (ONNX models go to 'ulsam-deploy fuse', 'convert', 'build-trt' or 'bench')"
                 if kind == "an ONNX model" else "")
        raise CheckpointError(f"'{path}' is {kind}, not a PyTorch checkpoint; pass the .pt/.pth file{where}.")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's business
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found or "GLOBAL" in str(exc):
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"Checkpoint '{path}' contains Python objects{what} beyond tensors and plain data, which are not "
                "loaded for safety (weights_only=True); re-save it as a state dict: torch.save(model.state_dict(), "
                "path)."
            ) from exc
        raise CheckpointError(f"Checkpoint '{path}' is {_damage(path)}; re-export or re-download it.") from exc
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch.load raises anything at all on a damaged file
        raise CheckpointError(f"Checkpoint '{path}' is {_damage(path)}; re-export or re-download it.") from exc


def _unpacked_size(path: Path) -> int:
    """What a checkpoint's zip (torch.save's format) says its members unpack to; the file size otherwise."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return sum(max(0, info.file_size) for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return path.stat().st_size


def _damage(path: Path) -> str:
    """What is wrong with a file torch.load refused, in our words."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == b"PK\x03\x04":
        return "truncated or corrupt (its zip archive is incomplete or damaged)"
    if head[:1] == b"\x80":
        return "truncated or corrupt (an incomplete or damaged pickle)"
    return "corrupt or not a PyTorch file (no zip archive or pickle inside)"


def _foreign_kind(path: Path) -> str | None:
    """'an ONNX model', 'a JSON file'... when the file is recognisably something other than a checkpoint."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None  # torch's zip format, or its legacy pickle
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff")):
        return "an image"
    if path.suffix.lower() in (".engine", ".plan", ".trt"):
        return "a TensorRT engine"
    if (head[:1] == b"\x08" or path.suffix.lower() == ".onnx") and _is_onnx(path):  # ModelProto starts with ir_version
        return "an ONNX model"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if all(ch.isprintable() or ch.isspace() for ch in text):
        return "a JSON file" if text.lstrip()[:1] in ("{", "[") else "a text file"
    return None


def _is_onnx(path: Path) -> bool:
    try:
        import onnx

        return bool(onnx.load(str(path), load_external_data=False).graph.node)
    except Exception:  # noqa: BLE001 - not ONNX either: torch.load will say it is damaged
        return False


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj) and all(
        isinstance(v, torch.Tensor) for v in obj.values())


def _strip_prefixes(state: dict) -> dict:
    for prefix in ("module.", "model.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensors(state: dict, path) -> dict:
    """Refuse tensors that would be cast or could not be read as weights: quantized, integer or complex values where
    floats belong, sparse or other non-dense layouts, and tensors without data (the meta device)."""
    for key, value in state.items():
        what = None
        if value.layout != torch.strided:
            what = f"a {str(value.layout).replace('torch.', '')} tensor (dense weights expected)"
        elif value.device.type == "meta":
            what = "a tensor without data (the meta device)"
        elif key.endswith("num_batches_tracked"):
            if value.dtype.is_floating_point or value.dtype.is_complex:
                what = f"{str(value.dtype).replace('torch.', '')} (an integer count expected)"
        elif value.dtype not in FLOAT_DTYPES:
            what = f"{str(value.dtype).replace('torch.', '')} values (float weights expected; nothing is cast)"
        elif value.untyped_storage().nbytes() >= value.numel() * value.element_size() \
                and not bool(torch.isfinite(value).all()):  # (an expanded, stride-0 tensor is bounded later)
            raise CheckpointError(f"'{path}' holds NaN or Inf weights at '{key}' (a diverged or damaged training run); "
                                  "export a checkpoint from before the loss diverged.")
        if what is not None:
            raise CheckpointError(f"'{path}' holds {what} at '{key}'; save the float model's state_dict "
                                  "(dequantized, dense, on the CPU) and export that.")
    return state


def extract_state_dict(obj: object, path: str | os.PathLike = "checkpoint") -> tuple[dict, dict]:
    """Return (state_dict, container) for any accepted layout; every tensor is checked (:func:`check_tensors`)."""
    container: dict = obj if isinstance(obj, dict) else {}
    if _is_state_dict(obj):
        return check_tensors(_strip_prefixes(dict(obj)), path), {}
    for key in ("state_dict", "model", "model_state_dict", "weights"):
        inner = container.get(key)
        if _is_state_dict(inner):
            return check_tensors(_strip_prefixes(dict(inner)), path), container
    raise CheckpointError(
        f"'{path}' holds no state dict (expected tensors, or a dict with 'state_dict' or 'model'); "
        "save it with torch.save(model.state_dict(), path)."
    )


_ULSAM_KEY = re.compile(r"^(features\.(\d+)|ulsam_after\.(\d+))\.subspaces\.(\d+)\.conv_dws\.weight$")


def infer_config(state: dict, input_size: int = 224) -> ModelConfig:
    """Infer arch, width, ULSAM positions, groups and classes from tensor names and shapes."""
    if "features.0.0.weight" not in state or "classifier.1.weight" not in state:
        raise CheckpointError(
            "The state dict does not look like an MV1/MV2 network of this project or torchvision "
            "(no 'features.0.0.weight' / 'classifier.1.weight'); pass --arch and the other flags if it is one."
        )
    arch = "mv2" if any(".conv.0." in k or ".conv.1." in k for k in state) else "mv1"
    stem = state["features.0.0.weight"].shape[0]
    width = round(stem / 32, 4)
    if arch == "mv1":
        width = next((w for w in (1.0, 0.75, 0.5, 0.25, 1.25, 1.5, 2.0) if int(32 * w) == stem), width)
    else:
        from ulsam_deploy.models.config import make_divisible
        width = next((w for w in (1.0, 0.75, 0.5, 0.35, 1.3, 1.4, 1.5, 2.0) if make_divisible(32 * w) == stem), width)
    groups: dict[str, set[int]] = {}
    for key in state:
        m = _ULSAM_KEY.match(key)
        if m:
            pos = f"{int(m.group(2)) + 1}" if m.group(2) else f"{m.group(3)}:1"
            groups.setdefault(pos, set()).add(int(m.group(4)))
    counts = {len(v) for v in groups.values()}
    g = counts.pop() if len(counts) == 1 else 4
    plain = bool(groups) and not any(".bn_dws." in k for k in state)
    return ModelConfig(arch=arch, width=width, ulsam=",".join(groups), groups=g,
                       num_classes=state["classifier.1.weight"].shape[0], input_size=input_size,
                       in_channels=state["features.0.0.weight"].shape[1], plain_ulsam=plain)


def load_checkpoint(path: str | os.PathLike, **overrides) -> MobileNetULSAM:
    """Load any accepted checkpoint into an eval-mode model (config from file, flags, or shapes)."""
    model, _ = load_checkpoint_with_info(path, **overrides)
    return model


def load_checkpoint_with_info(path: str | os.PathLike, **overrides) -> tuple[MobileNetULSAM, CheckpointInfo]:
    obj = read_checkpoint_file(path)
    state, container = extract_state_dict(obj, path)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    stored = container.get("config") if isinstance(container.get("config"), dict) else None
    inferred = False
    try:
        if stored is not None:
            config_dict = dict(stored)
            conflicts = {k: (config_dict.get(k), v) for k, v in overrides.items()
                         if k in config_dict and k not in ("input_size",) and _differs(config_dict[k], v, k)}
            if conflicts:
                desc = ", ".join(f"--{k.replace('_', '-')} {v!s} (checkpoint: {c!s})" for k, (c, v) in conflicts.items())
                raise CheckpointError(
                    f"'{path}' is a self-describing checkpoint and {desc} contradicts it; drop those flags."
                )
            config_dict.update(overrides)
            config = ModelConfig.from_dict(config_dict)
        else:
            size = overrides.get("input_size", container.get("input_size", 224))
            try:
                guess = infer_config(state, size)
            except CheckpointError:
                guess = None
            if guess is None and "arch" not in overrides:
                raise CheckpointError(
                    f"'{path}' carries no model config and its keys do not reveal one; pass --arch, --width, --ulsam, "
                    "--groups and --num-classes."
                )
            same_arch = guess is not None and ("arch" not in overrides or ModelConfig(arch=overrides["arch"]).arch == guess.arch)
            base = guess.to_dict() if same_arch else {}
            base.update(overrides)
            config = ModelConfig.from_dict(base)
            inferred = guess is not None and not overrides.keys() & {"arch", "width", "ulsam", "groups", "num_classes"}
    except (ConfigError, TypeError, ValueError) as exc:  # a stored config is untrusted input
        raise CheckpointError(f"Cannot use '{path}': {exc}") from None
    try:
        model = MobileNetULSAM(config)
    except ConfigError as exc:
        raise CheckpointError(f"Cannot build the model for '{path}': {exc}") from exc
    _load_strict(model, state, path)
    model.eval()
    info = CheckpointInfo(
        config=config,
        class_names=_class_names(container.get("class_names"), config.num_classes, path),
        mean=_stats(container.get("mean"), IMAGENET_MEAN, "mean", path),
        std=_stats(container.get("std"), IMAGENET_STD, "std", path),
        meta=container.get("meta") if isinstance(container.get("meta"), dict) else {},
        source_format=str(container.get("format", "state_dict")),
        inferred=inferred,
    )
    return model, info


def _class_names(value, num_classes: int, path) -> list[str] | None:
    """Stored class names: None, or one string per class (anything else is refused, never guessed)."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise CheckpointError(f"'{path}' stores class names that are not a list of strings; re-save the checkpoint.")
    if len(value) != num_classes:
        raise CheckpointError(f"'{path}' stores {len(value)} class names for {num_classes} classes; re-save the "
                              "checkpoint with one name per class.")
    return list(value)


def _stats(value, default: tuple[float, ...], what: str, path) -> tuple[float, ...]:
    """Stored mean/std: 1 or 3 finite numbers (std positive); absent means ImageNet's."""
    import math

    if value is None:
        return default
    ok = isinstance(value, (list, tuple)) and len(value) in (1, 3) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok or (what == "std" and not all(v > 0 for v in value)):
        raise CheckpointError(f"'{path}' stores an invalid {what} ({value!r}); it needs 1 or 3 finite numbers"
                              + (", all positive" if what == "std" else "") + ".")
    return tuple(float(v) for v in value)


def _differs(stored, given, key) -> bool:
    if key == "ulsam":
        return ModelConfig(ulsam=stored or "").ulsam != ModelConfig(ulsam=given or "").ulsam
    if key == "arch":
        return ModelConfig(arch=stored).arch != ModelConfig(arch=given).arch
    if isinstance(stored, float) or isinstance(given, float):
        return abs(float(stored) - float(given)) > 1e-9
    return stored != given


def _safe_infer(state: dict, input_size: int) -> ModelConfig | None:
    try:
        return infer_config(state, int(input_size))
    except (CheckpointError, ConfigError):
        return None


def _load_strict(model: MobileNetULSAM, state: dict, path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                   if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        if wrong_shape:
            parts.append(f"wrong shape {_few(wrong_shape)}")
        guess = _safe_infer(state, model.config.input_size)
        hint = ""
        if guess is not None and guess.to_dict() != model.config.to_dict():
            hint = (f" The weights look like: --arch {guess.arch} --width {guess.width:g} --ulsam '{guess.ulsam}' "
                    f"--groups {guess.groups} --num-classes {guess.num_classes}.")
        raise CheckpointError(
            f"'{path}' does not fit {model.config.describe()}: {'; '.join(parts)}.{hint}"
            + ("" if hint else " Check --arch/--width/--ulsam/--groups/--num-classes.")
        )
    model.load_state_dict(state, strict=True)


def _few(items: list[str], n: int = 4) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")


# ------------------------------------------------------------------------ pretrained (torchvision)

@dataclass
class PretrainedReport:
    loaded: int
    skipped: list[str]  # keys of substituted layers or mismatched heads
    fresh: list[str]  # keys of the model left at their init (ULSAM blocks, new head)

    def summary(self) -> str:
        return (f"loaded {self.loaded} tensors, skipped {len(self.skipped)} (replaced layers / other head), "
                f"{len(self.fresh)} left at fresh init (ULSAM / new head)")


def load_pretrained(model: MobileNetULSAM, source) -> PretrainedReport:
    """Load torchvision-layout weights (a path or a state dict) into a model with ULSAM anywhere.

    Tensors of layers that ULSAM replaces, and a classifier of another size, are skipped and
    reported; ULSAM blocks keep their fresh init. No manual key surgery needed.
    """
    state = source if isinstance(source, dict) else extract_state_dict(read_checkpoint_file(source), source)[0]
    state = _strip_prefixes(dict(state))
    target = model.state_dict()
    replaced = {f"features.{i}." for i, layer in enumerate(model.features) if isinstance(layer, ULSAM)}
    usable, skipped = {}, []
    for key, tensor in state.items():
        if any(key.startswith(p) for p in replaced) or key not in target or target[key].shape != tensor.shape:
            skipped.append(key)
        else:
            usable[key] = tensor
    if not usable:
        raise CheckpointError("None of the pretrained tensors fit this model; check that they are MobileNet-V2 weights in torchvision's layout.")
    model.load_state_dict(usable, strict=False)
    fresh = [k for k in target if k not in usable]
    return PretrainedReport(loaded=len(usable), skipped=skipped, fresh=fresh)
