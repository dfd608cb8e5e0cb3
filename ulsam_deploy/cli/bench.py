"""``ulsam-deploy bench``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ulsam_deploy.cli.command import command
from ulsam_deploy.cli.options import MAX_COUNT, MAX_PIXELS, MAX_SECONDS, MAX_SEED, ThreadsOpt, csv_list
from ulsam_deploy.cli.ui import BenchProgress, console, print_warning, reports_on_stdout
from ulsam_deploy.errors import UserError


COMPACT = {"model", "artifact", "backend", "precision", "batch", "size", "median", "CV", "GPU Compute", "max |diff|",
           "top-1 agree", "top-1 acc", "parity"}  # under FULL_WIDTH columns
NARROW = {"model", "artifact", "backend", "batch", "size", "median", "top-1 agree", "parity"}  # under COMPACT_WIDTH
FULL_WIDTH, COMPACT_WIDTH = 170, 110


def bench_tables(report, width: int | None = None) -> list[Table]:
    """The console view of a report: one line per row, failure reasons as numbered notes below the table. A narrower
    terminal gets fewer columns (every figure stays in --json/--csv/--markdown) rather than cut-off cells."""
    from ulsam_deploy.bench.report import (describe_precision, fmt_diff, fmt_ms, fmt_pct, footnotes, output_rows, rows,
                                           tolerance_text, wants_output_table)

    multi = len(report.models) > 1
    gpu = any(r.gpu for r in report.latency)
    labels = report.has_labels
    notes_index, notes = footnotes(report)
    table = Table(title="bench: latency (ms) and parity against the reference", title_justify="left")
    sized = any(r.size for r in report.latency)
    cols = (["model"] if multi else []) + ["artifact", "backend", "precision", "batch"]
    cols += (["size"] if sized else []) + ["median", "p99", "CV", "img/s"]
    if gpu:
        cols += ["H2D", "GPU Compute", "D2H"]
    cols += ["max |diff|", "cosine", "top-1 agree"]
    if labels:
        cols += ["top-1 acc", "Δ top-1"]
    cols += ["parity"]
    width = width or console.width
    shown = None if width >= FULL_WIDTH else (COMPACT if width >= COMPACT_WIDTH else NARROW)
    keep = [i for i, col in enumerate(cols) if shown is None or col in shown]
    for col in (cols[i] for i in keep):
        table.add_column(col, justify="left" if col in ("model", "artifact", "backend", "precision", "parity")
                         else "right", no_wrap=col != "artifact", overflow="fold" if col == "artifact" else "ellipsis")
    simulated = False
    for row in rows(report):
        median = fmt_ms(row["latency_median_ms"])
        if row["latency_meaningful"] is False:
            median += "*"
            simulated = True
        cells = ([row["model"]] if multi else []) + [row["file"], row["backend"], describe_precision(row),
                                                     str(row["batch"] or "-")] + (
            [row["input_size"] or "-"] if sized else []) + [median, fmt_ms(row["latency_p99_ms"])]
        cv = row["latency_cv"]
        cells.append("" if cv is None else (f"[yellow]{cv:.1%}![/]" if row["unstable"] else f"{cv:.1%}"))
        cells.append("" if row["images_per_s"] is None else f"{row['images_per_s']:.1f}")
        if gpu:
            cells += [fmt_ms(row["h2d_median_ms"]), fmt_ms(row["gpu_compute_median_ms"]), fmt_ms(row["d2h_median_ms"])]
        is_ref = row["reference"] == "reference"
        cells += ["ref" if is_ref else fmt_diff(row["max_abs_diff"]),
                  "ref" if is_ref else ("" if row["cosine"] is None else f"{row['cosine']:.6f}"),
                  "ref" if is_ref else fmt_pct(row["top1_agreement"])]
        if labels:
            delta = row["top1_delta"]
            cells += [fmt_pct(row["top1_accuracy"]), "" if delta is None else f"{delta * 100:+.1f} pt"]
        key = (row["model"], row["backend"], row["precision"], row["artifact"])
        if row["parity_passed"] is None:
            cells.append("-")
        elif is_ref:
            cells.append("reference")
        else:
            cells.append("[green]PASS[/]" if row["parity_passed"] else f"[red]FAIL[/] [{notes_index[key]}]")
        table.add_row(*(cells[i] for i in keep))
    caption = ["latency per batch in ms (host wall time, one query in flight); CV = std/mean, '!' = unstable "
               "(CV of host latency > 2.5 %)"]
    if wants_output_table(report):
        caption.append("max |diff| and cosine: the worst output; every output is in the next table")
    if gpu:
        caption.append("H2D / GPU Compute / D2H: medians from CUDA events")
    if simulated:
        caption.append("* the latency measures a simulation (int8 Q/DQ for TensorRT) or the NumPy reference op, "
                       "not deployment speed")
    if shown is not None:
        caption.append(f"{len(cols) - len(keep)} more columns at {FULL_WIDTH} characters or in --json/--markdown")
    caption += [f"[{k}] {n}" for k, n in enumerate(notes, 1)]
    table.caption = "\n".join(caption)
    table.caption_justify = "left"
    tables = [table]
    if wants_output_table(report):
        per = Table(title="parity per output (feature maps are judged without top-1)", title_justify="left")
        for col in ("artifact", "output", "max |diff|", "req. rtol", "cosine", "gate", "result"):
            per.add_column(col, justify="right" if col in ("max |diff|", "cosine", "req. rtol") else "left",
                           no_wrap=col in ("output", "gate", "cosine"))
        for o in output_rows(report):
            per.add_row(f"{o['file']} ({o['backend']})", o["output"], fmt_diff(o["max_abs_diff"]),
                        fmt_diff(o["min_required_rtol"]), f"{o['cosine']:.6f}", tolerance_text(o),
                        "[red]FAIL[/]" if o["failed"] else "[green]PASS[/]")
        per.caption = ("max |diff| is also the smallest atol that would pass; req. rtol the smallest rtol")
        per.caption_justify = "left"
        tables.append(per)
    if report.compare:
        cmp = Table(title="MACs ratio vs measured latency ratio (median, same interleaved run)", title_justify="left")
        for col in ("backend", "precision", "batch", "size", "model", "vs", "MACs ratio", "latency ratio"):
            cmp.add_column(col, justify="right" if "ratio" in col or col == "batch" else "left")
        for c in report.compare:
            cmp.add_row(c.backend, c.precision, str(c.batch), f"{c.size[0]}x{c.size[1]}" if c.size else "-", c.model,
                        c.baseline,
                        "" if c.macs_ratio is None else f"{c.macs_ratio:.4f}", f"{c.latency_ratio:.3f}")
        tables.append(cmp)
    return tables


@command()
def bench(
    models: list[str] = typer.Argument(..., metavar="MODEL...", help="Checkpoint (.pt), ONNX file, TensorRT engine, or a spec such as 'mv2+17:1/g4' (seeded random weights). Two or more: side-by-side comparison."),
    backends: str = typer.Option("torch,ort,trt", "--backends", help="Comma-separated: torch, ort, trt (unavailable ones are listed as skipped)."),
    reference: str = typer.Option("torch", "--reference", help="Backend every other one is compared with (its fp32 artifact)."),
    onnx: Optional[list[Path]] = typer.Option(None, "--onnx", help="Extra ONNX file(s) of the (single) model, e.g. fp16 / int8 / fused variants; repeatable."),
    engine: Optional[list[Path]] = typer.Option(None, "--engine", help="TensorRT engine(s) of the (single) model; repeatable."),
    batch_sizes: str = typer.Option("1", "--batch-sizes", help="Batch sizes to time, e.g. 1,8,32."),
    input_size: Optional[str] = typer.Option(None, "--input-size", help="Input sizes to judge and time, e.g. 224,320,480 (or HxW); needs models with a dynamic H/W export (or checkpoints/specs) [default: the model's size]."),
    warmup: float = typer.Option(500.0, "--warmup", min=0, max=MAX_SECONDS * 1000, help="Warm-up per runner and batch, in milliseconds (trtexec's --warmUp unit)."),
    iterations: int = typer.Option(10, "--iterations", min=1, max=MAX_COUNT, help="At least this many timed iterations per row."),
    duration: float = typer.Option(3.0, "--duration", min=0, max=MAX_SECONDS, help="At least this many seconds of timed iterations per row (trtexec's --duration unit)."),
    threads: Optional[int] = ThreadsOpt,
    ort_provider: str = typer.Option("cpu", "--ort-provider", help="ONNX Runtime providers: cpu, cuda, trt (comma-separated for several)."),
    device: str = typer.Option("cpu", "--device", help="PyTorch device: cpu or cuda[:N]."),
    trt_device: int = typer.Option(0, "--trt-device", min=0, max=63, help="GPU index for TensorRT engines."),
    inputs: Optional[str] = typer.Option(None, "--inputs", help="Real images: ImageFolder dir, idx folder, image, folder or glob [default: seeded random tensors]."),
    num_inputs: Optional[int] = typer.Option(None, "--num-inputs", min=1, max=MAX_COUNT, help="Random inputs to make [default: 16], or most images to read (a seeded subset) [default: all]."),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Seed of the random inputs (and of spec-built models)."),
    label_regex: Optional[str] = typer.Option(None, "--label-regex", help="Take labels from file names: regex with one group (class index or name), e.g. '_(\\d+)$'."),
    mean: Optional[str] = typer.Option(None, "--mean", help="Override mean, e.g. 0.485,0.456,0.406 (one value per input channel) [default: the model's]."),
    std: Optional[str] = typer.Option(None, "--std", help="Override std (positive, one value per input channel) [default: the model's]."),
    resize: Optional[int] = typer.Option(None, "--resize", min=1, max=MAX_PIXELS, help="Resize the shorter side to this before the center crop [default: the model's crop]."),
    crop_pct: Optional[float] = typer.Option(None, "--crop-pct", help="Center-crop fraction (0.875 = resize 256, crop 224) [default: the model's]."),
    threshold: Optional[list[str]] = typer.Option(None, "--threshold", help="Override a parity tolerance: KEY=VALUE or PRECISION:KEY=VALUE (keys: atol, rtol, min_cosine, min_top1_agreement, min_top5_overlap, max_top1_drop; 'none' disables)."),
    parity: bool = typer.Option(True, "--parity/--no-parity", help="Compare every backend with the reference."),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="Measure latency."),
    compare: bool = typer.Option(False, "--compare", help="Side-by-side comparison (implied by two or more models)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the full report as JSON ('-' for standard output; schema: docs/bench.md)."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Write one CSV row per artifact x backend x batch ('-' for standard output)."),
    markdown_path: Optional[Path] = typer.Option(None, "--markdown", help="Write a Markdown report ('-' for standard output)."),
    chart_path: Optional[Path] = typer.Option(None, "--chart", help="Write a PNG chart (latency distribution; latency vs input size; accuracy vs latency; MACs vs latency ratio)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Write bench.json, bench.csv, bench.md and bench.png into this folder."),
    force: bool = typer.Option(False, "--force", help="Replace existing report files."),
) -> None:
    """Parity and latency of every backend (torch, ort, trt) on identical inputs, trtexec-style figures."""
    from ulsam_deploy.backends.judge import parse_tolerance_overrides
    from ulsam_deploy.bench.latency import TimingConfig
    from ulsam_deploy.bench.report import check_report_paths, write_reports
    from ulsam_deploy.bench.options import BenchOptions, parse_sizes
    from ulsam_deploy.bench.models import resolve_model
    from ulsam_deploy.bench.run import run_bench

    if compare and len(models) < 2:
        raise UserError("--compare needs two or more models, e.g. 'ulsam-deploy bench mv2 mv2+14,17 --compare'.")
    if len(models) > 1 and (onnx or engine):
        raise UserError("--onnx/--engine add variants of a single model; with several models give each model's file as an argument.")
    options = BenchOptions(
        backends=csv_list(backends, "--backends"), reference=reference, batches=csv_list(batch_sizes, "--batch-sizes", int),
        timing=TimingConfig(warmup_s=warmup / 1000.0, min_iters=iterations, min_seconds=duration), threads=threads,
        ort_providers=csv_list(ort_provider, "--ort-provider") or ("cpu",), torch_device=device, trt_device=trt_device,
        inputs=inputs, num_inputs=num_inputs, seed=seed, label_regex=label_regex,
        mean=csv_list(mean, "--mean", float) or None, std=csv_list(std, "--std", float) or None, resize=resize,
        crop_pct=crop_pct, threshold_overrides=parse_tolerance_overrides(threshold), parity=parity, latency=latency,
        sizes=parse_sizes(input_size))
    if out_dir is not None:
        json_path = json_path or out_dir / "bench.json"
        csv_path = csv_path or out_dir / "bench.csv"
        markdown_path = markdown_path or out_dir / "bench.md"
        chart_path = chart_path or out_dir / "bench.png"
    given = [Path(m) for m in models if Path(m).exists()] + list(onnx or ()) + list(engine or ())
    check_report_paths(json_path=json_path, csv_path=csv_path, markdown_path=markdown_path, chart_path=chart_path,
                       force=force, inputs=given)  # before the run, not after minutes of timing
    with reports_on_stdout((json_path, csv_path, markdown_path)):
        specs = [resolve_model(m, onnx=onnx or (), engines=engine or (), seed=seed) for m in models]
        with BenchProgress() as progress:
            report = run_bench(specs, options, events=progress)
        for table in bench_tables(report):
            console.print(table)
        for item in report.skipped:
            console.print(f"[yellow]skipped[/] {escape(item['model'])} {item['backend']}"
                          + (f" (batch {item['batch']})" if item.get("batch") else "") + f": {escape(item['reason'])}",
                          soft_wrap=True)
        for warning in report.warnings:
            if warning not in progress.shown:  # the inputs' warnings were shown as the inputs were read
                print_warning(warning)
        written = write_reports(report, json_path=json_path, csv_path=csv_path, markdown_path=markdown_path,
                                chart_path=chart_path, force=force, inputs=given)
        for path in written:
            console.print(f"[green]Wrote[/] {path}")
        report.raise_for_parity()
        compared = sum(not r.is_reference for r in report.parity)
        if compared:
            console.print(f"[green]Parity passed[/] for {compared} backend(s).")
        elif parity:
            print_warning("Nothing was compared for parity: each model ran on one backend only (see 'skipped' above); "
                          "give the checkpoint, or more artifacts with --onnx/--engine, to compare backends.")
