"""``train``: learns on a real slice, checkpoints every epoch, resumes bit-exactly, is deterministic per seed,
describes itself, and refuses bad input in one sentence."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ulsam_deploy.cli import app
from helpers import clean_error, needs_fmnist
from ulsam_deploy.data import MissingResource, export_fashion_mnist_folder
from ulsam_deploy.errors import UserError
from ulsam_deploy.models.checkpoint import load_checkpoint_with_info, read_checkpoint_file
from ulsam_deploy.train import TrainOptions, augment, lr_at, resolve_options, train


# small but real: MV2 x0.35 + ULSAM after layer 7 (a 4x4 map at 32x32), on Fashion-MNIST slices
TINY = dict(dataset="fashion-mnist", arch="mv2", width=0.35, ulsam="7:1", groups=4, input_size=32, batch_size=32,
            threads=2, test_limit=300)


@pytest.mark.slow
@needs_fmnist
def test_one_epoch_on_a_slice_learns(tmp_path):
    # no augmentation or dropout here, so that one short epoch shows its progress in the training loss
    result = train(TrainOptions(**TINY, epochs=1, limit=2048, augment=False, dropout=0.0, log_every=1,
                                out=str(tmp_path / "run")))
    record = result.history[-1]
    losses = [loss for _, loss in record.steps]
    assert len(losses) == 64
    assert sum(losses[-16:]) / 16 < sum(losses[:8]) / 8 - 0.1  # training loss goes down within the epoch
    assert record.test_loss < math.log(10) - 0.1  # below the loss of guessing (ln 10) on held-out images
    assert record.test_acc > 0.2  # twice chance on the real test slice
    assert result.final_checkpoint.exists() and (tmp_path / "run" / "epoch_001.pt").exists()

    # the metrics log holds every logged step and the epoch summary
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["type"] for r in rows].count("step") == 64 and rows[-1]["type"] == "epoch"
    assert rows[-1]["test_acc"] == pytest.approx(record.test_acc)

    # self-describing: config, classes, input size, mean/std, recipe, test accuracy; loads and exports
    model, info = load_checkpoint_with_info(result.final_checkpoint)
    assert info.config.ulsam == "7:1" and info.config.in_channels == 1 and info.input_size == 32
    assert info.class_names[0] == "0_t-shirt_top" and len(info.class_names) == 10
    assert info.mean == pytest.approx((0.2860,)) and info.std == pytest.approx((0.3530,))
    assert info.meta["test_accuracy"] == pytest.approx(record.test_acc) and info.meta["test_samples"] == 300
    assert info.meta["recipe"]["lr_gamma"] == pytest.approx(0.98 ** 200) and "paper_recipe" in info.meta["recipe"]
    assert info.meta["preprocess"]["size"] == 32 and info.meta["ulsam_maps"] == {"7:1": [16, 4, 4]}
    assert "train_state" not in read_checkpoint_file(result.final_checkpoint)

    from ulsam_deploy.steps.export import ExportOptions, export_checkpoint

    for ckpt in (result.final_checkpoint, tmp_path / "run" / "epoch_001.pt"):  # epoch checkpoints export too
        exported = export_checkpoint(ckpt, tmp_path / f"{ckpt.stem}.onnx", ExportOptions(simplify=False))
        assert exported.verdict.max_abs < 1e-4


@pytest.mark.slow
@needs_fmnist
def test_resume_is_bit_exact_and_seed_is_deterministic(tmp_path):
    # a fixed lr factor, so that a 1-epoch run extended to 2 has the schedule of a straight 2-epoch run
    # (by default the schedule is compressed to --epochs, and a resumed run keeps its own)
    common = dict(TINY, limit=256, test_limit=64, lr_gamma=0.9)
    straight = train(TrainOptions(**common, epochs=2, out=str(tmp_path / "a")))
    first = train(TrainOptions(**common, epochs=1, out=str(tmp_path / "b")))
    # same seed, separate runs: identical weights after epoch 1
    a1 = read_checkpoint_file(tmp_path / "a" / "epoch_001.pt")["state_dict"]
    b1 = read_checkpoint_file(tmp_path / "b" / "epoch_001.pt")["state_dict"]
    assert all(torch.equal(a1[k], b1[k]) for k in a1)
    # resume from epoch 1 (no model flags needed: the run's recipe is reused) -> identical to the straight run
    resumed = train(TrainOptions(epochs=2, resume=True, out=str(tmp_path / "b"), threads=2))
    assert resumed.resumed_from == 1 and [r.epoch for r in resumed.history] == [1, 2]
    a2 = read_checkpoint_file(straight.final_checkpoint)["state_dict"]
    b2 = read_checkpoint_file(resumed.final_checkpoint)["state_dict"]
    assert all(torch.equal(a2[k], b2[k]) for k in a2)
    assert resumed.history[-1].test_acc == straight.history[-1].test_acc
    assert first.history[0].train_loss == straight.history[0].train_loss
    # another seed gives other weights
    other = train(TrainOptions(**common, epochs=1, seed=1, out=str(tmp_path / "c")))
    c1 = read_checkpoint_file(other.final_checkpoint)["state_dict"]
    assert any(not torch.equal(a1[k], c1[k]) for k in a1 if a1[k].is_floating_point())


@pytest.mark.slow
@needs_fmnist
def test_cli_trains_on_an_image_folder_and_guards_the_run_dir(cli_runner, tmp_path):
    root = export_fashion_mnist_folder(tmp_path / "pngs", count=200)
    run = tmp_path / "run"
    args = ["train", str(root), "--in-channels", "1", "--arch", "mv1", "--width", "0.25", "--ulsam", "11",
            "--input-size", "32", "--epochs", "1", "--batch-size", "16", "--threads", "2", "--metrics", "csv",
            "--out", str(run)]
    result = cli_runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "test top-1" in result.output and "epoch 1/1" in result.output
    header, row = (run / "metrics.csv").read_text().splitlines()[:2]
    assert header.startswith("epoch,lr,train_loss") and row.startswith("1,")
    _, info = load_checkpoint_with_info(run / "final.pt")
    held_out = sum(max(1, len(list(d.iterdir())) // 10) for d in root.iterdir())  # 10 % of each class held out
    assert info.config.arch == "mv1" and info.config.ulsam == "11" and info.meta["test_samples"] == held_out
    assert "hold-out" in info.meta["data"]

    clean_error(cli_runner.invoke(app, args), 2, "--resume")  # the run dir is taken
    clean_error(cli_runner.invoke(app, args + ["--resume"]), 2, "already finished epoch 1")
    clean_error(cli_runner.invoke(app, args[:-2] + ["--resume", "--epochs", "2", "--lr", "0.5", "--out", str(run)]),
                 2, "--lr 0.5")
    clean_error(cli_runner.invoke(app, ["train", "--resume", "--out", str(tmp_path / "none")]), 2, "Nothing to resume")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_training_image_is_one_sentence_from_every_worker(cli_runner, tmp_path, workers):
    """A loader worker that meets an unreadable image: the user reads our sentence, not the worker's traceback."""
    root = export_fashion_mnist_folder(tmp_path / "pngs", count=40)
    bad = next(next(root.iterdir()).iterdir())
    bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    result = cli_runner.invoke(app, ["train", str(root), "--in-channels", "1", "--arch", "mv2", "--width", "0.35",
                                     "--input-size", "32", "--epochs", "1", "--batch-size", "4", "--workers",
                                     str(workers), "--out", str(tmp_path / "run")])
    clean_error(result, 2, f"'{bad}' is not a readable image")
    assert "worker" not in result.output


@pytest.mark.parametrize("args, needle", [
    ([], "exactly one training set"),
    (["--dataset", "cifar"], "Unknown --dataset"),
    (["--dataset", "fashion-mnist", "--in-channels", "3"], "grey"),
    (["--dataset", "fashion-mnist", "--input-size", "8"], "too small"),
    (["--dataset", "fashion-mnist", "--arch", "mv1", "--lr-gamma", "0.9"], "--lr-step"),
    (["--dataset", "fashion-mnist", "--lr", "-1"], "--lr must be greater than 0, not -1"),
    (["--dataset", "fashion-mnist", "--batch-size", "1"], "--batch-size must be from 2 to"),
    (["--dataset", "fashion-mnist", "--pretrained", "--width", "0.5"], "x1.0"),
    (["--dataset", "fashion-mnist", "--ulsam", "19"], "cannot replace"),
    (["--dataset", "fashion-mnist", "--arch", "mv1", "--width", "0.35", "--ulsam", "7:1"], "do not split"),
    (["--dataset", "fashion-mnist", "--device", "tpu"], "Unknown --device"),
    (["--dataset", "fashion-mnist", "--metrics", "xml"], "jsonl"),
])
def test_cli_bad_input_is_one_sentence(cli_runner, tmp_path, args, needle):
    result = cli_runner.invoke(app, ["train", *args, "--out", str(tmp_path / "run"), "--epochs", "1", "--limit", "4"])
    clean_error(result, 2, needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("given, sentence", [
    ({"momentum": 1.0}, "--momentum must be at least 0 and less than 1, not 1.0."),
    ({"batch_size": 1}, "--batch-size must be at least 2 (BatchNorm needs two samples), not 1."),
    ({"lr_gamma": 0.0}, "--lr-gamma must be greater than 0 and at most 1, not 0.0."),
    ({"arch": "mv1", "lr_step": 0}, "--lr-step must be at least 1 (epochs), not 0."),
    ({"epochs": 0}, "--epochs must be at least 1, not 0."),
    ({"dropout": float("nan")}, "--dropout must be at least 0 and less than 1, not nan."),
    ({"in_channels": 2}, "--in-channels must be one of 1, 3, not 2."),
    ({"keep": -1}, "--keep must be at least 0, not -1."),
])
def test_library_callers_get_the_declared_ranges_as_one_sentence(given, sentence):
    """The rules live on TrainOptions' fields (declared.Flag), so resolve_options says them for any caller, before a
    recipe's derived value (an lr_gamma from epochs, say) could divide by a bad one."""
    with pytest.raises(UserError) as err:
        resolve_options(TrainOptions(dataset="fashion-mnist", **given))
    assert str(err.value) == sentence


def test_recipe_defaults_follow_the_paper_scaled():
    mv2 = resolve_options(TrainOptions(dataset="fashion-mnist"))
    assert (mv2.epochs, mv2.batch_size, mv2.lr, mv2.momentum, mv2.weight_decay) == (200, 98, 0.045, 0.9, 4e-5)
    assert mv2.lr_gamma == pytest.approx(0.98) and lr_at(mv2, 3) == pytest.approx(0.045 * 0.98 ** 2)
    short = resolve_options(TrainOptions(dataset="fashion-mnist", epochs=10, batch_size=196))
    assert short.lr == pytest.approx(0.09)  # linear batch scaling
    assert lr_at(short, 10) / lr_at(short, 1) == pytest.approx(0.98 ** 180)  # same total decay as 200 epochs
    mv1 = resolve_options(TrainOptions(dataset="fashion-mnist", arch="mv1"))
    assert (mv1.epochs, mv1.batch_size, mv1.lr, mv1.lr_step) == (90, 128, 0.1, 30)
    assert [lr_at(mv1, e) for e in (30, 31, 61)] == pytest.approx([0.1, 0.01, 0.001])
    mv1_short = resolve_options(TrainOptions(dataset="fashion-mnist", arch="mv1", epochs=9))
    assert mv1_short.lr_step == 3 and lr_at(mv1_short, 4) == pytest.approx(0.01)
    with pytest.raises(UserError):
        resolve_options(TrainOptions(dataset="fashion-mnist", data="x"))


def test_augment_is_seeded_and_keeps_pixels():
    batch = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8)
    a = augment(batch, torch.Generator().manual_seed(3))
    b = augment(batch, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == batch.shape and a.dtype == torch.uint8
    assert not torch.equal(a, augment(batch, torch.Generator().manual_seed(4)))
    # a translation by at most 2 pixels (16 / 8) and a flip keep the central pixels' values in the image
    assert set(a.unique().tolist()) <= set(batch.unique().tolist()) | {0}


def test_pretrained_torchvision_weights_for_grey_input():
    from ulsam_deploy.data.resources import mv2_weights_path
    from ulsam_deploy.models import build_model
    from ulsam_deploy.train import _load_pretrained

    try:
        path = mv2_weights_path()
    except MissingResource as exc:
        pytest.skip(str(exc))
    model = build_model("mv2", 1.0, "17:1", 4, 10, 64, in_channels=1)
    summary = _load_pretrained(model, in_channels=1)
    assert summary.startswith("loaded 312 tensors")  # everything but the 1000-class head; ULSAM stays fresh
    reference = read_checkpoint_file(path)
    stem = reference["features.0.0.weight"].sum(dim=1, keepdim=True)  # grey = the RGB filters summed
    assert torch.equal(model.state_dict()["features.0.0.weight"], stem)
    assert torch.equal(model.state_dict()["features.18.0.weight"], reference["features.18.0.weight"])
