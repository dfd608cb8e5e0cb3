"""``ulsam-deploy doctor``."""

from __future__ import annotations

import json
import sys

import typer
from rich.table import Table

from ulsam_deploy.cli.command import command
from ulsam_deploy.cli.ui import console



@command()
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
