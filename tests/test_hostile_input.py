"""Hostile and careless input (issue 15): every bad file, field, path and number is one sentence with its exit
code (2 bad input, 3 parity, 4 backend), never a traceback, a crash, a lie or a replaced file.

Models here are tiny: a 32x32 grey MobileNet checkpoint (never exported in the fast lane) and hand-made ONNX
classifiers (Conv -> GlobalAveragePool -> Gemm) with sidecars written by the schema itself.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import stat
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from helpers import GREY, clean_error, randomize_bn, tiny_onnx
from ulsam_deploy.artifacts import atomic_target, check_output, sha256_file, write_bytes, write_text_output
from ulsam_deploy.sidecars import DynamicRange, ModelInfo, OnnxSidecar, PreprocessSpec, TensorSpec, read_onnx_sidecar, sidecar_path
from ulsam_deploy.cli import app
from ulsam_deploy.errors import UserError
from ulsam_deploy.models import build_model, save_checkpoint
from ulsam_deploy.models.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
# ------------------------------------------------------------------------------------------ fixtures



@pytest.fixture(scope="module")
def ck(tmp_path_factory) -> Path:
    """A grey 32x32 MV2 x0.35 + ULSAM 17:1 checkpoint with its preprocessing (fast to load; never exported here)."""
    model = randomize_bn(build_model(**{k: v for k, v in GREY.to_dict().items() if k not in ("extra",)})).eval()
    return save_checkpoint(model, tmp_path_factory.mktemp("ck") / "ck.pt", mean=(0.5,), std=(0.5,),
                           preprocess={"size": 32, "in_channels": 1, "crop_pct": 1.0, "mean": [0.5], "std": [0.5]})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Eight random grey PNGs (a flat folder) and nothing else."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8), mode="L").save(root / f"img{i}.png")
    return root


def copy_with_sidecar(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    sidecar_path(dst).write_text(sidecar_path(src).read_text())
    return dst


# ------------------------------------------------------------------------------------ output paths

def _output_kind(tmp_path: Path, kind: str, suffix: str = ".onnx") -> Path:
    """An output path of a hostile kind; a regular file 'target' holds what a link points to."""
    target = tmp_path / "target"
    target.write_text("precious")
    path = tmp_path / f"out-{kind}{suffix}"
    if kind == "symlink":
        path.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "under-a-file":
        path = target / f"out{suffix}"
    elif kind == "read-only-dir":
        if os.geteuid() == 0:  # root writes into read-only folders: a path under a regular file is refused instead
            path = target / f"out{suffix}"
        else:
            (tmp_path / "ro").mkdir()
            os.chmod(tmp_path / "ro", 0o555)
            path = tmp_path / "ro" / f"out{suffix}"
    elif kind == "existing":
        path.write_text("old")
    elif kind == "stdout":
        path = Path("-")
    elif kind == "dot":
        path = Path(".")
    return path


def _untouched(tmp_path: Path, path: Path, kind: str) -> None:
    assert (tmp_path / "target").read_text() == "precious"
    if kind == "symlink":
        assert path.is_symlink() and os.readlink(path) == str(tmp_path / "target")
    elif kind == "fifo":
        assert stat.S_ISFIFO(os.lstat(path).st_mode)
    elif kind == "directory":
        assert path.is_dir() and not any(path.iterdir())
    elif kind == "existing":
        assert path.read_text() == "old"
    assert not list(tmp_path.glob(".*.tmp")), "a temp file was left behind"


OUTPUT_KINDS = ["symlink", "fifo", "directory", "under-a-file", "read-only-dir", "existing", "stdout", "dot"]


STEP_CASES = [("fuse", k) for k in OUTPUT_KINDS] + [(c, k) for c in ("export", "convert", "build-trt")
                                                   for k in ("symlink", "fifo", "stdout")]  # one check_output for all


@pytest.mark.parametrize("command,kind", STEP_CASES)
def test_step_outputs_refuse_every_hostile_path(cli_runner, ck, tiny, images, tmp_path, monkeypatch, kind, command):
    """A link, FIFO, folder, unwritable place, existing file (no --force) or '-' is refused before any work."""
    monkeypatch.chdir(tmp_path)
    path = _output_kind(tmp_path, kind)
    args = {"export": ["export", str(ck)], "fuse": ["fuse", str(tiny)],
            "convert": ["convert", str(tiny), "--precision", "fp16", "--verify-data", str(images)],
            "build-trt": ["build-trt", str(tiny), "--batch-profile", "1:1:2"]}[command]
    clean_error(cli_runner.invoke(app, [*args, "-o", str(path)]), 2)
    _untouched(tmp_path, path, kind)


REPORT_CASES = ([("--json", k) for k in OUTPUT_KINDS if k not in ("stdout", "dot")]
                + [(f, k) for f in ("--csv", "--markdown", "--chart") for k in ("symlink", "fifo")])


@pytest.mark.parametrize("flag,kind", REPORT_CASES)
def test_bench_reports_refuse_hostile_paths_before_running(cli_runner, tiny, tmp_path, kind, flag, monkeypatch):
    """Report paths are checked before the bench runs (no minutes of timing first), by the same rules."""
    path = _output_kind(tmp_path, kind, ".png" if flag == "--chart" else ".json")
    from ulsam_deploy.bench import run

    monkeypatch.setattr(run, "run_bench", lambda *a, **k: pytest.fail("the bench ran before the paths were checked"))
    clean_error(cli_runner.invoke(app, ["bench", str(tiny), flag, str(path)]), 2)
    _untouched(tmp_path, path, kind)


def test_bench_report_cannot_replace_the_model_it_benches(cli_runner, tiny, tmp_path):
    model = copy_with_sidecar(tiny, tmp_path / "m.onnx")
    before = model.read_bytes()
    clean_error(cli_runner.invoke(app, ["bench", str(model), "--json", str(model), "--force"]), 2, "input itself")
    clean_error(cli_runner.invoke(app, ["bench", str(model), "--json", str(tmp_path / "r"), "--csv",
                                        str(tmp_path / "r")]), 2, "same file")
    assert model.read_bytes() == before


def test_a_step_never_overwrites_its_inputs_sidecar(cli_runner, tiny, tmp_path):
    model = copy_with_sidecar(tiny, tmp_path / "m.onnx")
    before = sidecar_path(model).read_text()
    clean_error(cli_runner.invoke(app, ["fuse", str(model), "-o", str(sidecar_path(model)), "--force"]), 2,
                "input itself")
    assert sidecar_path(model).read_text() == before


def test_reports_to_standard_output_write_through_and_keep_the_link(cli_runner, tiny):
    """'-' and /dev/stdout mean standard output: the reports are printed, /dev/stdout stays the system's link."""
    was_link = os.path.islink("/dev/stdout")
    result = cli_runner.invoke(app, ["bench", str(tiny), "--backends", "ort", "--no-latency", "--csv", "-",
                                     "--json", "/dev/stdout"])
    assert result.exit_code == 0, result.output
    assert "\nmodel,file,backend,precision," in result.stdout and ",tiny.onnx,ort:cpu,fp32," in result.stdout
    assert '"schema": "ulsam-deploy-bench/2"' in result.stdout
    assert os.path.islink("/dev/stdout") == was_link


def test_reports_to_dev_null_are_discarded_and_artifacts_are_not(cli_runner, tiny):
    """/dev/null as a report path means 'discard it' (never opened, never replaced); an artifact there is refused."""
    result = cli_runner.invoke(app, ["bench", str(tiny), "--backends", "ort", "--no-latency", "--json", os.devnull,
                                     "--csv", os.devnull, "--markdown", os.devnull, "--chart", os.devnull])
    assert result.exit_code == 0, result.output
    assert '"schema"' not in result.stdout and "model,file,backend" not in result.stdout
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    with pytest.raises(UserError, match="not a regular file|device"):
        check_output(os.devnull, force=True, what="export output")


def test_artifacts_never_go_to_standard_output_and_text_reports_do(capsys, tmp_path):
    for name in ("-", "/dev/stdout"):
        with pytest.raises(UserError, match="standard output"):
            check_output(name, force=True, what="export output")
    assert write_text_output("hello\n", "-", force=False) is None
    assert capsys.readouterr().out == "hello\n"


def test_missing_output_folders_are_created(cli_runner, tiny, tmp_path):
    out = tmp_path / "new" / "deeper" / "m.fused.onnx"
    result = cli_runner.invoke(app, ["fuse", str(tiny), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and sidecar_path(out).is_file()


def test_an_interrupted_write_leaves_no_temp_file(tmp_path):
    """atomic_target removes its temp file on any exception, SIGTERM's Terminated included; the target is untouched."""
    from ulsam_deploy.cli.app import Terminated

    target = tmp_path / "m.onnx"
    target.write_text("old")
    for exc in (Terminated(), KeyboardInterrupt(), OSError("disk full")):
        with pytest.raises(type(exc)), atomic_target(target) as tmp:
            Path(tmp).write_text("half")
            raise exc
        assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# ------------------------------------------------------------------------------------ file modes

@pytest.fixture
def umask027():
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def test_every_writer_gives_files_the_umasks_mode(cli_runner, ck, tiny, images, tmp_path, umask027):
    """Export-side files (fuse, convert), checkpoints, reports and the timing cache: 0o640 under umask 027."""
    from ulsam_deploy.models import load_checkpoint

    written = [save_checkpoint(load_checkpoint(ck), tmp_path / "again.pt"), write_bytes(b"cache", tmp_path / "t.cache")]
    result = cli_runner.invoke(app, ["fuse", str(tiny), "-o", str(tmp_path / "f.onnx")])
    assert result.exit_code == 0, result.output
    result = cli_runner.invoke(app, ["convert", str(tiny), "--precision", "fp16", "--verify-data", str(images),
                                     "-o", str(tmp_path / "h.onnx")])
    assert result.exit_code == 0, result.output
    result = cli_runner.invoke(app, ["bench", str(tiny), "--backends", "ort", "--no-latency", "--json",
                                     str(tmp_path / "b.json"), "--markdown", str(tmp_path / "b.md")])
    assert result.exit_code == 0, result.output
    written += [tmp_path / n for n in ("f.onnx", "f.onnx.json", "h.onnx", "h.onnx.json", "b.json", "b.md")]
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == \
        {p.name: oct(umask027) for p in written}


# ------------------------------------------------------------------------------------------ locks

def test_a_second_writer_to_the_same_output_fails_at_once(cli_runner, ck, tmp_path):
    """Another process holds the output's lock (as a concurrent export would): this export refuses, writes nothing."""
    out = tmp_path / "m.onnx"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from ulsam_deploy.steps._step import output_lock\n"
        f"with output_lock(Path({str(out)!r})):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        clean_error(cli_runner.invoke(app, ["export", str(ck), "-o", str(out)]), 2, "Another ulsam-deploy process")
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_folder_must_be_private(tmp_path, monkeypatch):
    """A lock folder that is a link (planted in the shared temp folder) is refused, never followed."""
    from ulsam_deploy.steps import _step

    monkeypatch.setattr(_step.tempfile, "gettempdir", lambda: str(tmp_path))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / f"ulsam-deploy-locks-{os.getuid()}").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="not a private folder"), _step.output_lock(tmp_path / "m.onnx"):
        pass
    assert not any((tmp_path / "elsewhere").iterdir())


# ------------------------------------------------------------------------------------- checkpoints

def _put(root: Path, files: dict, name: str, payload: bytes, needle: str) -> None:
    """Write one hostile file and record the word its one-sentence error must contain."""
    (root / name).write_bytes(payload)
    files[name] = (root / name, needle)


def _hostile_checkpoints(root: Path, ck: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a word the sentence must contain)."""
    data = ck.read_bytes()
    files = {}
    put = functools.partial(_put, root, files)

    put("empty.pt", b"", "empty")
    put("truncated.pt", data[: len(data) // 2], "truncated")
    put("random.pt", np.random.default_rng(0).bytes(4096), "not a PyTorch file")
    put("text.pt", b"hello, I am a checkpoint\n", "text file")
    put("json.pt", b'{"state_dict": {}}', "JSON file")
    tiny_onnx(root / "model.onnx", sidecar=False)
    files["onnx"] = (root / "model.onnx", "ONNX model")
    os.mkfifo(root / "fifo.pt")
    files["fifo"] = (root / "fifo.pt", "not a regular file")
    files["dir"] = (root, "directory")
    files["missing"] = (root / "nope.pt", "does not exist")

    class Code:
        def __reduce__(self):
            return (os.system, (f"touch {root / 'PWNED'}",))

    torch.save({"state_dict": Code()}, root / "code.pt")
    files["code"] = (root / "code.pt", "not loaded for safety")
    payload = torch.load(ck, weights_only=True)
    state = dict(payload["state_dict"])
    width = state["classifier.1.weight"].shape[1]
    state["classifier.1.weight"] = torch.zeros(1).expand(10**8, width)  # stride 0: 4 bytes on disk, 512 GB built
    state["classifier.1.bias"] = torch.zeros(1).expand(10**8)
    torch.save(state, root / "huge_classes.pt")
    files["huge_classes"] = (root / "huge_classes.pt", "100,000,000 classes")
    torch.save({**payload, "config": {**payload["config"], "num_classes": 10**8}, "state_dict": state},
               root / "huge_classes_ours.pt")  # the same, claimed by a self-describing checkpoint's config
    files["huge_classes_ours"] = (root / "huge_classes_ours.pt", "100,000,000 classes")
    for name, change, needle in (("config_types", {"groups": "four"}, "groups must be a number"),
                                 ("config_size", {"input_size": 100000}, "too large"),
                                 ("config_bool", {"plain_ulsam": "false"}, "plain_ulsam")):
        torch.save({**payload, "config": {**payload["config"], **change}}, root / f"{name}.pt")
        files[name] = (root / f"{name}.pt", needle)
    torch.save({**payload, "class_names": ["a", "b"]}, root / "names.pt")
    files["names"] = (root / "names.pt", "2 class names for 10 classes")
    torch.save({**payload, "std": [0.0]}, root / "std.pt")
    files["std"] = (root / "std.pt", "invalid std")
    return files


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory, ck):
    root = tmp_path_factory.mktemp("badck")
    return root, _hostile_checkpoints(root, ck)


@pytest.mark.parametrize("name", ["empty.pt", "truncated.pt", "random.pt", "text.pt", "json.pt", "fifo", "dir",
                                  "missing", "code", "huge_classes", "huge_classes_ours", "config_types", "config_size",
                                  "config_bool", "names", "std"])
def test_every_bad_checkpoint_is_one_sentence(cli_runner, bad_checkpoints, name):
    """Missing, empty, truncated, random, wrong-kind and hostile checkpoints: one sentence in our words (no cut-off
    PyTorch text), exit 2, no code run, nothing allocated for 1e8 classes (inspect also reads ONNX files, so the
    ONNX-for-a-checkpoint case is export's, below)."""
    root, files = bad_checkpoints
    path, needle = files[name]
    clean_error(cli_runner.invoke(app, ["inspect", str(path)]), 2, needle)
    assert not (root / "PWNED").exists()


@pytest.mark.parametrize("name", ["truncated.pt", "onnx", "code", "huge_classes"])
def test_export_and_bench_say_the_same_about_bad_checkpoints(cli_runner, bad_checkpoints, name, tmp_path):
    """An ONNX where export expects a checkpoint is named as such ("Weights only load failed" never shows); bench
    takes an ONNX as a model, so it sees the others only."""
    _, files = bad_checkpoints
    path, needle = files[name]
    clean_error(cli_runner.invoke(app, ["export", str(path), "-o", str(tmp_path / "o.onnx")]), 2, needle)
    if name != "onnx":
        clean_error(cli_runner.invoke(app, ["bench", str(path), "--no-latency"]), 2, needle)
    assert not (tmp_path / "o.onnx").exists()


# ------------------------------------------------------------------------------------------ ONNX files

@pytest.fixture(scope="module")
def bad_onnx(tmp_path_factory, ck):
    root = tmp_path_factory.mktemp("badonnx")
    good = tiny_onnx(root / "good.onnx", sidecar=False).read_bytes()
    files = {}
    put = functools.partial(_put, root, files)

    put("empty.onnx", b"", "empty")
    put("truncated.onnx", good[: len(good) // 2], "not a readable ONNX")
    put("random.onnx", np.random.default_rng(0).bytes(4096), "not a readable ONNX")
    put("checkpoint.onnx", ck.read_bytes(), "not a readable ONNX")
    put("nograph.onnx", onnx.ModelProto(ir_version=8).SerializeToString(), "no ONNX graph")
    files["missing"] = (root / "nope.onnx", "does not exist")
    os.mkfifo(root / "fifo.onnx")
    files["fifo"] = (root / "fifo.onnx", "not a regular file")
    # external data that points outside the model's folder: onnx's own reason is shown
    (root / "ext").mkdir()
    model = onnx.load_model_from_string(good)
    onnx.save(model, root / "ext" / "ext.onnx", save_as_external_data=True, location="w.bin", size_threshold=0)
    proto = onnx.load(root / "ext" / "ext.onnx", load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../outside.bin"
    (root / "ext" / "w.bin").rename(root / "outside.bin")
    onnx.save(proto, root / "ext" / "ext.onnx")
    files["external"] = (root / "ext" / "ext.onnx", "points outside the directory")
    return files


BAD_ONNX = ["empty.onnx", "truncated.onnx", "random.onnx", "checkpoint.onnx", "nograph.onnx", "missing", "fifo",
            "external"]


ONNX_CASES = [(c, n) for c in ("fuse", "bench") for n in BAD_ONNX] + \
    [(c, n) for c in ("convert", "build-trt", "inspect") for n in ("empty.onnx", "random.onnx", "missing", "external")]


@pytest.mark.parametrize("command,name", ONNX_CASES)
def test_every_bad_onnx_is_one_sentence(cli_runner, bad_onnx, images, tmp_path, name, command):
    """Every command that reads an ONNX says what is wrong with it (onnx's reason for external data included)."""
    path, needle = bad_onnx[name]
    args = {"fuse": ["fuse", str(path), "-o", str(tmp_path / "o.onnx")],
            "convert": ["convert", str(path), "--precision", "fp16", "--verify-data", str(images), "-o",
                        str(tmp_path / "o.onnx")],
            "bench": ["bench", str(path), "--no-latency"],
            "build-trt": ["build-trt", str(path), "-o", str(tmp_path / "o.engine")],
            "inspect": ["inspect", str(path)]}[command]
    if command == "bench" and name == "missing":
        needle = "neither an existing file"  # bench also takes model specs such as 'mv2+17:1'
    clean_error(cli_runner.invoke(app, args), 2, needle)
    assert not any(tmp_path.iterdir())


def test_onnx_that_is_not_an_image_classifier(cli_runner, tmp_path, ck):
    """Two inputs, or feature maps that no sidecar declares as a backbone's: bench refuses in one sentence (convert
    judges feature maps by cosine, so it takes them)."""
    two = tiny_onnx(tmp_path / "two.onnx", two_inputs=True, sidecar=False)
    feats = tiny_onnx(tmp_path / "feats.onnx", feature_map=True)
    clean_error(cli_runner.invoke(app, ["bench", str(two), "--no-latency"]), 2, "2 inputs")
    clean_error(cli_runner.invoke(app, ["bench", str(ck), "--onnx", str(two), "--no-latency"]), 2, "2 inputs")
    clean_error(cli_runner.invoke(app, ["bench", str(feats), "--no-latency"]), 2, "not a classifier")
    clean_error(cli_runner.invoke(app, ["bench", str(ck), "--onnx", str(feats), "--no-latency"]), 2, "not a classifier")


def test_bench_onnx_that_does_not_match_the_checkpoint(cli_runner, ck, tmp_path):
    """Other class count, other network in its sidecar, or exported from another checkpoint: refused, exit 2."""
    classes = tiny_onnx(tmp_path / "classes.onnx", classes=7, sidecar=False)
    clean_error(cli_runner.invoke(app, ["bench", str(ck), "--onnx", str(classes), "--no-latency"]), 2, "7 classes")
    size = tiny_onnx(tmp_path / "size.onnx", size=64, sidecar=False)
    clean_error(cli_runner.invoke(app, ["bench", str(ck), "--onnx", str(size), "--no-latency"]), 2, "[1, 64, 64]")
    wider = tiny_onnx(tmp_path / "wider.onnx", config={**GREY.to_dict(), "width": 0.5})
    clean_error(cli_runner.invoke(app, ["bench", str(ck), "--onnx", str(wider), "--no-latency"]), 2, "x0.5")
    other = tiny_onnx(tmp_path / "other.onnx", checkpoint=str(ck), checkpoint_sha256="0" * 64)
    clean_error(cli_runner.invoke(app, ["bench", str(ck), "--onnx", str(other), "--no-latency"]), 2,
                "another checkpoint")
    clean_error(cli_runner.invoke(app, ["bench", str(other), "--no-latency"]), 2, "another checkpoint")  # as recorded


def test_non_finite_outputs_fail_parity(cli_runner, tiny, tmp_path):
    """A candidate that outputs NaN fails the gate (exit 3) with a sentence that says so."""
    nan = tiny_onnx(tmp_path / "nan.onnx", nan=True, sidecar=False)
    result = cli_runner.invoke(app, ["bench", str(tiny), "--onnx", str(nan), "--backends", "ort", "--no-latency"])
    clean_error(result, 3, "non-finite")
    assert "Parity passed" not in result.output


# -------------------------------------------------------------------------------------------- engines

def test_engine_sidecars_are_untrusted(tmp_path):
    """Wrong JSON types, another engine's sha256, a FIFO or a huge file: refused in one sentence (no hang)."""
    from ulsam_deploy.sidecars import ENGINE_SIDECAR_FORMAT, read_engine_sidecar

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0engine")
    side = sidecar_path(engine)
    good = {"format": ENGINE_SIDECAR_FORMAT, "engine": "m.engine", "engine_sha256": sha256_file(engine),
            "tensorrt": {"version": "10.3.0.30"}, "gpu": {"name": "Orin", "compute_capability": "8.7"}, "build": {}}
    side.write_text(json.dumps(good))
    assert read_engine_sidecar(engine).engine == "m.engine"
    for key, value, needle in (("tensorrt", "10.3", "'tensorrt'"), ("gpu", {"compute_capability": 8.7}, "gpu."),
                               ("plugin", {"library": ["x"]}, "plugin.library"), ("build", [], "'build'"),
                               ("engine_sha256", "f" * 64, "another engine"), ("engine_sha256", "xyz", "pattern"),
                               ("precision", {"precision": "int8"}, "'precision'"), ("onnx", "m.onnx", "'onnx'")):
        side.write_text(json.dumps({**good, key: value}))
        with pytest.raises(UserError, match="invalid|another engine") as info:
            read_engine_sidecar(engine)
        assert needle in str(info.value)
    side.write_text("[1, 2]")
    with pytest.raises(UserError, match="not an engine sidecar"):
        read_engine_sidecar(engine)
    side.unlink()
    os.mkfifo(side)
    with pytest.raises(UserError, match="not a regular file"):
        read_engine_sidecar(engine)


@pytest.mark.parametrize("payload", [b"", b"\0" * 64, b"random engine bytes"])
def test_bench_of_a_bad_engine_is_one_sentence(cli_runner, tmp_path, payload):
    """Without TensorRT here, a damaged engine cannot even be tried: exit 4 (backend) with the reason, no crash."""
    engine = tmp_path / "m.engine"
    engine.write_bytes(payload)
    tiny_onnx(tmp_path / "m.onnx")
    result = cli_runner.invoke(app, ["bench", str(engine), "--backends", "trt", "--no-latency"])
    assert result.exit_code in (2, 4), result.output
    clean_error(result, result.exit_code)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory", "under-a-file"])
def test_timing_cache_must_be_a_regular_file(tmp_path, kind):
    """--timing-cache is read and rewritten: never a link, FIFO (reading would hang) or folder."""
    from ulsam_deploy.backends.trt.settings import BuildOptions

    path = _output_kind(tmp_path, kind)
    with pytest.raises(UserError):
        BuildOptions(timing_cache=path)
    _untouched(tmp_path, path, kind)
    assert BuildOptions(timing_cache=tmp_path / "fresh.cache").timing_cache == tmp_path / "fresh.cache"


# ------------------------------------------------------------------------------------------- sidecars

def _bad_values() -> dict[str, tuple[object, object]]:
    """Every top-level field of OnnxSidecar: (a wrong JSON type, an out-of-range value of the right type)."""
    return {"schema": (1, "another/tool"), "version": ("2", 1), "onnx": (5, ""), "sha256": (12, "z" * 64),
            "model": ("model", {"config": {"num_classes": 0}}), "preprocess": ([], {"size": 100000, "mean": [0.5],
                                                                                     "std": [0.5], "in_channels": 1}),
            "inputs": ({}, []), "outputs": ("logits", []), "dynamic": (3, {"batch": [0, 1, 2]}),
            "precision": (16, "fp64"), "int8_target": (1, "cuda"), "fused_blocks": ("1", -1),
            "graph": ([], {str(i): i for i in range(100)}),
            "steps": ({}, [{"step": "x" * 100, "created": "now"}])}


def _write_mutated(tiny: Path, tmp_path: Path, mutate) -> Path:
    model = copy_with_sidecar(tiny, tmp_path / "m.onnx")
    data = json.loads(sidecar_path(model).read_text())
    mutate(data)
    sidecar_path(model).write_text(json.dumps(data))
    return model


def test_the_table_covers_every_sidecar_field():
    assert {f.alias or name for name, f in OnnxSidecar.model_fields.items()} == set(_bad_values())


@pytest.mark.parametrize("which", ["wrong type", "out of range"])
@pytest.mark.parametrize("field", sorted(_bad_values()))
def test_every_sidecar_field_is_validated(tiny, tmp_path, field, which):
    """Each field given the wrong JSON type (no coercion: "1" is not 1) or an out-of-range value is refused in one
    sentence naming the sidecar and the field."""
    value = _bad_values()[field][0 if which == "wrong type" else 1]
    model = _write_mutated(tiny, tmp_path, lambda d: d.__setitem__(field, value))
    with pytest.raises(UserError) as info:
        read_onnx_sidecar(model)
    message = str(info.value)
    assert str(sidecar_path(model)) in message and "\n" not in message
    assert field in message or "schema" in message


NESTED = [  # (path into the sidecar, bad value, a word of the sentence)
    (("preprocess", "size"), "32", "size"), (("preprocess", "size"), 7, "size"),
    (("preprocess", "in_channels"), 2, "in_channels"), (("preprocess", "crop_pct"), 0, "crop_pct"),
    (("preprocess", "std"), [0.0], "std"), (("preprocess", "std"), [-1.0], "std"),
    (("preprocess", "mean"), ["0.5"], "mean"), (("preprocess", "mean"), [float("nan")], "finite"),
    (("inputs", 0, "shape"), "1x32x32", "shape"), (("inputs", 0, "shape"), ["batch", 0, 32, 32], "out of range"),
    (("inputs", 0, "dtype"), "int8", "dtype"), (("inputs", 0, "name"), "", "name"),
    (("model", "config", "groups"), "4", "groups"), (("model", "config", "num_classes"), 0, "num_classes"),
    (("model", "config", "width"), True, "width"), (("model", "config"), [], "config"),
    (("model", "class_names"), "abc", "class_names"), (("model", "checkpoint"), 1, "checkpoint"),
    (("model", "checkpoint_sha256"), "abc", "checkpoint_sha256"), (("dynamic", "batch"), [3, 2, 1], "batch"),
]


@pytest.mark.parametrize("where,value,needle", NESTED, ids=["/".join(map(str, n[0])) + f"={n[1]!r}" for n in NESTED])
def test_nested_sidecar_fields_are_validated(tiny, tmp_path, where, value, needle):
    def mutate(data):
        node = data
        for key in where[:-1]:
            node = node[key]
        node[where[-1]] = value

    model = _write_mutated(tiny, tmp_path, mutate)
    with pytest.raises(UserError, match="invalid") as info:
        read_onnx_sidecar(model)
    assert needle in str(info.value)


@pytest.mark.parametrize("command", ["convert", "bench", "fuse"])
def test_sidecar_problems_stop_every_reader(cli_runner, tiny, images, tmp_path, command):
    """sha256 of another file, shapes or preprocessing that contradict the graph, wrong types: exit 2 everywhere."""
    cases = [
        (lambda d: d.__setitem__("sha256", "0" * 64), "describes another file"),
        (lambda d: d["inputs"][0].__setitem__("shape", ["batch", 3, 224, 224]), "the ONNX has"),
        (lambda d: d["preprocess"].__setitem__("size", 224), "preprocess.size is 224"),
        (lambda d: d["model"]["config"].__setitem__("num_classes", 1000), "num_classes is 1000"),
        (lambda d: d.__setitem__("fused_blocks", "0"), "fused_blocks"),
    ]
    for mutate, needle in cases:
        model = _write_mutated(tiny, tmp_path, mutate)
        out = tmp_path / "o.onnx"
        args = {"convert": ["convert", str(model), "--precision", "fp16", "--verify-data", str(images), "-o", str(out)],
                "bench": ["bench", str(model), "--no-latency"],
                "fuse": ["fuse", str(model), "-o", str(out)]}[command]
        clean_error(cli_runner.invoke(app, args), 2, needle)
        assert not out.exists()


def test_a_missing_recorded_checkpoint_is_said_not_hidden(cli_runner, tmp_path):
    """The sidecar names a checkpoint that is gone: bench says so and never reports 'Parity passed for 0'."""
    model = tiny_onnx(tmp_path / "m.onnx", checkpoint=str(tmp_path / "gone" / "ck.pt"))
    result = cli_runner.invoke(app, ["bench", str(model), "--no-latency", "--backends", "torch,ort"])
    assert result.exit_code == 0, result.output
    assert "gone/ck.pt" in result.output and "no torch reference" in result.output
    assert "Nothing was compared for parity" in result.output
    assert "Parity passed for 0" not in result.output


def test_a_recorded_checkpoint_is_found_relative_to_its_sidecar(ck, tmp_path, monkeypatch):
    """A sidecar written with a relative checkpoint path works from any directory (relative to the sidecar)."""
    from ulsam_deploy.bench.models import resolve_model

    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "ck.pt").write_bytes(ck.read_bytes())
    model = tiny_onnx(folder / "m.onnx", checkpoint="ck.pt", checkpoint_sha256=sha256_file(ck))
    monkeypatch.chdir(tmp_path)
    spec = resolve_model(str(model), load_module=False)
    assert spec.checkpoint == folder / "ck.pt" and not spec.warnings


# ------------------------------------------------------------------------------------------ images

def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels (and holds none): a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory, images):
    root = tmp_path_factory.mktemp("badimages")
    for f in images.iterdir():
        (root / f.name).write_bytes(f.read_bytes())
    (root / "bomb.png").write_bytes(_png_header(30000, 30000))
    (root / "random.png").write_bytes(np.random.default_rng(0).bytes(2048))
    (root / "empty.png").write_bytes(b"")
    (root / "truncated.png").write_bytes((images / "img0.png").read_bytes()[:60])
    os.mkfifo(root / "fifo.png")
    (root / "device.png").symlink_to("/dev/zero")
    return root


def test_bad_images_are_skipped_and_named_once(cli_runner, tiny, bad_images):
    """A bomb, random bytes, empty and truncated files are skipped with one warning, printed once; a FIFO or a link
    to a device is never opened."""
    result = cli_runner.invoke(app, ["bench", str(tiny), "--backends", "ort", "--no-latency", "--inputs",
                                     str(bad_images)])
    assert result.exit_code == 0, result.output
    assert result.output.count("unreadable or corrupt image") == 1, result.output
    assert "8 x [1, 32, 32]" in result.output and "4 skipped" in result.output


def test_decompression_bomb_in_calibration_data(cli_runner, tiny, tmp_path):
    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "bomb.png").write_bytes(_png_header(30000, 30000))
    result = cli_runner.invoke(app, ["convert", str(tiny), "--precision", "int8", "--calib-data",
                                     str(tmp_path / "calib"), "-o", str(tmp_path / "o.onnx")])
    clean_error(result, 2, "could be read")
    assert "30000x30000" in result.output or "None of the 1 image" in result.output


@pytest.mark.parametrize("kind", ["missing", "empty-folder", "file-not-image", "idx-huge-header", "idx-truncated"])
def test_bad_image_sources_are_one_sentence(cli_runner, tiny, tmp_path, kind):
    source = tmp_path / "src"
    if kind == "empty-folder":
        source.mkdir()
    elif kind == "file-not-image":
        source = tmp_path / "notes.png"
        source.write_text("not an image")
    elif kind.startswith("idx"):
        source.mkdir()
        dims = (10**6, 10**6, 10**6) if kind == "idx-huge-header" else (5, 28, 28)
        header = b"\x00\x00\x08\x03" + struct.pack(">III", *dims)
        (source / "t10k-images-idx3-ubyte").write_bytes(header + b"\x00" * 100)
    clean_error(cli_runner.invoke(app, ["bench", str(tiny), "--backends", "ort", "--no-latency", "--inputs",
                                        str(source)]), 2)


# --------------------------------------------------------------------------------------- resources

@pytest.fixture
def small_machine(monkeypatch):
    """Pretend 8 GiB are available, so the refusals do not depend on this machine's memory."""
    from ulsam_deploy import limits

    monkeypatch.setattr(limits, "available_memory", lambda: 8 << 30)


@pytest.mark.parametrize("args,needle", [
    (["bench", "mv2x0.35@224", "--batch-sizes", "4096"], "--batch-sizes"),
    (["bench", "mv2x0.35@224", "--num-inputs", "100000000"], "--num-inputs"),
    (["inspect", "--arch", "mv2", "--input-size", "100000"], "--input-size"),
    (["inspect", "--arch", "mv2", "--width", "4", "--num-classes", "1000000"], "weights"),
    (["inspect", "--arch", "mv2", "--num-classes", "100000000"], "100,000,000 classes"),
])
def test_what_cannot_fit_is_refused_before_allocating(cli_runner, small_machine, args, needle):
    """Memory is estimated from shapes x batch before anything is allocated; the sentence names the largest value
    that would fit where there is one."""
    line = clean_error(cli_runner.invoke(app, args), 2, needle)
    if "--batch-sizes" in args:
        largest = int(line.split("use --batch-sizes ")[1].split()[0].replace(",", ""))
        assert 1 <= largest < 4096


def test_export_static_batch_that_cannot_fit(cli_runner, ck, tmp_path, small_machine):
    clean_error(cli_runner.invoke(app, ["export", str(ck), "--static-batch", "10000000", "-o",
                                        str(tmp_path / "o.onnx")]), 2, "--static-batch")
    assert not (tmp_path / "o.onnx").exists()


def test_profile_refuses_an_input_size_that_cannot_fit(small_machine):
    from ulsam_deploy.models import profile_model

    model = build_model("mv2", 0.35, num_classes=10, input_size=4096)
    with pytest.raises(UserError, match=r"use --input-size \d+ or less"):
        profile_model(model)


# ------------------------------------------------------------------------------------- other flags

@pytest.mark.parametrize("args,needle", [
    (["bench", "{tiny}", "--inputs", "{images}", "--mean", "0.1,0.2,0.3"], "1 channel"),
    (["bench", "{tiny}", "--chart", "x.txt"], ".png"),
    (["bench", "{tiny}", "--chart", "-"], "PNG"),
    (["demo", "--images", "0"], "--images"),
    (["bench", "{tiny}", "--batch-sizes", "0"], "--batch"),
])
def test_bad_flag_values(cli_runner, tiny, images, args, needle):
    args = [a.format(tiny=tiny, images=images) for a in args]
    clean_error(cli_runner.invoke(app, args), 2, needle)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "under-a-file"])
def test_demo_report_folder_must_be_a_real_folder(cli_runner, tmp_path, kind):
    """``demo --out`` that is a link (to a folder or not), a FIFO or under a file: refused before any work."""
    out = _output_kind(tmp_path, kind, "")
    if kind == "symlink":
        out.unlink()
        (tmp_path / "real").mkdir()
        out.symlink_to(tmp_path / "real")
    clean_error(cli_runner.invoke(app, ["demo", "--quick", "--out", str(out)]), 2)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    if kind == "symlink":
        assert out.is_symlink() and not any((tmp_path / "real").iterdir())


def test_debug_is_accepted_after_the_subcommand(tmp_path):
    """``run()`` takes --debug anywhere; without it the same error is one line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "ulsam_deploy", "fuse", str(tmp_path / "nope.onnx")]
    plain = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
    debug = subprocess.run([*cmd, "--debug"], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "does not exist" in plain.stderr
    assert debug.returncode != 0 and "Traceback" in debug.stderr


# ---------------------------------------------------------------------------------------------- help

COMMANDS = ["bench", "build-plugin", "build-trt", "convert", "demo", "doctor", "export", "fuse", "inspect", "train"]


def _option_blocks(text: str) -> dict[str, str]:
    """``--option -> its help text`` from a Rich help screen's Options panel (wrapped lines joined)."""
    blocks, current = {}, None
    for line in text.splitlines():
        match = re.match(r"^│\s*(?:\*\s+)?(--[\w-]+)", line)
        if match:
            current = match.group(1)
            blocks[current] = line
        elif current and line.startswith("│"):
            blocks[current] += " " + line.strip("│ ")
        else:
            current = None
    return blocks


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_shows_every_default_and_plain_usage(cli_runner, command):
    """Every option states its default (or [required]), no flag shows '<bool>', usage names arguments plainly."""
    result = cli_runner.invoke(app, [*([command] if command else []), "--help"], env={"COLUMNS": "150"})
    assert result.exit_code == 0, result.output
    out = result.output
    usage = next(l for l in out.splitlines() if "Usage:" in l)
    assert "{" not in usage and "[[" not in usage, usage
    expected = {"export": "CHECKPOINT", "inspect": "[CHECKPOINT]", "bench": "MODEL...", "convert": "MODEL",
                "fuse": "MODEL", "build-trt": "MODEL", "train": "[DATA]"}.get(command)
    if expected:
        assert f" {expected}" in usage, usage
    assert "<bool>" not in out
    blocks = _option_blocks(out)
    assert len(blocks) >= 2
    missing = [opt for opt, text in blocks.items() if opt != "--help" and "default:" not in text
               and "[required]" not in text]
    assert not missing, f"no default shown for {missing}"


# --------------------------------------------------------------------------------------- interruption

def _spawn(args, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ulsam_deploy", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509


@pytest.mark.slow  # starts the demo twice (~10 s each)
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interrupted_demo_leaves_nothing_behind(tmp_path, sig, code):
    """The demo's hidden work folder exists while it runs; SIGTERM (like Ctrl-C) removes it and says so."""
    proc = _spawn(["demo", "--quick", "--out", str(tmp_path / "report")], tmp_path)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".report.*")):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the demo never created its work folder"
        time.sleep(0.05)
    time.sleep(0.5)  # well inside the pipeline
    os.kill(proc.pid, sig)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, output
    assert "nothing was written" in output and "Traceback" not in output
    assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.iterdir())


@pytest.mark.slow  # one export in a subprocess (~15 s)
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interrupted_export_leaves_nothing_behind(tmp_path, ck, sig, code):
    out = tmp_path / "out" / "m.onnx"
    proc = _spawn(["export", str(ck), "-o", str(out)], tmp_path)
    deadline = time.monotonic() + 120
    line = ""
    while "Exporting ONNX" not in line:  # the spinner lines go to the pipe as each stage ends
        line = proc.stdout.readline()
        assert line or proc.poll() is None, "export ended before it was interrupted"
        assert time.monotonic() < deadline
    os.kill(proc.pid, sig)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, output
    assert not out.exists() and not sidecar_path(out).exists()
    assert not list(tmp_path.rglob(".*.tmp")), "a temp file was left behind"


# ----------------------------------------------------------------------------- export at another size

@pytest.mark.slow  # exports and benches (~30 s)
def test_export_at_another_size_than_trained_is_said_recorded_and_usable(cli_runner, ck, tmp_path):
    """Exporting at another size is allowed on purpose (detection backbones): export warns, the sidecar keeps the
    trained size, and bench compares the export with the checkpoint at the export's size."""
    out = tmp_path / "m64.onnx"
    result = cli_runner.invoke(app, ["export", str(ck), "--input-size", "64", "-o", str(out), "--atol", "1e-3"])
    assert result.exit_code == 0, result.output
    assert "trained at 32x32" in result.output
    side = read_onnx_sidecar(out)
    assert side.preprocess.size == 64 and side.model.meta["trained_input_size"] == 32
    result = cli_runner.invoke(app, ["bench", str(out), "--backends", "torch,ort", "--no-latency"])
    assert result.exit_code == 0, result.output
    assert "Parity passed for 1 backend(s)" in result.output
