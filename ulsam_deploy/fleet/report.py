"""The fleet's one report: a device-by-artifact matrix (latency median and p99, throughput, parity, top-1) with
each device's doctor facts, as JSON, CSV, Markdown and a PNG chart.

Rows come from each device's own ``bench --json`` report, read back through the same bench fields the bench CSV
uses; a device without a report (lost, timed out, cancelled, refused) still has its row, with the reason.
"""

from __future__ import annotations

import csv
import io
import json

from ulsam_deploy.artifacts import json_text
from ulsam_deploy.fleet.run import FleetRun
from ulsam_deploy.fleet.schema import FLEET_SCHEMA, DeviceResult, doctor_checks

COLUMNS = ["device", "status", "file", "backend", "precision", "batch", "median_ms", "p99_ms", "images_per_s",
           "parity", "top1", "note"]
DOCTOR_FACTS = ("tensorrt", "cuda-driver", "gpu", "jetson", "onnxruntime", "cpu-int8")


def doctor_facts(result: DeviceResult) -> dict[str, str]:
    """The device's TensorRT, CUDA, driver, GPU and JetPack facts, in words (from its own doctor)."""
    checks = doctor_checks(result.doctor)
    facts = {}
    for name in DOCTOR_FACTS:
        check = checks.get(name)
        if check is not None:
            facts[name] = (check.get("version") or "") + (" " if check.get("version") else "") + \
                (check.get("detail") or ("ok" if check.get("ok") else "missing"))
    return {k: v.strip()[:160] for k, v in facts.items()}


def _parity_of(bench: dict) -> dict[tuple[str, str], dict]:
    return {(p.get("backend"), p.get("file")): p for p in bench.get("parity", []) if isinstance(p, dict)}


def _verdict(row: dict | None) -> str:
    if row is None:
        return "-"
    if row.get("is_reference"):
        return "reference"
    return "pass" if row.get("passed") else "FAIL"


def matrix(run: FleetRun) -> list[dict]:
    """One row per device x artifact x backend x batch; one row per device that brought no bench report, and one
    per engine a device could not build."""
    rows: list[dict] = []
    for result in run.results:
        base = {"device": result.kind, "status": result.status}
        bench = result.bench or {}
        parity = _parity_of(bench)
        latency = [r for r in bench.get("latency", []) if isinstance(r, dict)]
        for lat in latency:
            par = parity.get((lat.get("backend"), lat.get("file")))
            stats = lat.get("latency_ms") or {}
            top1 = ((par or {}).get("accuracy") or {}).get("top1")
            rows.append({**base, "file": lat.get("file"), "backend": lat.get("backend"),
                         "precision": lat.get("precision"), "batch": lat.get("batch"),
                         "median_ms": stats.get("median"), "p99_ms": stats.get("p99"),
                         "images_per_s": lat.get("images_per_s"), "parity": _verdict(par), "top1": top1,
                         "note": "" if lat.get("latency_meaningful", True) else "simulated, not deployment speed"})
        timed = {(r.get("backend"), r.get("file")) for r in latency}
        for (backend, file), par in parity.items():
            if (backend, file) not in timed:
                rows.append({**base, "file": file, "backend": backend, "precision": par.get("precision"),
                             "batch": None, "median_ms": None, "p99_ms": None, "images_per_s": None,
                             "parity": _verdict(par), "top1": (par.get("accuracy") or {}).get("top1"), "note": ""})
        for skip in result.skipped:
            rows.append({**base, "file": skip.get("artifact"), "backend": skip.get("backend"), "precision": None,
                         "batch": None, "median_ms": None, "p99_ms": None, "images_per_s": None, "parity": "-",
                         "top1": None, "note": f"skipped: {skip.get('reason')}"})
        for skip in bench.get("skipped", []):
            rows.append({**base, "file": skip.get("artifact") or "-", "backend": skip.get("backend"),
                         "precision": None, "batch": skip.get("batch"), "median_ms": None, "p99_ms": None,
                         "images_per_s": None, "parity": "-", "top1": None, "note": f"skipped: {skip.get('reason')}"})
        if not latency and not parity:
            rows.append({**base, "file": "-", "backend": "-", "precision": None, "batch": None, "median_ms": None,
                         "p99_ms": None, "images_per_s": None, "parity": "-", "top1": None,
                         "note": result.reason or result.status})
    return rows


def passed(run: FleetRun) -> bool:
    return all(r.status == "ok" for r in run.results) and not any(row["parity"] == "FAIL" for row in matrix(run))


def to_dict(run: FleetRun) -> dict:
    devices = []
    for result in run.results:
        data = json.loads(result.to_json())
        for engine in data.get("engines", []):
            engine.pop("data_b64", None)  # fetched engines are written as files, not into the report
        data["facts"] = doctor_facts(result)
        devices.append(data)
    return {"schema": FLEET_SCHEMA + "/report", "created": run.created, "passed": passed(run),
            "interrupted": run.interrupted, "seconds": round(run.seconds, 3), "scheduler": run.scheduler,
            "tls": run.tls, "reference": run.reference, "artifacts": [f.model_dump() for f in run.files],
            "settings": {"bench": run.options.bench.model_dump(), "engines": run.options.engines,
                         "plugin": run.options.plugin, "time_limit_s": run.options.time_limit_s},
            "matrix": matrix(run), "notes": list(run.notes), "devices": devices}


def report_json(run: FleetRun) -> str:
    return json_text(to_dict(run))


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def csv_text(run: FleetRun) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in matrix(run):
        writer.writerow({k: _fmt(row.get(k), 4) for k in COLUMNS})
    return out.getvalue()


def markdown(run: FleetRun) -> str:
    lines = [f"# Fleet report ({run.created})", "",
             f"Scheduler {run.scheduler} ({'TLS' if run.tls else 'no TLS'}); reference {run.reference}; "
             f"{len(run.results)} device kind(s); {'interrupted by Ctrl-C; ' if run.interrupted else ''}"
             f"{'all passed' if passed(run) else 'NOT all passed'}.", "", "## Devices", "",
             "| device | status | worker | TensorRT | GPU | CUDA driver | JetPack | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in run.results:
        f = doctor_facts(r)
        lines.append(f"| {r.kind} | {r.status}{': ' + r.reason if r.reason else ''} | {r.worker or ''} | "
                     f"{f.get('tensorrt', '')} | {f.get('gpu', '')} | {f.get('cuda-driver', '')} | "
                     f"{f.get('jetson', '')} | {r.seconds:.1f} |")
    lines += ["", "## Matrix", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in matrix(run):
        lines.append("| " + " | ".join(_fmt(row.get(k)).replace("|", "/") for k in COLUMNS) + " |")
    if run.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in run.notes]
    return "\n".join(lines) + "\n"


def chart_png(run: FleetRun) -> bytes:
    """Median latency (p99 as the whisker) per artifact and backend, one group of bars per device."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = [r for r in matrix(run) if r["median_ms"] is not None and not r["note"]]
    batches = sorted({r["batch"] for r in rows}) or [1]
    batch = batches[0]
    rows = [r for r in rows if r["batch"] == batch]
    devices = list(dict.fromkeys(r["device"] for r in rows))
    series = list(dict.fromkeys(f"{r['file']} ({r['backend']})" for r in rows))
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.5 * max(1, len(devices) * max(1, len(series)))))
    height = 0.8 / max(1, len(series))
    for i, name in enumerate(series):
        ys, widths, errs = [], [], []
        for d, device in enumerate(devices):
            match = next((r for r in rows if r["device"] == device and f"{r['file']} ({r['backend']})" == name), None)
            if match is not None:
                ys.append(d + i * height)
                widths.append(match["median_ms"])
                errs.append(max(0.0, (match["p99_ms"] or match["median_ms"]) - match["median_ms"]))
        ax.barh(ys, widths, height=height, xerr=[[0] * len(errs), errs], label=name, capsize=2)
    ax.set_yticks([d + 0.4 - height / 2 for d in range(len(devices))])
    ax.set_yticklabels(devices)
    ax.invert_yaxis()
    ax.set_xlabel(f"latency at batch {batch}, ms (bar: median, whisker: p99)")
    ax.set_title("ulsam-deploy fleet: latency per device")
    if series:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, frameon=False)
    else:
        ax.text(0.5, 0.5, "no device brought latency figures", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def write_fleet_reports(run: FleetRun, **paths):
    from ulsam_deploy.bench.report import write_rendered

    return write_rendered(run, renderers=(report_json, csv_text, markdown, chart_png), **paths)


__all__ = ["COLUMNS", "chart_png", "csv_text", "doctor_facts", "markdown", "matrix", "passed", "report_json",
           "to_dict", "write_fleet_reports"]
