"""Hostile input, second round (issue 20): a user's file is never replaced or deleted, every failure has a code
from README's table, values are checked where they enter, work is bounded before it starts, machine-readable output
is clean, and signals end with 130/143 at any moment.

Each test drives the real CLI (in-process, or in a subprocess where the process itself matters: streams, signals,
non-UTF-8 arguments) on tiny models.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import clean_error, randomize_bn, tiny_onnx
from ulsam_deploy.artifacts import atomic_target
from ulsam_deploy.sidecars import sidecar_path
from ulsam_deploy.cli import app
from ulsam_deploy.errors import IOFailure, UserError
from ulsam_deploy.models import build_model, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _cli(*args, env=None, stdout=subprocess.PIPE, **kwargs) -> subprocess.CompletedProcess:
    """The CLI as a user runs it (``python -m ulsam_deploy``), bytes arguments allowed."""
    return subprocess.run([sys.executable, "-m", "ulsam_deploy", *args], stdout=stdout, stderr=subprocess.PIPE,
                          env=env or ENV, timeout=180, check=False, **kwargs)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


@pytest.fixture(scope="module")
def ck(tmp_path_factory) -> Path:
    model = randomize_bn(build_model("mv2", 0.35, "17:1", 4, num_classes=10, input_size=32, in_channels=1))
    return save_checkpoint(model, tmp_path_factory.mktemp("ck") / "ck.pt", mean=(0.5,), std=(0.5,))


@pytest.fixture(scope="module")
def fusable(tmp_path_factory, ck) -> Path:
    """An exported MV2 + ULSAM ONNX with its sidecar (fuse and convert take it)."""
    from ulsam_deploy.steps.export import ExportOptions, export_checkpoint

    return export_checkpoint(ck, tmp_path_factory.mktemp("onnx") / "m.onnx", ExportOptions()).path


# ------------------------------------------------------------------------------- 1. a user's file is never lost

@pytest.mark.parametrize("command", [["fuse"], ["convert", "--precision", "fp16"]])
def test_a_users_file_where_the_sidecar_goes_is_kept(cli_runner, fusable, tmp_path, command):
    out = tmp_path / "out.onnx"
    sidecar_path(out).write_text("my notes")
    line = clean_error(cli_runner.invoke(app, [command[0], str(fusable), *command[1:], "-o", str(out)]), 2,
                       "--force")
    assert "out.onnx.json" in line and sidecar_path(out).read_text() == "my notes" and not out.exists()


def test_force_replaces_the_sidecar_with_the_output(cli_runner, fusable, tmp_path):
    out = tmp_path / "out.onnx"
    sidecar_path(out).write_text("stale")
    result = cli_runner.invoke(app, ["fuse", str(fusable), "-o", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert json.loads(sidecar_path(out).read_text())["schema"] == "ulsam-deploy/onnx" and out.is_file()


def test_build_folders_are_used_or_cleaned_only_when_ours(tmp_path):
    from ulsam_deploy.backends.trt.plugin_build import BUILD_MARKER, is_plugin_build_dir, prepare_build_dir

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    for clean in (False, True):
        with pytest.raises(UserError, match="not a plugin build of ulsam-deploy; it is left alone"):
            prepare_build_dir(mine, clean=clean)
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        prepare_build_dir(tmp_path / "file", clean=True)
    (tmp_path / "link").symlink_to(mine)
    with pytest.raises(UserError, match="symbolic link"):
        prepare_build_dir(tmp_path / "link", clean=True)
    assert (mine / "thesis.tex").exists() and (tmp_path / "file").read_text() == "x"
    with pytest.raises(UserError, match="Not a directory"):
        prepare_build_dir(tmp_path / "file" / "build", clean=False)
    ours = prepare_build_dir(tmp_path / "new" / "build", clean=False)
    (ours / "CMakeFiles").mkdir()
    assert is_plugin_build_dir(ours) and (ours / BUILD_MARKER).is_file()
    assert sorted(p.name for p in prepare_build_dir(ours, clean=True).iterdir()) == [BUILD_MARKER]
    cmake = tmp_path / "cmake-made"  # a folder CMake configured for our project (before the marker existed)
    cmake.mkdir()
    (cmake / "CMakeCache.txt").write_text("CMAKE_PROJECT_NAME:STATIC=ulsam_subspace_attention\n")
    assert is_plugin_build_dir(cmake) and not is_plugin_build_dir(mine)


def test_train_checks_its_files_before_any_work(cli_runner, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("my own log\n")
    args = ["train", "--dataset", "fashion-mnist", "--epochs", "1", "--out", str(run)]
    clean_error(cli_runner.invoke(app, args), 2, "metrics.jsonl", "--force")
    assert (run / "metrics.jsonl").read_text() == "my own log\n"
    (run / "metrics.jsonl").unlink()
    (run / "final.pt").symlink_to(tmp_path / "elsewhere.pt")
    clean_error(cli_runner.invoke(app, [*args, "--force"]), 2, "symbolic link")
    assert sorted(p.name for p in run.iterdir()) == ["final.pt"]  # nothing trained, nothing written


def test_demo_never_replaces_the_working_folder_or_a_users_folder(cli_runner, tmp_path, monkeypatch):
    from ulsam_deploy.demo import DEMO_SCHEMA, is_demo_report

    (tmp_path / "mine.txt").write_text("keep")
    monkeypatch.chdir(tmp_path)
    for out in (".", str(tmp_path), str(tmp_path.parent)):
        clean_error(cli_runner.invoke(app, ["demo", "--quick", "--out", out, "--force"]), 2, "never replaced")
    user = tmp_path / "folder"
    user.mkdir()
    (user / "a.txt").write_text("a")
    clean_error(cli_runner.invoke(app, ["demo", "--quick", "--out", str(user), "--force"]), 2,
                "not a demo report folder")
    assert (tmp_path / "mine.txt").read_text() == "keep" and (user / "a.txt").read_text() == "a"
    (user / "demo.json").write_text(json.dumps({"schema": DEMO_SCHEMA, "files": ["demo.json", "a.txt"]}))
    assert is_demo_report(user)
    (user / "b.txt").write_text("b")  # a file the demo did not write
    assert not is_demo_report(user)


# ------------------------------------------------------------------ 2. every failure has a documented exit code

def test_io_errors_name_the_file_and_exit_74(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_text("old")
    with pytest.raises(IOFailure, match="No space left on device") as err, atomic_target(target) as tmp:
        Path(tmp).write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert err.value.exit_code == 74 and "m.onnx" in str(err.value)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.slow  # subprocesses or a 1 GiB archive
def test_a_full_or_closed_standard_output(tiny):
    with open("/dev/full", "w") as full:
        result = _cli("inspect", "--arch", "mv2", "--json", stdout=full)
    assert result.returncode == 74 and b"No space left on device" in result.stderr and b"Traceback" not in result.stderr

    def close_stdout():
        os.close(1)

    closed = _cli("bench", str(tiny), "--no-latency", "--backends", "ort", "--json", "-", preexec_fn=close_stdout)
    assert closed.returncode == 74 and b"standard output ('-'), which is closed" in closed.stderr, closed.stderr
    quiet = _cli("inspect", "--arch", "mv2", preexec_fn=close_stdout)
    assert quiet.returncode == 0 and b"Traceback" not in quiet.stderr


COMMANDS = [  # (arguments, the library function the command calls first)
    (["export", "{ck}", "-o", "{tmp}/x.onnx"], "ulsam_deploy.steps.export.export_checkpoint"),
    (["fuse", "{onnx}", "-o", "{tmp}/x.onnx"], "ulsam_deploy.steps.fuse.fuse_file"),
    (["convert", "{onnx}", "--precision", "fp16", "-o", "{tmp}/x.onnx"], "ulsam_deploy.steps.convert.convert_file"),
    (["build-trt", "{onnx}", "-o", "{tmp}/x.engine"], "ulsam_deploy.steps.build_trt.build_engine"),
    (["bench", "{onnx}"], "ulsam_deploy.bench.run.run_bench"),
    (["inspect", "--arch", "mv2"], "ulsam_deploy.models.profile.profile_model"),
    (["train", "--dataset", "fashion-mnist", "--out", "{tmp}/run"], "ulsam_deploy.train.train"),
    (["demo", "--quick", "--out", "{tmp}/d"], "ulsam_deploy.demo.run_demo"),
    (["doctor"], "ulsam_deploy.doctor.run_doctor"),
    (["deploy", "{ck}", "--out", "{tmp}/dep"], "ulsam_deploy.deploy.run_deploy"),
    (["build-plugin", "--build-dir", "{tmp}/b"], "ulsam_deploy.backends.trt.plugin_build.build_plugin"),
]


@pytest.mark.parametrize("args,target", COMMANDS, ids=[c[0][0] for c in COMMANDS])
@pytest.mark.parametrize("error,code,needle", [
    (RuntimeError("boom"), 70, "a bug in ulsam-deploy"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/x"), 74, "'/data/x' (No space left on device)"),
    (MemoryError(), 2, "Ran out of memory"),
])
def test_every_command_maps_a_forced_failure_to_its_code(cli_runner, monkeypatch, tmp_path, ck, tiny, args, target,
                                                        error, code, needle):
    import importlib

    module, name = target.rsplit(".", 1)
    assert hasattr(importlib.import_module(module), name), target  # the patch point exists

    def fail(*_a, **_k):
        raise error

    monkeypatch.setattr(target, fail)
    argv = [a.format(ck=ck, onnx=tiny, tmp=tmp_path) for a in args]
    clean = clean_error if code != 70 else None
    result = cli_runner.invoke(app, argv)
    if clean:
        clean(result, code, needle)
    else:  # the bug sentence is the one place 'Unexpected' may appear
        assert result.exit_code == 70 and needle in result.output and "Traceback" not in result.output


@pytest.mark.slow  # subprocesses or a 1 GiB archive
def test_paths_enter_through_one_function(cli_runner, tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clean_error(cli_runner.invoke(app, ["fuse", str(tiny), "-o", "~nosuchuser-ulsam/x.onnx"]), 2,
                "no user 'nosuchuser-ulsam'")
    clean_error(cli_runner.invoke(app, ["bench", "~nosuchuser-ulsam/m.onnx"]), 2, "no user")
    assert not list(tmp_path.iterdir())  # no folder named '~nosuchuser-ulsam' was made
    clean_error(cli_runner.invoke(app, ["bench", str(tiny), "--inputs", ""]), 2, "The image input is empty")
    os.mkfifo(tmp_path / "fifo")
    clean_error(cli_runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path / "fifo")]), 2, "is not a folder")
    result = _cli("fuse", str(tiny), "-o", os.fsencode(str(tmp_path)) + b"/\xff\xfe.onnx")
    assert result.returncode == 2 and b"is not valid UTF-8" in result.stderr and b"\\xff\\xfe" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]
    wide = _cli("inspect", "--arch", "mv2", env={**ENV, "COLUMNS": "abc"})
    assert wide.returncode == 0 and b"MACs" in wide.stdout


@pytest.mark.parametrize("kind,needle", [
    ("int8", "int8 values (float weights expected; nothing is cast)"),
    ("complex", "complex64 values"),
    ("sparse", "sparse_coo tensor"),
    ("meta", "without data (the meta device)"),
    ("nan", "NaN or Inf weights"),
])
def test_checkpoints_with_tensors_that_are_not_float_weights(cli_runner, ck, tmp_path, kind, needle):
    payload = torch.load(ck, weights_only=True)
    state = dict(payload["state_dict"])
    key = "features.0.0.weight"
    weight = state[key]
    state[key] = {"int8": lambda: weight.to(torch.int8), "complex": lambda: weight.to(torch.complex64),
                  "sparse": lambda: weight.to_sparse(), "meta": lambda: torch.empty(weight.shape, device="meta"),
                  "nan": lambda: weight.clone().fill_(float("nan"))}[kind]()
    torch.save({**payload, "state_dict": state}, tmp_path / "bad.pt")
    out = tmp_path / "bad.onnx"
    clean_error(cli_runner.invoke(app, ["export", str(tmp_path / "bad.pt"), "-o", str(out)]), 2, needle, key)
    assert not out.exists() and not sidecar_path(out).exists()


def test_a_resume_point_with_wrong_field_types(cli_runner, ck, tmp_path):
    from ulsam_deploy.train import TrainOptions, save_training_checkpoint

    model = build_model("mv2", 0.35, "17:1", 4, num_classes=10, input_size=32, in_channels=1)
    recipe = {k: v for k, v in vars(TrainOptions(dataset="fashion-mnist", arch="mv2", width=0.35)).items()}
    good = {"epoch": 1, "optimizer": {}, "history": [dict(epoch=1, lr=0.1, train_loss=1.0, train_acc=0.5,
                                                          test_loss=1.0, test_acc=0.5, seconds=1.0, images_per_s=1.0)]}
    for state, recipe_change, needle in ((dict(good, epoch="one"), {}, "train_state.epoch"),
                                         (dict(good, history=[{"epoch": "x"}]), {}, "history"),
                                         (good, {"width": "wide"}, "width"),
                                         (dict(good, optimizer=[1, 2]), {}, "optimizer")):
        run = tmp_path / f"run-{needle.replace('.', '-')}"
        run.mkdir()
        save_training_checkpoint(model, run / "epoch_001.pt", state, class_names=[str(i) for i in range(10)],
                                 mean=(0.5,), std=(0.5,), recipe={**recipe, **recipe_change})
        clean_error(cli_runner.invoke(app, ["train", "--resume", "--dataset", "fashion-mnist", "--epochs", "2",
                                            "--out", str(run)]), 2, "cannot be resumed", needle)


@pytest.mark.parametrize("args,needle", [
    (["bench", "{tiny}", "--warmup", "nan"], "--warmup"),
    (["bench", "{tiny}", "--warmup", "inf"], "--warmup must be from 0 to 3600"),
    (["bench", "{tiny}", "--duration", "inf"], "--duration must be from 0 to 3600"),
    (["bench", "{tiny}", "--duration", "nan"], "--duration"),
    (["bench", "{tiny}", "--threads", "100000"], "--threads must be from 1 to 256"),
    (["bench", "{tiny}", "--seed", "-1"], "--seed must be from 0 to 4294967295"),
    (["bench", "{tiny}", "--seed", str(2**64)], "--seed must be from 0 to 4294967295"),
    (["convert", "{tiny}", "--precision", "fp16", "--threads", "-1"], "--threads must be from 1 to 256"),
    (["train", "--dataset", "fashion-mnist", "--limit", "1"], "--limit must be from 2 to"),
    (["train", "--dataset", "fashion-mnist", "--lr", "nan"], "--lr must be a finite number"),
    (["inspect", "--arch", "mv2", "--width", "inf"], "--width must be a finite number"),
    (["export", "x.pt", "--atol", "nan"], "--atol"),
])
def test_numeric_flags_are_finite_and_in_range(cli_runner, tiny, args, needle):
    result = cli_runner.invoke(app, [a.format(tiny=tiny) for a in args])
    line = clean_error(result, 2, needle)
    assert "Usage:" not in result.output and line.endswith("--help'.") or "finite" in line


def test_short_help_and_usage_errors_are_one_sentence(cli_runner):
    assert cli_runner.invoke(app, ["bench", "-h"]).exit_code == 0
    line = clean_error(cli_runner.invoke(app, ["bench", "--no-such-flag"]), 2, "No such option")
    assert line.endswith("see 'ulsam-deploy bench --help'.")
    clean_error(cli_runner.invoke(app, ["no-such-command"]), 2, "No such command")


# ------------------------------------------------------------------------- 3. silently wrong results

def test_a_model_with_nan_outputs_benched_alone_fails(cli_runner, tmp_path):
    nan = tiny_onnx(tmp_path / "nan.onnx", nan=True)
    result = cli_runner.invoke(app, ["bench", str(nan), "--backends", "ort", "--no-latency"])
    clean_error(result, 3, "non-finite values (NaN or Inf)")


def test_json_on_standard_output_is_the_report_alone(tiny):
    result = _cli("bench", str(tiny), "--backends", "ort", "--warmup", "0", "--duration", "0", "--iterations", "2",
                  "--json", "-")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # nothing else on standard output
    assert report["schema"].startswith("ulsam-deploy") and b"bench: latency" in result.stderr


# ------------------------------------------------------------------------------------------ 4. bounded

def test_a_folder_loop_is_walked_once(tmp_path):
    from ulsam_deploy.data.sources import discover, walk_files

    root = tmp_path / "data"
    (root / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "cat" / "a.png")
    (root / "cat" / "again").symlink_to(root / "cat")  # a loop inside a class
    (root / "dog").symlink_to(root)  # a class folder that loops back to the root
    assert [p.name for p in walk_files(root / "cat")] == ["a.png"]
    files, classes, kind = discover(root)
    assert kind == "imagefolder" and sorted(classes) == ["cat", "dog"] and len(files) == 2


@pytest.mark.slow  # subprocesses or a 1 GiB archive
def test_zip_bombs_and_thin_images_are_refused_before_loading(cli_runner, tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("archive/data/0", "w", force_zip64=True) as member:
            for _ in range(64):
                member.write(bytes(1 << 24))  # 1 GiB of zeros, about 1 MiB on disk
    monkeypatch.setattr("ulsam_deploy.limits.available_memory", lambda: 1 << 30)  # a 1 GiB board
    clean_error(cli_runner.invoke(app, ["export", str(bomb), "-o", str(tmp_path / "b.onnx")]), 2, "unpacks to 1.0 GiB")
    from ulsam_deploy.data.images import Preprocess, read_image

    Image.fromarray(np.zeros((2, 400), np.uint8)).save(tmp_path / "thin.png")
    with pytest.raises(UserError, match="more than 64:1"):
        read_image(tmp_path / "thin.png", Preprocess(size=32, in_channels=1, mean=(0.5,), std=(0.5,)))


def test_a_sidecar_range_too_large_for_memory_is_refused_before_parity(ck, tmp_path):
    import onnx

    from ulsam_deploy.sidecars import read_onnx_sidecar
    from ulsam_deploy.steps.export import ExportOptions, export_checkpoint
    from ulsam_deploy.steps.fuse import parity_shapes

    path = export_checkpoint(ck, tmp_path / "d.onnx", ExportOptions(input_range=(32, 32, 64), atol=1e-3)).path
    model, side = onnx.load(str(path)), read_onnx_sidecar(path)
    assert parity_shapes(model, side)[-1][2:] == (32, 64)
    side.dynamic.height = side.dynamic.width = (32, 32, 60_000)  # what a hostile sidecar may claim (within its schema)
    with pytest.raises(UserError, match="Proving parity at 60000x60000 .* more than this machine can spare"):
        parity_shapes(model, side)


def test_a_graph_that_is_not_a_graph_and_a_tensor_too_big_to_compute(cli_runner, tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def model(nodes, name, in_shape, inits=()):
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
                                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
                                  list(inits))
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / name)
        return str(tmp_path / name)

    head = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("Gemm", ["f", "g"], ["logits"], transB=1)]
    g = numpy_helper.from_array(np.ones((2, 1), np.float32), "g")
    cycle = model([helper.make_node("Add", ["input", "y"], ["x"]), helper.make_node("Relu", ["x"], ["y"]), *head],
                  "cycle.onnx", ["batch", 1, 8, 8], [g])
    for args in (["bench", cycle, "--backends", "ort"], ["fuse", cycle, "-o", str(tmp_path / "f.onnx")]):
        clean_error(cli_runner.invoke(app, args), 2, "not a valid ONNX graph", "a cycle")
    shape = numpy_helper.from_array(np.array([1, 1, 200_000, 200_000], np.int64), "shape")
    huge = model([helper.make_node("Expand", ["input", "shape"], ["x"]), *head], "huge.onnx", ["batch", 1, 1, 1],
                 [g, shape])
    clean_error(cli_runner.invoke(app, ["bench", huge, "--backends", "ort", "--no-latency", "--num-inputs", "1"]), 2,
                "ran out of memory")


# ---------------------------------------------------------------------------------- 5. locks and signals

def test_one_lock_per_real_file_whatever_the_path(tmp_path):
    from ulsam_deploy.steps._step import output_lock

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with output_lock(tmp_path / "real" / "m.onnx"):
        with pytest.raises(UserError, match="Another ulsam-deploy process is writing"):
            with output_lock(tmp_path / "link" / "m.onnx"):
                pass


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_while_the_cli_loads(sig, code):
    """The signal arrives while the application is being imported: the exit code is still 143 / 130."""
    script = ("import builtins, os, signal\nreal = builtins.__import__\n"
              "def spy(name, *a, **k):\n"
              f"    if name == 'ulsam_deploy.cli.app':\n        os.kill(os.getpid(), {int(sig)})\n"
              "    return real(name, *a, **k)\n"
              "builtins.__import__ = spy\nfrom ulsam_deploy._entry import main\nmain()\n")
    result = subprocess.run([sys.executable, "-c", script, "doctor"], capture_output=True, text=True, env=ENV,
                            timeout=120, check=False)
    assert result.returncode == code and "Traceback" not in result.stderr, result.stderr


@pytest.mark.slow  # subprocesses or a 1 GiB archive
def test_a_second_ctrl_c_during_export_changes_nothing(ck, tmp_path):
    out = tmp_path / "m.onnx"
    proc = subprocess.Popen([sys.executable, "-m", "ulsam_deploy", "export", str(ck), "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509
    line, deadline = "", time.monotonic() + 120
    while "Loading" not in line:
        line = proc.stdout.readline()
        assert line or proc.poll() is None, "export ended before it was interrupted"
        assert time.monotonic() < deadline
    for _ in range(2):
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(0.02)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in output and "Interrupted" in output, output
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []
