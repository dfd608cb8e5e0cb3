"""Real images for the precision passes: calibration (int8) and verification (fp16 and int8).

Sources, all real data:

- a directory of images: ImageFolder layout (one sub-directory per class) or a flat directory;
  ImageFolder classes become labels when their names match the model's class names (or are integers);
- a directory holding Fashion-MNIST-style idx files (``train-images-idx3-ubyte.gz`` ...), read as
  the ``train`` split for calibration and the ``test`` split for verification;
- :func:`fashion_mnist_set` and :func:`foolbox_imagenet_set` (the 20 labelled ImageNet photos
  shipped in PyPI's foolbox), used by :func:`default_verify_set` when no directory is given.

Pixels go through :class:`ulsam_deploy.data.images.Preprocess`, the one definition training,
evaluation and benchmarking share.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ulsam_deploy.data.images import IMAGE_EXTENSIONS, Preprocess, load_image_uint8
from ulsam_deploy.errors import UserError

IDX_SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@dataclass
class EvalSet:
    """Normalised images ``float32 [N, C, H, W]``, optional labels ``int64 [N]``, and where they came from."""

    images: np.ndarray
    labels: np.ndarray | None
    source: str

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError("labels and images differ in length")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def to_dict(self) -> dict:
        return {"source": self.source, "samples": len(self), "labelled": self.labelled}


# ------------------------------------------------------------------------------ preprocessing


def preprocess_from_sidecar(sidecar: dict) -> Preprocess:
    """How the model's inputs were made: the checkpoint's stored ``preprocess``, else its config and mean/std.

    Without a stored recipe, 3-channel models of 160 px and more get ImageNet's "resize to
    size/0.875, center crop"; smaller ones a plain resize.
    """
    meta = (sidecar.get("checkpoint_meta") or {}).get("preprocess")
    if isinstance(meta, dict):
        try:
            return Preprocess.from_dict(meta)
        except (KeyError, TypeError, ValueError):
            pass
    config = sidecar.get("config") or {}
    size = int(config.get("input_size") or sidecar["input"]["shape"][-1])
    channels = int(config.get("in_channels") or sidecar["input"]["shape"][1])
    mean = tuple(sidecar.get("mean") or ((0.5,) * channels))
    std = tuple(sidecar.get("std") or ((0.5,) * channels))
    crop = 0.875 if channels == 3 and size >= 160 else 1.0
    return Preprocess(size=size, in_channels=channels, crop_pct=crop, mean=mean, std=std)


# ------------------------------------------------------------------------------------ helpers


def _norm_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", name.lower())


def _subset(count: int, limit: int | None, seed: int) -> np.ndarray:
    """Indices of a seeded random subset (all, in order, when ``limit`` is None or large enough)."""
    if limit is None or limit >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).permutation(count)[:limit])


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    return None


def is_idx_dir(folder: Path) -> bool:
    return any(_find_idx(folder, images) for images, _ in IDX_SPLITS.values())


def _images_from_uint8(raw: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """``uint8 [N, H, W]`` grey pictures -> normalised ``float32 [N, C, size, size]`` via the shared Preprocess."""
    from PIL import Image

    if raw.shape[1:] == (preprocess.size, preprocess.size) and preprocess.in_channels == 1 and preprocess.crop_pct == 1.0:
        batch = raw[:, None]
    else:
        batch = np.stack([preprocess.to_uint8(Image.fromarray(img, mode="L")) for img in raw])
    return preprocess.normalize(batch)


# ------------------------------------------------------------------------------------ sources


def load_idx_set(folder: str | os.PathLike, preprocess: Preprocess, split: str = "test", limit: int | None = None,
                 seed: int = 0) -> EvalSet:
    """Fashion-MNIST / MNIST style idx files in ``folder`` (split ``train`` or ``test``)."""
    from ulsam_deploy.data.fashion_mnist import read_idx

    folder = Path(folder)
    images_stem, labels_stem = IDX_SPLITS[split]
    images_path = _find_idx(folder, images_stem)
    if images_path is None:
        other = "test" if split == "train" else "train"
        images_stem, labels_stem = IDX_SPLITS[other]
        images_path = _find_idx(folder, images_stem)
        split = other
    if images_path is None:
        raise UserError(f"'{folder}' holds no idx image files (train-images-idx3-ubyte[.gz] or t10k-...).")
    raw = read_idx(images_path)
    if raw.ndim != 3:
        raise UserError(f"'{images_path}' holds {raw.ndim}-D data, not [N, H, W] images.")
    labels_path = _find_idx(folder, labels_stem)
    labels = read_idx(labels_path).astype(np.int64) if labels_path else None
    if labels is not None and len(labels) != len(raw):
        raise UserError(f"'{images_path}' and '{labels_path}' hold different numbers of items; reinstall the data set.")
    pick = _subset(len(raw), limit, seed)
    return EvalSet(_images_from_uint8(raw[pick], preprocess), labels[pick] if labels is not None else None,
                   f"{folder} ({split} split, idx)")


def list_image_files(folder: Path) -> tuple[list[Path], list[str] | None]:
    """Image files of a flat directory, or of an ImageFolder tree with the class (sub-directory) of each."""
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        files, classes = [], []
        for sub in subdirs:
            for path in sorted(sub.rglob("*")):
                if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                    files.append(path)
                    classes.append(sub.name)
        return files, classes
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    return files, None


def _labels_for(classes: list[str], class_names: list[str] | None, num_classes: int | None) -> np.ndarray | None:
    """ImageFolder class names -> model class indices, when every folder name is unambiguous; else None."""
    unique = sorted(set(classes))
    mapping: dict[str, int] = {}
    if class_names:
        lookup = {_norm_name(n): i for i, n in enumerate(class_names)}
        for name in unique:
            if _norm_name(name) in lookup:
                mapping[name] = lookup[_norm_name(name)]
    if len(mapping) != len(unique) and all(n.isdigit() for n in unique):
        mapping = {n: int(n) for n in unique}
        if num_classes is not None and any(v >= num_classes for v in mapping.values()):
            return None
    if len(mapping) != len(unique):
        return None
    return np.asarray([mapping[c] for c in classes], dtype=np.int64)


def load_image_dir(folder: str | os.PathLike, preprocess: Preprocess, limit: int | None = None, seed: int = 0,
                   class_names: list[str] | None = None, num_classes: int | None = None) -> EvalSet:
    folder = Path(folder)
    files, classes = list_image_files(folder)
    if not files:
        raise UserError(f"'{folder}' holds no images ({', '.join(IMAGE_EXTENSIONS[:4])}...), neither directly nor in "
                        "class sub-directories; point it at a folder of real images.")
    labels = _labels_for(classes, class_names, num_classes) if classes else None
    pick = _subset(len(files), limit, seed)
    images = np.stack([preprocess.normalize(load_image_uint8(files[i], preprocess)[None])[0] for i in pick])
    layout = "ImageFolder" if classes else "flat"
    return EvalSet(images.astype(np.float32), labels[pick] if labels is not None else None,
                   f"{folder} ({layout}, {len(pick)} of {len(files)} images)")


def load_eval_set(path: str | os.PathLike, preprocess: Preprocess, *, split: str = "test", limit: int | None = None,
                  seed: int = 0, class_names: list[str] | None = None, num_classes: int | None = None) -> EvalSet:
    """Images from ``path`` (idx directory, ImageFolder or flat directory) as an :class:`EvalSet`."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"Image directory '{path}' does not exist.")
    if not path.is_dir():
        raise UserError(f"'{path}' is a file; give a directory of images (ImageFolder or flat) or of idx files.")
    if is_idx_dir(path):
        return load_idx_set(path, preprocess, split, limit, seed)
    return load_image_dir(path, preprocess, limit, seed, class_names, num_classes)


def fashion_mnist_set(preprocess: Preprocess, split: str = "test", limit: int | None = None, seed: int = 0) -> EvalSet:
    """The installed Fashion-MNIST split (Debian's dataset-fashion-mnist or $ULSAM_FASHION_MNIST_DIR)."""
    from ulsam_deploy.data.resources import fashion_mnist_dir

    return load_idx_set(fashion_mnist_dir(), preprocess, split, limit, seed)


def foolbox_imagenet_set(preprocess: Preprocess) -> EvalSet:
    """foolbox's 20 ImageNet photos, labelled from their names ``imagenet_<i>_<label>.jpg``."""
    from ulsam_deploy.data.imagenet import foolbox_imagenet_samples

    samples = foolbox_imagenet_samples()
    images = np.stack([preprocess.normalize(load_image_uint8(s.path, preprocess)[None])[0] for s in samples])
    labels = np.asarray([s.label for s in samples], dtype=np.int64)
    return EvalSet(images.astype(np.float32), labels, f"foolbox ImageNet samples ({len(samples)} photos)")


def default_verify_set(sidecar: dict, preprocess: Preprocess, limit: int | None = None) -> EvalSet | None:
    """Real labelled images that fit the model: Fashion-MNIST test set (1 channel, 10 classes) or the foolbox
    ImageNet photos (3 channels, 1000 classes); None when neither fits."""
    config = sidecar.get("config") or {}
    classes = config.get("num_classes")
    if preprocess.in_channels == 1 and classes == 10:
        return fashion_mnist_set(preprocess, "test", limit)
    if preprocess.in_channels == 3 and classes == 1000:
        return foolbox_imagenet_set(preprocess)
    return None


__all__ = ["EvalSet", "default_verify_set", "fashion_mnist_set", "foolbox_imagenet_set", "load_eval_set",
           "load_idx_set", "load_image_dir", "preprocess_from_sidecar"]
