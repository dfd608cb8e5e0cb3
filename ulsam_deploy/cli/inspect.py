"""``ulsam-deploy inspect``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ulsam_deploy.cli.command import command
from ulsam_deploy.cli.options import ArchOpt, ClassesOpt, GroupsOpt, SizeOpt, UlsamOpt, WidthOpt, model_overrides
from ulsam_deploy.cli.ui import console, fmt_count
from ulsam_deploy.errors import UserError

MAX_INSPECT_SIZE = 2048


@command()
def inspect(
    checkpoint: Optional[Path] = typer.Argument(None, metavar="[CHECKPOINT]", help="Checkpoint or ONNX file to inspect (or describe a model with flags)."),
    as_json: bool = typer.Option(False, "--json", help="Print {params, macs, layers} as JSON to stdout."),
    arch: Optional[str] = ArchOpt, width: Optional[float] = WidthOpt, ulsam: Optional[str] = UlsamOpt,
    groups: Optional[int] = GroupsOpt, num_classes: Optional[int] = ClassesOpt, input_size: Optional[int] = SizeOpt,
) -> None:
    """Per-layer table (paper layer numbers) with parameters and MACs, counted the paper's way; an ONNX file: its
    description, ops, inputs and MACs (no PyTorch needed)."""
    from ulsam_deploy.extras import require

    if checkpoint is not None and checkpoint.suffix.lower() == ".onnx":
        flags = [f"--{k.replace('_', '-')}" for k, v in model_overrides(arch, width, ulsam, groups, num_classes,
                                                                        input_size).items() if v is not None]
        if flags:
            one = len(flags) == 1
            raise UserError(f"{', '.join(flags)} {'describes' if one else 'describe'} a checkpoint; an ONNX file "
                            f"describes itself, so inspect '{checkpoint}' without {'it' if one else 'them'}.")
        return _inspect_onnx(checkpoint, as_json)
    if checkpoint is None and arch is None:
        raise UserError("Give a checkpoint, an ONNX file or at least --arch (e.g. 'ulsam-deploy inspect --arch mv2 "
                        "--ulsam 14,17').")
    require("inspect", "torch", what="a checkpoint" if checkpoint is not None else "a model given by flags")
    from ulsam_deploy.models import build_model, profile_model
    from ulsam_deploy.models.checkpoint import load_checkpoint_with_info

    if input_size is not None and not 8 <= input_size <= MAX_INSPECT_SIZE:
        raise UserError(f"--input-size must be between 8 and {MAX_INSPECT_SIZE}, not {input_size}.")
    overrides = model_overrides(arch, width, ulsam, groups, num_classes, input_size)
    if checkpoint is not None:
        from ulsam_deploy.bundled import as_checkpoint

        model, info = load_checkpoint_with_info(as_checkpoint(checkpoint), **overrides)
        config = info.config
    else:
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


def _inspect_onnx(path: Path, as_json: bool) -> None:
    """Torch-free: the sidecar's description, the graph's facts, op counts and MACs (paper rule, from the graph)."""
    from ulsam_deploy.artifacts import load_onnx
    from ulsam_deploy.sidecars import read_onnx_sidecar
    from ulsam_deploy.onnx_graph import graph_facts, io_specs, precision_of
    from ulsam_deploy.passes.cost import onnx_cost

    model = load_onnx(path)
    sidecar = read_onnx_sidecar(path, required=False, check_hash=False)
    facts = graph_facts(model)
    inputs, outputs = io_specs(model)
    try:
        macs, params = onnx_cost(model)
    except ValueError:
        macs = params = None
    config = sidecar.model.config if sidecar is not None and sidecar.model is not None else None
    data = {"params": params, "macs": macs, "config": config, "onnx": str(path), "precision": precision_of(model),
            "inputs": inputs, "outputs": outputs, **facts, "sidecar": sidecar is not None}
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    from ulsam_deploy.models.config import ModelConfig

    title = ModelConfig.from_dict(config).describe() if config else f"{path.name} (no sidecar: graph only)"
    table = Table(title=title, title_justify="left")
    table.add_column("op")
    table.add_column("nodes", justify="right")
    for op, count in facts["ops"].items():
        table.add_row(op, str(count), style="bold magenta" if op == "SubspaceAttention" else None)
    table.add_section()
    table.add_row("total", str(facts["nodes"]), style="bold")
    console.print(table)
    shape = lambda specs: ", ".join(f"{s['name']} {s['dtype']} {s['shape']}" for s in specs)  # noqa: E731
    console.print(f"{data['precision']}, opset {facts['opset']}, IR {facts['ir_version']}, "
                  f"{facts['fused_nodes']} fused ULSAM block(s); inputs: {shape(inputs)}; outputs: {shape(outputs)}",
                  soft_wrap=True, markup=False)
    if macs is not None:
        console.print(f"{fmt_count(params)} parameters, {fmt_count(macs)} MACs (paper's rule: conv and linear "
                      "weights, batch 1, read from the graph).")
