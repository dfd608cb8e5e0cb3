"""The board's install for real: a fresh venv, ``pip install`` of this checkout's base (no extras), no torch.

What a Jetson does with a copied ``model.onnx``: ``--help``, ``doctor``, ``inspect``, ``fuse``, ``convert --precision
fp16``, ``bench`` and ``build-trt`` up to the TensorRT boundary run; ``export``, ``train`` and ``bench`` of a
checkpoint refuse in one sentence with the pip command and exit 4. The ONNX comes from this (full) environment.

The base dependencies are downloaded once into a wheelhouse keyed on pyproject.toml, constraints.txt and the
Python (``$ULSAM_BASE_WHEELS_CACHE``, default ``~/.cache/ulsam-deploy/base-wheels``; ~80 MB), with torch
constrained to nothing, so a torch requirement fails the download instead of pulling GBs. Every run then installs
into a new venv from that wheelhouse alone (``--no-index``: no network, and no torch wheel to find).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from helpers import bundled_macs_from_torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CACHE_ENV = "ULSAM_BASE_WHEELS_CACHE"
HEAVY = {"torch", "onnxsim", "onnxscript", "triton", "torchvision"}
FAST = ["--warmup", "0", "--duration", "0", "--iterations", "2"]


def _clean_env() -> dict:
    """No PYTHONPATH (the checkout must come from the install), wide Rich output for one-line sentences."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(COLUMNS="250", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _source_copy(dest: Path) -> Path:
    """What a wheel holds, copied out of the checkout (an in-tree build would leave build/ and egg-info there)."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    shutil.copytree(ROOT / "ulsam_deploy", dest / "ulsam_deploy", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _run(cmd: list, *, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                          timeout=timeout)


def _never(work: Path) -> Path:
    """A constraints file nothing satisfies for torch & co: a requirement on them fails fast instead of downloading."""
    path = work / "no-torch.txt"
    path.write_text("torch<0\ntorchvision<0\ntriton<0\n")
    return path


def _wheelhouse(source: Path, work: Path, never: Path) -> Path:
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + (ROOT / "constraints.txt").read_bytes()
                         + f"{sys.version_info[:2]} {platform.machine()} base+fleet".encode()).hexdigest()[:16]
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ulsam-deploy" / "base-wheels")
    root.mkdir(parents=True, exist_ok=True)
    target = root / key
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        shutil.rmtree(target, ignore_errors=True)
        proc = _run([sys.executable, "-m", "pip", "download", "-q", "-d", target, "-c", ROOT / "constraints.txt",
                     "-c", never, f"{source}[fleet]", "setuptools>=68", "wheel"], cwd=work)
        assert proc.returncode == 0, f"downloading the base dependencies failed:\n{proc.stderr[-3000:]}"
        (target / ".complete").write_text("ok\n")
    return target


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A venv with the base install (deleted afterwards: ~260 MB) and a copied model.onnx + sidecar."""
    from ulsam_deploy import bundled
    from ulsam_deploy.steps.export import ExportOptions, export_checkpoint

    work = tmp_path_factory.mktemp("board")
    checkpoint = bundled.checkpoint_path("fashion-mnist")
    model = export_checkpoint(checkpoint, work / "model.onnx", ExportOptions()).path
    from PIL import Image

    images = work / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48] / 47.0
    for i in range(24):  # smooth grey shapes: fp16 must agree with fp32 on them
        a, b, c = rng.uniform(-3, 3, 3)
        pixels = 127.5 * (1 + np.sin(a * xx + b * yy + c) * np.cos(c * xx - a * yy))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "L").save(images / f"img_{i:02d}.png")
    venv_root = Path(tempfile.mkdtemp(prefix="ulsam-base-venv-"))
    try:
        venv = venv_root / "venv"
        made = _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=work, timeout=300)
        if made.returncode != 0 or not (venv / "bin" / "python").exists():
            pytest.skip(f"cannot create a venv here: {(made.stderr.strip().splitlines() or ['?'])[-1]}")
        source = _source_copy(work / "src")
        never = _never(work)
        wheels = _wheelhouse(source, work, never)
        # this environment's pip installs into the venv (--python); no byte-compiling, no isolated build env:
        # ~15 s instead of ~45 s on two busy cores
        pip = [sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-compile",
               "--no-index", "--find-links", wheels, "-c", never]
        for args in (["setuptools>=68", "wheel"], ["--no-build-isolation", source]):
            proc = _run([*pip, *args], cwd=work)
            assert proc.returncode == 0, f"the base install failed:\n{proc.stderr[-3000:]}"
        yield {"venv": venv, "cli": venv / "bin" / "ulsam-deploy", "work": work, "model": model, "images": images,
               "checkpoint": checkpoint, "pip": pip, "source": source}
    finally:
        shutil.rmtree(venv_root, ignore_errors=True)


def _cli(board, *args, timeout: int = 600) -> subprocess.CompletedProcess:
    return _run([board["cli"], *args], cwd=board["work"], timeout=timeout)


def _one_sentence(proc: subprocess.CompletedProcess, extra: str) -> str:
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and not proc.stdout.strip(), proc.stderr
    assert re.fullmatch(rf"error: 'ulsam-deploy \w+'.* needs torch, which this install lacks; install it with: "
                        rf"pip install 'ulsam-deploy\[{extra}\]'\.", lines[0]), lines[0]
    return lines[0]


def test_the_install_has_no_torch_and_runs_from_the_venv(board):
    probe = ("import importlib.metadata as m, importlib.util as u, json, ulsam_deploy; print(json.dumps({"
             "'file': ulsam_deploy.__file__,"
             "'dists': sorted(d.metadata['Name'].lower().replace('_', '-') for d in m.distributions()),"
             "'torch': u.find_spec('torch') is not None}))")
    proc = _run([board["venv"] / "bin" / "python", "-c", probe], cwd=board["work"])
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert facts["file"].startswith(str(board["venv"])) and not facts["torch"]
    assert not HEAVY & set(facts["dists"]), facts["dists"]
    assert {"ulsam-deploy", "onnxruntime", "onnxruntime-extensions", "onnxconverter-common"} <= set(facts["dists"])


def test_help_and_doctor(board):
    help_ = _cli(board, "--help")
    assert help_.returncode == 0 and "build-trt" in help_.stdout, help_.stderr
    doctor = _cli(board, "doctor", "--json", "--no-data")
    assert doctor.returncode == 0, doctor.stderr
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert not checks["torch"]["ok"] and "pip install 'ulsam-deploy[export]'" in checks["torch"]["fix"]
    assert checks["onnxruntime"]["ok"] and checks["onnxruntime-extensions"]["ok"] and checks["onnx"]["ok"]
    assert not checks["tensorrt"]["ok"] and checks["tensorrt"]["fix"]


def test_inspect_fuse_convert_bench_of_the_copied_onnx(board):
    work, model = board["work"], board["model"]
    info = _cli(board, "inspect", model, "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["macs"] == bundled_macs_from_torch() and json.loads(info.stdout)["config"]["arch"] == "mv2"
    fused = _cli(board, "fuse", model, "-o", work / "model.fused.onnx")
    assert fused.returncode == 0 and "1 ULSAM block(s) fused" in fused.stdout, fused.stderr
    half = _cli(board, "convert", model, "--precision", "fp16", "-o", work / "model.fp16.onnx", "--verify-data",
                board["images"], "--min-agreement", "0.9")
    assert half.returncode == 0, half.stdout[-2000:] + half.stderr[-2000:]
    report = work / "bench.json"
    bench = _cli(board, "bench", model, "--onnx", work / "model.fused.onnx", "--onnx", work / "model.fp16.onnx",
                 *FAST, "--json", report)
    assert bench.returncode == 0, bench.stdout[-2000:] + bench.stderr[-2000:]
    data = json.loads(report.read_text())
    assert [r["label"] for r in data["runners"]] == ["ort:cpu"] * 3
    assert len(data["parity"]) == 3 and all(row["passed"] for row in data["parity"])
    skipped = {s["backend"]: s["reason"] for s in data["skipped"]}
    assert skipped["torch"] == "PyTorch is not installed; install it with: pip install 'ulsam-deploy[export]'"
    assert "pip install 'ulsam-deploy[export]'" in bench.stdout
    assert data["versions"]["torch"] is None


@pytest.mark.parametrize("target", ["tensorrt", "ort"])
def test_int8_for_both_targets_without_torch(board, target):
    """int8 on the board: --target ort runs ONNX Runtime's pre-processing, whose symbolic shape inference needs
    sympy (absent here); ONNX's own shape inference is used instead."""
    out = board["work"] / f"model.int8-{target}.onnx"
    proc = _cli(board, "convert", board["model"], "--precision", "int8", "--target", target, "--calib-data",
                board["images"], "--verify-data", board["images"], "--max-drop", "20", "--threshold",
                "int8:min_top1_agreement=0.8", "-o", out)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert out.is_file() and json.loads(Path(f"{out}.json").read_text())["int8_target"] == target


def test_build_trt_and_build_plugin_stop_at_the_boundary(board):
    bare = Path(board["model"]).with_name("bare.onnx")  # no sidecar: nothing says the batch range
    shutil.copy(board["model"], bare)
    no_profile = _cli(board, "build-trt", bare)
    assert no_profile.returncode == 2 and "--batch-profile" in no_profile.stderr, no_profile.stderr
    from_sidecar = _cli(board, "build-trt", board["model"])  # the sidecar's batch range is the default profile
    assert from_sidecar.returncode == 4 and "TensorRT's Python package is not installed" in from_sidecar.stderr
    no_trt = _cli(board, "build-trt", board["model"], "--batch-profile", "1:4:8")
    assert no_trt.returncode == 4 and "TensorRT's Python package is not installed" in no_trt.stderr, no_trt.stderr
    plugin = _cli(board, "build-plugin")  # a non-editable install carries no C++ sources: say how to get them
    assert plugin.returncode == 2 and "pip install -e ./ulsam-deploy" in plugin.stderr, plugin.stderr


def test_torch_commands_refuse_in_one_sentence(board):
    _one_sentence(_cli(board, "export", board["checkpoint"], "-o", board["work"] / "x.onnx"), "export")
    _one_sentence(_cli(board, "bench", board["checkpoint"]), "export")
    _one_sentence(_cli(board, "train", "--dataset", "fashion-mnist"), "train")
    assert not (board["work"] / "x.onnx").exists()


def test_jetpack_tensorrt_api_without_torch(board):
    """TensorRT 10.3's real bindings (JetPack 6's API) over stub libraries: doctor names them, build-trt and
    bench --engine reach TensorRT's boundary and stop there in one sentence; still no torch anywhere."""
    from trt_bindings import Unavailable, alias_dir, install, libcuda_stub, stubs

    try:
        site, libs, cuda = install("10.3.0"), stubs(10), libcuda_stub().parent
    except Unavailable as exc:
        pytest.skip(str(exc))
    env = _clean_env()
    env.update(PYTHONPATH=os.pathsep.join([str(alias_dir()), str(site)]), LD_LIBRARY_PATH=f"{libs}{os.pathsep}{cuda}")
    run = lambda *args: subprocess.run([str(board["cli"]), *map(str, args)], cwd=board["work"], env=env,  # noqa: E731
                                       capture_output=True, text=True, timeout=300)
    doctor = run("doctor", "--json", "--no-data")
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["tensorrt"]["ok"] and checks["tensorrt"]["version"] == "10.3.0", checks["tensorrt"]
    assert "distribution tensorrt-cu12-bindings 10.3.0" in checks["tensorrt"]["detail"]
    assert not checks["torch"]["ok"]
    build = run("build-trt", board["model"], "--batch-profile", "1:4:8", "-o", board["work"] / "m.engine")
    assert build.returncode == 4, build.stderr
    assert build.stderr.strip().splitlines()[-1] == ("error: TensorRT 10.3.0 could not create a Builder (libnvinfer is "
                                                     "missing or not a working TensorRT library); check 'ulsam-deploy "
                                                     "doctor'.")
    fake = board["work"] / "fake.engine"
    fake.write_bytes(b"not an engine")
    bench = run("bench", board["model"], "--engine", fake, "--reference", "ort", *FAST)
    assert bench.returncode == 0, bench.stderr
    assert ("skipped model trt: TensorRT 10.3.0 could not create a Runtime (libnvinfer is missing or not a working "
            "TensorRT library)") in bench.stdout


def test_a_board_joins_the_fleet_with_the_fleet_extra_and_no_torch(board):
    """Without the extra, fleet says how to get it; with ``[fleet]`` (Dask, still no torch) the board runs a fleet
    on its embedded cluster. Last in this module: it adds Dask to the shared venv."""
    work, model = board["work"], board["model"]
    refused = _cli(board, "fleet", model)
    assert refused.returncode == 4 and "pip install 'ulsam-deploy[fleet]'" in refused.stderr, refused.stderr
    proc = _run([*board["pip"], "--no-build-isolation", f"{board['source']}[fleet]"], cwd=work)
    assert proc.returncode == 0, f"installing the fleet extra failed:\n{proc.stderr[-3000:]}"
    run = _cli(board, "fleet", model, "--duration", "0.2", "--iterations", "5", "--warmup", "0", "--num-inputs", "4",
               "--json", work / "fleet.json")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads((work / "fleet.json").read_text())
    assert report["passed"] and [d["kind"] for d in report["devices"]] == ["cpu"]
    probe = _run([board["venv"] / "bin" / "python", "-c", "import importlib.util as u; print(u.find_spec('torch'))"],
                 cwd=work)
    assert probe.stdout.strip() == "None"
