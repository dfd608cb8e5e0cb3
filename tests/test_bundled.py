"""The bundled models load, export, and reach the accuracy their cards state, re-measured through the
exported ONNX on ONNX Runtime on real images (the figures in models.json were measured at build time)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ulsam_deploy import bundled
from ulsam_deploy.backends import OrtRunner
from ulsam_deploy.data import MissingResource
from ulsam_deploy.errors import UserError
from ulsam_deploy.steps.export import ExportOptions, export_model


def _need(fn, *args):
    try:
        return fn(*args)
    except MissingResource as exc:
        pytest.skip(str(exc))


def _onnx_logits(model, info, images, path, batch=250):
    result = export_model(model, info, path, ExportOptions())
    assert result.verdict.max_abs < 1e-4
    with OrtRunner(result.path) as runner:
        return np.concatenate([runner.infer(images[i:i + batch]) for i in range(0, len(images), batch)])


def test_registry_and_cards():
    entries = bundled.registry()
    assert set(entries) >= {"fashion-mnist", "imagenet"}
    assert [name for name, e in entries.items() if e.get("default")] == [bundled.DEFAULT] == ["fashion-mnist"]
    for name in entries:
        model = bundled.get(name)
        card = model.card.read_text()
        assert model["config"]["ulsam"] in card and "Reproduce" in card
    with pytest.raises(UserError, match="no bundled model"):
        bundled.get("cifar")


# --------------------------------------------------------------------------------- fashion-mnist

def test_fashion_mnist_model_file_card_and_claims():
    entry = bundled.get("fashion-mnist")
    path = bundled.checkpoint_path("fashion-mnist")
    assert path.stat().st_size <= 10 * 2**20 and path.stat().st_size == entry["size_bytes"]
    assert bundled.file_sha256(path) == entry["sha256"]
    cfg = entry["config"]
    assert cfg["arch"] == "mv2" and cfg["groups"] == 4 and cfg["ulsam"] and cfg["in_channels"] == 1
    model, info = bundled.load("fashion-mnist")
    assert info.meta["ulsam_maps"] and all(h * w > 1 for _, h, w in info.meta["ulsam_maps"].values())
    assert info.meta["recipe"]["pretrained"] is False  # trained from scratch
    assert entry["test_top1_torch"] >= 0.90 and entry["test_top1_onnxruntime"] >= 0.90
    assert info.meta["test_accuracy"] == pytest.approx(entry["train_reported_test_top1"])
    card = bundled.get("fashion-mnist").card.read_text()
    assert f"{entry['test_top1_torch']:.2%}" in card and entry["command"] in card


@pytest.mark.slow
def test_fashion_mnist_accuracy_through_onnxruntime(tmp_path):
    from ulsam_deploy.bundled.build import fashion_test_images
    from ulsam_deploy.data.images import Preprocess

    entry = bundled.get("fashion-mnist")
    model, info = bundled.load("fashion-mnist")
    count = entry["slice"]["first"]
    images, labels = _need(fashion_test_images, Preprocess.from_dict(info.meta["preprocess"]), count)
    logits = _onnx_logits(model, info, images, tmp_path / "fm.onnx")
    top1 = float((logits.argmax(1) == labels).mean())
    # the card's figure, re-measured: at most 2 of the 1000 images may flip on another CPU / ORT build
    assert top1 == pytest.approx(entry["slice"]["top1_onnxruntime"], abs=0.002)
    assert top1 >= 0.90


# -------------------------------------------------------------------------------------- imagenet

@pytest.fixture(scope="module")
def imagenet():
    return _need(bundled.load, "imagenet")


def test_imagenet_model_is_assembled_and_verified(imagenet):
    model, info = imagenet
    entry = bundled.get("imagenet")
    assert model.config.ulsam == "17:1" and model.config.input_size == 224 and model.config.width == 1.0
    assert bundled.state_sha256(model.state_dict()) == entry["state_sha256"]
    assert info.meta["ulsam_trained"] is False and len(info.class_names) == 1000
    card = entry.card.read_text()
    assert "UNTRAINED" in card and "not trained" in card


@pytest.mark.slow
def test_imagenet_top1_on_foolbox_images(imagenet, tmp_path):
    from ulsam_deploy.data import load_foolbox_imagenet
    from ulsam_deploy.data.resources import mv2_weights_path
    from ulsam_deploy.models import build_model, load_pretrained

    model, info = imagenet
    stated = bundled.get("imagenet")["foolbox20"]
    images, labels, _ = load_foolbox_imagenet()
    logits = _onnx_logits(model, info, images, tmp_path / "in.onnx", batch=10)
    assert float((logits.argmax(1) == labels).mean()) == pytest.approx(stated["ulsam_onnxruntime_top1"], abs=0.051)
    vanilla = build_model("mv2", 1.0, "", num_classes=1000).eval()
    load_pretrained(vanilla, mv2_weights_path())
    import torch

    with torch.no_grad():
        v = vanilla(torch.from_numpy(images)).numpy()
    assert float((v.argmax(1) == labels).mean()) == pytest.approx(stated["vanilla"]["top1"], abs=0.051)
    assert stated["vanilla"]["top1"] >= 0.8  # torchvision's MV2 really is an ImageNet model


def test_imagenet_checkpoint_cache_and_tampering(imagenet, tmp_path, monkeypatch):
    monkeypatch.setenv(bundled.CACHE_ENV, str(tmp_path / "cache"))
    path = bundled.checkpoint_path("imagenet")
    assert path.parent == tmp_path / "cache" and path.exists()
    stamp = path.stat().st_mtime_ns
    assert bundled.checkpoint_path("imagenet") == path and path.stat().st_mtime_ns == stamp  # reused, not rebuilt
    from ulsam_deploy.models.checkpoint import load_checkpoint_with_info

    model, info = load_checkpoint_with_info(path)
    assert bundled.state_sha256(model.state_dict()) == bundled.get("imagenet")["state_sha256"]
    assert info.class_names[0] == "tench"

    data = bundled.registry()
    data["imagenet"]["state_sha256"] = "0" * 64
    monkeypatch.setattr(bundled, "registry", lambda: json.loads(json.dumps(data)))
    with pytest.raises(UserError, match="state sha256"):
        bundled.load("imagenet")


# ------------------------------------------------------------------------- a bundled model as a sidecar's source

@pytest.fixture(scope="module")
def bundled_export(tmp_path_factory):
    """The ONNX the demo writes: the bundled fashion-mnist model, its sidecar recording 'bundled:fashion-mnist'."""
    model, info = bundled.load("fashion-mnist")
    path = tmp_path_factory.mktemp("bundled_export") / "model.onnx"
    export_model(model, info, path, ExportOptions(), source="bundled:fashion-mnist")
    return path


def test_bench_of_a_demo_export_finds_the_bundled_checkpoint(bundled_export, monkeypatch, tmp_path):
    """bench of the demo's model.onnx, from another folder, keeps the torch reference: 'bundled:NAME' is the bundled
    model's checkpoint, not a missing path."""
    from ulsam_deploy.sidecars import read_onnx_sidecar
    from ulsam_deploy.bench.models import resolve_model

    assert read_onnx_sidecar(bundled_export).model.bundled_name == "fashion-mnist"
    monkeypatch.chdir(tmp_path)
    spec = resolve_model(bundled_export)
    assert spec.checkpoint == bundled.checkpoint_path("fashion-mnist") and spec.module is not None
    assert not spec.warnings, spec.warnings


def test_a_recorded_bundled_name_that_is_not_bundled_is_one_sentence(bundled_export, tmp_path):
    from ulsam_deploy.sidecars import read_onnx_sidecar, sidecar_path
    from ulsam_deploy.bench.models import resolve_model

    copy = tmp_path / "model.onnx"
    copy.write_bytes(bundled_export.read_bytes())
    side = read_onnx_sidecar(bundled_export)
    side.model.checkpoint = "bundled:cifar-100"
    sidecar_path(copy).write_text(side.to_json())
    with pytest.raises(UserError, match="no bundled model 'cifar-100'"):
        resolve_model(copy)


def test_without_torch_a_recorded_bundled_model_is_noted_not_loaded(bundled_export, monkeypatch):
    from ulsam_deploy import extras
    from ulsam_deploy.bench.models import resolve_model

    monkeypatch.setattr(extras, "missing", lambda *names: list(names))
    spec = resolve_model(bundled_export, load_module=False)
    assert spec.checkpoint is None
    assert any("bundled model 'fashion-mnist'" in n and "PyTorch is not installed" in n for n in spec.notes), spec.notes
