"""``ulsam-deploy inspect``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ulsam_deploy.cli.app import command
from ulsam_deploy.cli.options import ArchOpt, ClassesOpt, GroupsOpt, SizeOpt, UlsamOpt, WidthOpt, model_overrides
from ulsam_deploy.cli.ui import console, fmt_count
from ulsam_deploy.errors import UserError

MAX_INSPECT_SIZE = 2048


@command()
def inspect(
    checkpoint: Optional[Path] = typer.Argument(None, metavar="[CHECKPOINT]", help="Checkpoint to inspect (or describe a model with flags)."),
    as_json: bool = typer.Option(False, "--json", help="Print {params, macs, layers} as JSON to stdout."),
    arch: Optional[str] = ArchOpt, width: Optional[float] = WidthOpt, ulsam: Optional[str] = UlsamOpt,
    groups: Optional[int] = GroupsOpt, num_classes: Optional[int] = ClassesOpt, input_size: Optional[int] = SizeOpt,
) -> None:
    """Per-layer table (paper layer numbers) with parameters and MACs, counted the paper's way."""
    from ulsam_deploy.extras import require

    require("inspect", "torch")
    from ulsam_deploy.models import build_model, profile_model
    from ulsam_deploy.models.checkpoint import load_checkpoint_with_info

    if input_size is not None and not 8 <= input_size <= MAX_INSPECT_SIZE:
        raise UserError(f"--input-size must be between 8 and {MAX_INSPECT_SIZE}, not {input_size}.")
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
