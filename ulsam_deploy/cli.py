"""The ``ulsam-deploy`` command line: parse, call, render. Logic lives in the library modules."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from . import __version__
from .errors import UserError
from .ui import console, fmt_count, print_error, print_warning, quiet_stage, stage

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
    from .export import ExportOptions, export_checkpoint

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
    from .models import build_model, profile_model
    from .models.checkpoint import load_checkpoint_with_info

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


def run() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    run()
