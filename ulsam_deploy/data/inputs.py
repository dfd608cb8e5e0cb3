"""Inputs for ``bench``: seeded random tensors, or real images preprocessed as the model expects.

Images come from an ImageFolder-style directory (class sub-folders give the labels), a single
image file, a plain directory of images, or a glob. Labels are mapped to the model's class index:
a sub-folder named like a class in the metadata (``class_names``), or an integer sub-folder name,
or, with no class names in the metadata, the ImageFolder convention (sorted sub-folder index).
``label_regex`` takes the label from the file name instead (group 1: class index or class name),
e.g. ``'_(\\d+)$'`` for files named ``imagenet_03_990.png``.

Preprocessing is :class:`ulsam_deploy.data.images.Preprocess` (the one ``train`` uses), set from
the checkpoint / ONNX sidecar metadata (``meta.preprocess``, else size, channels, mean/std), flags
override: resize the shorter side to ``round(size / crop_pct)``, center-crop, grey or RGB,
``(x / 255 - mean) / std``. Without stored metadata ``crop_pct`` is 0.875 (the usual ImageNet
evaluation crop) for inputs of 64 pixels or more, and 1.0 (plain resize) below.

Unreadable or corrupt images are skipped and counted; they never stop the run.
"""

from __future__ import annotations

import glob as globlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ulsam_deploy.data.images import IMAGE_EXTENSIONS, Preprocess
from ulsam_deploy.errors import UserError

DEFAULT_CROP_PCT = 0.875
SMALL_INPUT = 64


def make_preprocess(size: int, channels: int = 3, mean=None, std=None, *, meta_preprocess: dict | None = None,
                    resize: int | None = None, crop_pct: float | None = None) -> Preprocess:
    """The model's preprocessing: stored ``preprocess`` metadata first, then mean/std/size, then flags.

    ``resize`` (shorter side before the center crop) and ``crop_pct`` are alternatives; without
    either, ``crop_pct`` is 0.875 for inputs of 64 pixels or more and 1.0 (plain resize) below.
    """
    if meta_preprocess:
        try:
            base = Preprocess.from_dict(meta_preprocess)
        except (KeyError, TypeError, ValueError):
            base = None
        if base is not None and base.size == int(size) and base.in_channels == int(channels):
            mean = base.mean if mean is None else mean
            std = base.std if std is None else std
            crop_pct = base.crop_pct if crop_pct is None and resize is None else crop_pct
    size, channels = int(size), int(channels)
    if channels not in (1, 3):
        raise UserError(f"Models with {channels} input channels cannot take images; bench them on random inputs.")
    if resize is not None:
        if int(resize) < size:
            raise UserError(f"--resize {resize} is smaller than the input size {size}; use at least {size}.")
        crop_pct = size / int(resize)
    elif crop_pct is None:
        crop_pct = DEFAULT_CROP_PCT if size >= SMALL_INPUT else 1.0
    mean = _per_channel(mean if mean is not None else (0.485, 0.456, 0.406), channels, "mean")
    std = _per_channel(std if std is not None else (0.229, 0.224, 0.225), channels, "std")
    if any(s <= 0 for s in std):
        raise UserError(f"--std values must be positive, not {list(std)}.")
    if not 0 < float(crop_pct) <= 1:
        raise UserError(f"--crop-pct must be in (0, 1], not {crop_pct}.")
    return Preprocess(size=size, in_channels=channels, crop_pct=float(crop_pct), mean=mean, std=std)


def _per_channel(values, channels: int, what: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if channels == 1 and len(values) == 3:  # RGB statistics for a grey model: use their average
        return (sum(values) / 3.0,)
    raise UserError(f"--{what} has {len(values)} values but the model takes {channels} channels; give {channels} (or 1).")


@dataclass
class InputSet:
    """Inputs shared by every backend: ``data`` [N, C, H, W] float32, ``labels`` [N] (-1 unknown) or None."""

    data: np.ndarray
    labels: np.ndarray | None = None
    names: list[str] = field(default_factory=list)
    source: str = "random"
    skipped: list[tuple[str, str]] = field(default_factory=list)
    preprocess: Preprocess | None = None
    seed: int | None = None
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def has_labels(self) -> bool:
        return self.labels is not None and bool((self.labels >= 0).any())

    def batch(self, size: int) -> np.ndarray:
        """The first ``size`` inputs (repeated when fewer exist): the latency batch."""
        n = len(self)
        if size <= n:
            return np.ascontiguousarray(self.data[:size])
        reps = -(-size // n)
        return np.ascontiguousarray(np.concatenate([self.data] * reps)[:size])

    def describe(self) -> dict:
        info = {"source": self.source, "count": len(self), "shape": list(self.data.shape[1:]),
                "labelled": int((self.labels >= 0).sum()) if self.labels is not None else 0,
                "skipped": len(self.skipped)}
        if self.seed is not None:
            info["seed"] = self.seed
        if self.preprocess is not None:
            info["preprocess"] = self.preprocess.to_dict()
        if self.skipped:
            info["skipped_files"] = [{"path": p, "reason": r} for p, r in self.skipped[:50]]
        return info


def random_inputs(count: int, channels: int, size: int, seed: int = 0) -> InputSet:
    """Seeded N(0, 1) tensors: the statistics of normalized images, identical on every run."""
    if count < 1:
        raise UserError(f"--num-inputs must be at least 1, not {count}.")
    data = np.random.default_rng(seed).standard_normal((count, channels, size, size)).astype(np.float32)
    return InputSet(data=data, source="random", seed=seed)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _normalize(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", name.lower())


def _class_lookup(class_names: Sequence[str] | None) -> dict[str, int]:
    table: dict[str, int] = {}
    for index, name in enumerate(class_names or []):
        for alias in str(name).split(","):
            table.setdefault(_normalize(alias), index)
    return table


def _label_for(name: str, lookup: dict[str, int], num_classes: int | None) -> int | None:
    """A class index from a folder or file-name token: an integer, or a class name from the metadata."""
    token = name.strip()
    if re.fullmatch(r"\d+", token):
        value = int(token)
        return value if num_classes is None or value < num_classes else None
    return lookup.get(_normalize(token))


def discover_images(spec: str | os.PathLike, label_regex: str | None = None) -> tuple[list[Path], list[str | None], str]:
    """Files and raw label tokens for ``spec`` (dir, ImageFolder dir, file or glob); kind for messages."""
    text = str(spec)
    path = Path(text).expanduser()
    if any(ch in text for ch in "*?[") and not path.exists():
        files = sorted(Path(p) for p in globlib.glob(os.path.expanduser(text), recursive=True))
        files = [f for f in files if _is_image(f)]
        if not files:
            raise UserError(f"No image files match '{text}'; check the pattern (supported: {', '.join(IMAGE_EXTENSIONS)}).")
        return files, [None] * len(files), "glob"
    if not path.exists():
        raise UserError(f"Input '{text}' does not exist; give an image, a folder of images, an ImageFolder directory or a glob.")
    if path.is_file():
        return [path], [None], "file"
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    class_files: list[tuple[Path, str]] = []
    for sub in subdirs:
        class_files += [(f, sub.name) for f in sorted(sub.rglob("*")) if _is_image(f)]
    loose = sorted(f for f in path.iterdir() if _is_image(f))
    if class_files and not loose:
        return [f for f, _ in class_files], [c for _, c in class_files], "imagefolder"
    files = loose + [f for f, _ in class_files]
    if not files:
        raise UserError(f"'{path}' holds no image files ({', '.join(IMAGE_EXTENSIONS)}) directly or in class sub-folders.")
    return files, [None] * len(files), "folder"


def load_images(spec: str | os.PathLike, preprocess: Preprocess, *, class_names: Sequence[str] | None = None,
                num_classes: int | None = None, label_regex: str | None = None, limit: int | None = None) -> InputSet:
    """Read, preprocess and label images; corrupt or unreadable files are skipped and listed."""
    from PIL import Image, UnidentifiedImageError

    files, tokens, kind = discover_images(spec, label_regex)
    if label_regex:
        try:
            pattern = re.compile(label_regex)
        except re.error as exc:
            raise UserError(f"--label-regex '{label_regex}' is not a valid regular expression ({exc}).") from None
        if pattern.groups < 1:
            raise UserError(f"--label-regex '{label_regex}' needs one group, e.g. '_(\\d+)$', to capture the class.")
        tokens = []
        for f in files:
            m = pattern.search(f.stem)
            tokens.append(m.group(1) if m else None)
    if limit is not None:
        files, tokens = files[:limit], tokens[:limit]

    warnings: list[str] = []
    lookup = _class_lookup(class_names)
    labels: list[int] | None = None
    if any(t is not None for t in tokens):
        folder_names = sorted({t for t in tokens if t is not None})
        mapped = {t: _label_for(t, lookup, num_classes) for t in folder_names}
        if kind == "imagefolder" and not class_names and not all(v is not None for v in mapped.values()):
            # ImageFolder convention: classes are the sorted sub-folder names
            mapped = {t: i for i, t in enumerate(folder_names)}
            warnings.append("labels follow the ImageFolder convention (sorted sub-folder index): the model has no "
                            "class names to match the folder names against")
        unknown = [t for t, v in mapped.items() if v is None]
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            warnings.append(f"{len(unknown)} label(s) match no class of the model ({shown}); those images count "
                            "for parity and latency, not for accuracy")
        labels = [(-1 if t is None or mapped.get(t) is None else int(mapped[t])) for t in tokens]

    arrays, names, kept_labels, skipped = [], [], [], []
    for index, f in enumerate(files):
        try:
            with Image.open(f) as image:
                image.load()
                arrays.append(preprocess.to_uint8(image))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            skipped.append((str(f), (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]))
            continue
        names.append(str(f))
        if labels is not None:
            kept_labels.append(labels[index])
    if skipped:
        warnings.append(f"skipped {len(skipped)} unreadable or corrupt image(s), e.g. {skipped[0][0]}: {skipped[0][1]}")
    if not arrays:
        raise UserError(f"None of the {len(files)} image(s) in '{spec}' could be read; check that they are valid images.")
    return InputSet(data=np.ascontiguousarray(preprocess.normalize(np.stack(arrays))), labels=np.asarray(kept_labels, dtype=np.int64) if labels is not None else None,
                    names=names, source=f"{kind}:{spec}", skipped=skipped, preprocess=preprocess, warnings=warnings)


__all__ = ["IMAGE_EXTENSIONS", "InputSet", "Preprocess", "discover_images", "load_images", "make_preprocess", "random_inputs"]
