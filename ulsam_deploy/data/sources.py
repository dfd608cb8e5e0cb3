"""Where images come from, for every command: one discovery, one labelling rule, one preprocessing.

``bench --inputs``, ``convert --calib-data / --verify-data`` and ``demo`` all read images through
:func:`load_images`, which accepts

- an ImageFolder directory (``ROOT/<class>/<image>``; labels from the class folder names),
- a flat directory of images, a single image file, or a glob,
- a directory of Fashion-MNIST-style idx files (``train-images-idx3-ubyte.gz`` ...), read as its
  ``train`` split for calibration and its ``test`` split for verification.

Labels map to the model's class index: a folder (or ``label_regex`` group) named like one of the
model's class names, or an integer; without class names the ImageFolder convention (sorted folder
index) is used and said so. Pixels go through :class:`ulsam_deploy.data.images.Preprocess`, the one
definition training, evaluation and benchmarking share. Unreadable or corrupt images (decompression
bombs included) are skipped, counted and named in a warning; they never stop the run.
"""

from __future__ import annotations

import glob as globlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ulsam_deploy.data.images import IMAGE_EXTENSIONS, Preprocess, read_image
from ulsam_deploy.artifacts import user_path
from ulsam_deploy.errors import UserError
from ulsam_deploy.limits import fit_count

IDX_SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
DEFAULT_CROP_PCT = 0.875
SMALL_INPUT = 64
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageSet:
    """Model inputs shared by every backend: ``images`` float32 [N, C, H, W], ``labels`` int64 [N]
    (-1 where unknown) or None, and where they came from."""

    images: np.ndarray
    labels: np.ndarray | None = None
    source: str = "random"
    names: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    preprocess: Preprocess | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError("labels and images differ in length")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def labelled(self) -> bool:
        return self.labels is not None and bool((self.labels >= 0).any())

    def batch(self, size: int) -> np.ndarray:
        """The first ``size`` inputs (repeated when fewer exist): the latency batch."""
        n = len(self)
        if size <= n:
            return np.ascontiguousarray(self.images[:size])
        reps = -(-size // n)
        return np.ascontiguousarray(np.concatenate([self.images] * reps)[:size])

    def describe(self) -> dict:
        info = {"source": self.source, "count": len(self), "shape": list(self.images.shape[1:]),
                "labelled": int((self.labels >= 0).sum()) if self.labels is not None else 0,
                "skipped": len(self.skipped)}
        if self.seed is not None:
            info["seed"] = self.seed
        if self.preprocess is not None:
            info["preprocess"] = self.preprocess.to_dict()
        if self.skipped:
            info["skipped_files"] = [{"path": p, "reason": r} for p, r in self.skipped[:50]]
        return info


# ---------------------------------------------------------------------------------- preprocessing

def resolve_preprocess(size: int, channels: int, *, base: Preprocess | None = None, mean=None, std=None,
                       resize: int | None = None, crop_pct: float | None = None) -> Preprocess:
    """The model's preprocessing: ``base`` (from the checkpoint or sidecar) with flags overriding.

    ``resize`` (shorter side before the center crop) and ``crop_pct`` are alternatives; without either
    and without ``base``, ``crop_pct`` is 0.875 for inputs of 64 pixels or more and 1.0 (plain resize) below.
    """
    size, channels = int(size), int(channels)
    if channels not in (1, 3):
        raise UserError(f"Models with {channels} input channels cannot take images; bench them on random inputs.")
    if base is not None and (base.size != size or base.in_channels != channels):
        base = None
    if resize is not None:
        if int(resize) < size:
            raise UserError(f"--resize {resize} is smaller than the input size {size}; use at least {size}.")
        crop_pct = size / int(resize)
    elif crop_pct is None:
        crop_pct = base.crop_pct if base is not None else (DEFAULT_CROP_PCT if size >= SMALL_INPUT else 1.0)
    mean = _per_channel(mean if mean is not None else (base.mean if base is not None else IMAGENET_MEAN[:channels]
                                                      if channels == 3 else (0.5,)), channels, "mean")
    std = _per_channel(std if std is not None else (base.std if base is not None else IMAGENET_STD[:channels]
                                                   if channels == 3 else (0.5,)), channels, "std")
    if not all(np.isfinite(s) and s > 0 for s in std):
        raise UserError(f"--std values must be positive, not {list(std)}.")
    if not all(np.isfinite(m) for m in mean):
        raise UserError(f"--mean values must be finite numbers, not {list(mean)}.")
    if not 0 < float(crop_pct) <= 1:
        raise UserError(f"--crop-pct must be in (0, 1], not {crop_pct}.")
    return Preprocess(size=size, in_channels=channels, crop_pct=float(crop_pct), mean=mean, std=std)


def _per_channel(values, channels: int, what: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    raise UserError(f"--{what} has {len(values)} values but the model takes {channels} channel(s); give {channels} "
                    f"value(s) (or one for all).")


def preprocess_of(sidecar) -> Preprocess:
    """The preprocessing a sidecar records (:class:`ulsam_deploy.sidecars.OnnxSidecar`), else ImageNet's
    rule for the input shape it declares."""
    if sidecar.preprocess is not None:
        p = sidecar.preprocess
        return Preprocess(size=p.size, in_channels=p.in_channels, crop_pct=p.crop_pct, mean=tuple(p.mean),
                          std=tuple(p.std))
    shape = sidecar.inputs[0].shape
    size, channels = shape[-1], shape[1]
    if not isinstance(size, int) or not isinstance(channels, int):
        raise UserError(f"The sidecar of '{sidecar.onnx}' records neither a preprocessing recipe nor a fixed input "
                        "size; re-export the model.")
    return resolve_preprocess(size, channels)


# --------------------------------------------------------------------------------------- labels

def _normalize(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", name.lower())


def _class_lookup(class_names: Sequence[str] | None) -> dict[str, int]:
    table: dict[str, int] = {}
    for index, name in enumerate(class_names or []):
        table.setdefault(_normalize(str(name)), index)
        for alias in str(name).split(","):
            table.setdefault(_normalize(alias), index)
    return table


def _label_for(token: str, lookup: dict[str, int], num_classes: int | None) -> int | None:
    """A class index from a folder or file-name token: an integer, or a class name of the model."""
    token = token.strip()
    if re.fullmatch(r"\d+", token):
        value = int(token)
        return value if num_classes is None or value < num_classes else None
    return lookup.get(_normalize(token))


def label_tokens(tokens: list[str | None], kind: str, class_names: Sequence[str] | None,
                 num_classes: int | None) -> tuple[np.ndarray | None, list[str]]:
    """Labels (``-1`` unknown) for raw tokens, and warnings; None when no token exists."""
    if not any(t is not None for t in tokens):
        return None, []
    warnings = []
    lookup = _class_lookup(class_names)
    names = sorted({t for t in tokens if t is not None})
    mapped = {t: _label_for(t, lookup, num_classes) for t in names}
    if kind == "imagefolder" and not class_names and not all(v is not None for v in mapped.values()):
        mapped = {t: i for i, t in enumerate(names)}  # the ImageFolder convention
        warnings.append("labels follow the ImageFolder convention (sorted sub-folder index): the model has no class "
                        "names to match the folder names against")
    unknown = [t for t, v in mapped.items() if v is None]
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        warnings.append(f"{len(unknown)} label(s) match no class of the model ({shown}); those images count for parity "
                        "and latency, not for accuracy")
    labels = np.asarray([-1 if t is None or mapped.get(t) is None else int(mapped[t]) for t in tokens], np.int64)
    return labels, warnings


# ------------------------------------------------------------------------------------ discovery

def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    return None


def is_idx_dir(folder: Path) -> bool:
    return folder.is_dir() and any(_find_idx(folder, images) for images, _ in IDX_SPLITS.values())


def class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def walk_files(root: Path) -> list[Path]:
    """Every file below ``root`` in sorted order. Linked folders are followed, but each folder is read once: a link
    back up the tree (a loop) ends there instead of walking forever; hidden folders are skipped."""
    seen: set[tuple[int, int]] = set()
    found: list[Path] = []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        try:
            st = os.stat(folder)
        except OSError:
            subfolders[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            subfolders[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found += [Path(folder) / f for f in files]
    return sorted(found)


def discover(spec: str | os.PathLike) -> tuple[list[Path], list[str | None], str]:
    """Image files, their class-folder token (or None) and the layout (``imagefolder``, ``folder``,
    ``file``, ``glob``) of ``spec``."""
    text = str(spec)
    if not text.strip():
        raise UserError("The image input is empty; give an image, a folder of images, an ImageFolder directory, a "
                        "folder of idx files or a glob.")
    path = user_path(text, "image input")
    if any(ch in text for ch in "*?[") and not path.exists():
        files = [f for f in sorted(Path(p) for p in globlib.glob(str(path), recursive=True)) if is_image(f)]
        if not files:
            raise UserError(f"No image files match '{text}'; check the pattern (supported: {', '.join(IMAGE_EXTENSIONS)}).")
        return files, [None] * len(files), "glob"
    if not path.exists():
        raise UserError(f"Input '{text}' does not exist; give an image, a folder of images, an ImageFolder directory, "
                        "a folder of idx files or a glob.")
    if path.is_file():
        return [path], [None], "file"
    class_files = [(f, sub.name) for sub in class_folders(path) for f in walk_files(sub) if is_image(f)]
    loose = sorted(f for f in path.iterdir() if is_image(f))
    if class_files and not loose:
        return [f for f, _ in class_files], [c for _, c in class_files], "imagefolder"
    files = loose + [f for f, _ in class_files]
    if not files:
        raise UserError(f"'{path}' holds no images ({', '.join(IMAGE_EXTENSIONS[:4])}...) directly or in class "
                        "sub-folders; point it at a folder of real images.")
    return files, [None] * len(files), "folder"


def subset(count: int, limit: int | None, seed: int = 0) -> np.ndarray:
    """Indices of a seeded random subset in their original order (all of them when ``limit`` is None or large)."""
    if limit is None or limit >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).permutation(count)[:limit])


# -------------------------------------------------------------------------------------- loading

def load_images(spec: str | os.PathLike, preprocess: Preprocess, *, split: str = "test", limit: int | None = None,
                seed: int = 0, class_names: Sequence[str] | None = None, num_classes: int | None = None,
                label_regex: str | None = None) -> ImageSet:
    """Read, preprocess and label the images of ``spec`` (see the module docstring)."""
    if limit is not None and int(limit) < 1:
        raise UserError(f"The image limit must be a positive number, not {limit}.")
    folder = user_path(spec, "image input") if str(spec).strip() else None
    if folder is not None and is_idx_dir(folder):
        return load_idx(folder, preprocess, split, limit, seed)
    files, tokens, kind = discover(spec)
    if label_regex:
        try:
            pattern = re.compile(label_regex)
        except re.error as exc:
            raise UserError(f"--label-regex '{label_regex}' is not a valid regular expression ({exc}).") from None
        if pattern.groups < 1:
            raise UserError(f"--label-regex '{label_regex}' needs one group, e.g. '_(\\d+)$', to capture the class.")
        tokens = [(m.group(1) if (m := pattern.search(f.stem)) else None) for f in files]
    pick = subset(len(files), limit, seed)
    fit_count(len(pick), preprocess.in_channels * preprocess.size * preprocess.size * 5, "images", "--limit")
    files, tokens = [files[i] for i in pick], [tokens[i] for i in pick]
    labels, warnings = label_tokens(tokens, kind, class_names, num_classes)

    arrays, names, kept, skipped = [], [], [], []
    for index, f in enumerate(files):
        try:
            arrays.append(read_image(f, preprocess))
        except UserError as exc:
            skipped.append((str(f), str(exc)[:200]))
            continue
        names.append(str(f))
        kept.append(index)
    if skipped:
        warnings.append(f"skipped {len(skipped)} unreadable or corrupt image(s), e.g. {skipped[0][0]}: {skipped[0][1]}")
    if not arrays:
        raise UserError(f"None of the {len(files)} image(s) in '{spec}' could be read; check that they are valid images.")
    described = f"{kind}:{spec}" + (f" ({len(files)} of {len(discover(spec)[0])} images)" if limit else "")
    return ImageSet(images=np.ascontiguousarray(preprocess.normalize(np.stack(arrays))),
                    labels=labels[kept] if labels is not None else None, source=described, names=names,
                    skipped=skipped, warnings=warnings, preprocess=preprocess)


def _images_from_uint8(raw: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """``uint8 [N, H, W]`` grey pictures -> normalised ``float32 [N, C, size, size]``."""
    from PIL import Image

    if raw.shape[1:] == (preprocess.size, preprocess.size) and preprocess.in_channels == 1 and preprocess.crop_pct == 1.0:
        batch = raw[:, None]
    else:
        batch = np.stack([preprocess.to_uint8(Image.fromarray(img, mode="L")) for img in raw])
    return preprocess.normalize(batch)


def load_idx(folder: Path, preprocess: Preprocess, split: str = "test", limit: int | None = None,
             seed: int = 0) -> ImageSet:
    """Fashion-MNIST / MNIST style idx files in ``folder`` (split ``train`` or ``test``; the other when absent)."""
    from ulsam_deploy.data.fashion_mnist import read_idx

    images_stem, labels_stem = IDX_SPLITS[split]
    images_path = _find_idx(folder, images_stem)
    if images_path is None:
        split = "test" if split == "train" else "train"
        images_stem, labels_stem = IDX_SPLITS[split]
        images_path = _find_idx(folder, images_stem)
    if images_path is None:
        raise UserError(f"'{folder}' holds no idx image files (train-images-idx3-ubyte[.gz] or t10k-...).")
    raw = read_idx(images_path)
    if raw.ndim != 3:
        raise UserError(f"'{images_path}' holds {raw.ndim}-D data, not [N, H, W] images.")
    labels_path = _find_idx(folder, labels_stem)
    labels = read_idx(labels_path).astype(np.int64) if labels_path else None
    if labels is not None and len(labels) != len(raw):
        raise UserError(f"'{images_path}' and '{labels_path}' hold different numbers of items; reinstall the data set.")
    pick = subset(len(raw), limit, seed)
    fit_count(len(pick), preprocess.in_channels * preprocess.size * preprocess.size * 5, "images", "--limit")
    return ImageSet(_images_from_uint8(raw[pick], preprocess), labels[pick] if labels is not None else None,
                    f"{folder} ({split} split, idx, {len(pick)} of {len(raw)} images)", preprocess=preprocess)


def random_images(count: int, channels: int, size: int | tuple[int, int], seed: int = 0) -> ImageSet:
    """Seeded N(0, 1) tensors: the statistics of normalized images, identical on every run."""
    if count < 1:
        raise UserError(f"--num-inputs must be at least 1, not {count}.")
    h, w = (size, size) if isinstance(size, int) else size
    fit_count(count, channels * h * w * 4, "random inputs", "--num-inputs")
    data = np.random.default_rng(seed).standard_normal((count, channels, h, w)).astype(np.float32)
    return ImageSet(images=data, source="random", seed=seed)


def fashion_mnist_set(preprocess: Preprocess, split: str = "test", limit: int | None = None, seed: int = 0) -> ImageSet:
    """The installed Fashion-MNIST split (Debian's dataset-fashion-mnist or $ULSAM_FASHION_MNIST_DIR)."""
    from ulsam_deploy.data.resources import fashion_mnist_dir

    return load_idx(fashion_mnist_dir(), preprocess, split, limit, seed)


def foolbox_imagenet_set(preprocess: Preprocess) -> ImageSet:
    """foolbox's 20 ImageNet photos, labelled from their names ``imagenet_<i>_<label>.jpg``."""
    from ulsam_deploy.data.imagenet import foolbox_imagenet_samples

    samples = foolbox_imagenet_samples()
    images = np.stack([read_image(s.path, preprocess) for s in samples])
    labels = np.asarray([s.label for s in samples], dtype=np.int64)
    return ImageSet(preprocess.normalize(images), labels, f"foolbox ImageNet samples ({len(samples)} photos)",
                    names=[str(s.path) for s in samples], preprocess=preprocess)


def default_verify_set(num_classes: int | None, preprocess: Preprocess, limit: int | None = None,
                       split: str = "test") -> ImageSet | None:
    """Real labelled images that fit the model, None when none do. Verification (``split="test"``): the
    Fashion-MNIST test set (1 channel, 10 classes) or foolbox's ImageNet photos (3 channels, 1000 classes).
    Calibration (``split="train"``): a seeded subset of Fashion-MNIST's training set, never the images it is
    verified on (foolbox's 20 photos are verification only)."""
    if preprocess.in_channels == 1 and num_classes == 10:
        return fashion_mnist_set(preprocess, split, limit)
    if preprocess.in_channels == 3 and num_classes == 1000 and split == "test":
        return foolbox_imagenet_set(preprocess)
    return None


__all__ = ["ImageSet", "default_verify_set", "discover", "fashion_mnist_set", "foolbox_imagenet_set", "is_idx_dir",
           "label_tokens", "load_idx", "load_images", "preprocess_of", "random_images", "resolve_preprocess", "subset"]
