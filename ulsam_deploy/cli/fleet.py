"""``ulsam-deploy fleet``: the same steps on every device kind of a Dask cluster, into one report."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ulsam_deploy.cli.command import command
from ulsam_deploy.cli.options import MAX_COUNT, MAX_SECONDS, MAX_SEED, MAX_THREADS, ForceOpt, csv_list
from ulsam_deploy.cli.ui import console, print_warning, reports_on_stdout
from ulsam_deploy.errors import UserError
from ulsam_deploy.events import Events


@command()
def fleet(
    artifacts: Optional[list[Path]] = typer.Argument(None, metavar="ONNX...", help="The ONNX files to ship (first: the fp32 reference; then fused / fp16 / int8 variants), each with its sidecar."),
    list_kinds: bool = typer.Option(False, "--list-kinds", help="Only list the device kinds connected to the scheduler, with their workers, and stop."),
    kinds: Optional[str] = typer.Option(None, "--kinds", help="Device kinds to cover, comma-separated (worker resources) [default: every connected kind]."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Dask scheduler address, e.g. tls://10.0.0.5:8786 [default: a cluster on this machine]."),
    tls_ca: Optional[Path] = typer.Option(None, "--tls-ca", help="TLS: the CA certificate (PEM) that signed every party."),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="TLS: this client's certificate (PEM)."),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="TLS: this client's private key (PEM)."),
    batch_sizes: str = typer.Option("1", "--batch-sizes", help="Batch sizes to time on every device, e.g. 1,8."),
    warmup: float = typer.Option(500.0, "--warmup", min=0, max=MAX_SECONDS * 1000, help="Warm-up per runner and batch, in milliseconds."),
    iterations: int = typer.Option(10, "--iterations", min=1, max=MAX_COUNT, help="At least this many timed iterations per row."),
    duration: float = typer.Option(3.0, "--duration", min=0, max=MAX_SECONDS, help="At least this many seconds of timing per row."),
    num_inputs: Optional[int] = typer.Option(None, "--num-inputs", min=1, max=100_000, help="Random inputs per device [default: 16], or most images."),
    inputs: Optional[Path] = typer.Option(None, "--inputs", help="Labelled images (an ImageFolder) sent to every device, for top-1."),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Seed of the random inputs."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, max=MAX_THREADS, help="ONNX Runtime threads on each device."),
    engines: bool = typer.Option(True, "--engines/--no-engines", help="Build a TensorRT engine per ONNX on each device with TensorRT."),
    plugin: str = typer.Option("auto", "--plugin", help="How fused ONNX files run in engines: auto, lib or python."),
    fetch_engines: Optional[Path] = typer.Option(None, "--fetch-engines", help="Bring the engines back into this folder [default: they stay on the boards]."),
    time_limit: float = typer.Option(1800.0, "--time-limit", min=1, max=86_400, help="Seconds each device may take."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write fleet.json, fleet.csv, fleet.md and fleet.png into this folder."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON ('-' for standard output)."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Write the matrix as CSV ('-' for standard output)."),
    markdown_path: Optional[Path] = typer.Option(None, "--markdown", help="Write a Markdown report ('-' for standard output)."),
    chart_path: Optional[Path] = typer.Option(None, "--chart", help="Write a PNG chart of latency per device."),
    force: bool = ForceOpt,
) -> None:
    """Build and bench on every device kind of a fleet (Dask), into one device-by-artifact report."""
    from ulsam_deploy.fleet.cluster import NO_TLS_WARNING, TlsFiles, check_address, is_loopback, open_client, require_dask
    from ulsam_deploy.fleet.report import matrix, passed, write_fleet_reports
    from ulsam_deploy.fleet.run import FleetOptions, run_fleet
    from ulsam_deploy.fleet.schema import BenchSettings
    from ulsam_deploy.bench.report import check_report_paths

    require_dask()
    if list_kinds and artifacts:
        raise UserError("--list-kinds lists the connected device kinds and ships nothing; drop the ONNX files or "
                        "--list-kinds.")
    if not list_kinds and not artifacts:
        raise UserError("Give the ONNX files to ship (the fp32 reference first), or --list-kinds to see the "
                        "connected device kinds.")
    given = [p for p in (tls_ca, tls_cert, tls_key) if p is not None]
    if given and len(given) != 3:
        raise UserError("TLS needs all three of --tls-ca, --tls-cert and --tls-key.")
    if given and scheduler is None:
        raise UserError("--tls-* files are for a remote scheduler; give --scheduler tls://HOST:PORT (the embedded "
                        "cluster listens on 127.0.0.1 only).")
    from ulsam_deploy.op_spec import PLUGIN_ROUTES

    if plugin not in PLUGIN_ROUTES:
        raise UserError(f"--plugin must be one of {', '.join(PLUGIN_ROUTES)}, not '{plugin}'.")
    tls = TlsFiles(tls_ca, tls_cert, tls_key) if given else None
    address = check_address(scheduler, tls) if scheduler is not None else None
    if list_kinds:
        _list_kinds(address, tls)
        return
    options = FleetOptions(
        kinds=list(csv_list(kinds, "--kinds")) if kinds is not None else None,
        bench=BenchSettings(batch_sizes=list(csv_list(batch_sizes, "--batch-sizes", int)), warmup_ms=warmup,
                            iterations=iterations, duration_s=duration, num_inputs=num_inputs, seed=seed,
                            threads=threads),
        engines=engines, plugin=plugin, fetch_engines=fetch_engines is not None, time_limit_s=time_limit,
        images=inputs)
    if out is not None:
        json_path = json_path or out / "fleet.json"
        csv_path = csv_path or out / "fleet.csv"
        markdown_path = markdown_path or out / "fleet.md"
        chart_path = chart_path or out / "fleet.png"
    check_report_paths(json_path=json_path, csv_path=csv_path, markdown_path=markdown_path, chart_path=chart_path,
                       force=force, inputs=artifacts)
    if address is not None and tls is None and not is_loopback(address):
        print_warning(NO_TLS_WARNING)
    with reports_on_stdout((json_path, csv_path, markdown_path)):
        with console.status("Starting the fleet", spinner="dots") as status:
            with open_client(address, tls=tls) as client:
                run = run_fleet(client, artifacts, options, scheduler=address or "an embedded cluster on 127.0.0.1",
                                tls=tls is not None, events=FleetProgress(status))
        _print_matrix(run, matrix(run))
        if fetch_engines is not None and not run.interrupted:
            _write_engines(run, fetch_engines, force)
        for path in write_fleet_reports(run, json_path=json_path, csv_path=csv_path, markdown_path=markdown_path,
                                        chart_path=chart_path, force=force, inputs=artifacts):
            console.print(f"[green]Wrote[/] {path}")
    if run.interrupted:
        raise UserError("Stopped by Ctrl-C; the report holds the devices that finished.", exit_code=130)
    if not passed(run):
        failed = [f"{r.kind} ({r.status})" for r in run.results if r.status != "ok"]
        raise UserError(f"Not every device passed: {', '.join(failed) or 'a parity check failed'}; the report says "
                        "why for each row.", exit_code=3)


def _list_kinds(address: str | None, tls) -> None:
    """The kinds a fleet would cover (``--kinds`` names), each with its workers: what a run would be sent to."""
    from ulsam_deploy.fleet.cluster import open_client, workers_by_kind

    with console.status("Asking the scheduler for its workers", spinner="dots"):
        with open_client(address, tls=tls) as client:
            kinds = workers_by_kind(client)
    where = address or "the embedded cluster on 127.0.0.1"
    if not kinds:
        raise UserError(f"No worker with a device kind is connected to {where}; start one with 'dask worker "
                        "ADDRESS --resources \"KIND=1\" --nthreads 1' (docs/fleet.md).")
    table = Table()
    for column in ("kind", "workers", "addresses"):
        table.add_column(column, overflow="fold")
    for kind, addresses in sorted(kinds.items()):
        table.add_row(escape(kind), str(len(addresses)), escape(", ".join(sorted(addresses))))
    console.print(f"Device kinds at {escape(where)} (names for --kinds):", soft_wrap=True, highlight=False)
    console.print(table)


class FleetProgress(Events):
    """The fleet's events on the status line; each device's end on a line of its own."""

    def __init__(self, status):
        self.status = status

    def emit(self, kind: str, **data) -> None:
        if kind == "submit":
            self.status.update(f"Sent the artifacts to '{data['device']}' ({data['workers']} worker(s))")
        elif kind == "running":
            self.status.update(f"'{data['device']}' is running on {data['worker']}")
        elif kind == "done":
            console.print(f"[{'green' if data['status'] == 'ok' else 'yellow'}]{escape(data['device'])}[/]: "
                          f"{data['status']}", highlight=False)


def _print_matrix(run, rows: list[dict]) -> None:
    """The timed rows as a table narrow enough for 80 columns; skips and lost devices below it, one line each."""
    table = Table(title="fleet: device x artifact", title_justify="left")
    for column in ("device", "artifact", "batch", "median ms", "p99 ms", "img/s", "parity", "top-1"):
        table.add_column(column, overflow="fold")
    other = []
    for row in rows:
        if row["median_ms"] is None and row["parity"] in ("-", None):
            other.append(row)
            continue
        table.add_row(row["device"], escape(f"{row['file']} {row['backend']}"), str(row["batch"] or ""),
                      f"{row['median_ms']:.3f}" if row["median_ms"] is not None else "",
                      f"{row['p99_ms']:.3f}" if row["p99_ms"] is not None else "",
                      f"{row['images_per_s']:.0f}" if row["images_per_s"] is not None else "", row["parity"],
                      f"{row['top1']:.2%}" if row["top1"] is not None else "")
    if table.row_count:
        console.print(table)
    for row in other:
        what = " ".join(str(v) for v in (row["file"], row["backend"]) if v not in (None, "-"))
        console.print(f"[yellow]{escape(row['device'])}[/] {escape(what)}{': ' if what else ''}"
                      f"{escape(row['note'])}", soft_wrap=True, highlight=False)
    for note in run.notes:
        console.print(f"[yellow]note[/] {escape(note)}", soft_wrap=True, highlight=False)


def _write_engines(run, folder: Path, force: bool) -> None:
    """Each fetched engine as ``FOLDER/KIND/NAME`` (the sidecar stays with the board's build)."""
    from ulsam_deploy.artifacts import check_output, write_bytes

    for result in run.results:
        for engine in result.engines:
            if engine.data_b64 is None:
                continue
            path = check_output(folder / result.kind / engine.name, force=force, what="fetched engine")
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(base64.b64decode(engine.data_b64), path)
            console.print(f"[green]Fetched[/] {path}")
