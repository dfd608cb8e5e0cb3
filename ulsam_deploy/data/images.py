"""Image preprocessing shared by training, evaluation and benchmarking (PIL only, no torchvision).

One definition, so a model sees the same pixels in ``train``, in the bundled-model tests and in
``bench``: resize the shorter side to ``round(size / crop_pct)`` (bilinear), center-crop ``size``,
convert to grey (``in_channels=1``) or RGB, then ``(x / 255 - mean) / std``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ulsam_deploy.errors import UserError

MAX_PIXELS = 50_000_000  # larger files are refused before decoding (decompression bombs)
MAX_ASPECT = 64  # a thinner image is refused: resizing its shorter side first would need gigabytes
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes an input tensor; stored in checkpoint meta as ``preprocess``."""

    size: int
    in_channels: int = 3
    crop_pct: float = 1.0  # 0.875 = ImageNet's "resize 256, center crop 224"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.in_channels not in (1, 3):
            raise UserError(f"Images can be read as 1 (grey) or 3 (RGB) channels, not {self.in_channels}.")
        if not 0 < self.crop_pct <= 1:
            raise UserError(f"crop_pct must be in (0, 1], not {self.crop_pct}.")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise UserError(f"mean/std need {self.in_channels} values each, not {len(self.mean)}/{len(self.std)}.")

    @property
    def resize(self) -> int:
        return int(round(self.size / self.crop_pct))

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(mean=list(self.mean), std=list(self.std), resize=self.resize, interpolation="bilinear",
                    mode="L" if self.in_channels == 1 else "RGB")
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocess":
        return cls(size=int(data["size"]), in_channels=int(data.get("in_channels", 3)),
                   crop_pct=float(data.get("crop_pct", 1.0)), mean=tuple(data["mean"]), std=tuple(data["std"]))

    # ------------------------------------------------------------------------------ pixels

    def to_uint8(self, image: Image.Image) -> np.ndarray:
        """PIL image -> ``uint8 [C, size, size]`` (geometry and colour only, no normalisation)."""
        image = image.convert("L" if self.in_channels == 1 else "RGB")
        w, h = image.size
        target = self.resize
        if (w, h) != (target, target):
            scale = target / min(w, h)
            nw, nh = max(target, int(round(w * scale))), max(target, int(round(h * scale)))
            image = image.resize((nw, nh), Image.BILINEAR)
        w, h = image.size
        if (w, h) != (self.size, self.size):
            left, top = (w - self.size) // 2, (h - self.size) // 2
            image = image.crop((left, top, left + self.size, top + self.size))
        array = np.array(image, dtype=np.uint8)
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)

    def normalize(self, batch):
        """``uint8 [N, C, H, W]`` -> normalised float32 (NumPy in, NumPy out; torch in, torch out)."""
        if type(batch).__module__.startswith("torch"):
            import torch

            mean = torch.tensor(self.mean, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
            return (batch.float() / 255.0 - mean) / std
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        return ((np.asarray(batch, dtype=np.float32) / 255.0 - mean) / std).astype(np.float32)

    def load(self, path: str | os.PathLike) -> np.ndarray:
        """Read one image file as normalised ``float32 [C, size, size]``."""
        return self.normalize(read_image(path, self)[None])[0]


def read_image(path: str | os.PathLike, preprocess: Preprocess) -> np.ndarray:
    """One image file as ``uint8 [C, size, size]``; any problem is a UserError naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            w, h = image.size
            if w * h > MAX_PIXELS:
                raise UserError(f"'{path}' is {w}x{h} pixels, more than the {MAX_PIXELS:,} ulsam-deploy decodes "
                                "(a decompression bomb or a wrong file); remove it or shrink it.")
            if max(w, h) > MAX_ASPECT * min(w, h):
                raise UserError(f"'{path}' is {w}x{h} pixels, more than {MAX_ASPECT}:1, so resizing its shorter side "
                                "before the center crop would make a huge image; crop it first or remove it.")
            image.load()
            return preprocess.to_uint8(image)
    except FileNotFoundError:
        raise UserError(f"Image '{path}' does not exist.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            MemoryError) as exc:
        raise UserError(f"'{path}' is not a readable image ({type(exc).__name__}); remove it or replace it.") from None
