"""``ulsam-deploy export``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ulsam_deploy.cli.command import command
from ulsam_deploy.cli.options import ArchOpt, ClassesOpt, ForceOpt, GroupsOpt, MAX_COUNT, UlsamOpt, WidthOpt, model_overrides
from ulsam_deploy.cli.ui import RichEvents, console


@command()
def export(
    checkpoint: Path = typer.Argument(..., metavar="CHECKPOINT", help="Checkpoint (.pt/.pth): ours, a bare state dict, or a DataParallel/Lightning one."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="ONNX file to write [default: CHECKPOINT with .onnx]."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (13-21; TensorRT 10 reads up to 20)."),
    static_batch: Optional[int] = typer.Option(None, "--static-batch", min=1, max=MAX_COUNT, help="Fix the batch axis to N [default: dynamic batch]."),
    simplify: bool = typer.Option(True, "--simplify/--no-simplify", help="Simplify with onnxsim."),
    atol: float = typer.Option(1e-4, "--atol", min=0, help="Largest allowed |ONNX Runtime - PyTorch| difference."),
    exporter: str = typer.Option("torchscript", "--exporter", help="torch.onnx exporter: torchscript (fast) or dynamo."),
    fuse: bool = typer.Option(False, "--fuse", help="Also fuse ULSAM blocks into SubspaceAttention nodes."),
    features: Optional[str] = typer.Option(None, "--features", help="Export a backbone: the feature maps after these paper layers (e.g. 7,14,19) or strides (s8,s16,s32), named feat_s8..., no classifier."),
    force: bool = ForceOpt,
    arch: Optional[str] = ArchOpt, width: Optional[float] = WidthOpt, ulsam: Optional[str] = UlsamOpt,
    groups: Optional[int] = GroupsOpt, num_classes: Optional[int] = ClassesOpt,
    input_size: Optional[str] = typer.Option(None, "--input-size", help="Input resolution (square), or MIN:OPT:MAX (e.g. 256:320:640) for a symbolic height and width in that range, traced at OPT; sizes must be multiples of the network's stride (32)."),
) -> None:
    """Export a checkpoint to clean ONNX, simplified, checked and proven equal to PyTorch."""
    from ulsam_deploy.extras import require
    from ulsam_deploy.steps.export import ExportOptions, default_output, export_checkpoint, parse_input_size

    require("export", "torch", "onnxsim")
    size, input_range = parse_input_size(input_size)
    options = ExportOptions(opset=opset, batch=static_batch, simplify=simplify, atol=atol, exporter=exporter,
                            force=force, fuse=fuse, input_range=input_range, features=features)
    from ulsam_deploy.bundled import as_checkpoint

    source = as_checkpoint(checkpoint)  # a bundled model's name: its checkpoint, exported into the working folder
    result = export_checkpoint(source, output or (default_output(checkpoint) if source == checkpoint else
                                                  Path(f"{checkpoint}.onnx")), options, RichEvents(),
                               **model_overrides(arch, width, ulsam, groups, num_classes, size))
    table = Table(title="ONNX Runtime vs PyTorch", title_justify="left")
    classifier = result.sidecar.is_classifier
    for col in ("inputs", "max |diff|", "mean |diff|", "cosine") + (("top-1 agree",) if classifier else ()):
        table.add_column(col, justify="right")
    for out in result.verdict.outputs:
        c = out.comparison
        table.add_row(out.name, f"{c.max_abs:.3g}", f"{c.mean_abs:.3g}", f"{c.cosine:.6f}",
                      *((f"{c.top1_agreement:.0%}",) if classifier else ()))
    console.print(table)
    if not classifier:
        console.print("outputs: " + ", ".join(f"{o.name} (layer {o.layer}, stride {o.stride}, {o.channels} channels)"
                                              for o in result.sidecar.outputs))
    dyn = result.sidecar.dynamic
    if dyn is not None and dyn.height:
        console.print(f"dynamic height/width {dyn.height[0]}..{dyn.height[2]} (opt {dyn.height[1]}), multiples of "
                      f"{dyn.multiple_of}; build-trt derives its profile from this range")
    fusion = result.report.get("fusion")
    fused = f", {fusion.get('fused', 0)} ULSAM blocks fused" if fusion else ""
    console.print(f"[green]Wrote[/] {result.path} ({result.sidecar.graph['nodes']} nodes{fused}, max |diff| "
                  f"{result.verdict.max_abs:.2g} <= {atol:g}) and {result.sidecar_path}")
