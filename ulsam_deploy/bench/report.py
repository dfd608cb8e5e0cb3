"""Rendering a :class:`~ulsam_deploy.bench.results.BenchReport` as rows, JSON, CSV, Markdown and a PNG chart.

Every row names its artifact (the file, its precision and int8 target) and how it ran (``mode``: e.g.
"Q/DQ simulated, TensorRT semantics" or "SubspaceAttention reference op (NumPy)"); rows whose latency
measures a simulation or a reference op say so and take no part in speed comparisons. Files follow the
rules of every output (:mod:`ulsam_deploy.artifacts`): atomic, the umask's mode, never through a symlink
or onto a device; ``-`` writes JSON/CSV/Markdown to standard output. The JSON schema is in ``docs/bench.md``.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from ulsam_deploy.artifacts import check_output, is_stdout, is_stream, json_text, write_bytes, write_text_output
from ulsam_deploy.bench.results import BenchReport, LatencyRow, ParityRow

CSV_COLUMNS = ["model", "file", "backend", "precision", "int8_target", "mode", "batch", "input_size", "artifact",
               "latency_meaningful", "latency_min_ms", "latency_mean_ms", "latency_median_ms", "latency_p90_ms",
               "latency_p95_ms", "latency_p99_ms", "latency_max_ms", "latency_cv", "unstable", "iterations",
               "throughput_qps", "images_per_s", "h2d_median_ms", "gpu_compute_median_ms", "d2h_median_ms",
               "reference", "parity_passed", "max_abs_diff", "mean_abs_diff", "min_required_atol",
               "min_required_rtol", "cosine", "top1_agreement", "top5_overlap", "top1_accuracy", "top5_accuracy",
               "top1_delta", "parity_outputs", "parity_failures"]


def _parity_index(report: BenchReport) -> dict[tuple, ParityRow]:
    return {(r.model, r.backend, r.precision, r.artifact): r for r in report.parity}


def rows(report: BenchReport) -> list[dict]:
    """One flat row per model x artifact x backend x batch (latency joined with that runner's parity)."""
    parity = _parity_index(report)
    out = []
    seen = set()
    for lat in report.latency:
        key = (lat.model, lat.backend, lat.precision, lat.artifact)
        seen.add(key)
        out.append(_row(lat, parity.get(key)))
    for key, par in parity.items():  # parity without latency (--no-latency, or no batch fitted)
        if key not in seen:
            out.append(_row(None, par))
    return out


def _row(lat: LatencyRow | None, par: ParityRow | None) -> dict:
    src = lat if lat is not None else par
    row = dict.fromkeys(CSV_COLUMNS)
    row.update(model=src.model, backend=src.backend, precision=src.precision, artifact=src.artifact, file=src.file,
               mode=src.mode)
    if par is not None:
        row["int8_target"] = par.int8_target
    if lat is not None:
        s = lat.stats
        row.update(batch=lat.batch, input_size=lat.size_text or None, latency_meaningful=lat.meaningful,
                   latency_min_ms=s.min, latency_mean_ms=s.mean,
                   latency_median_ms=s.median, latency_p90_ms=s.p90, latency_p95_ms=s.p95, latency_p99_ms=s.p99,
                   latency_max_ms=s.max, latency_cv=s.cv, unstable=s.unstable, iterations=s.count,
                   throughput_qps=lat.qps, images_per_s=lat.images_per_s)
        if lat.gpu:
            row.update(h2d_median_ms=lat.gpu["h2d"].median if "h2d" in lat.gpu else None,
                       gpu_compute_median_ms=lat.gpu["compute"].median if "compute" in lat.gpu else None,
                       d2h_median_ms=lat.gpu["d2h"].median if "d2h" in lat.gpu else None)
    if par is not None:
        row.update(reference=par.reference, parity_passed=par.passed, parity_failures="; ".join(par.failures))
        worst = par.worst  # over every output and size: one row per runner, outputs_table() has each one
        if worst is not None:
            row.update(max_abs_diff=worst["max_abs"], mean_abs_diff=worst["mean_abs"],
                       min_required_atol=worst["min_required_atol"], min_required_rtol=worst["min_required_rtol"],
                       cosine=worst["cosine"], top1_agreement=worst["top1_agreement"],
                       top5_overlap=worst["top5_overlap"], parity_outputs=len(par.outputs))
        if par.accuracy is not None:
            row.update(top1_accuracy=par.accuracy.top1, top5_accuracy=par.accuracy.top5)
            if par.reference_accuracy is not None and not par.is_reference:
                row["top1_delta"] = par.accuracy.top1 - par.reference_accuracy.top1
    return row


def describe_precision(row: dict) -> str:
    """``int8 (tensorrt)``, ``fp16``...: the precision and, for int8, the runtime it was made for."""
    return row["precision"] + (f" ({row['int8_target']})" if row.get("int8_target") else "")


def footnotes(report: BenchReport) -> tuple[dict[tuple, int], list[str]]:
    """Numbered notes for every failed parity row (so tables stay one line per row) and for how rows ran."""
    index: dict[tuple, int] = {}
    notes: list[str] = []
    for par in report.parity:
        if not par.passed:
            notes.append(f"{par.model} {par.file} on {par.backend}: {'; '.join(par.failures)}")
            index[(par.model, par.backend, par.precision, par.artifact)] = len(notes)
    return index, notes


def mode_notes(report: BenchReport) -> list[str]:
    seen, out = set(), []
    for row in rows(report):
        if row["mode"] and (row["file"], row["mode"]) not in seen:
            seen.add((row["file"], row["mode"]))
            extra = "" if row["latency_meaningful"] in (None, True) else "; its latency is not deployment speed"
            out.append(f"{row['file']} ({row['backend']}): {row['mode']}{extra}")
    return out


def output_rows(report: BenchReport) -> list[dict]:
    """One row per judged output (size x output name) of every runner: the figures behind the worst-case row."""
    out = []
    for par in report.parity:
        if par.is_reference:
            continue
        t = par.tolerances
        for o in par.outputs:
            c = o.comparison
            out.append({"model": par.model, "file": par.file, "backend": par.backend, "precision": par.precision,
                        "output": o.name, "max_abs_diff": c.max_abs, "mean_abs_diff": c.mean_abs, "cosine": c.cosine,
                        "min_required_atol": c.min_required_atol, "min_required_rtol": c.min_required_rtol,
                        "top1_agreement": c.top1_agreement if o.classifier else None,
                        "atol": t.atol, "rtol": t.rtol, "min_cosine": t.min_cosine,
                        "failed": list(par.failures) if len(par.outputs) == 1 else
                        [f for f in par.failures if f.startswith(f"{o.name}: ")]})
    return out


def tolerance_text(row: dict) -> str:
    """The gate an output row was held to, in short (``atol 1e-04 rtol 1e-03 cos>=0.99999``)."""
    parts = [f"{k} {row[k]:.0e}" for k in ("atol", "rtol") if row.get(k) is not None]
    if row.get("min_cosine") is not None:
        parts.append(f"cos>={row['min_cosine']:g}")
    return " ".join(parts) or "-"


def wants_output_table(report: BenchReport) -> bool:
    """Several outputs (a backbone) or several sizes: the per-runner row alone would hide which one is worst."""
    return any(len(p.outputs) > 1 for p in report.parity)


# --------------------------------------------------------------------------------------- text

def fmt_ms(value) -> str:
    return "" if value is None else (f"{value:.3f}" if value < 10 else f"{value:.2f}" if value < 100 else f"{value:.1f}")


def fmt_pct(value) -> str:
    return "" if value is None else f"{value:.1%}"


def fmt_diff(value) -> str:
    return "" if value is None else f"{value:.2e}"


def markdown(report: BenchReport) -> str:
    lines = ["# ulsam-deploy bench", "",
             f"- created: {report.created} ({report.seconds:.1f} s)",
             f"- machine: {report.machine.get('cpu', report.machine.get('machine'))}, {report.machine.get('cpu_count')} "
             f"CPUs ({(report.machine.get('int8') or {}).get('summary', '')}), load "
             f"{report.machine.get('load_average')}; GPUs: "
             f"{', '.join(g['name'] for g in report.machine.get('gpus') or []) or 'none'}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in report.versions.items() if v),
             f"- inputs: {report.inputs.get('source')} ({report.inputs.get('count')} x {report.inputs.get('shape')}, "
             f"{report.inputs.get('labelled')} labelled, {report.inputs.get('skipped')} skipped)"
             + (f"; at sizes {', '.join(f'{h}x{w}' for h, w in report.inputs['sizes'])}"
                if len(report.inputs.get("sizes") or []) > 1 else ""),
             f"- timing: interleaved; warm-up {report.settings['timing']['warmup_s']} s, >= "
             f"{report.settings['timing']['min_iterations']} iterations and >= {report.settings['timing']['min_seconds']} s "
             f"per row; a host-latency CV > 2.5 % is flagged unstable (our rule; trtexec warns on GPU compute time)",
             f"- result: **{'PASS' if report.passed else 'FAIL'}**", ""]
    for model in report.models:
        backbone = (f"; backbone: feature maps after layers {', '.join(map(str, model['features']))}"
                    if model.get("features") else "")
        lines.append(f"- model `{model['name']}`: {model.get('description') or ''}{backbone}"
                     + (f", {model['macs'] / 1e6:.1f} M MACs" if model.get("macs") else ""))
    lines.append("")
    notes_index, notes = footnotes(report)
    sized = any(r.size for r in report.latency)
    header = ["model", "artifact", "backend", "precision", "batch"] + (["size"] if sized else []) + [
        "median ms", "mean ms", "p90 ms", "p99 ms", "CV", "img/s", "GPU compute ms", "max abs diff", "cosine",
        "top-1 agree", "top-1 acc", "Δ top-1", "parity"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows(report):
        is_ref = row["reference"] == "reference"
        key = (row["model"], row["backend"], row["precision"], row["artifact"])
        parity = "-" if row["parity_passed"] is None else ("reference" if is_ref else
                                                          ("PASS" if row["parity_passed"] else f"FAIL [{notes_index[key]}]"))
        cv = "" if row["latency_cv"] is None else f"{row['latency_cv']:.1%}" + (" unstable" if row["unstable"] else "")
        median = fmt_ms(row["latency_median_ms"]) + ("*" if row["latency_meaningful"] is False else "")
        cells = [row["model"], row["file"], row["backend"], describe_precision(row), str(row["batch"] or "-")] + (
            [row["input_size"] or "-"] if sized else []) + [median,
                 fmt_ms(row["latency_mean_ms"]), fmt_ms(row["latency_p90_ms"]), fmt_ms(row["latency_p99_ms"]), cv,
                 "" if row["images_per_s"] is None else f"{row['images_per_s']:.1f}",
                 fmt_ms(row["gpu_compute_median_ms"]), "ref" if is_ref else fmt_diff(row["max_abs_diff"]),
                 "ref" if is_ref or row["cosine"] is None else f"{row['cosine']:.6f}",
                 "ref" if is_ref else fmt_pct(row["top1_agreement"]), fmt_pct(row["top1_accuracy"]),
                 "" if row["top1_delta"] is None else f"{row['top1_delta'] * 100:+.1f} pt", parity]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    if wants_output_table(report):
        lines += ["", "## Parity per output", "",
                  "Each output at each size against the gate it was held to; the max abs diff is also the smallest "
                  "atol that would pass, the required rtol the smallest rtol. Feature maps are judged without top-1.",
                  "", "| model | artifact | backend | precision | output | max abs diff | mean abs diff | "
                  "required rtol | cosine | top-1 agree | gate | result |", "|" + "---|" * 12]
        for o in output_rows(report):
            cells = [o["model"], o["file"], o["backend"], o["precision"], o["output"], fmt_diff(o["max_abs_diff"]),
                     fmt_diff(o["mean_abs_diff"]), fmt_diff(o["min_required_rtol"]), f"{o['cosine']:.6f}",
                     fmt_pct(o["top1_agreement"]) or "-", tolerance_text(o), "FAIL" if o["failed"] else "PASS"]
            lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    how = mode_notes(report)
    if how or any(r.meaningful is False for r in report.latency):
        lines += ["", "How rows ran (* = the latency measures a simulation or a reference op, not deployment speed; "
                      "no speed comparison uses it):", ""] + [f"- {n}" for n in how]
    if notes:
        lines += ["", "Parity failures:", ""] + [f"{k}. {n}" for k, n in enumerate(notes, 1)]
    if report.compare:
        lines += ["", "## MACs ratio vs latency ratio", "",
                  "| backend | precision | batch | size | model | vs | MACs ratio | latency ratio |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in report.compare:
            size = f"{c.size[0]}x{c.size[1]}" if c.size else "-"
            lines.append(f"| {c.backend} | {c.precision} | {c.batch} | {size} | {c.model} | {c.baseline} | "
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


def report_json(report: BenchReport) -> str:
    return json_text(report.to_dict())


# -------------------------------------------------------------------------------------- chart

def _label(row_model: str, file: str, backend: str, multi: bool, size: str = "") -> str:
    return (f"{row_model}: " if multi else "") + f"{file} ({backend})" + (f" @{size}" if size else "")


def _size_panel(ax, report: BenchReport, multi: bool) -> None:
    """Median latency against input pixels at the smallest batch, one line per runner (what a detector's input
    size costs); the whiskers span p10..p90 of the samples."""
    smallest = min(r.batch for r in report.latency)
    lines: dict[tuple, list] = {}
    for r in report.latency:
        if not r.meaningful:
            continue
        if r.batch == smallest and r.size:
            lines.setdefault((r.model, r.file, r.backend, r.meaningful), []).append(r)
    ticks = {}
    for (model, file, backend, meaningful), sel in lines.items():
        sel.sort(key=lambda r: r.size[0] * r.size[1])
        xs = [r.size[0] * r.size[1] / 1e3 for r in sel]
        meds = [r.stats.median for r in sel]
        lo = [m - float(np.percentile(r.samples_ms, 10)) for m, r in zip(meds, sel)]
        hi = [float(np.percentile(r.samples_ms, 90)) - m for m, r in zip(meds, sel)]
        ax.errorbar(xs, meds, yerr=[lo, hi], marker="o", ms=3.5, lw=1.2, capsize=2,
                    label=_label(model, file, backend, multi) + ("*" if not meaningful else ""))
        ticks.update({x: r.size_text for x, r in zip(xs, sel)})
    ax.set_xticks(list(ticks), list(ticks.values()), fontsize=9, rotation=30)
    ax.set_xlabel("input size (H x W; axis linear in pixels)", fontsize=9)
    ax.set_ylabel(f"median latency, batch {smallest} (ms)", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title("latency vs input size", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")


def chart_png(report: BenchReport) -> bytes:
    """Latency distribution per runner (one panel per batch size, up to 3); with several input sizes, median latency
    against input size; with labels, top-1 accuracy against median latency at the smallest batch (points numbered,
    names in a legend, so nothing overlaps); with ``--compare``, measured latency ratio against MACs ratio.

    Panels are stacked in one column about a page wide, so the text stays readable where the chart is shown at page
    width. Rows whose latency is not deployment speed (int8 Q/DQ simulation, the NumPy reference op) are left off
    the speed axes and named under the chart. Linear latency axes start at 0; the accuracy axis spans at least 5
    points, so a 0.2-point difference does not fill the height."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    plotted = [r for r in report.latency if r.meaningful]
    hidden = sorted({_label(r.model, r.file, r.backend, len(report.models) > 1) for r in report.latency
                     if not r.meaningful})
    batches = sorted({r.batch for r in plotted})[:3]
    accuracy_panel = report.has_labels and bool(plotted)
    compare_panel = bool(report.compare)
    size_panel = len({r.size for r in plotted if r.size}) > 1
    n_rows = max((sum(1 for r in plotted if r.batch == b) for b in batches), default=1)
    heights = [max(2.6, 0.38 * n_rows + 1.4)] * len(batches) + [3.6] * (int(size_panel) + int(accuracy_panel)
                                                                         + int(compare_panel))
    heights = heights or [2.0]
    fig, axes = plt.subplots(len(heights), 1, figsize=(8.0, sum(heights) + 0.6 * bool(hidden)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    axes = list(axes[:, 0])
    multi = len(report.models) > 1
    for ax, batch in zip(axes, batches):
        sel = [r for r in plotted if r.batch == batch]
        names = [_label(r.model, r.file, r.backend, multi, r.size_text) for r in sel]
        ax.boxplot([r.samples_ms for r in sel], vert=False, showfliers=True, flierprops={"markersize": 2})
        ax.set_yticks(range(1, len(sel) + 1), names, fontsize=9)
        if sel and max(max(r.samples_ms) for r in sel) > 10 * min(min(r.samples_ms) for r in sel):
            ax.set_xscale("log")
        else:
            ax.set_xlim(left=0)
        ax.set_xlabel("latency per batch (ms)", fontsize=9)
        ax.tick_params(axis="x", labelsize=9)
        ax.set_title(f"batch {batch}: latency distribution", fontsize=11)
        ax.grid(axis="x", alpha=0.3)
    position = len(batches)
    if size_panel:
        _size_panel(axes[position], report, multi)
        position += 1
    if accuracy_panel:
        ax = axes[position]
        position += 1
        smallest = batches[0]
        par = _parity_index(report)
        legend, placed = [], []
        first_size = min((r.size for r in plotted if r.size), default=None)
        accuracies = []
        for r in plotted:
            p = par.get((r.model, r.backend, r.precision, r.artifact))
            if r.batch != smallest or r.size != first_size or p is None or p.accuracy is None:
                continue
            number = len(legend) + 1
            point = (r.stats.median, p.accuracy.top1 * 100)
            ax.scatter(*point, s=18)
            near = sum(1 for q in placed if abs(np.log10(q[0] / point[0])) < 0.15 and abs(q[1] - point[1]) < 0.15)
            placed.append(point)  # points that (nearly) coincide get their numbers stacked, not overprinted
            ax.annotate(str(number), point, fontsize=9, xytext=(4, 3 + 9 * near), textcoords="offset points")
            legend.append(f"{number}: {_label(r.model, r.file, r.backend, multi)}")
            accuracies.append(point[1])
        meds = [r.stats.median for r in plotted if r.batch == smallest]
        if meds and max(meds) > 10 * min(meds):
            ax.set_xscale("log")
            ax.margins(x=0.25)
        else:
            ax.set_xlim(0, max(meds, default=1.0) * 1.25)
        if accuracies:
            top = min(100.0, max(accuracies) + 1.0)
            ax.set_ylim(max(0.0, min(min(accuracies) - 1.0, top - 5.0)), top)
        ax.set_xlabel(f"median latency, batch {smallest} (ms)", fontsize=9)
        ax.tick_params(labelsize=9)
        ax.set_ylabel("top-1 accuracy (%)", fontsize=9)
        ax.set_title("accuracy vs latency", fontsize=11)
        ax.grid(alpha=0.3)
        ax.legend(handles=[], title="\n".join(legend), title_fontsize=8, loc="lower right", frameon=True)
    if compare_panel:
        ax = axes[position]
        xs = [c.macs_ratio for c in report.compare if c.macs_ratio is not None]
        ys = [c.latency_ratio for c in report.compare if c.macs_ratio is not None]
        for k, c in enumerate(c for c in report.compare if c.macs_ratio is not None):
            ax.scatter(c.macs_ratio, c.latency_ratio, s=18)
            ax.annotate(f"{c.model} b{c.batch}" + (f" @{c.size[0]}x{c.size[1]}" if c.size else ""),
                        (c.macs_ratio, c.latency_ratio), fontsize=6.5,
                        xytext=(3, 3 + 7 * (k % 3)), textcoords="offset points")
        if xs:
            lo, hi = min(xs + ys) * 0.95, max(xs + ys) * 1.05
            ax.plot([lo, hi], [lo, hi], ls="--", lw=0.8, color="grey",
                    label="y = x: latency falls as much as the MACs")
            ax.legend(fontsize=8, loc="upper left")
        ax.set_xlabel(f"MACs ratio vs {report.compare[0].baseline}", fontsize=9)
        ax.set_ylabel("measured latency ratio (median)", fontsize=9)
        ax.tick_params(labelsize=9)
        ax.set_title("MACs ratio vs latency ratio", fontsize=11)
        ax.grid(alpha=0.3)
    if not batches and not accuracy_panel and not compare_panel and not size_panel:
        axes[0].text(0.5, 0.5, "no deployment-speed latency measured", ha="center", va="center")
        axes[0].set_axis_off()
    if hidden:
        fig.text(0.01, 0.0, "not plotted (latency of a simulation or reference op, not deployment speed): "
                 + ", ".join(hidden), fontsize=8, va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.04 if hidden else 0, 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def check_report_paths(*, json_path=None, csv_path=None, markdown_path=None, chart_path=None, force: bool = False,
                       inputs=()) -> None:
    """Refuse, before any work, a report path that cannot or must not be written (same rules as every output; ``-``
    and ``/dev/stdout`` mean standard output, except for the PNG chart; ``/dev/null`` discards). ``inputs``: files
    the reports must not replace (the models being benchmarked)."""
    from ulsam_deploy.errors import UserError

    if chart_path is not None:
        if is_stdout(chart_path):
            raise UserError("--chart writes a PNG file; give a file path ending in .png, not standard output.")
        if Path(chart_path).suffix.lower() != ".png" and not is_stream(chart_path):
            raise UserError(f"--chart writes a PNG; give a path ending in .png, not '{chart_path}'.")
    files = [p for p in (json_path, csv_path, markdown_path, chart_path) if p is not None and not is_stream(p)]
    if len({os.path.abspath(p) for p in files}) < len(files):
        raise UserError("Two reports were given the same file; give each of --json, --csv, --markdown and --chart its "
                        "own path.")
    for path, what in ((json_path, "JSON report"), (csv_path, "CSV report"), (markdown_path, "Markdown report"),
                       (chart_path, "chart")):
        if path is not None and not is_stream(path):
            check_output(path, force=force, what=what, inputs=tuple(inputs))


def write_rendered(report, *, json_path=None, csv_path=None, markdown_path=None, chart_path=None, force: bool = False,
                   inputs=(), renderers) -> list[Path]:
    """Check every path first, render everything, then write each file (``-`` = standard output). ``renderers``:
    ``(json, csv, markdown, chart_png)`` functions of ``report`` (bench's, or the fleet's)."""
    render_json, render_csv, render_markdown, render_chart = renderers
    check_report_paths(json_path=json_path, csv_path=csv_path, markdown_path=markdown_path, chart_path=chart_path,
                       force=force, inputs=inputs)
    planned = [(path, what, render) for path, what, render in (
        (json_path, "JSON report", render_json), (csv_path, "CSV report", render_csv),
        (markdown_path, "Markdown report", render_markdown)) if path is not None]
    texts = [(path, what, render(report)) for path, what, render in planned]
    png = render_chart(report) if chart_path is not None and not is_stream(chart_path) else None
    written = []
    for path, what, text in texts:
        if write_text_output(text, path, force=True, what=what) is not None:
            written.append(Path(path))
    if png is not None:
        written.append(write_bytes(png, chart_path))
    return written


def write_reports(report: BenchReport, **paths) -> list[Path]:
    """Bench's reports (see :func:`write_rendered` for the paths and rules)."""
    return write_rendered(report, renderers=(report_json, csv_text, markdown, chart_png), **paths)


__all__ = ["CSV_COLUMNS", "chart_png", "check_report_paths", "csv_text", "describe_precision", "fmt_diff", "fmt_ms",
           "fmt_pct", "footnotes", "markdown", "mode_notes", "output_rows", "report_json", "rows", "tolerance_text",
           "wants_output_table", "write_rendered", "write_reports"]
