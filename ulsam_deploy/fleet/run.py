"""The fleet's client: one task per device kind, on a worker of that kind, gathered into one report.

Before any work: the artifacts are read and checked (ONNX files with their sidecars), and every asked-for kind
must have a connected worker. Then each kind gets :func:`ulsam_deploy.fleet.worker.run_device` with its task as
JSON and the files' bytes. Faults end in a row, never in a lost report:

- a worker that dies mid-task: Dask hands the task to another worker of that kind (the row names both); with
  none left, the row says "worker lost" and when;
- a task past its time limit: the worker stops the step itself; a worker that does not answer in time is
  given up on by the client;
- Ctrl-C: every task is cancelled and the report holds what finished, the rest marked "cancelled".
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Sequence

from ulsam_deploy.artifacts import now
from ulsam_deploy.declared import Flag, check_flags
from ulsam_deploy.errors import UserError
from ulsam_deploy.events import SILENT, Events
from ulsam_deploy.fleet.schema import KIND_PATTERN, ArtifactFile, BenchSettings, DeviceResult, DeviceTask, parse_result

MAX_SEND_BYTES = 512 << 20
CLIENT_GRACE_S = 60.0  # beyond a task's own limit, before the client gives up on a silent worker
LOST_GRACE_S = 5.0  # how long a kind may have no worker before its task is reported lost
POLL_S = 0.5

@dataclass
class FleetOptions:
    kinds: list[str] | None = None  # None: every kind a connected worker offers
    bench: BenchSettings = field(default_factory=BenchSettings)
    engines: bool = True
    plugin: str | None = "auto"
    fetch_engines: bool = False
    time_limit_s: Annotated[float, Flag("--time-limit", ge=1, le=86_400)] = 1800.0
    images: Path | None = None

    def __post_init__(self) -> None:
        import re

        for kind in self.kinds or ():
            if not re.match(KIND_PATTERN, kind):
                raise UserError(f"'{kind}' is not a device kind name (letters, digits, '.', '_' and '-', as given to "
                                "'dask worker --resources KIND=1').")
        if self.kinds is not None and not self.kinds:
            raise UserError("--kinds is empty; name the device kinds to cover, e.g. --kinds orin-nx,x86-l4.")
        check_flags(self)


@dataclass
class FleetRun:
    """What the client knows at the end: each kind's result (received, or written here for it)."""

    scheduler: str
    tls: bool
    files: list[ArtifactFile]
    reference: str
    options: FleetOptions
    results: list[DeviceResult]
    notes: list[str]
    seconds: float
    interrupted: bool = False
    created: str = ""


def collect_files(artifacts: Sequence[Path], images: Path | None) -> tuple[dict[str, bytes], list[ArtifactFile], str]:
    """The ONNX files (each with its sidecar when there is one) and the images' archive, as the workers get them.
    The first ONNX is the reference every other one is judged against."""
    from ulsam_deploy.artifacts import check_input_file
    from ulsam_deploy.sidecars import read_onnx_sidecar, sidecar_path

    files: dict[str, bytes] = {}
    if not artifacts:
        raise UserError("Give at least one ONNX file, e.g. 'ulsam-deploy fleet model.onnx model.fp16.onnx'.")
    for path in artifacts:
        path = Path(path)
        if path.suffix != ".onnx":
            raise UserError(f"'{path}' is not an ONNX file; the fleet builds engines on each board from ONNX files "
                            "(export or convert them first).")
        check_input_file(path, "ONNX file", "give an ONNX file written by 'ulsam-deploy export' or 'convert'")
        if path.name in files:
            raise UserError(f"Two artifacts are named '{path.name}'; the boards get bare file names, so rename one.")
        read_onnx_sidecar(path, required=False)  # a sidecar that does not describe its ONNX is refused here
        files[path.name] = path.read_bytes()
        side = sidecar_path(path)
        if side.is_file():
            files[side.name] = side.read_bytes()
    reference = Path(artifacts[0]).name
    if images is not None:
        files["images.tar"] = _pack_images(images)
    total = sum(len(v) for v in files.values())
    if total > MAX_SEND_BYTES:
        raise UserError(f"The artifacts add up to {total >> 20} MiB, more than the {MAX_SEND_BYTES >> 20} MiB the fleet "
                        "sends to each board; send fewer files.")
    specs = [ArtifactFile(name=name, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
             for name, data in files.items()]
    return files, specs, reference


def _pack_images(folder: Path) -> bytes:
    """A labelled ImageFolder (class sub-folders of images) as a tar, regular files only."""
    from ulsam_deploy.data.sources import is_image, walk_files

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--inputs '{folder}' is not a folder; give an ImageFolder (one sub-folder of images per "
                        "class) so each board can measure top-1.")
    buffer = io.BytesIO()
    count = 0
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in walk_files(folder):  # the walk bench's image discovery makes on the device
            if not path.is_symlink() and is_image(path):
                tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
                count += 1
    if not count:
        raise UserError(f"--inputs '{folder}' holds no images.")
    return buffer.getvalue()


def run_fleet(client, artifacts: Sequence[Path], options: FleetOptions | None = None, *, scheduler: str = "local",
              tls: bool = False, events: Events = SILENT) -> FleetRun:
    """Run every kind's steps and gather the results (see the module's docstring for the faults)."""
    from ulsam_deploy import __version__
    from ulsam_deploy.fleet.cluster import workers_by_kind
    from ulsam_deploy.fleet.worker import kill_children, run_device

    options = options or FleetOptions()
    event = events.emit
    t0 = time.perf_counter()
    files, specs, reference = collect_files(artifacts, options.images)
    connected = workers_by_kind(client)
    kinds = list(dict.fromkeys(options.kinds)) if options.kinds else sorted(connected)
    absent = [k for k in kinds if k not in connected]
    if absent or not kinds:
        offered = ", ".join(f"{k} ({len(v)})" for k, v in sorted(connected.items())) or "none"
        raise UserError(f"No worker of kind {', '.join(repr(k) for k in absent) or '(any)'} is connected to {scheduler} "
                        f"(kinds with workers: {offered}); start one on the board with 'dask worker ADDRESS "
                        f"--resources \"{(absent or ['KIND'])[0]}=1\" --nthreads 1' (docs/fleet.md).")
    settings = options.bench.model_copy(update={"images": "images.tar" if options.images else None})
    futures, started, notes = {}, {}, []
    run_id = uuid.uuid4().hex[:8]
    for kind in kinds:
        task = DeviceTask(version=__version__, kind=kind, files=specs, reference=reference, engines=options.engines,
                          plugin=options.plugin, fetch_engines=options.fetch_engines,
                          time_limit_s=options.time_limit_s, bench=settings)
        with warnings.catch_warnings():  # the artifacts travel inside the task (kept by the scheduler for retries)
            warnings.simplefilter("ignore")
            futures[kind] = client.submit(run_device, task.to_json(), files, resources={kind: 1}, pure=False,
                                          key=f"ulsam-fleet-{run_id}-{kind}")
        started[kind] = time.monotonic()
        event("submit", device=kind, workers=len(connected[kind]))
    results: dict[str, DeviceResult] = {}
    seen_on: dict[str, list[str]] = {k: [] for k in kinds}
    lonely_since: dict[str, float] = {}
    interrupted = False
    wake = threading.Event()
    for future in futures.values():
        future.add_done_callback(lambda _f: wake.set())
    try:
        pending = dict(futures)
        while pending:
            wake.wait(POLL_S)
            wake.clear()
            for kind, future in list(pending.items()):
                if future.done():
                    results[kind] = _result_of(kind, future, seen_on[kind])
                    event("done", device=kind, status=results[kind].status)
                    del pending[kind]
            if not pending:
                break
            _watch(client, pending, started, seen_on, lonely_since, results, options, event)
    except KeyboardInterrupt:
        interrupted = True
        for kind, future in futures.items():
            if kind not in results:
                future.cancel()
                results[kind] = DeviceResult(kind=kind, status="cancelled", reason="stopped by Ctrl-C before it "
                                             "finished", finished=now())
        kill_children()
    for kind, workers in seen_on.items():
        if len(workers) > 1 and kind in results:
            notes.append(f"{kind}: the task was retried on {workers[-1]} after {', '.join(workers[:-1])} was lost")
    ordered = [results[k] for k in kinds]
    return FleetRun(scheduler, tls, specs, reference, options, ordered, notes, time.perf_counter() - t0, interrupted,
                    now())


def _result_of(kind: str, future, workers: list[str]) -> DeviceResult:
    from distributed.client import FutureCancelledError

    try:
        from distributed.scheduler import KilledWorker
    except ImportError:  # pragma: no cover - moved in some versions
        from distributed import KilledWorker
    try:
        return parse_result(future.result(), kind)
    except KilledWorker:
        return DeviceResult(kind=kind, status="worker lost", finished=now(),
                            reason=f"every worker that took the task died (last: {workers[-1] if workers else '?'})")
    except (FutureCancelledError, UserError) as exc:
        return DeviceResult(kind=kind, status="failed", reason=str(exc), finished=now())
    except Exception as exc:  # noqa: BLE001 - the worker raised: its message, in a row
        return DeviceResult(kind=kind, status="failed", reason=f"{type(exc).__name__}: {str(exc)[:300]}",
                            finished=now())


def _watch(client, pending, started, seen_on, lonely_since, results, options: FleetOptions, event) -> None:
    """Record which worker runs each task; give up on a kind left with no worker, or on a task past its limit."""
    from ulsam_deploy.fleet.cluster import workers_by_kind

    try:
        processing = client.processing()
        connected = workers_by_kind(client)
    except Exception:  # noqa: BLE001 - the scheduler is busy; look again at the next poll
        return
    tick = time.monotonic()
    for kind, future in list(pending.items()):
        for worker, keys in processing.items():
            if future.key in keys and (not seen_on[kind] or seen_on[kind][-1] != worker):
                seen_on[kind].append(worker)
                event("running", device=kind, worker=worker)
        if connected.get(kind):
            lonely_since.pop(kind, None)
        else:
            lonely_since.setdefault(kind, tick)
        gone = tick - lonely_since.get(kind, tick) >= LOST_GRACE_S
        late = tick - started[kind] > options.time_limit_s + CLIENT_GRACE_S
        if gone or late:
            future.cancel()
            last = seen_on[kind][-1] if seen_on[kind] else "its worker"
            reason = (f"{last} left at {now()} and no other worker of kind '{kind}' is connected to retry on"
                      if gone else f"no answer within the time limit ({options.time_limit_s:g} s) plus "
                                   f"{CLIENT_GRACE_S:g} s; the task was cancelled")
            results[kind] = DeviceResult(kind=kind, status="worker lost" if gone else "timed out", reason=reason,
                                         worker=last, finished=now())
            event("done", device=kind, status=results[kind].status)
            del pending[kind]


__all__ = ["FleetOptions", "FleetRun", "collect_files", "run_fleet"]
