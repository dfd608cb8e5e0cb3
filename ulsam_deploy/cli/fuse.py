"""``ulsam-deploy fuse``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ulsam_deploy.cli.command import command
from ulsam_deploy.cli.options import ForceOpt, MAX_SEED
from ulsam_deploy.cli.ui import RichEvents, console, print_warning


@command()
def fuse(
    model: Path = typer.Argument(..., metavar="MODEL", help="ONNX model to fuse (run after export/onnxsim)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Fused ONNX to write [default: MODEL.fused.onnx]."),
    atol: float = typer.Option(1e-5, "--atol", min=0, help="An element passes when |fused - unfused| <= atol on ONNX Runtime..."),
    rtol: float = typer.Option(1e-5, "--rtol", min=0, help="... or <= rtol x |unfused| (Polygraphy's rule: fp32 reordering scales with the values)."),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Seed of the parity inputs."),
    force: bool = ForceOpt,
) -> None:
    """Replace every ULSAM block with one SubspaceAttention node, proven equal to the unfused graph on ONNX Runtime."""
    from ulsam_deploy.steps.fuse import fuse_file

    result = fuse_file(model, output, atol=atol, rtol=rtol, force=force, seed=seed, events=RichEvents())
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
    if not report["fused"]:
        already = (f" (it already has {report['already_fused']} {report['op']['type']} node(s): fused before?)"
                   if report["already_fused"] else "")
        print_warning(f"No ULSAM block found in {model}{already}; the output is the same graph.")
    outputs = [o for o in result.verdict.outputs if "/" in o.name]
    at_blocks = max((o.comparison.max_abs for o in outputs if o.name.split("/", 1)[1] in
                     {b["output"] for b in report["blocks"]}), default=0.0)
    console.print(f"[green]Wrote[/] {result.path} ({report['fused']} ULSAM block(s) fused, "
                  f"{report['nodes_before']} -> {report['nodes_after']} nodes, {len(report['left_alone'])} left alone; "
                  f"fused == unfused on ONNX Runtime, max |diff| {result.verdict.max_abs:.2g} ({at_blocks:.2g} at the "
                  f"blocks); every element within --atol {atol:g} or --rtol {rtol:g}) and {result.sidecar_path}")
