"""``ulsam-deploy convert``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ulsam_deploy.cli.command import command
from ulsam_deploy.cli.options import ForceOpt, MAX_COUNT, ThreadsOpt
from ulsam_deploy.cli.ui import RichEvents, console


@command()
def convert(
    model: Path = typer.Argument(..., metavar="MODEL", help="fp32 ONNX from 'ulsam-deploy export' (the unfused one for int8)."),
    precision: str = typer.Option(..., "--precision", help="fp16 or int8."),
    target: str = typer.Option("tensorrt", "--target", help="int8: the runtime it is made for: tensorrt (symmetric Q/DQ, the Jetson path) or ort (ONNX Runtime's CPU int8 kernels on this CPU)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="ONNX to write [default: MODEL.fp16.onnx, MODEL.int8-tensorrt.onnx or MODEL.int8-ort.onnx, with .fused before .onnx after --fuse]."),
    io: str = typer.Option("fp32", "--io", help="fp16: graph input/output type, fp32 or fp16."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help="int8: real calibration images (ImageFolder, flat folder, or a folder of idx files: its train split) [default: a seeded subset of Fashion-MNIST's training split for 1-channel 10-class models]."),
    calib_limit: int = typer.Option(512, "--calib-limit", min=1, max=MAX_COUNT, help="int8: calibration images to use at most (a seeded random subset)."),
    calib_method: Optional[str] = typer.Option(None, "--calib-method", help="int8: percentile, minmax or entropy [default: percentile for tensorrt, minmax for ort]."),
    reduce_range: Optional[bool] = typer.Option(None, "--reduce-range/--full-range", show_default=False, help="int8 --target ort: 7-bit weights [default: on where the CPU has no VNNI / dot product, as ONNX Runtime advises]."),
    verify_data: Optional[Path] = typer.Option(None, "--verify-data", help="Real images to verify on [default: the Fashion-MNIST test set (10,000 images) or foolbox's 20 ImageNet photos, whichever fits the model]."),
    verify_limit: Optional[int] = typer.Option(None, "--verify-limit", min=1, max=MAX_COUNT, help="Verification images to use at most [default: all]."),
    min_agreement: float = typer.Option(0.995, "--min-agreement", min=0, max=1, help="fp16 gate: top-1 agreement with fp32."),
    max_drop: float = typer.Option(1.0, "--max-drop", min=0, max=100, help="int8 gate: top-1 accuracy points lost against fp32."),
    threshold: Optional[list[str]] = typer.Option(None, "--threshold", help="Override a tolerance of the gate, as bench's --threshold: KEY=VALUE or PRECISION:KEY=VALUE."),
    fuse: bool = typer.Option(False, "--fuse", help="Fuse ULSAM blocks into SubspaceAttention (int8: after quantizing)."),
    threads: Optional[int] = ThreadsOpt,
    force: bool = ForceOpt,
) -> None:
    """fp16 or int8 ONNX, verified on real images with ONNX Runtime exactly as the artifact will run."""
    from ulsam_deploy.backends.judge import parse_tolerance_overrides
    from ulsam_deploy.steps.convert import ConvertOptions, convert_file

    options = ConvertOptions(precision=precision, target=target, io=io, fuse=fuse, force=force,
                             min_agreement=min_agreement, max_drop=max_drop, calib_method=calib_method,
                             calib_limit=calib_limit, verify_limit=verify_limit, reduce_range=reduce_range,
                             threads=threads, tolerances=parse_tolerance_overrides(threshold))
    result = convert_file(model, output, options, calib_data=calib_data, verify_data=verify_data, events=RichEvents())
    verdict, info = result.verdict, result.report["verification"]
    main = verdict.main
    table = Table(title=f"{precision} vs fp32 on ONNX Runtime CPU ({info['images']['source']}; {info['candidate']})",
                  title_justify="left")
    c = main.comparison
    if result.sidecar.is_classifier:
        for col in ("images", "top-1 agree", "top-5 overlap", "max |diff|", "cosine", "acc fp32", f"acc {precision}"):
            table.add_column(col, justify="right")
        acc = (lambda a: f"{a.top1:.2%}" if a is not None else "-")
        table.add_row(str(c.samples), f"{c.top1_agreement:.2%}", f"{c.top5_overlap:.2%}", f"{c.max_abs:.3g}",
                      f"{c.cosine:.5f}", acc(main.accuracy_reference), acc(main.accuracy_candidate))
        drop = verdict.accuracy_drop_points()
        gate = (f"top-1 agreement {c.top1_agreement:.2%}" if drop is None
                else (f"{drop:.2f} points of top-1 accuracy lost" if drop >= 0 else
                      f"{-drop:.2f} points of top-1 accuracy gained")) + " (passed)"
    else:  # a backbone: each feature map on its own, no classes to agree on
        for col in ("output", "images", "max |diff|", "mean |diff|", "required rtol", "cosine"):
            table.add_column(col, justify="left" if col == "output" else "right")
        for out in verdict.outputs:
            o = out.comparison
            table.add_row(out.name, str(o.samples), f"{o.max_abs:.3g}", f"{o.mean_abs:.3g}",
                          f"{o.min_required_rtol:.3g}", f"{o.cosine:.6f}")
        gate = (f"cosine >= {verdict.tolerances.min_cosine:g} on {len(verdict.outputs)} feature map(s), lowest "
                f"{min(o.comparison.cosine for o in verdict.outputs):.6f} (passed)")
    console.print(table)
    kept = result.report.get("kept_fp32") or {}
    blocks = kept.get("ulsam_blocks", (result.report.get("int8") or {}).get("excluded_ulsam_blocks", 0))
    target_note = f", target {target}" if precision == "int8" else ""
    console.print(f"[green]Wrote[/] {result.path} ({precision}{target_note}, {gate}; {blocks} ULSAM block(s) kept out of "
                  f"{precision}) and {result.sidecar_path}")
