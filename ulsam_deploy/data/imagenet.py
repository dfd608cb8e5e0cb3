"""The 20 real ImageNet validation images shipped in foolbox's data folder, with their labels."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ulsam_deploy.data.images import Preprocess, read_image
from ulsam_deploy.data.resources import MissingResource, foolbox_data_dir, imagenet_class_names

_NAME = re.compile(r"^imagenet_(\d+)_(\d+)\.(?:png|jpe?g)$", re.IGNORECASE)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_preprocess(size: int = 224) -> Preprocess:
    """torchvision's ImageNet evaluation: resize 256, center crop 224, ImageNet mean/std."""
    return Preprocess(size=size, in_channels=3, crop_pct=0.875, mean=IMAGENET_MEAN, std=IMAGENET_STD)


@dataclass(frozen=True)
class ImageNetSample:
    path: Path
    label: int  # ImageNet-1k class index (from the file name)


def foolbox_imagenet_samples() -> list[ImageNetSample]:
    """``imagenet_<i>_<label>.*`` files of foolbox's data folder, in index order (20 images)."""
    folder = foolbox_data_dir()
    samples = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match:
            samples.append((int(match.group(1)), ImageNetSample(path, int(match.group(2)))))
    if not samples:
        raise MissingResource(f"No imagenet_* images in '{folder}'; reinstall foolbox: pip install --no-deps foolbox.")
    return [s for _, s in sorted(samples, key=lambda t: t[0])]


def load_foolbox_imagenet(preprocess: Preprocess | None = None) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """Normalised ``float32 [20, 3, 224, 224]`` inputs, ``int64 [20]`` labels and the file paths."""
    preprocess = preprocess or imagenet_preprocess()
    samples = foolbox_imagenet_samples()
    batch = np.stack([read_image(s.path, preprocess) for s in samples])
    return preprocess.normalize(batch), np.array([s.label for s in samples], dtype=np.int64), [s.path for s in samples]


__all__ = ["ImageNetSample", "foolbox_imagenet_samples", "imagenet_class_names", "imagenet_preprocess",
           "load_foolbox_imagenet"]
