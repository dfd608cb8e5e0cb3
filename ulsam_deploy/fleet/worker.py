"""What runs on a board: the steps a user would type there, in a work folder of their own.

:func:`run_device` is the only function the fleet's client submits. It takes the task as JSON text and the
artifacts' bytes, checks both (schema, bare file names, sizes, sha256), and runs ``ulsam-deploy doctor``,
``build-trt`` per ONNX meant for TensorRT (where TensorRT and a GPU are) and ``bench`` of the ONNX files and
engines, each as a child process of this worker with the task's time limit. It answers with JSON text
(:class:`DeviceResult`). Engines stay in the work folder on the board unless the task asks for them.

The work folder is ``$ULSAM_FLEET_DIR`` (default ``~/.cache/ulsam-deploy/fleet``) / one folder per task.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

from ulsam_deploy._entry import PARENT_DEATH_ENV
from ulsam_deploy.artifacts import now
from ulsam_deploy.fleet.schema import DeviceResult, DeviceTask, EngineFile, StepRun, doctor_checks, parse_task

WORK_DIR_ENV = "ULSAM_FLEET_DIR"
TAIL_CHARS = 4000
_children: set[subprocess.Popen] = set()
_children_lock = threading.Lock()


def work_root() -> Path:
    return Path(os.environ.get(WORK_DIR_ENV) or Path.home() / ".cache" / "ulsam-deploy" / "fleet")


def kill_children() -> int:
    """End every step still running in this process (the client's Ctrl-C with an in-process cluster)."""
    with _children_lock:
        running = [p for p in _children if p.poll() is None]
    for proc in running:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return len(running)


class _Deadline(Exception):
    pass


def _run(step: str, args: list[str], cwd: Path, deadline: float, steps: list[StepRun]) -> tuple[StepRun, str]:
    """``ulsam-deploy ARGS`` in ``cwd``, killed (its whole process group) at ``deadline``; the record and the
    command's standard output."""
    command = [sys.executable, "-m", "ulsam_deploy", *args]
    env = {**os.environ, PARENT_DEATH_ENV: "1", "COLUMNS": "100", "NO_COLOR": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    with _children_lock:
        _children.add(proc)
    try:
        remaining = deadline - time.monotonic()
        try:
            output, errors = proc.communicate(timeout=max(remaining, 0.01))
            code = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, errors = proc.communicate()
            code = None
    finally:
        with _children_lock:
            _children.discard(proc)
    text = (output or b"").decode("utf-8", "replace")
    log = (errors or b"").decode("utf-8", "replace")
    run = StepRun(step=step, command=["ulsam-deploy", *args], exit_code=code,
                  seconds=round(time.perf_counter() - started, 3), output_tail=(log or text)[-TAIL_CHARS:])
    steps.append(run)
    if code is None:
        raise _Deadline(step)
    return run, text


def _last_sentence(run: StepRun) -> str:
    lines = [line.strip() for line in run.output_tail.splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith(("error", "✗"))]
    return (errors or lines or [f"exit code {run.exit_code}"])[-1][:600]


def _receive(task: DeviceTask, files: dict, folder: Path) -> None:
    """Write the sent files into ``folder``: only the names the task lists, each of its size and sha256."""
    if not isinstance(files, dict) or set(files) != {f.name for f in task.files}:
        raise ValueError("the files sent do not match the task's list")
    for spec in task.files:
        data = files[spec.name]
        if not isinstance(data, (bytes, bytearray)) or len(data) != spec.size or \
                hashlib.sha256(data).hexdigest() != spec.sha256:
            raise ValueError(f"'{spec.name}' arrived damaged (size or sha256 differs)")
        (folder / spec.name).write_bytes(data)


def _unpack_images(archive: Path, folder: Path) -> Path:
    """The labelled images' tar (regular files and folders only, no links, nothing outside ``folder``)."""
    target = folder / "images"
    target.mkdir()
    if not hasattr(tarfile, "data_filter"):
        raise ValueError("this Python cannot unpack archives safely (tarfile's data filter: Python >= 3.10.12)")
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target


def _tensorrt_here(doctor: dict | None) -> str | None:
    """None when engines can be built here, else why not (from the device's own doctor)."""
    if doctor is None:
        return "doctor did not run"
    checks = doctor_checks(doctor)
    for name in ("tensorrt", "gpu"):
        check = checks.get(name)
        if check is None or not check.get("ok"):
            return f"{name}: {(check or {}).get('detail') or 'not found'}"
    return None


def _engine_onnx(task: DeviceTask) -> list[str]:
    """The ONNX files meant for TensorRT (an int8 file made for ONNX Runtime's CPU kernels is not)."""
    return [f.name for f in task.files if f.name.endswith(".onnx") and "int8-ort" not in f.name]


def run_device(task_json: str, files: dict) -> str:
    """Run one device kind's steps; the :class:`DeviceResult` as JSON text (never raises for a step's failure)."""
    from ulsam_deploy import __version__

    started, t0 = now(), time.perf_counter()
    host = socket.gethostname()
    try:
        task = parse_task(task_json)
    except Exception as exc:  # noqa: BLE001 - the client is told, in its own schema
        return DeviceResult(kind="unknown", status="refused", reason=str(exc), host=host).to_json()
    result = DeviceResult(kind=task.kind, status="ok", host=f"{host} ({platform.machine()})", started=started)
    try:
        from distributed import get_worker

        result.worker = get_worker().address
    except (ImportError, ValueError):
        pass
    if task.version != __version__:
        result.status, result.reason = "refused", (f"this worker runs ulsam-deploy {__version__} and the client "
                                                   f"{task.version}; install the same version on both")
        return _finish(result, t0)
    deadline = time.monotonic() + task.time_limit_s
    folder = work_root() / f"{time.strftime('%Y%m%d-%H%M%S')}-{task.kind}-{os.getpid()}-{threading.get_ident()}"
    try:
        folder.mkdir(parents=True)
        _receive(task, files, folder)
        images = _unpack_images(folder / task.bench.images, folder) if task.bench.images else None
    except (OSError, ValueError, tarfile.TarError) as exc:
        result.status, result.reason = "failed", f"the artifacts could not be received here: {exc}"
        return _finish(result, t0)
    try:
        _steps(task, folder, images, deadline, result)
    except _Deadline as exc:
        result.status = "timed out"
        result.reason = f"the time limit of {task.time_limit_s:g} s ran out during {exc}; the step was stopped"
    return _finish(result, t0)


def _doctor(steps: list[StepRun]) -> dict | None:
    """``ulsam-deploy doctor --json``, run in this worker's process (the same checks; no second interpreter)."""
    from ulsam_deploy.doctor import run_doctor

    started = time.perf_counter()
    try:
        report, code, log = run_doctor(include_data=False).to_dict(), 0, ""
    except Exception as exc:  # noqa: BLE001 - a device whose doctor fails still benches; the row says why
        report, code, log = None, 70, f"{type(exc).__name__}: {exc}"
    steps.append(StepRun(step="doctor", command=["ulsam-deploy", "doctor", "--json"], exit_code=code,
                         seconds=round(time.perf_counter() - started, 3), output_tail=log[-TAIL_CHARS:]))
    return report


def _steps(task: DeviceTask, folder: Path, images: Path | None, deadline: float, result: DeviceResult) -> None:
    result.doctor = _doctor(result.steps)
    engines: list[Path] = []
    if task.engines:
        missing = _tensorrt_here(result.doctor)
        for onnx_name in _engine_onnx(task):
            if missing is not None:
                result.skipped.append({"artifact": onnx_name, "backend": "trt",
                                       "reason": f"no engine: TensorRT cannot run on this device ({missing})"})
                continue
            engine = folder / Path(onnx_name).with_suffix(".engine").name
            args = ["build-trt", onnx_name, "-o", engine.name, "--batch-profile",
                    f"1:{max(task.bench.batch_sizes)}:{max(task.bench.batch_sizes)}"]
            if task.plugin and ".fused" in onnx_name:
                args += ["--plugin", task.plugin]
            run, _ = _run("build-trt", args, folder, deadline, result.steps)
            if run.exit_code == 0 and engine.is_file():
                engines.append(engine)
            else:
                result.skipped.append({"artifact": onnx_name, "backend": "trt",
                                       "reason": f"build-trt failed: {_last_sentence(run)}"})
    others = [f.name for f in task.files if f.name.endswith(".onnx") and f.name != task.reference]
    settings = task.bench
    args = ["bench", task.reference, *[a for name in others for a in ("--onnx", name)],
            *[a for e in engines for a in ("--engine", e.name)],
            "--backends", "ort,trt" if engines else "ort", "--reference", "ort",
            "--batch-sizes", ",".join(map(str, settings.batch_sizes)), "--warmup", f"{settings.warmup_ms:g}",
            "--iterations", str(settings.iterations), "--duration", f"{settings.duration_s:g}",
            "--seed", str(settings.seed), "--json", "bench.json", "--force"]
    if settings.num_inputs is not None:
        args += ["--num-inputs", str(settings.num_inputs)]
    if settings.threads is not None:
        args += ["--threads", str(settings.threads)]
    if images is not None:
        args += ["--inputs", str(images.relative_to(folder))]
    bench_run, _ = _run("bench", args, folder, deadline, result.steps)
    report = folder / "bench.json"
    if report.is_file():
        result.bench = json.loads(report.read_text(encoding="utf-8"))
    if bench_run.exit_code not in (0, 3) or result.bench is None:  # 3: parity failed, the report says where
        result.status, result.reason = "failed", f"bench failed: {_last_sentence(bench_run)}"
    for engine in engines:
        data = engine.read_bytes()
        result.engines.append(EngineFile(
            name=engine.name, onnx=engine.with_suffix(".onnx").name, sha256=hashlib.sha256(data).hexdigest(),
            size=len(data), path_on_device=str(engine),
            data_b64=base64.b64encode(data).decode("ascii") if task.fetch_engines else None))


def _finish(result: DeviceResult, t0: float) -> str:
    result.finished = now()
    result.seconds = round(time.perf_counter() - t0, 3)
    return result.to_json()


__all__ = ["PARENT_DEATH_ENV", "WORK_DIR_ENV", "kill_children", "run_device", "work_root"]
