"""``ulsam-deploy deploy``: checkpoint to engine in one command."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ulsam_deploy.cli.command import command
from ulsam_deploy.cli.options import ArchOpt, ClassesOpt, ForceOpt, GroupsOpt, UlsamOpt, WidthOpt, model_overrides
from ulsam_deploy.cli.ui import RichEvents, console, print_warning


@command()
def deploy(
    checkpoint: Path = typer.Argument(..., metavar="CHECKPOINT", help="Checkpoint (.pt), or a bundled model's name (fashion-mnist)."),
    out: Path = typer.Option(Path("deploy"), "--out", help="Folder for model.onnx, the converted ONNX, the engine and their sidecars."),
    precision: str = typer.Option("fp16", "--precision", help="fp32, fp16 or int8 (the engine's precision, set in the ONNX)."),
    target: str = typer.Option("tensorrt", "--target", help="int8: the runtime its Q/DQ layout is made for (tensorrt or ort)."),
    fuse: bool = typer.Option(True, "--fuse/--no-fuse", help="Run each ULSAM block as the plugin's one fused op."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help="int8: real calibration images [default: Fashion-MNIST's training split for 1-channel 10-class models]."),
    verify_data: Optional[Path] = typer.Option(None, "--verify-data", help="Real images the converted model is verified (and benched) on [default: convert's]."),
    batch_profile: Optional[str] = typer.Option(None, "--batch-profile", help="Engine batch profile MIN:OPT:MAX [default: the export's batch range]."),
    plugin: str = typer.Option("auto", "--plugin", help="How the engine runs the fused op: auto, lib or python."),
    engine: bool = typer.Option(True, "--engine/--no-engine", help="Build the TensorRT engine (where TensorRT and a GPU are)."),
    require_engine: bool = typer.Option(False, "--require-engine", help="Exit 4 when no engine can be built here, instead of stopping at the TensorRT boundary."),
    bench: bool = typer.Option(False, "--bench", help="Then bench every artifact (parity + latency) into OUT/bench.md and bench.json."),
    force: bool = ForceOpt,
    arch: Optional[str] = ArchOpt, width: Optional[float] = WidthOpt, ulsam: Optional[str] = UlsamOpt,
    groups: Optional[int] = GroupsOpt, num_classes: Optional[int] = ClassesOpt,
) -> None:
    """Checkpoint to TensorRT engine in one command: export, fuse/convert, build-trt (and bench), each with its gate."""
    from ulsam_deploy.bundled import as_checkpoint
    from ulsam_deploy.deploy import DeployOptions, run_deploy
    from ulsam_deploy.extras import require

    require("deploy", "torch", "onnxsim")
    options = DeployOptions(precision=precision, target=target, fuse=fuse,
                            calib_data=str(calib_data) if calib_data else None,
                            verify_data=str(verify_data) if verify_data else None, batch_profile=batch_profile,
                            plugin=plugin, engine=engine, require_engine=require_engine, bench=bench, force=force)
    result = run_deploy(as_checkpoint(checkpoint), out, options, RichEvents(),
                        **{k: v for k, v in model_overrides(arch, width, ulsam, groups, num_classes, None).items()
                           if v is not None})
    table = Table(title=f"deploy: {checkpoint} -> {out}", title_justify="left")
    for col in ("step", "status", "file", "detail"):
        table.add_column(col, overflow="fold")
    for step in result.steps:
        colour = "green" if step.status == "ok" else "yellow"
        table.add_row(step.name, f"[{colour}]{step.status}[/]", step.path.name if step.path else "", escape(step.detail))
    console.print(table)
    stop = result.stopped_at
    if stop is not None and stop.detail != "--no-engine":
        print_warning(f"No engine was built: {stop.detail} Copy {result.onnx} (and its .json) to a machine with "
                      f"TensorRT and run 'ulsam-deploy build-trt {result.onnx.name}' there.")
    elif result.engine is not None:
        console.print(f"[green]Engine:[/] {result.engine}")
