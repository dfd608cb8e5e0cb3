"""Training data sets (torch): ImageFolder (``root/<class>/<image>``, read with PIL) and Fashion-MNIST in memory,
and exporting Fashion-MNIST as an ImageFolder of PNGs."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ulsam_deploy.data.images import IMAGE_EXTENSIONS, Preprocess, read_image
from ulsam_deploy.data.sources import class_folders, discover
from ulsam_deploy.data.fashion_mnist import CLASSES, default_preprocess, load_arrays
from ulsam_deploy.errors import UserError


def find_classes(root: str | os.PathLike) -> list[str]:
    """Sorted class-folder names under ``root`` (hidden folders ignored)."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"Image folder '{root}' does not exist; give a directory laid out as ROOT/<class>/<image>.")
    if not root.is_dir():
        raise UserError(f"'{root}' is a file; give a directory laid out as ROOT/<class>/<image>.")
    classes = [p.name for p in class_folders(root)]
    if not classes:
        raise UserError(f"'{root}' has no class folders; lay it out as ROOT/<class>/<image> (one folder per class).")
    return classes


class ImageFolder(torch.utils.data.Dataset):
    """``root/<class>/<image>`` with classes in sorted order (torchvision's convention, without torchvision).

    Items are ``(uint8 tensor [C, size, size], label)`` read lazily through ``preprocess``.
    ``classes`` may be given to fix the label order (e.g. a checkpoint's class names): folders must match.
    """

    def __init__(self, root: str | os.PathLike, preprocess: Preprocess, classes: list[str] | None = None,
                 limit: int | None = None):
        self.root = Path(root)
        found = find_classes(self.root)
        if classes is not None:
            unknown = [c for c in found if c not in classes]
            if unknown:
                raise UserError(f"'{self.root}' has class folders the model does not know ({', '.join(unknown[:5])}); "
                                f"expected a subset of: {', '.join(classes[:12])}{'...' if len(classes) > 12 else ''}.")
            self.classes = list(classes)
        else:
            self.classes = found
        index = {name: i for i, name in enumerate(self.classes)}
        try:
            files, tokens, kind = discover(self.root)
        except UserError:
            kind = None
        if kind != "imagefolder":
            raise UserError(f"'{self.root}' holds no images ({', '.join(IMAGE_EXTENSIONS[:4])}, ...) in its class "
                            "folders only; lay it out as ROOT/<class>/<image>.")
        samples = [(path, index[token]) for path, token in zip(files, tokens)]
        if limit is not None:
            if limit < 1:
                raise UserError(f"--limit must be a positive number of images, not {limit}.")
            samples = _balanced_slice(samples, limit)
        self.samples = samples
        self.preprocess = preprocess

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([label for _, label in self.samples], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return torch.from_numpy(np.ascontiguousarray(read_image(path, self.preprocess))), label


def _balanced_slice(samples: list, limit: int) -> list:
    """The first ``limit`` samples taken round-robin over classes (a slice that keeps every class)."""
    by_class: dict[int, list] = {}
    for item in samples:
        by_class.setdefault(item[1], []).append(item)
    queues = [list(v) for _, v in sorted(by_class.items())]
    out = []
    while len(out) < limit and any(queues):
        for queue in queues:
            if queue and len(out) < limit:
                out.append(queue.pop(0))
    return sorted(out, key=lambda s: (s[1], str(s[0])))


def export_fashion_mnist_folder(output: str | os.PathLike, count: int = 1000, split: str = "test",
                                force: bool = False) -> Path:
    """Write the first ``count`` images of a Fashion-MNIST split as ``output/<class>/<split>_<index>.png``.

    The PNGs are the original 28x28 grey pixels (lossless), so reading them back through
    :class:`ImageFolder` gives the same inputs as the in-memory data set. Written to a temp folder
    and renamed, so a failure leaves nothing half-written.
    """
    from ulsam_deploy.data.fashion_mnist import FOLDER_NAMES, load_arrays

    output = Path(output)
    if count < 1:
        raise UserError(f"count must be a positive number of images, not {count}.")
    if output.is_symlink():
        raise UserError(f"'{output}' is a symbolic link; ulsam-deploy never replaces links, so choose a folder path.")
    if output.exists():
        if not force:
            raise UserError(f"'{output}' already exists; pass --force to replace it or choose another folder.")
        if not output.is_dir():
            raise UserError(f"'{output}' is a file; choose a folder path.")
    images, labels = load_arrays(split, count)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        for name in FOLDER_NAMES:
            (tmp / name).mkdir()
        for index, (image, label) in enumerate(zip(images, labels)):
            Image.fromarray(image).save(tmp / FOLDER_NAMES[label] / f"{split}_{index:05d}.png")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it private; the folder is for reading
        if output.exists():
            shutil.rmtree(output)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


class FashionMNIST(torch.utils.data.Dataset):
    """Fashion-MNIST held in memory as ``uint8 [N, 1, size, size]`` (resized once, with PIL bilinear).

    Items are ``(uint8 tensor [1, size, size], label)``; normalise batches with ``preprocess.normalize``.
    Resizing goes through :meth:`Preprocess.to_uint8`, exactly what reading the exported PNGs does.
    """

    classes = CLASSES

    def __init__(self, split: str = "train", size: int = 28, limit: int | None = None,
                 preprocess: Preprocess | None = None):
        if limit is not None and limit < 1:
            raise UserError(f"--limit must be a positive number of images, not {limit}.")
        self.split = split
        self.preprocess = preprocess or default_preprocess(size)
        if self.preprocess.in_channels != 1:
            raise UserError("Fashion-MNIST is grey: train it with --in-channels 1.")
        raw, labels = load_arrays(split, limit)
        if self.preprocess.size == raw.shape[1] and self.preprocess.crop_pct == 1.0:
            images = raw[:, None]
        else:
            images = np.stack([self.preprocess.to_uint8(Image.fromarray(img)) for img in raw])
        self.images = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True))
        self.labels = torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])
