"""``demo``: the whole pipeline on a bundled model and real images, one command, one report folder.

    bundled checkpoint -> export (ONNX, export form of ULSAM) -> simplify (onnxsim)
      -> fuse (SubspaceAttention) -> fp16 -> int8 (calibrated on real training images)
      -> TensorRT engine (where TensorRT and a GPU exist)
      -> bench on real held-out images: parity + accuracy + latency of every artifact
      -> report folder: README.md, demo.json, bench.{md,json,csv,png}

Each optional step runs when its module is present and its runtime is usable; otherwise it is
recorded (and printed) as skipped with the reason. ``quick`` is the same code path with fewer images,
one batch size and shorter timing (for CI). The folder is assembled beside its final path and renamed
at the end, so an interrupted demo leaves no half-written report.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np

from ulsam_deploy.errors import BackendUnavailable, UserError

Stage = Callable[[str], ContextManager]
Echo = Callable[[str], None]


@dataclass
class DemoOptions:
    model: str = "fashion-mnist"  # a bundled model name
    out: str | os.PathLike | None = None  # default: reports/demo-<model>-<time>
    quick: bool = False
    images: int | None = None  # held-out real images to bench on (default 1000; quick 200; ImageNet: its 20)
    calib_images: int | None = None  # int8 calibration images from the training split (default 512; quick 300)
    batches: tuple[int, ...] | None = None  # default (1, 32); quick (1,)
    threads: int | None = None
    force: bool = False

    def resolved(self) -> "DemoOptions":
        o = DemoOptions(**asdict(self))
        o.images = o.images or (200 if o.quick else 1000)
        o.calib_images = o.calib_images or (300 if o.quick else 512)
        o.batches = tuple(o.batches or ((1,) if o.quick else (1, 32)))
        if o.images < 1 or o.calib_images < 1 or any(b < 1 for b in o.batches):
            raise UserError("--images, --calib-images and --batch must be positive.")
        if o.threads is not None and o.threads < 1:
            raise UserError(f"--threads must be at least 1, not {o.threads}.")
        return o


@dataclass
class Step:
    name: str
    status: str  # "ok", "skipped", "failed"
    detail: str
    seconds: float = 0.0
    artifact: str | None = None
    data: dict = field(default_factory=dict)


@dataclass
class DemoResult:
    out: Path
    steps: list[Step]
    bench: object | None  # BenchReport
    seconds: float

    @property
    def failed(self) -> list[Step]:
        return [s for s in self.steps if s.status == "failed"]

    @property
    def passed(self) -> bool:
        return not self.failed and (self.bench is None or self.bench.passed)


def _null_stage(_name: str):
    import contextlib

    return contextlib.nullcontext()


def default_out(model: str) -> Path:
    return Path("reports") / f"demo-{model}-{time.strftime('%Y%m%d-%H%M%S')}"


def _optional(module: str, attr: str):
    """``module.attr`` when this version of ulsam-deploy has it, else None (a capability not landed yet)."""
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError:
        return None
    except AttributeError:
        return None


# ----------------------------------------------------------------------------------------- data

@dataclass
class RealImages:
    folder: Path  # ImageFolder of the held-out images (what bench reads)
    verify: object  # EvalSet of the same images (precision passes)
    calib: object | None  # EvalSet of training images (int8), None when there is no honest set
    description: str
    calib_reason: str = ""


def _fashion_images(work: Path, preprocess, opts: DemoOptions) -> RealImages:
    from ulsam_deploy.data import FashionMNIST, export_fashion_mnist_folder
    from ulsam_deploy.data.evalset import EvalSet

    folder = export_fashion_mnist_folder(work / "images", count=opts.images, split="test")
    test = FashionMNIST("test", preprocess=preprocess, limit=opts.images)
    train = FashionMNIST("train", preprocess=preprocess, limit=opts.calib_images)
    verify = EvalSet(preprocess.normalize(test.images.numpy()), test.labels.numpy(),
                     f"Fashion-MNIST test images 0..{len(test) - 1}")
    calib = EvalSet(preprocess.normalize(train.images.numpy()), train.labels.numpy(),
                    f"Fashion-MNIST train images 0..{len(train) - 1}")
    return RealImages(folder, verify, calib, f"the first {len(test)} Fashion-MNIST test images (PNG, 28x28 grey)")


def _imagenet_images(work: Path, preprocess) -> RealImages:
    from ulsam_deploy.data import foolbox_imagenet_samples
    from ulsam_deploy.data.evalset import EvalSet

    folder = work / "images"
    samples = foolbox_imagenet_samples()
    for s in samples:
        (folder / str(s.label)).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(s.path, folder / str(s.label) / s.path.name)
    from ulsam_deploy.data.images import load_image_uint8

    batch = np.stack([load_image_uint8(s.path, preprocess) for s in samples])
    verify = EvalSet(preprocess.normalize(batch), np.array([s.label for s in samples], dtype=np.int64),
                     f"foolbox's {len(samples)} ImageNet photos")
    return RealImages(folder, verify, None, f"foolbox's {len(samples)} real ImageNet photos (class index in the name)",
                      "int8 needs real calibration images apart from the verification set, and the only ImageNet "
                      "images installed are the 20 used for verification")


# ----------------------------------------------------------------------------------------- demo

def run_demo(opts: DemoOptions, stage: Stage = _null_stage, echo: Echo = lambda _t: None,
             bench_event=None) -> DemoResult:
    """Run the pipeline and write the report folder; see the module docstring."""
    from ulsam_deploy import bundled

    opts = opts.resolved()
    started = time.perf_counter()
    entry = bundled.get(opts.model)
    out = Path(opts.out) if opts.out is not None else default_out(entry.name)
    if out.exists():
        if not out.is_dir():
            raise UserError(f"'{out}' is a file; give a folder path for the report.")
        if any(out.iterdir()) and not opts.force:
            raise UserError(f"'{out}' already exists and is not empty; pass --force to replace it or choose another --out.")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    threads_before = None
    try:
        if opts.threads:
            import torch

            threads_before = torch.get_num_threads()
            torch.set_num_threads(opts.threads)
        steps, report = _pipeline(entry, opts, work, stage, echo, bench_event)
        result = DemoResult(out, steps, report, time.perf_counter() - started)
        _write_report(result, entry, opts, work)
        _name_final_folder(work, out)
        _open_permissions(work)
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
        _rebase(result, work, out)
        return result
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if threads_before is not None:
            import torch

            torch.set_num_threads(threads_before)


def _name_final_folder(work: Path, out: Path) -> None:
    """The reports were written while the folder had its temporary name: make their paths name the final one."""
    old, new = str(work), str(out)
    for path in work.iterdir():
        if path.is_file() and path.suffix in (".json", ".md", ".csv"):
            text = path.read_text()
            if old in text:
                path.write_text(text.replace(old, new))


def _open_permissions(folder: Path) -> None:
    """Reports are for reading: give the folder the user's usual modes (temp files are created private)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


def _rebase(result: DemoResult, work: Path, out: Path) -> None:
    for step in result.steps:
        if step.artifact and step.artifact.startswith(str(work)):
            step.artifact = str(out / Path(step.artifact).relative_to(work))


def _pipeline(entry, opts: DemoOptions, work: Path, stage: Stage, echo: Echo, bench_event):
    from ulsam_deploy import bundled
    from ulsam_deploy.data.images import Preprocess
    from ulsam_deploy.steps.export import ExportOptions, export_model

    steps: list[Step] = []

    def record(step: Step) -> Step:
        steps.append(step)
        colour = {"ok": "green", "skipped": "yellow", "failed": "red"}[step.status]
        echo(f"[{colour}]{step.status:>7}[/] {step.name}: {step.detail}")
        return step

    t0 = time.perf_counter()
    with stage(f"Loading the bundled model '{entry.name}'"):
        model, info = bundled.load(entry.name)
    record(Step("load", "ok", f"{entry.title} ({entry.card.name})", time.perf_counter() - t0))

    pre = Preprocess.from_dict(info.meta["preprocess"])
    t0 = time.perf_counter()
    with stage("Preparing real images"):
        if entry.name == "imagenet":
            images = _imagenet_images(work, pre)
        else:
            images = _fashion_images(work, pre, opts)
    record(Step("images", "ok", images.description, time.perf_counter() - t0, str(images.folder)))

    onnx_path = work / "model.onnx"
    export = export_model(model, info, onnx_path, ExportOptions(force=True), stage=stage, source=f"bundled:{entry.name}")
    record(Step("export", "ok", f"{export.nodes} nodes, ONNX Runtime vs PyTorch max abs diff {export.max_abs:.2g}",
                export.seconds.get("export", 0.0) + export.seconds.get("parity", 0.0), str(onnx_path),
                {"parity": {str(b): c.to_dict() for b, c in export.parity.items()}}))
    record(Step("simplify", "ok", "onnxsim, constants as initializers (inside export)", export.seconds.get("simplify", 0.0),
                str(onnx_path)))

    variants: list[Path] = [onnx_path]
    variants += _fuse_step(onnx_path, work, stage, record)
    variants += _precision_steps(onnx_path, work, images, stage, record)
    engines = _tensorrt_step(variants, work, opts.batches, stage, record)
    report = _bench_step(model, info, entry, variants, engines, images, opts, work, stage, record, bench_event)
    return steps, report


def _fuse_step(onnx_path: Path, work: Path, stage: Stage, record) -> list[Path]:
    fuse_file = _optional("ulsam_deploy.steps.fuse", "fuse_file")
    if fuse_file is None or _optional("ulsam_deploy.passes.fuse", "fuse_model") is None:
        record(Step("fuse", "skipped", "the fusion pass (ulsam_deploy.passes.fuse) is not part of this version"))
        return []
    t0 = time.perf_counter()
    try:
        result = fuse_file(onnx_path, work / "model.fused.onnx", force=True, stage=stage)
    except BackendUnavailable as exc:
        record(Step("fuse", "skipped", str(exc), time.perf_counter() - t0))
        return []
    except UserError as exc:
        record(Step("fuse", "failed", str(exc), time.perf_counter() - t0))
        return []
    if result.fused == 0:
        record(Step("fuse", "skipped", "no ULSAM block matched the fusion pattern", time.perf_counter() - t0))
        result.onnx_path.unlink(missing_ok=True)
        result.sidecar_path.unlink(missing_ok=True)
        return []
    record(Step("fuse", "ok", f"{result.fused} ULSAM block(s) -> SubspaceAttention, fused vs unfused max abs diff "
                f"{result.max_abs:.2g}", time.perf_counter() - t0, str(result.onnx_path)))
    return [result.onnx_path]


def _precision_steps(onnx_path: Path, work: Path, images: RealImages, stage: Stage, record) -> list[Path]:
    convert = _optional("ulsam_deploy.passes.precision", "convert_precision")
    if convert is None:
        for name in ("fp16", "int8"):
            record(Step(name, "skipped", "the precision passes (ulsam_deploy.passes.precision) are not part of this version"))
        return []
    written = []
    for precision in ("fp16", "int8"):
        if precision == "int8" and images.calib is None:
            record(Step("int8", "skipped", images.calib_reason))
            continue
        t0 = time.perf_counter()
        try:
            result = convert(onnx_path, work / f"model.{precision}.onnx", precision,
                             calib_data=images.calib if precision == "int8" else None, verify_data=images.verify,
                             stage=stage)
        except BackendUnavailable as exc:
            record(Step(precision, "skipped", str(exc), time.perf_counter() - t0))
            continue
        except UserError as exc:  # ParityError included: the pass refused its own output
            record(Step(precision, "failed", str(exc), time.perf_counter() - t0))
            continue
        v = result.verification
        detail = ", ".join(f"{k.replace('_', ' ')} {v[k]:.2%}" for k in ("top1_agreement", "accuracy", "reference_accuracy")
                           if isinstance(v.get(k), (int, float)))
        record(Step(precision, "ok", f"verified on {len(images.verify)} real images" + (f": {detail}" if detail else ""),
                    time.perf_counter() - t0, str(result.onnx_path), {"verification": _jsonable(v)}))
        written.append(result.onnx_path)
    return written


def _tensorrt_step(variants: list[Path], work: Path, batches: tuple[int, ...], stage: Stage, record) -> list[Path]:
    """One engine per ONNX artifact (fp32, fused, fp16, int8: the precision lives in the ONNX file)."""
    build_engine = _optional("ulsam_deploy.backends.trt.build", "build_engine")
    if build_engine is None:
        record(Step("tensorrt", "skipped", "the TensorRT builder (ulsam_deploy.backends.trt.build) is not part of this version"))
        return []
    from ulsam_deploy.backends.trt.runtime import tensorrt_available

    if not tensorrt_available():
        from ulsam_deploy.backends.trt.runtime import install_hint

        record(Step("tensorrt", "skipped", f"TensorRT is not installed here ({install_hint()})"))
        return []
    from ulsam_deploy.backends.trt.settings import BatchProfile, BuildOptions

    top = max(batches)
    engines = []
    for onnx_path in variants:
        name = f"tensorrt:{onnx_path.stem.replace('model', '').strip('.') or 'fp32'}"
        engine = onnx_path.with_suffix(".engine")
        options = BuildOptions(batch=BatchProfile(1, top, top), plugin="auto" if ".fused" in onnx_path.name else None,
                               force=True)
        t0 = time.perf_counter()
        try:
            result = build_engine(onnx_path, engine, options, stage=stage)
        except BackendUnavailable as exc:  # no GPU, no plugin library...
            record(Step(name, "skipped", str(exc), time.perf_counter() - t0))
            if not engines and "GPU" in str(exc):
                break  # the same reason for every other engine
            continue
        except UserError as exc:
            record(Step(name, "failed", str(exc), time.perf_counter() - t0))
            continue
        record(Step(name, "ok", f"engine from {onnx_path.name} in {result.seconds:.0f} s", time.perf_counter() - t0,
                    str(result.engine_path)))
        engines.append(result.engine_path)
    return engines


def _bench_step(model, info, entry, variants, engines, images: RealImages, opts: DemoOptions, work: Path,
                stage: Stage, record, bench_event):
    from ulsam_deploy.bench.run import BenchOptions, ModelSpec, run_bench
    from ulsam_deploy.bench.report import write_reports
    from ulsam_deploy.bench.latency import TimingConfig

    timing = TimingConfig(warmup_s=0.2, min_iters=5, min_seconds=0.5) if opts.quick else \
        TimingConfig(warmup_s=0.3, min_iters=10, min_seconds=1.5)
    spec = ModelSpec(name=entry.name, config=info.config, module=model, onnx=list(variants), engines=list(engines),
                     mean=tuple(info.mean), std=tuple(info.std), class_names=info.class_names, meta=info.meta)
    options = BenchOptions(backends=("torch", "ort", "trt"), batches=opts.batches, timing=timing, threads=opts.threads,
                           inputs=str(images.folder), num_inputs=len(images.verify))
    t0 = time.perf_counter()
    report = run_bench([spec], options, event=bench_event)
    write_reports(report, json_path=work / "bench.json", csv_path=work / "bench.csv", markdown_path=work / "bench.md",
                  chart_path=work / "bench.png")
    failures = report.parity_failures
    accs = [f"{r.backend}:{Path(str(r.artifact)).name or r.precision} {r.accuracy.top1:.2%}" for r in report.parity
            if getattr(r, "accuracy", None) is not None and getattr(r.accuracy, "top1", None) is not None]
    detail = (f"{len(report.parity)} parity rows ({'all passed' if not failures else f'{len(failures)} FAILED'}), "
              f"{len(report.latency)} latency rows" + (f"; top-1: {', '.join(accs)}" if accs else ""))
    for item in report.skipped:
        record(Step(f"bench:{item['backend']}", "skipped", item["reason"]))
    record(Step("bench", "ok" if not failures else "failed", detail, time.perf_counter() - t0, str(work / "bench.md")))
    return report


# --------------------------------------------------------------------------------------- report

def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))


def _write_report(result: DemoResult, entry, opts: DemoOptions, work: Path) -> None:
    from ulsam_deploy.steps.export import write_json_atomic
    from ulsam_deploy.passes.common import write_bytes_atomic

    bench = result.bench.to_dict() if result.bench is not None else None
    summary = {
        "schema": "ulsam-deploy-demo/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "passed": result.passed,
        "seconds": round(result.seconds, 2),
        "model": {"name": entry.name, "title": entry.title, "card": entry.card.name, "config": entry["config"]},
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items() if k != "out"},
        "steps": [{**asdict(s), "artifact": Path(s.artifact).name if s.artifact else None, "seconds": round(s.seconds, 3)}
                  for s in result.steps],
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "bench": bench,
    }
    write_json_atomic(summary, work / "demo.json")
    shutil.copyfile(entry.card, work / "MODEL_CARD.md")
    rows = "\n".join(f"| {s.name} | {s.status} | {s.seconds:.1f} | {(Path(s.artifact).name if s.artifact else '')} | "
                     f"{s.detail.replace('|', '/')} |" for s in result.steps)
    bench_md = (work / "bench.md").read_text() if (work / "bench.md").exists() else "(no bench report)"
    artifacts = _artifact_table(result.bench) if result.bench is not None else ""
    text = f"""# ulsam-deploy demo: {entry.title}

{'PASSED' if result.passed else 'FAILED'} in {result.seconds:.0f} s{' (quick mode)' if opts.quick else ''}. Model card: [MODEL_CARD.md](MODEL_CARD.md).
Machine-readable: [demo.json](demo.json), [bench.json](bench.json), [bench.csv](bench.csv).

## Pipeline

| step | status | seconds | artifact | detail |
|---|---|---|---|---|
{rows}

## Results per artifact (real held-out images)

{artifacts}

## Bench (parity, accuracy and latency on real images)

![bench chart](bench.png)

{bench_md}
"""
    write_bytes_atomic(text.encode(), work / "README.md")


def _artifact_table(report) -> str:
    """One row per runner x batch, named by its artifact (the bench tables name backends, not files)."""
    parity = {(r.backend, r.precision, str(r.artifact)): r for r in report.parity}
    lines = ["| artifact | backend | precision | batch | top-1 | top-1 agreement | max abs diff | median ms | img/s | parity |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for lat in report.latency:
        p = parity.get((lat.backend, lat.precision, str(lat.artifact)))
        name = Path(str(lat.artifact)).name or "(in memory)"
        top1 = f"{p.accuracy.top1:.2%}" if p is not None and p.accuracy is not None else ""
        agree = "reference" if p is not None and p.is_reference else (
            f"{p.comparison.top1_agreement:.2%}" if p is not None and p.comparison is not None else "")
        diff = f"{p.comparison.max_abs:.2g}" if p is not None and p.comparison is not None else ""
        verdict = "" if p is None else ("reference" if p.is_reference else ("PASS" if p.passed else "FAIL"))
        lines.append(f"| {name} | {lat.backend} | {lat.precision} | {lat.batch} | {top1} | {agree} | {diff} | "
                     f"{lat.stats.median:.3g} | {lat.images_per_s:.0f} | {verdict} |")
    return "\n".join(lines)


__all__ = ["DemoOptions", "DemoResult", "Step", "run_demo"]
