"""Rendering a :class:`~ulsam_deploy.bench.run.BenchReport`: Rich tables, JSON, CSV, Markdown and a PNG chart.

Every file is written atomically (temporary file, then rename), so a failed run never leaves half
a report behind. The JSON schema is documented in ``docs/bench.md``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from rich.table import Table

from ulsam_deploy.bench.run import BenchReport, LatencyRow, ParityRow
from ulsam_deploy.passes.common import write_bytes_atomic

CSV_COLUMNS = ["model", "backend", "precision", "batch", "artifact", "latency_min_ms", "latency_mean_ms",
               "latency_median_ms", "latency_p90_ms", "latency_p95_ms", "latency_p99_ms", "latency_max_ms",
               "latency_cv", "unstable", "iterations", "throughput_qps", "images_per_s", "h2d_median_ms",
               "gpu_compute_median_ms", "d2h_median_ms", "reference", "parity_passed", "max_abs_diff",
               "mean_abs_diff", "min_required_atol", "min_required_rtol", "cosine", "top1_agreement", "top5_overlap",
               "top1_accuracy", "top5_accuracy", "top1_delta", "parity_failures"]


def _parity_index(report: BenchReport) -> dict[tuple, ParityRow]:
    return {(r.model, r.backend, r.precision, r.artifact): r for r in report.parity}


def rows(report: BenchReport) -> list[dict]:
    """One flat row per model x backend x precision x batch (latency joined with that runner's parity)."""
    parity = _parity_index(report)
    out = []
    seen = set()
    for lat in report.latency:
        key = (lat.model, lat.backend, lat.precision, lat.artifact)
        seen.add(key)
        out.append(_row(lat.model, lat.backend, lat.precision, lat.artifact, lat, parity.get(key)))
    for key, par in parity.items():  # parity without latency (--no-latency, or no batch fitted)
        if key not in seen:
            out.append(_row(par.model, par.backend, par.precision, par.artifact, None, par))
    return out


def _row(model, backend, precision, artifact, lat: LatencyRow | None, par: ParityRow | None) -> dict:
    row = dict.fromkeys(CSV_COLUMNS)
    row.update(model=model, backend=backend, precision=precision, artifact=artifact)
    if lat is not None:
        s = lat.stats
        row.update(batch=lat.batch, latency_min_ms=s.min, latency_mean_ms=s.mean, latency_median_ms=s.median,
                   latency_p90_ms=s.p90, latency_p95_ms=s.p95, latency_p99_ms=s.p99, latency_max_ms=s.max,
                   latency_cv=s.cv, unstable=s.unstable, iterations=s.count, throughput_qps=lat.qps,
                   images_per_s=lat.images_per_s)
        if lat.gpu:
            row.update(h2d_median_ms=lat.gpu["h2d"].median if "h2d" in lat.gpu else None,
                       gpu_compute_median_ms=lat.gpu["compute"].median if "compute" in lat.gpu else None,
                       d2h_median_ms=lat.gpu["d2h"].median if "d2h" in lat.gpu else None)
    if par is not None:
        row.update(reference=par.reference, parity_passed=par.passed, parity_failures="; ".join(par.failures))
        if par.comparison is not None:
            c = par.comparison
            row.update(max_abs_diff=c.max_abs, mean_abs_diff=c.mean_abs, min_required_atol=c.min_required_atol,
                       min_required_rtol=c.min_required_rtol, cosine=c.cosine, top1_agreement=c.top1_agreement,
                       top5_overlap=c.top5_overlap)
        if par.accuracy is not None:
            row.update(top1_accuracy=par.accuracy.top1, top5_accuracy=par.accuracy.top5)
            if par.reference_accuracy is not None and not par.is_reference:
                row["top1_delta"] = par.accuracy.top1 - par.reference_accuracy.top1
    return row


# --------------------------------------------------------------------------------------- text

def _ms(value) -> str:
    return "" if value is None else (f"{value:.3f}" if value < 10 else f"{value:.2f}" if value < 100 else f"{value:.1f}")


def _pct(value) -> str:
    return "" if value is None else f"{value:.1%}"


def _diff(value) -> str:
    return "" if value is None else f"{value:.2e}"


def rich_tables(report: BenchReport) -> list[Table]:
    multi = len(report.models) > 1
    gpu = any(r.gpu for r in report.latency)
    labels = report.has_labels
    table = Table(title="bench: latency (ms) and parity against the reference", title_justify="left")
    cols = (["model"] if multi else []) + ["backend", "prec", "batch", "median", "p99", "CV", "img/s"]
    if gpu:
        cols += ["H2D", "GPU Compute", "D2H"]
    cols += ["max |diff|", "cosine", "top-1 agree"]
    if labels:
        cols += ["top-1 acc", "Δ top-1"]
    cols += ["parity"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("model", "backend", "prec", "parity") else "right",
                         overflow="fold")
    for row in rows(report):
        cells = ([row["model"]] if multi else []) + [row["backend"], row["precision"], str(row["batch"] or "-"),
                                                     _ms(row["latency_median_ms"]), _ms(row["latency_p99_ms"])]
        cv = row["latency_cv"]
        cells.append("" if cv is None else (f"[yellow]{cv:.1%}![/]" if row["unstable"] else f"{cv:.1%}"))
        cells.append("" if row["images_per_s"] is None else f"{row['images_per_s']:.1f}")
        if gpu:
            cells += [_ms(row["h2d_median_ms"]), _ms(row["gpu_compute_median_ms"]), _ms(row["d2h_median_ms"])]
        is_ref = row["reference"] == "reference"
        cells += ["ref" if is_ref else _diff(row["max_abs_diff"]),
                  "ref" if is_ref else ("" if row["cosine"] is None else f"{row['cosine']:.6f}"),
                  "ref" if is_ref else _pct(row["top1_agreement"])]
        if labels:
            delta = row["top1_delta"]
            cells += [_pct(row["top1_accuracy"]), "" if delta is None else f"{delta * 100:+.1f} pt"]
        if row["parity_passed"] is None:
            cells.append("-")
        elif is_ref:
            cells.append("reference")
        else:
            cells.append("[green]PASS[/]" if row["parity_passed"] else f"[red]FAIL[/] {row['parity_failures']}")
        table.add_row(*cells)
    table.caption = ("latency per batch in ms (host wall time, one query in flight); CV = std/mean, '!' = unstable "
                     "(> 2.5 %, as trtexec)") + ("; H2D / GPU Compute / D2H: medians from CUDA events" if gpu else "")
    table.caption_justify = "left"
    tables = [table]
    if report.compare:
        cmp = Table(title="MACs ratio vs measured latency ratio (median, same interleaved run)", title_justify="left")
        for col in ("backend", "precision", "batch", "model", "vs", "MACs ratio", "latency ratio"):
            cmp.add_column(col, justify="right" if "ratio" in col or col == "batch" else "left")
        for c in report.compare:
            cmp.add_row(c.backend, c.precision, str(c.batch), c.model, c.baseline,
                        "" if c.macs_ratio is None else f"{c.macs_ratio:.4f}", f"{c.latency_ratio:.3f}")
        tables.append(cmp)
    return tables


def markdown(report: BenchReport) -> str:
    lines = ["# ulsam-deploy bench", "",
             f"- created: {report.created} ({report.seconds:.1f} s)",
             f"- machine: {report.machine.get('cpu', report.machine.get('machine'))}, {report.machine.get('cpu_count')} "
             f"CPUs, load {report.machine.get('load_average')}; GPUs: "
             f"{', '.join(g['name'] for g in report.machine.get('gpus') or []) or 'none'}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in report.versions.items() if v),
             f"- inputs: {report.inputs.get('source')} ({report.inputs.get('count')} x {report.inputs.get('shape')}, "
             f"{report.inputs.get('labelled')} labelled, {report.inputs.get('skipped')} skipped)",
             f"- timing: interleaved; warm-up {report.settings['timing']['warmup_s']} s, >= "
             f"{report.settings['timing']['min_iterations']} iterations and >= {report.settings['timing']['min_seconds']} s "
             f"per row; CV > 2.5 % flagged unstable",
             f"- result: **{'PASS' if report.passed else 'FAIL'}**", ""]
    for model in report.models:
        lines.append(f"- model `{model['name']}`: {model.get('description') or ''}"
                     + (f", {model['macs'] / 1e6:.1f} M MACs" if model.get("macs") else ""))
    lines.append("")
    header = ["model", "backend", "precision", "batch", "median ms", "mean ms", "p90 ms", "p95 ms", "p99 ms", "CV",
              "qps", "img/s", "GPU compute ms", "max abs diff", "cosine", "top-1 agree", "top-1 acc", "Δ top-1", "parity"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows(report):
        is_ref = row["reference"] == "reference"
        parity = "-" if row["parity_passed"] is None else ("reference" if is_ref else
                                                          ("PASS" if row["parity_passed"] else f"FAIL: {row['parity_failures']}"))
        cv = "" if row["latency_cv"] is None else f"{row['latency_cv']:.1%}" + (" unstable" if row["unstable"] else "")
        cells = [row["model"], row["backend"], row["precision"], str(row["batch"] or "-"), _ms(row["latency_median_ms"]),
                 _ms(row["latency_mean_ms"]), _ms(row["latency_p90_ms"]), _ms(row["latency_p95_ms"]),
                 _ms(row["latency_p99_ms"]), cv,
                 "" if row["throughput_qps"] is None else f"{row['throughput_qps']:.1f}",
                 "" if row["images_per_s"] is None else f"{row['images_per_s']:.1f}",
                 _ms(row["gpu_compute_median_ms"]), "ref" if is_ref else _diff(row["max_abs_diff"]),
                 "ref" if is_ref or row["cosine"] is None else f"{row['cosine']:.6f}",
                 "ref" if is_ref else _pct(row["top1_agreement"]), _pct(row["top1_accuracy"]),
                 "" if row["top1_delta"] is None else f"{row['top1_delta'] * 100:+.1f} pt", parity]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    if report.compare:
        lines += ["", "## MACs ratio vs latency ratio", "", "| backend | precision | batch | model | vs | MACs ratio | latency ratio |",
                  "|---|---|---|---|---|---|---|"]
        for c in report.compare:
            lines.append(f"| {c.backend} | {c.precision} | {c.batch} | {c.model} | {c.baseline} | "
                         f"{'' if c.macs_ratio is None else f'{c.macs_ratio:.4f}'} | {c.latency_ratio:.3f} |")
    if report.skipped:
        lines += ["", "## Skipped", ""] + [f"- {s['model']} {s['backend']}: {s['reason']}" for s in report.skipped]
    if report.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report.warnings]
    return "\n".join(lines) + "\n"


def csv_text(report: BenchReport) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows(report):
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def json_text(report: BenchReport) -> str:
    from ulsam_deploy.steps.export import _json_default

    return json.dumps(report.to_dict(), indent=2, default=_json_default) + "\n"


# -------------------------------------------------------------------------------------- chart

def chart_png(report: BenchReport) -> bytes:
    """Latency distribution per runner (one panel per batch size, up to 3) and, with labels,
    top-1 accuracy against median latency at the smallest batch."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    batches = sorted({r.batch for r in report.latency})[:3]
    accuracy_panel = report.has_labels and bool(report.latency)
    panels = len(batches) + (1 if accuracy_panel else 0)
    if panels == 0:
        panels = 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
    axes = axes[0]
    multi = len(report.models) > 1
    for ax, batch in zip(axes, batches):
        sel = [r for r in report.latency if r.batch == batch]
        names = [(f"{r.model}\n" if multi else "") + f"{r.backend} {r.precision}" for r in sel]
        ax.boxplot([r.samples_ms for r in sel], vert=False, showfliers=True, flierprops={"markersize": 2})
        ax.set_yticks(range(1, len(sel) + 1), names, fontsize=7)
        if sel and max(max(r.samples_ms) for r in sel) > 10 * min(min(r.samples_ms) for r in sel):
            ax.set_xscale("log")
        ax.set_xlabel("latency per batch (ms)")
        ax.set_title(f"batch {batch}: latency distribution", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    if accuracy_panel:
        ax = axes[len(batches)]
        smallest = batches[0]
        par = _parity_index(report)
        for r in report.latency:
            p = par.get((r.model, r.backend, r.precision, r.artifact))
            if r.batch != smallest or p is None or p.accuracy is None:
                continue
            ax.scatter(r.stats.median, p.accuracy.top1 * 100)
            ax.annotate((f"{r.model} " if multi else "") + f"{r.backend} {r.precision}",
                        (r.stats.median, p.accuracy.top1 * 100), fontsize=7, xytext=(3, 3), textcoords="offset points")
        meds = [r.stats.median for r in report.latency if r.batch == smallest]
        if meds and max(meds) > 10 * min(meds):
            ax.set_xscale("log")
        ax.set_xlabel(f"median latency, batch {smallest} (ms)")
        ax.margins(x=0.25, y=0.15)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title("accuracy vs latency", fontsize=10)
        ax.grid(alpha=0.3)
    if not batches and not accuracy_panel:
        axes[0].text(0.5, 0.5, "no latency measured", ha="center", va="center")
        axes[0].set_axis_off()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


WRITERS = {"json": json_text, "csv": csv_text, "markdown": markdown}


def write_reports(report: BenchReport, *, json_path=None, csv_path=None, markdown_path=None, chart_path=None) -> list[Path]:
    """Render everything first, then write each file atomically; returns the paths written."""
    planned: list[tuple[Path, bytes]] = []
    for path, render in ((json_path, json_text), (csv_path, csv_text), (markdown_path, markdown)):
        if path is not None:
            planned.append((Path(path), render(report).encode()))
    if chart_path is not None:
        planned.append((Path(chart_path), chart_png(report)))
    for path, _ in planned:
        if path.exists() and path.is_dir():
            from ulsam_deploy.errors import UserError

            raise UserError(f"'{path}' is a directory; give a file path for the report.")
    written = []
    umask = os.umask(0)
    os.umask(umask)
    for path, data in planned:
        write_bytes_atomic(data, path)
        os.chmod(path, 0o666 & ~umask)  # reports are for reading; the temp file was private
        written.append(path)
    return written


__all__ = ["CSV_COLUMNS", "chart_png", "csv_text", "json_text", "markdown", "rich_tables", "rows", "write_reports"]


class BenchProgress:
    """Rich progress on stderr for :func:`ulsam_deploy.bench.run.run_bench` events (use as ``event=``)."""

    def __init__(self, console=None):
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        from ulsam_deploy.cli.ui import err_console

        self.console = console or err_console
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                                 console=self.console, transient=True, disable=not self.console.is_terminal)
        self.task = None
        self.latency_started = 0.0
        self.latency_total = 1.0

    def __enter__(self):
        self.progress.start()
        self.task = self.progress.add_task("bench", total=None)
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def __call__(self, kind: str, **data) -> None:
        import time

        if kind == "load":
            self.progress.update(self.task, description=f"loading {data['backend']} for {data['model']}", total=None)
        elif kind == "export":
            self.progress.update(self.task, description=f"exporting {data['model']} to ONNX in memory", total=None)
        elif kind == "inputs":
            inputs = data["inputs"]
            self.console.print(f"inputs: {inputs.source} ({len(inputs)} x {list(inputs.data.shape[1:])}"
                               + (f", {int((inputs.labels >= 0).sum())} labelled" if inputs.labels is not None else "")
                               + (f", {len(inputs.skipped)} skipped" if inputs.skipped else "") + ")")
            for warning in inputs.warnings:
                self.console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
        elif kind == "parity":
            self.progress.update(self.task, description=f"parity: {data['backend']} on {data['model']}", total=None)
        elif kind == "latency_start":
            timing = data["timing"]
            self.latency_started = time.perf_counter()
            self.latency_total = data["targets"] * (timing.warmup_s + max(timing.min_seconds, 0.1))
            self.progress.update(self.task, description=f"latency: batch {data['batch']}, {data['targets']} runner(s) "
                                 "interleaved", total=self.latency_total, completed=0)
        elif kind == "latency_round":
            elapsed = time.perf_counter() - self.latency_started
            self.progress.update(self.task, completed=min(elapsed, self.latency_total * 0.99))
        elif kind == "latency_done":
            self.progress.update(self.task, completed=self.latency_total)
