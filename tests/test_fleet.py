"""``fleet`` on real Dask clusters on this machine: workers claiming different device kinds, killed workers, kinds
with no worker, time limits, Ctrl-C, and the merged report row by row against a plain bench of the same files."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from helpers import one_error_line  # noqa: E402
from ulsam_deploy import __version__  # noqa: E402
from ulsam_deploy.cli import app  # noqa: E402
from ulsam_deploy.errors import UserError  # noqa: E402
from ulsam_deploy.events import Recorder  # noqa: E402
from ulsam_deploy.fleet import worker  # noqa: E402
from ulsam_deploy.fleet.cluster import check_address, is_loopback, open_client  # noqa: E402
from ulsam_deploy.fleet.report import csv_text, matrix, passed, to_dict  # noqa: E402
from ulsam_deploy.fleet.run import FleetOptions, collect_files, run_fleet  # noqa: E402
from ulsam_deploy.fleet.schema import BenchSettings, DeviceTask, parse_result, parse_task  # noqa: E402

FAST = BenchSettings(duration_s=0.2, iterations=5, warmup_ms=0.0, num_inputs=4)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """The bundled Fashion-MNIST model exported, and its fp16 conversion (each with its sidecar)."""
    from ulsam_deploy.bundled import as_checkpoint
    from ulsam_deploy.steps.convert import ConvertOptions, convert_file
    from ulsam_deploy.steps.export import ExportOptions, export_checkpoint

    root = tmp_path_factory.mktemp("fleet")
    export_checkpoint(as_checkpoint(Path("fashion-mnist")), root / "m.onnx", ExportOptions())
    convert_file(root / "m.onnx", root / "m.fp16.onnx", ConvertOptions(precision="fp16"))
    return [root / "m.onnx", root / "m.fp16.onnx"]


@pytest.fixture(autouse=True)
def _work_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(worker.WORK_DIR_ENV, str(tmp_path / "boards"))


def _children_running() -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process().children(recursive=True)
            if "ulsam_deploy" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE]


# ------------------------------------------------------------------------ what travels (fast)


def test_worker_refuses_what_it_cannot_trust(artifacts):
    files, specs, reference = collect_files(artifacts, None)
    task = DeviceTask(version=__version__, kind="cpu", files=specs, reference=reference, bench=FAST)
    assert parse_task(task.to_json()) == task
    refused = parse_result(worker.run_device("{not json", files), "unknown")
    assert refused.status == "refused" and "invalid" in refused.reason
    other = task.model_copy(update={"version": "0.0.1"})
    result = parse_result(worker.run_device(other.to_json(), files), "cpu")
    assert result.status == "refused" and "same version" in result.reason and not result.steps
    damaged = dict(files, **{reference: files[reference][:-1] + b"\0"})
    result = parse_result(worker.run_device(task.to_json(), damaged), "cpu")
    assert result.status == "failed" and "arrived damaged" in result.reason and not result.steps
    bad = json.loads(task.to_json())
    bad["files"][0]["name"] = "../../etc/m.onnx"
    assert parse_result(worker.run_device(json.dumps(bad), files), "unknown").status == "refused"
    with pytest.raises(UserError, match="not a fleet result"):
        parse_result({"kind": "cpu"}, "cpu")  # an object, not the JSON text of our schema
    with pytest.raises(UserError, match="answered for 'cpu'"):
        parse_result(result.to_json(), "orin-nx")


def test_addresses_and_tls_rules():
    assert check_address("10.0.0.5:8786", None) == "tcp://10.0.0.5:8786"
    with pytest.raises(UserError, match="give --tls-ca"):
        check_address("tls://10.0.0.5:8786", None)
    with pytest.raises(UserError, match="not a Dask scheduler address"):
        check_address("http://x", None)
    assert is_loopback("tcp://127.0.0.1:8786") and is_loopback("localhost:1") and not is_loopback("tcp://10.0.0.5:1")


def test_something_that_is_not_a_scheduler_is_one_sentence():
    """A port that answers garbage (another service, a proxy) is refused by the probe, not by a stuck Client."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def answer():
        conn, _ = server.accept()
        conn.recv(1024)
        conn.sendall(b"\xff" * 64)
        time.sleep(0.5)
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    started = time.monotonic()
    with pytest.raises(UserError, match=r"^Could not reach a Dask scheduler at tcp://127\.0\.0\.1:\d+ \("):
        with open_client(address):
            pass
    assert time.monotonic() - started < 15
    server.close()


def test_cli_refuses_half_tls_and_bad_kinds(cli_runner, artifacts, tmp_path):
    result = cli_runner.invoke(app, ["fleet", str(artifacts[0]), "--tls-ca", str(tmp_path / "ca.pem")])
    assert result.exit_code == 2 and "all three" in one_error_line(result.output)
    result = cli_runner.invoke(app, ["fleet", str(artifacts[0]), "--kinds", "orin nx", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "not a device kind name" in one_error_line(result.output)
    assert not (tmp_path / "r").exists()


def test_cli_wants_onnx_files_or_list_kinds_not_both(cli_runner, artifacts):
    result = cli_runner.invoke(app, ["fleet"])
    assert result.exit_code == 2 and "or --list-kinds" in one_error_line(result.output)
    result = cli_runner.invoke(app, ["fleet", str(artifacts[0]), "--list-kinds"])
    assert result.exit_code == 2 and "ships nothing" in one_error_line(result.output)


# --------------------------------------------------------------------------- on a cluster (slow)


@pytest.mark.slow
def test_list_kinds_shows_the_connected_kinds_and_ships_nothing(cli_runner, tmp_path, monkeypatch):
    from ulsam_deploy.fleet import cluster

    monkeypatch.chdir(tmp_path)
    result = cli_runner.invoke(app, ["fleet", "--list-kinds"])
    assert result.exit_code == 0, result.output
    kinds = cluster.local_kinds()
    assert "Device kinds at the embedded cluster on 127.0.0.1 (names for --kinds):" in result.output
    for kind in kinds:
        assert f"│ {kind} " in result.output
    assert list(tmp_path.iterdir()) == [] and not _children_running()


@pytest.mark.slow
def test_two_kinds_match_a_plain_bench_row_by_row(artifacts):
    """An ORT-only fleet (no TensorRT here) on two kinds; each device's rows against a plain bench of the files."""
    from ulsam_deploy.bench.latency import TimingConfig
    from ulsam_deploy.bench.models import resolve_model
    from ulsam_deploy.bench.options import BenchOptions
    from ulsam_deploy.bench.run import run_bench

    with open_client(local={"w-a": {"cpu-a": 1}, "w-b": {"cpu-b": 1}}) as client:
        run = run_fleet(client, artifacts, FleetOptions(bench=FAST))
    assert [r.kind for r in run.results] == ["cpu-a", "cpu-b"] and all(r.status == "ok" for r in run.results)
    assert passed(run) and not run.interrupted
    plain = run_bench([resolve_model(artifacts[0], onnx=[artifacts[1]])],
                      BenchOptions(backends=("ort",), reference="ort", num_inputs=4,
                                   timing=TimingConfig(warmup_s=0.0, min_iters=5, min_seconds=0.2)))
    verdicts = {p.file: ("reference" if p.is_reference else "pass" if p.passed else "FAIL") for p in plain.parity}
    medians = {row.file: row.stats.median for row in plain.latency}
    rows = matrix(run)
    for kind in ("cpu-a", "cpu-b"):
        timed = {r["file"]: r for r in rows if r["device"] == kind and r["median_ms"] is not None}
        assert {f: r["parity"] for f, r in timed.items()} == verdicts == {"m.onnx": "reference", "m.fp16.onnx": "pass"}
        for file, row in timed.items():  # one machine, two runs: the same figure within noise
            assert 0.25 < row["median_ms"] / medians[file] < 4.0, (kind, file, row["median_ms"], medians[file])
        skipped = [r for r in rows if r["device"] == kind and r["backend"] == "trt"]
        assert len(skipped) == 2 and all("TensorRT cannot run on this device" in r["note"] for r in skipped)
    report = to_dict(run)
    assert report["devices"][0]["facts"]["tensorrt"].startswith("TensorRT's Python package is not installed")
    assert [s["step"] for s in report["devices"][0]["steps"]] == ["doctor", "bench"]
    assert len(csv_text(run).splitlines()) == 1 + len(rows)
    assert not _children_running()


@pytest.mark.slow
def test_a_kind_with_no_worker_is_said_before_any_work(artifacts, tmp_path):
    with open_client(local={"w-a": {"cpu-a": 1}}) as client:
        with pytest.raises(UserError, match=r"No worker of kind 'orin-nx' is connected to local \(kinds with workers: cpu-a \(1\)\)"):
            run_fleet(client, artifacts, FleetOptions(kinds=["cpu-a", "orin-nx"], bench=FAST))
        assert not client.processing() or not any(client.processing().values())
    assert not (tmp_path / "boards").exists()


def _kill_worker_of(client, address: str, *, for_good: bool) -> None:
    """SIGKILL the worker process at ``address``; ``for_good``: its nanny does not start it again (a board that
    died), else the nanny may restart it as Dask does."""
    from distributed.core import Status

    for nanny in client.cluster.workers.values():
        if getattr(nanny, "worker_address", None) == address:
            if for_good:
                nanny.status = Status.closing_gracefully
            os.kill(nanny.process.process.pid, signal.SIGKILL)
            return
    raise AssertionError(f"no local worker at {address}")


@pytest.mark.slow
def test_a_killed_worker_task_is_retried_on_another_of_its_kind(artifacts):
    killed = []
    slow = FAST.model_copy(update={"duration_s": 2.0})
    with open_client(local={"k1": {"cpu-a": 1}, "k2": {"cpu-a": 1}}, processes=True) as client:
        class Hook(Recorder):
            def emit(self, what, **data):
                if what == "running" and not killed:
                    time.sleep(1.5)  # mid-task: doctor done, bench running
                    killed.append(data["worker"])
                    _kill_worker_of(client, data["worker"], for_good=True)

        run = run_fleet(client, [artifacts[0]], FleetOptions(bench=slow), events=Hook())
    (result,) = run.results
    assert result.status == "ok" and result.worker != killed[0]
    assert run.notes == [f"cpu-a: the task was retried on {result.worker} after {killed[0]} was lost"]
    assert not _children_running()


@pytest.mark.slow
def test_a_lost_worker_with_none_left_of_its_kind_keeps_the_rest(artifacts):
    slow = FAST.model_copy(update={"duration_s": 3.0})
    with open_client(local={"solo": {"solo": 1}, "other": {"cpu-b": 1}}, processes=True) as client:
        class Hook(Recorder):
            def emit(self, what, **data):
                if what == "running" and data["device"] == "solo":
                    _kill_worker_of(client, data["worker"], for_good=True)

        run = run_fleet(client, [artifacts[0]], FleetOptions(bench=slow), events=Hook())
    other, solo = run.results  # in kind order
    assert solo.status == "worker lost" and "left at" in solo.reason and "no other worker of kind 'solo'" in solo.reason
    assert other.status == "ok" and other.bench is not None
    rows = matrix(run)
    assert [r["note"] for r in rows if r["device"] == "solo"] == [solo.reason]
    assert any(r["device"] == "cpu-b" and r["median_ms"] for r in rows)


@pytest.mark.slow
def test_a_task_past_its_time_limit_is_stopped_and_reported(artifacts):
    with open_client(local={"w": {"cpu": 1}}) as client:
        run = run_fleet(client, [artifacts[0]], FleetOptions(bench=FAST.model_copy(update={"duration_s": 60.0}),
                                                             time_limit_s=6.0))
    (result,) = run.results
    assert result.status == "timed out" and "time limit of 6 s ran out during bench" in result.reason
    assert result.steps[-1].step == "bench" and result.steps[-1].exit_code is None
    assert result.seconds < 30 and not _children_running()


@pytest.mark.slow
def test_ctrl_c_cancels_everything_and_keeps_what_finished(artifacts):
    with open_client(local={"w": {"cpu": 1}}) as client:
        class Hook(Recorder):
            def emit(self, what, **data):
                if what == "running":
                    time.sleep(1.0)
                    raise KeyboardInterrupt

        run = run_fleet(client, [artifacts[0]], FleetOptions(bench=FAST.model_copy(update={"duration_s": 30.0})),
                        events=Hook())
    assert run.interrupted and [r.status for r in run.results] == ["cancelled"]
    time.sleep(0.5)
    assert not _children_running()


@pytest.mark.slow
def test_cli_writes_one_report_from_the_embedded_cluster(cli_runner, artifacts, tmp_path):
    out = tmp_path / "report"
    result = cli_runner.invoke(app, ["fleet", *map(str, artifacts), "--duration", "0.2", "--iterations", "5",
                                     "--num-inputs", "4", "--warmup", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "fleet.json").read_text())
    assert data["passed"] and data["devices"][0]["kind"] == "cpu" and data["tls"] is False
    assert (out / "fleet.png").read_bytes().startswith(b"\x89PNG") and "| cpu | ok |" in (out / "fleet.md").read_text()


def _make_certificates(folder: Path) -> dict[str, Path]:
    """A CA and a certificate + key for the scheduler, the worker and the client (openssl), for 127.0.0.1."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed here")
    run = lambda *a: subprocess.run(["openssl", *a], cwd=folder, check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=fleet-ca", "-keyout",
        "ca-key.pem", "-out", "ca.pem")
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for who in ("scheduler", "worker", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}", "-keyout", f"{who}-key.pem", "-out",
            f"{who}.csr")
        run("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial", "-days",
            "2", "-out", f"{who}.pem", "-extfile", "san.cnf")
    return {name: folder / name for name in ("ca.pem", "client.pem", "client-key.pem", "worker.pem",
                                             "worker-key.pem", "scheduler.pem", "scheduler-key.pem")}


@pytest.mark.slow
def test_a_tls_fleet_runs_and_refuses_plain_clients(artifacts, tmp_path):
    """A scheduler and a worker that require TLS: the fleet connects with --tls-* files and runs; a client without
    them cannot connect (one sentence)."""
    import logging

    from distributed import Scheduler, SpecCluster, Worker
    from distributed.security import Security

    from ulsam_deploy.fleet.cluster import TlsFiles

    pem = _make_certificates(tmp_path)
    server = Security(tls_ca_file=str(pem["ca.pem"]), tls_scheduler_cert=str(pem["scheduler.pem"]),
                      tls_scheduler_key=str(pem["scheduler-key.pem"]), tls_worker_cert=str(pem["worker.pem"]),
                      tls_worker_key=str(pem["worker-key.pem"]), tls_client_cert=str(pem["client.pem"]),
                      tls_client_key=str(pem["client-key.pem"]), require_encryption=True)
    cluster = SpecCluster(
        workers={"board": {"cls": Worker, "options": {"resources": {"orin-nx": 1}, "nthreads": 1, "host": "127.0.0.1",
                                                      "dashboard": False, "security": server}}},
        scheduler={"cls": Scheduler, "options": {"host": "127.0.0.1", "protocol": "tls", "dashboard_address": None,
                                                 "security": server}},
        security=server, silence_logs=logging.CRITICAL)
    try:
        address = cluster.scheduler_address
        assert address.startswith("tls://")
        tls = TlsFiles(pem["ca.pem"], pem["client.pem"], pem["client-key.pem"])
        with open_client(address, tls=tls) as client:
            run = run_fleet(client, [artifacts[0]], FleetOptions(bench=FAST), scheduler=address, tls=True)
        assert [r.status for r in run.results] == ["ok"] and run.tls and run.results[0].kind == "orin-nx"
        plain = address.replace("tls://", "tcp://")
        with pytest.raises(UserError, match="Could not reach a Dask scheduler"):
            with open_client(plain):
                pass
    finally:
        cluster.close()


@pytest.mark.slow
def test_labelled_images_travel_and_every_device_reports_top1(artifacts, tmp_path):
    """--inputs: an ImageFolder of real Fashion-MNIST images (named as the model's classes) goes to each device,
    which reports top-1 per artifact; the same top-1 as a plain bench of the same images."""
    import shutil

    from ulsam_deploy.bench.latency import TimingConfig
    from ulsam_deploy.bench.models import resolve_model
    from ulsam_deploy.bench.options import BenchOptions
    from ulsam_deploy.bench.run import run_bench
    from ulsam_deploy.sidecars import read_onnx_sidecar

    try:
        from ulsam_deploy.data.resources import foolbox_data_dir

        files = sorted(foolbox_data_dir().glob("fashionMNIST_*.png"))
    except Exception:  # noqa: BLE001
        files = []
    if not files:
        pytest.skip("foolbox's Fashion-MNIST sample images are not installed (scripts/setup.sh installs them)")
    names = read_onnx_sidecar(artifacts[0]).model.class_names
    for f in files:
        folder = tmp_path / "images" / names[int(f.stem.rsplit("_", 1)[1])]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, folder / f.name)
    with open_client(local={"w": {"cpu": 1}}) as client:
        run = run_fleet(client, artifacts, FleetOptions(bench=FAST.model_copy(update={"num_inputs": None}),
                                                         images=tmp_path / "images", engines=False))
    plain = run_bench([resolve_model(artifacts[0], onnx=[artifacts[1]])],
                      BenchOptions(backends=("ort",), reference="ort", inputs=str(tmp_path / "images"),
                                   timing=TimingConfig(warmup_s=0.0, min_iters=5, min_seconds=0.2)))
    expected = {p.file: p.accuracy.top1 for p in plain.parity}
    got = {r["file"]: r["top1"] for r in matrix(run) if r["median_ms"] is not None}
    assert got == expected and all(v is not None and v > 0.5 for v in got.values())
