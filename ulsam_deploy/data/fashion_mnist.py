"""Fashion-MNIST from its idx files (gzip): 60 000 train / 10 000 test 28x28 grey product photos."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from ulsam_deploy.errors import UserError
from ulsam_deploy.data.images import Preprocess
from ulsam_deploy.data.resources import fashion_mnist_files

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# folder-safe class names, index-prefixed so that sorted folder order == label order (the convention of
# torchvision's ImageFolder) and name matching both give the right labels; these are the checkpoints' class names
FOLDER_NAMES = ["0_t-shirt_top", "1_trouser", "2_pullover", "3_dress", "4_coat", "5_sandal", "6_shirt", "7_sneaker",
                "8_bag", "9_ankle_boot"]
# pixel statistics of the 60 000 training images (x / 255)
MEAN = (0.2860,)
STD = (0.3530,)

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (``.gz`` or plain) into a NumPy array of its declared type and shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            header = fh.read(4)
            if len(header) != 4 or header[0] != 0 or header[1] != 0 or header[2] not in _IDX_TYPES:
                raise UserError(f"'{path}' is not an idx file (bad magic number); reinstall the data set.")
            ndim = header[3]
            dims = struct.unpack(f">{ndim}I", fh.read(4 * ndim))
            dtype = np.dtype(_IDX_TYPES[header[2]])
            count = 1
            for d in dims:
                count *= int(d)  # Python ints: a hostile header cannot overflow the product
            _fits(path, count * dtype.itemsize, dims)
            data = fh.read(count * dtype.itemsize)
    except (OSError, EOFError, struct.error) as exc:
        raise UserError(f"'{path}' cannot be read as an idx file ({type(exc).__name__}); reinstall the data set.") from exc
    if len(data) != count * dtype.itemsize:
        raise UserError(f"'{path}' is truncated ({len(data)} of {count * dtype.itemsize} bytes); reinstall the data set.")
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))  # a writable copy


def _fits(path: Path, nbytes: int, dims) -> None:
    """Refuse an idx header that declares more data than the file holds (plain files) or memory can take."""
    from ulsam_deploy.limits import HEADROOM, available_memory

    if path.suffix != ".gz" and nbytes > path.stat().st_size:
        raise UserError(f"'{path}' declares {list(dims)} items but is only {path.stat().st_size:,} bytes long; it is "
                        "truncated or damaged: reinstall the data set.")
    if nbytes > available_memory() * HEADROOM:
        raise UserError(f"'{path}' declares {list(dims)} items ({nbytes / 2**30:.1f} GiB), more than this machine can "
                        "spare; it is damaged or not an idx file of images.")


def load_arrays(split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Raw ``uint8 [N, 28, 28]`` images and ``int64 [N]`` labels (the first ``limit`` when given)."""
    images_path, labels_path = fashion_mnist_files(split)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"Fashion-MNIST {split} files disagree (images {images.shape}, labels {labels.shape}); reinstall them.")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels.astype(np.int64)


def default_preprocess(size: int = 28) -> Preprocess:
    return Preprocess(size=size, in_channels=1, crop_pct=1.0, mean=MEAN, std=STD)
