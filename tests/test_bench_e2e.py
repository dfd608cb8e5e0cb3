"""bench end to end on a small exported model: torch vs ort on random and real images, reports,
corrupt images, a deliberately broken ONNX failing parity with a non-zero exit, --compare."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from helpers import randomize_bn
from ulsam_deploy.bench.options import BenchOptions
from ulsam_deploy.bench.models import parse_model_spec, resolve_model
from ulsam_deploy.bench.run import run_bench
from ulsam_deploy.cli import app
from ulsam_deploy.errors import ParityError, UserError
from ulsam_deploy.data.sources import load_images, resolve_preprocess
from ulsam_deploy.bench.latency import TimingConfig
from ulsam_deploy.models import build_model, save_checkpoint

FAST = ["--warmup", "0", "--duration", "0", "--iterations", "3"]
FASHION = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


def _foolbox_dir() -> Path:
    try:
        from ulsam_deploy.data.resources import foolbox_data_dir

        return foolbox_data_dir()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"foolbox's sample images are not installed ({exc}); run scripts/setup.sh")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A grey 32x32 MV2 x0.35 + ULSAM 17:1 (10 classes) checkpoint and its exported ONNX (+ sidecar)."""
    from ulsam_deploy.steps.export import ExportOptions, export_checkpoint

    root = tmp_path_factory.mktemp("bench")
    model = randomize_bn(build_model("mv2", 0.35, "14,17:1", 4, num_classes=10, input_size=32, in_channels=1)).eval()
    ckpt = save_checkpoint(model, root / "small.pt", class_names=FASHION, mean=(0.286,), std=(0.353,))
    export_checkpoint(ckpt, root / "small.onnx", ExportOptions())
    return {"root": root, "ckpt": ckpt, "onnx": root / "small.onnx"}


@pytest.fixture(scope="module")
def fashion_folder(small):
    """An ImageFolder of foolbox's real Fashion-MNIST PNGs (class sub-folders by name) plus one corrupt file."""
    src = _foolbox_dir()
    files = sorted(src.glob("fashionMNIST_*.png"))
    if not files:
        pytest.skip(f"no fashionMNIST_*.png in {src}")
    root = small["root"] / "fashion"
    for f in files:
        label = int(f.stem.rsplit("_", 1)[1])
        (root / FASHION[label]).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / FASHION[label] / f.name)
    (root / "bag" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    return {"root": root, "count": len(files)}


def _fast_options(**kw) -> BenchOptions:
    kw.setdefault("timing", TimingConfig(warmup_s=0.0, min_iters=3, min_seconds=0.0))
    return BenchOptions(**kw)


@pytest.mark.slow
def test_torch_vs_ort_random_inputs(small):
    report = run_bench([resolve_model(small["ckpt"], onnx=[small["onnx"]])],
                       _fast_options(backends=("torch", "ort", "trt"), batches=(1, 4), num_inputs=6))
    assert report.passed
    labels = {(r.backend, r.batch) for r in report.latency}
    assert labels == {("torch:cpu", 1), ("ort:cpu", 1), ("torch:cpu", 4), ("ort:cpu", 4)}
    cand = [r for r in report.parity if not r.is_reference]
    assert len(cand) == 1 and cand[0].backend == "ort:cpu" and cand[0].precision == "fp32"
    c = cand[0].comparison
    assert c.samples == 6 and c.max_abs < 1e-4 and c.top1_agreement == 1.0 and c.cosine > 0.99999
    assert [s["backend"] for s in report.skipped] == ["trt"] and "engine" in report.skipped[0]["reason"]
    for row in report.latency:
        s = row.stats
        assert s.count >= 3 and s.min <= s.median <= s.p90 <= s.p95 <= s.p99 <= s.max
        assert row.qps == pytest.approx(1000 / s.mean) and row.images_per_s == pytest.approx(row.qps * row.batch)
    data = report.to_dict()
    assert data["schema"] == "ulsam-deploy-bench/2" and data["inputs"]["source"] == "random"
    assert data["versions"]["onnxruntime"] and data["machine"]["cpu_count"]
    assert {r["label"] for r in data["runners"]} == {"torch:cpu", "ort:cpu"}


def test_onnx_argument_finds_checkpoint_through_sidecar(small):
    spec = resolve_model(small["onnx"])
    assert spec.checkpoint == small["ckpt"] and spec.config.in_channels == 1 and spec.class_names == FASHION
    assert spec.module is not None


def test_real_images_with_labels_and_a_corrupt_file(small, fashion_folder):
    spec = resolve_model(small["ckpt"], onnx=[small["onnx"]])
    report = run_bench([spec], _fast_options(backends=("torch", "ort"), inputs=str(fashion_folder["root"]),
                                              latency=False))
    assert report.inputs["count"] == fashion_folder["count"] and report.inputs["skipped"] == 1
    assert any("skipped 1 unreadable or corrupt image" in w and "corrupt.png" in w for w in report.warnings)
    assert report.inputs["labelled"] == fashion_folder["count"]
    ref, ort_row = report.parity
    assert ref.is_reference and ref.accuracy is not None and ref.accuracy.samples == fashion_folder["count"]
    assert ort_row.accuracy.top1 == pytest.approx(ref.accuracy.top1)  # fp32 parity: same answers
    assert ort_row.to_dict()["accuracy_delta"]["top1"] == pytest.approx(0.0)
    assert report.passed


def test_image_labels_map_to_class_names_and_preprocess_grey(small, fashion_folder):
    pre = resolve_preprocess(32, 1, mean=(0.286,), std=(0.353,))
    assert pre.crop_pct == 1.0  # small inputs are resized, not cropped
    inputs = load_images(fashion_folder["root"], pre, class_names=FASHION, num_classes=10)
    by_name = {Path(n).name: int(l) for n, l in zip(inputs.names, inputs.labels)}
    assert by_name["fashionMNIST_00_9.png"] == 9 and by_name["fashionMNIST_01_2.png"] == 2
    assert inputs.images.shape[1:] == (1, 32, 32) and inputs.images.dtype == np.float32
    # the same files with labels from the file name (as foolbox names them)
    flat = load_images(str(_foolbox_dir() / "fashionMNIST_*.png"), pre, label_regex=r"_(\d+)$", num_classes=10)
    assert sorted(flat.labels.tolist()) == sorted(by_name.values())


def test_imagenet_preprocess_and_regex_labels():
    files = str(_foolbox_dir() / "imagenet_0*")
    inputs = load_images(files, resolve_preprocess(224, 3), label_regex=r"_(\d+)$", num_classes=1000)
    assert inputs.images.shape == (10, 3, 224, 224) and inputs.labels[0] == 243
    assert inputs.preprocess.resize == 256  # resize 256, center crop 224


@pytest.mark.slow
def test_cli_bench_writes_every_report(small, fashion_folder, cli_runner, tmp_path):
    out = tmp_path / "report"
    result = cli_runner.invoke(app, ["bench", str(small["onnx"]), "--backends", "torch,ort,trt", "--batch-sizes", "1,2",
                                     "--inputs", str(fashion_folder["root"]), "--out", str(out), "--threads", "1",
                                     *FAST])
    assert result.exit_code == 0, result.output
    assert "Parity passed" in result.output and "skipped" in result.output
    data = json.loads((out / "bench.json").read_text())
    assert data["passed"] is True and data["inputs"]["skipped"] == 1
    assert {(r["backend"], r["batch"]) for r in data["latency"]} == {("torch:cpu", 1), ("ort:cpu", 1),
                                                                     ("torch:cpu", 2), ("ort:cpu", 2)}
    for r in data["latency"]:
        assert set(r["latency_ms"]) >= {"min", "max", "mean", "median", "p90", "p95", "p99", "cv", "unstable"}
    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert len(rows) == 4 and all(r["top1_accuracy"] != "" for r in rows)
    md = (out / "bench.md").read_text()
    assert "| small | small.onnx | ort:cpu | fp32 |" in md  # every row names its model and artifact
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_broken_onnx_fails_parity_with_nonzero_exit(small, cli_runner, tmp_path):
    proto = onnx.load(str(small["onnx"]))
    gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
    init = next(t for t in proto.graph.initializer if t.name == gemm.input[1])
    weights = numpy_helper.to_array(init).copy()
    weights += np.random.default_rng(0).standard_normal(weights.shape).astype(np.float32) * weights.std()
    init.CopyFrom(numpy_helper.from_array(weights, init.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    out = tmp_path / "r.json"
    result = cli_runner.invoke(app, ["bench", str(small["ckpt"]), "--onnx", str(broken), "--backends", "torch,ort",
                                     "--no-latency", "--json", str(out)])
    assert result.exit_code == ParityError.exit_code == 3, result.output
    assert "Parity failed" in result.output and "Traceback" not in result.output
    data = json.loads(out.read_text())  # the report is still written, for CI artifacts
    assert data["passed"] is False
    failed = [p for p in data["parity"] if not p["passed"]]
    assert failed and failed[0]["comparison"]["max_abs"] > 1e-3


@pytest.mark.slow
def test_compare_two_models_prints_macs_and_latency_ratios(cli_runner, tmp_path):
    out = tmp_path / "cmp.json"
    result = cli_runner.invoke(app, ["bench", "mv2x0.35@32", "mv2x0.35+13,14,16,17/g4@32", "--backends", "ort",
                                     "--compare", "--no-parity", "--json", str(out), *FAST])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    (row,) = data["compare"]
    assert row["backend"] == "ort:cpu" and row["model"] == "mv2x0.35+13,14,16,17/g4@32"
    assert row["macs_ratio"] < 1.0 and row["latency_ratio"] > 0  # replacing layers cuts MACs
    assert "MACs ratio" in result.output


@pytest.mark.parametrize("args, words", [
    (["bench", "no/such/model.pt"], "neither an existing file"),
    (["bench", "mv2@32", "--backends", "torch,tpu"], "Unknown backend"),
    (["bench", "mv2@32", "--batch-sizes", "1,x"], "--batch-sizes"),
    (["bench", "mv2@32", "--batch-sizes", "0"], "--batch-sizes must be from 1 to 4096, not 0."),
    (["bench", "mv2@32", "--batch-sizes", "10000000"], "--batch-sizes must be from 1 to 4096, not 10000000."),
    (["bench", "mv2@32", "--num-inputs", "100000000"], "--num-inputs"),
    (["bench", "mv2@32", "--std", "0"], "--std values must be positive"),
    (["bench", "mv2@32", "--compare"], "two or more models"),
    (["bench", "mv2@32", "--inputs", "/no/such/images"], "does not exist"),
    (["bench", "mv2@32", "--threshold", "fp16:speed=1"], "unknown key"),
    (["bench", "mv2@32", "mv1@64", "--backends", "ort"], "different inputs"),
])
def test_bad_input_is_one_sentence_and_nonzero(cli_runner, tmp_path, args, words):
    out = tmp_path / "never.json"
    result = cli_runner.invoke(app, args + ["--json", str(out)])
    assert result.exit_code != 0
    assert words in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_model_spec_parsing():
    c = parse_model_spec("mv1x0.75+8:1,9:1,11/g8@160")
    assert (c.arch, c.width, c.ulsam, c.groups, c.input_size) == ("mv1", 0.75, "8:1,9:1,11", 8, 160)
    assert parse_model_spec("resnet50") is None
    with pytest.raises(UserError):
        resolve_model("resnet50")


@pytest.mark.slow
def test_fused_onnx_gets_the_custom_op_library_automatically(small, tmp_path):
    pytest.importorskip("onnxruntime_extensions", reason="the fused op needs onnxruntime-extensions (ulsam-deploy[kernels])")
    from ulsam_deploy.steps.export import ExportOptions, export_checkpoint

    fused = tmp_path / "fused.onnx"
    result = export_checkpoint(small["ckpt"], fused, ExportOptions(fuse=True))
    assert result.report["fusion"]["fused"] >= 1
    report = run_bench([resolve_model(small["ckpt"], onnx=[fused])],
                       _fast_options(backends=("torch", "ort"), num_inputs=4, batches=(2,)))
    (ort_info,) = [r for r in report.runners if r["label"] == "ort:cpu"]
    assert ort_info["custom_ops"] is True and ort_info["fused_nodes"] >= 1
    assert report.passed and report.parity[1].comparison.max_abs < 1e-4
    assert report.parity[1].mode == "SubspaceAttention reference op (NumPy)"
    (lat,) = [r for r in report.latency if r.backend == "ort:cpu"]
    assert not lat.meaningful  # the reference op's speed is not the fused kernel's


@pytest.mark.slow
def test_fp16_io_model_is_fed_fp16_and_judged_as_fp16(small, tmp_path):
    pytest.importorskip("onnxconverter_common", reason="the fp16 pass needs onnxconverter-common")
    from ulsam_deploy.passes.fp16 import to_fp16

    half, _ = to_fp16(onnx.load(str(small["onnx"])), io_fp16=True)
    path = tmp_path / "half.onnx"
    onnx.save(half, str(path))
    report = run_bench([resolve_model(small["ckpt"], onnx=[small["onnx"], path])],
                       _fast_options(backends=("torch", "ort"), num_inputs=8, batches=(1,)))
    rows = {(r.artifact, r.precision): r for r in report.parity if not r.is_reference}
    fp16 = rows[(str(path), "fp16")]
    assert rows[(str(small["onnx"]), "fp32")].passed
    assert fp16.tolerances.atol is None and fp16.tolerances.min_top1_agreement == 0.995  # judged on agreement
    assert 1e-6 < fp16.comparison.max_abs < 0.5 and fp16.comparison.cosine > 0.999
    (info,) = [r for r in report.runners if r["artifact"] == str(path)]
    assert info["io_fp16"] is True and info["precision"] == "fp16"
    assert {(r.precision, r.batch) for r in report.latency if r.backend == "ort:cpu"} == {("fp32", 1), ("fp16", 1)}


def test_onnx_without_sidecar_or_checkpoint_runs_on_ort_alone(small, tmp_path):
    bare = tmp_path / "foreign.onnx"
    shutil.copy(small["onnx"], bare)  # no foreign.onnx.json beside it
    report = run_bench([resolve_model(bare)], _fast_options(backends=("torch", "ort"), num_inputs=3))
    assert report.inputs["shape"] == [1, 32, 32]  # read from the graph
    assert [s["backend"] for s in report.skipped] == ["torch"] and "no checkpoint" in report.skipped[0]["reason"]
    assert any("reference backend 'torch' is not available" in w for w in report.warnings)
    assert report.passed and [r.backend for r in report.latency] == ["ort:cpu"]


def test_no_runnable_backend_exits_4_with_the_reasons(cli_runner):
    result = cli_runner.invoke(app, ["bench", "mv2x0.35@32", "--backends", "trt"])
    assert result.exit_code == 4
    assert "No backend could run here" in result.output and "build-trt" in result.output


def test_newer_ir_version_than_onnxruntime_reads_is_lowered_in_memory(small, tmp_path):
    """A board's older ONNX Runtime (JetPack 6: 1.23 reads IR 11) still runs a file written with a newer IR."""
    from ulsam_deploy.backends.onnxrt.runner import OrtRunner
    from ulsam_deploy.onnx_graph import ort_max_ir_version

    model = onnx.load(small["onnx"])
    model.ir_version = ort_max_ir_version() + 1
    path = tmp_path / "newer_ir.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    with OrtRunner(small["onnx"]) as ref, OrtRunner(path) as runner:
        assert np.array_equal(runner.infer(x), ref.infer(x))
        assert runner.warnings == [f"ONNX IR version {model.ir_version} lowered to {ort_max_ir_version()} in memory "
                                   f"for onnxruntime {__import__('onnxruntime').__version__} (the file is unchanged)"]
        assert ref.warnings == []
    assert onnx.load(path).ir_version == model.ir_version


def test_a_new_backend_is_one_folder(small, tmp_path, monkeypatch):
    """The registry finds a backend by its folder alone: a package with a ``backend.py`` next to the others is
    benched, judged and timed like them, and nothing else in the code names it."""
    import ulsam_deploy.backends as backends_package
    from ulsam_deploy.backends import registry

    folder = tmp_path / "plugins_here" / "echo"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text('"""A test backend: ONNX Runtime under another name."""\n')
    (folder / "backend.py").write_text(
        "from ulsam_deploy.backends.onnxrt.runner import OrtRunner\n"
        "from ulsam_deploy.backends.registry import Backend, NoArtifact\n\n\n"
        "class EchoRunner(OrtRunner):\n"
        "    name = 'echo'\n\n"
        "    @property\n"
        "    def label(self):\n"
        "        return 'echo'\n\n\n"
        "def _open(model, options):\n"
        "    if not model.onnx:\n"
        "        raise NoArtifact('no ONNX file for echo')\n"
        "    for path in model.onnx:\n"
        "        yield EchoRunner(path, threads=options.threads), str(path)\n\n\n"
        "BACKEND = Backend('echo', 9, 'ONNX Runtime, echoed', lambda: None, _open)\n")
    monkeypatch.setattr(backends_package, "__path__", [*backends_package.__path__, str(folder.parent)])
    registry.backends.cache_clear()
    try:
        assert registry.names() == ("torch", "ort", "trt", "echo")
        report = run_bench([resolve_model(small["ckpt"], onnx=[small["onnx"]])],
                           _fast_options(backends=("torch", "echo"), num_inputs=4))
        assert {row.backend for row in report.parity} == {"torch:cpu", "echo"} and report.passed
        assert {row.backend for row in report.latency} == {"torch:cpu", "echo"}
        from ulsam_deploy.errors import BackendUnavailable

        with pytest.raises(BackendUnavailable, match="echo: no ONNX file for echo"):
            run_bench([resolve_model("mv2x0.35@32")], _fast_options(backends=("echo",), num_inputs=2,
                                                                     export_missing_onnx=False))
        with pytest.raises(UserError, match="Unknown backend.*choose from torch, ort, trt, echo"):
            BenchOptions(backends=("nope",))
    finally:
        registry.backends.cache_clear()
