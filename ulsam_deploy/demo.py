"""``demo``: the whole pipeline on a bundled model and real images, one command, one report folder.

    bundled checkpoint -> export (ONNX, export form of ULSAM) -> simplify (onnxsim)
      -> fuse (SubspaceAttention) -> fp16 -> int8 for TensorRT and int8 for ONNX Runtime (each calibrated
         on real training images) -> TensorRT engine (where TensorRT and a GPU exist)
      -> bench on real held-out images: parity + accuracy + latency of every artifact
      -> report folder: README.md, demo.json, bench.{md,json,csv,png}

Each step's verdict is the one judge's, with the runner that runs the artifact everywhere (the int8 model
for TensorRT as exact Q/DQ, the one for ONNX Runtime in a default session on this CPU), so no verdict
depends on which SIMD extensions the CPU has. A step whose runtime is missing (TensorRT, a GPU) is
recorded (and printed) as skipped with the reason. ``quick`` is the same code path with fewer images,
one batch size and shorter timing (for CI). The folder is assembled beside its final path and renamed
at the end, so an interrupted demo leaves no half-written report.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ulsam_deploy.errors import BackendUnavailable, UserError
from ulsam_deploy.events import SILENT, Events


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
        for value, flag in ((self.images, "--images"), (self.calib_images, "--calib-images")):
            if value is not None and value < 1:
                raise UserError(f"{flag} must be a positive number of images, not {value}.")
        if any(not 1 <= b <= 4096 for b in o.batches):
            raise UserError(f"--batch-sizes must be integers from 1 to 4096, not {list(o.batches)}.")
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


def default_out(model: str) -> Path:
    return Path("reports") / f"demo-{model}-{time.strftime('%Y%m%d-%H%M%S')}"


# ----------------------------------------------------------------------------------------- data

@dataclass
class RealImages:
    folder: Path  # ImageFolder of the held-out images (what bench reads)
    verify: object  # ImageSet of the same images (precision passes)
    calib: object | None  # ImageSet of training images (int8), None when there is no honest set
    description: str
    calib_reason: str = ""


def _fashion_images(work: Path, preprocess, opts: DemoOptions) -> RealImages:
    from ulsam_deploy.data.datasets import export_fashion_mnist_folder
    from ulsam_deploy.data.fashion_mnist import load_arrays
    from ulsam_deploy.data.sources import ImageSet, _images_from_uint8

    folder = export_fashion_mnist_folder(work / "images", count=opts.images, split="test")
    test, test_labels = load_arrays("test", opts.images)
    train, train_labels = load_arrays("train", opts.calib_images)
    verify = ImageSet(_images_from_uint8(test, preprocess), test_labels.astype(np.int64),
                      f"Fashion-MNIST test images 0..{len(test) - 1}", preprocess=preprocess)
    calib = ImageSet(_images_from_uint8(train, preprocess), train_labels.astype(np.int64),
                     f"Fashion-MNIST train images 0..{len(train) - 1}", preprocess=preprocess)
    return RealImages(folder, verify, calib, f"the first {len(test)} Fashion-MNIST test images (PNG, 28x28 grey)")


def _imagenet_images(work: Path, preprocess) -> RealImages:
    from ulsam_deploy.data.imagenet import foolbox_imagenet_samples
    from ulsam_deploy.data.sources import foolbox_imagenet_set

    folder = work / "images"
    samples = foolbox_imagenet_samples()
    for s in samples:
        (folder / str(s.label)).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(s.path, folder / str(s.label) / s.path.name)
    verify = foolbox_imagenet_set(preprocess)
    return RealImages(folder, verify, None, f"foolbox's {len(samples)} real ImageNet photos (class index in the name)",
                      "int8 needs real calibration images apart from the verification set, and the only ImageNet "
                      "images installed are the 20 used for verification")


# ----------------------------------------------------------------------------------------- demo

def run_demo(opts: DemoOptions, events: Events = SILENT) -> DemoResult:
    """Run the pipeline and write the report folder; see the module docstring. ``events`` gets the steps' stages and
    warnings, bench's runner events, and one ``demo_step`` event per finished step (name, status, detail)."""
    from ulsam_deploy import bundled

    opts = opts.resolved()
    started = time.perf_counter()
    entry = bundled.get(opts.model)
    out = check_report_folder(Path(opts.out) if opts.out is not None else default_out(entry.name), force=opts.force)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:  # a file where a folder should be, a read-only place
        raise UserError(f"Cannot create the report folder '{out}' ({exc.strerror}); choose another --out.") from None
    threads_before = None
    try:
        if opts.threads:
            import torch

            threads_before = torch.get_num_threads()
            torch.set_num_threads(opts.threads)
        steps, report = _pipeline(entry, opts, work, events)
        result = DemoResult(out, steps, report, time.perf_counter() - started)
        _write_report(result, entry, opts, work)
        _name_final_folder(work, out)
        _open_permissions(work)
        if out.exists():
            check_report_folder(out, force=opts.force)  # again: the folder may have changed during the run
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


REPORT_FILES = ("demo.json", "MODEL_CARD.md", "README.md")
DEMO_SCHEMA = "ulsam-deploy-demo/1"


def check_report_folder(out: Path, *, force: bool) -> Path:
    """The report folder, checked before any work. ``--force`` replaces only an earlier demo report (a folder
    whose ``demo.json`` lists every entry in it); the working folder, its parents, links and a user's folders
    are never replaced."""
    from ulsam_deploy.artifacts import path_kind

    shown = out
    out = Path(os.path.abspath(out))
    kind = path_kind(out, "report folder (--out)", "choose another --out")
    if kind == "link":
        raise UserError(f"--out '{shown}' is a symbolic link; ulsam-deploy never replaces links, so give the real "
                        "folder's path or another one.")
    if kind == "missing":
        return out
    if kind != "dir":
        raise UserError(f"--out '{shown}' is not a folder (a file or special file); give a new folder path for the "
                        "report.")
    if not any(out.iterdir()):
        return out
    cwd = Path(os.path.abspath(os.getcwd()))
    if out == cwd or out in cwd.parents or out == Path.home():
        raise UserError(f"--out '{shown}' is the working folder, one of its parents or your home folder, which is "
                        "never replaced; give a new folder such as 'reports/demo'.")
    if not force:
        raise UserError(f"'{shown}' already exists and is not empty; pass --force to replace an earlier demo report "
                        "there, or choose another --out.")
    if not is_demo_report(out):
        raise UserError(f"'{shown}' is not a demo report folder (it holds files the demo did not write), so --force "
                        "does not replace it; choose another --out.")
    return out


def is_demo_report(folder: Path) -> bool:
    """A folder the demo wrote: its ``demo.json`` has the demo's schema and lists every entry of the folder."""
    import json

    try:
        listed = json.loads((folder / "demo.json").read_text(encoding="utf-8"))
        names = {p.name for p in folder.iterdir()}
    except (OSError, ValueError):
        return False
    files = listed.get("files") if isinstance(listed, dict) and listed.get("schema") == DEMO_SCHEMA else None
    return isinstance(files, list) and names <= {str(f) for f in files}


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


def _pipeline(entry, opts: DemoOptions, work: Path, events: Events):
    from ulsam_deploy import bundled
    from ulsam_deploy.sidecars import BUNDLED_PREFIX
    from ulsam_deploy.data.images import Preprocess
    from ulsam_deploy.steps.export import ExportOptions, export_model

    steps: list[Step] = []

    def record(step: Step) -> Step:
        steps.append(step)
        events.emit("demo_step", name=step.name, status=step.status, detail=step.detail)
        return step

    t0 = time.perf_counter()
    with events.stage(f"Loading the bundled model '{entry.name}'"):
        model, info = bundled.load(entry.name)
    record(Step("load", "ok", f"{entry.title} ({entry.card.name})", time.perf_counter() - t0))

    pre = Preprocess.from_dict(info.meta["preprocess"])
    t0 = time.perf_counter()
    with events.stage("Preparing real images"):
        if entry.name == "imagenet":
            images = _imagenet_images(work, pre)
        else:
            images = _fashion_images(work, pre, opts)
    record(Step("images", "ok", images.description, time.perf_counter() - t0, str(images.folder)))

    onnx_path = work / "model.onnx"
    t0 = time.perf_counter()
    export = export_model(model, info, onnx_path, ExportOptions(force=True), events, source=f"{BUNDLED_PREFIX}{entry.name}")
    record(Step("export", "ok", f"{export.sidecar.graph['nodes']} nodes (onnxsim-simplified), ONNX Runtime vs PyTorch "
                f"max abs diff {export.verdict.max_abs:.2g}", time.perf_counter() - t0, str(onnx_path),
                {"verdict": export.verdict.to_dict()}))

    variants: list[Path] = [onnx_path]
    variants += _fuse_step(onnx_path, work, events, record)
    variants += _precision_steps(onnx_path, work, images, events, record)
    engines = _tensorrt_step(variants, work, opts.batches, events, record)
    report = _bench_step(model, info, entry, variants, engines, images, opts, work, record, events)
    return steps, report


def _fuse_step(onnx_path: Path, work: Path, events: Events, record) -> list[Path]:
    from ulsam_deploy.steps.fuse import fuse_file

    t0 = time.perf_counter()
    try:
        result = fuse_file(onnx_path, work / "model.fused.onnx", force=True, events=events)
    except BackendUnavailable as exc:
        record(Step("fuse", "skipped", str(exc), time.perf_counter() - t0))
        return []
    except UserError as exc:
        record(Step("fuse", "failed", str(exc), time.perf_counter() - t0))
        return []
    if result.report["fused"] == 0:
        record(Step("fuse", "skipped", "no ULSAM block matched the fusion pattern", time.perf_counter() - t0))
        result.path.unlink(missing_ok=True)
        result.sidecar_path.unlink(missing_ok=True)
        return []
    record(Step("fuse", "ok", f"{result.report['fused']} ULSAM block(s) -> SubspaceAttention, fused vs unfused max abs "
                f"diff {result.verdict.max_abs:.2g}", time.perf_counter() - t0, str(result.path)))
    return [result.path]


PRECISION_STEPS = (("fp16", "fp16", "tensorrt", "model.fp16.onnx"), ("int8", "int8", "tensorrt", "model.int8-tensorrt.onnx"),
                   ("int8-ort", "int8", "ort", "model.int8-ort.onnx"))


def _precision_steps(onnx_path: Path, work: Path, images: RealImages, events: Events, record) -> list[Path]:
    from ulsam_deploy.steps.convert import ConvertOptions, convert_file

    written = []
    for name, precision, target, file in PRECISION_STEPS:
        if precision == "int8" and images.calib is None:
            record(Step(name, "skipped", images.calib_reason))
            continue
        t0 = time.perf_counter()
        try:
            result = convert_file(onnx_path, work / file, ConvertOptions(precision=precision, target=target, force=True),
                                  calib_data=images.calib if precision == "int8" else None, verify_data=images.verify,
                                  events=events)
        except BackendUnavailable as exc:
            record(Step(name, "skipped", str(exc), time.perf_counter() - t0))
            continue
        except UserError as exc:  # ParityError included: the step refused its own output
            record(Step(name, "failed", str(exc), time.perf_counter() - t0))
            continue
        v = result.verdict
        main = v.main
        detail = f"top-1 agreement {main.comparison.top1_agreement:.2%}"
        if main.accuracy_candidate is not None:
            detail += f", top-1 {main.accuracy_reference.top1:.2%} -> {main.accuracy_candidate.top1:.2%}"
        how = result.report["verification"]["candidate"]
        record(Step(name, "ok", f"verified on {len(images.verify)} real images ({how}): {detail}",
                    time.perf_counter() - t0, str(result.path), {"verdict": _jsonable(v.to_dict())}))
        written.append(result.path)
    return written


def _tensorrt_step(variants: list[Path], work: Path, batches: tuple[int, ...], events: Events, record) -> list[Path]:
    """One engine per ONNX artifact made for TensorRT (fp32, fused, fp16, int8: the precision lives in the ONNX)."""
    from ulsam_deploy.backends.trt.runtime import install_hint, tensorrt_available

    if not tensorrt_available():
        record(Step("tensorrt", "skipped", f"TensorRT is not installed here ({install_hint()})"))
        return []
    from ulsam_deploy.backends.trt.settings import BatchProfile, BuildOptions
    from ulsam_deploy.steps.build_trt import build_engine

    top = max(batches)
    engines = []
    for onnx_path in variants:
        if "int8-ort" in onnx_path.name:
            continue  # made for ONNX Runtime's CPU kernels, not for TensorRT
        name = f"tensorrt:{onnx_path.stem.replace('model', '').strip('.') or 'fp32'}"
        engine = onnx_path.with_suffix(".engine")
        options = BuildOptions(batch=BatchProfile(1, top, top), plugin="auto" if ".fused" in onnx_path.name else None,
                               force=True)
        t0 = time.perf_counter()
        try:
            result = build_engine(onnx_path, engine, options, events=events)
        except BackendUnavailable as exc:  # no GPU, no plugin library...
            record(Step(name, "skipped", str(exc), time.perf_counter() - t0))
            if not engines and "GPU" in str(exc):
                break  # the same reason for every other engine
            continue
        except UserError as exc:
            record(Step(name, "failed", str(exc), time.perf_counter() - t0))
            continue
        record(Step(name, "ok", f"engine from {onnx_path.name} in {result.seconds['build']:.0f} s",
                    time.perf_counter() - t0, str(result.path)))
        engines.append(result.path)
    return engines


def _bench_step(model, info, entry, variants, engines, images: RealImages, opts: DemoOptions, work: Path,
                record, events: Events):
    from ulsam_deploy.bench.latency import TimingConfig
    from ulsam_deploy.bench.report import write_reports
    from ulsam_deploy.bench.options import BenchOptions
    from ulsam_deploy.bench.models import ModelSpec
    from ulsam_deploy.bench.run import run_bench

    timing = TimingConfig(warmup_s=0.2, min_iters=5, min_seconds=0.5) if opts.quick else \
        TimingConfig(warmup_s=0.3, min_iters=10, min_seconds=1.5)
    spec = ModelSpec(name=entry.name, config=info.config, module=model, onnx=list(variants), engines=list(engines),
                     preprocess=images.verify.preprocess, class_names=info.class_names)
    options = BenchOptions(backends=("torch", "ort", "trt"), batches=opts.batches, timing=timing, threads=opts.threads,
                           inputs=str(images.folder), num_inputs=len(images.verify))
    t0 = time.perf_counter()
    report = run_bench([spec], options, events=events)
    write_reports(report, json_path=work / "bench.json", csv_path=work / "bench.csv", markdown_path=work / "bench.md",
                  chart_path=work / "bench.png", force=True)
    failures = report.parity_failures
    accs = [f"{r.file} on {r.backend} {r.accuracy.top1:.2%}" for r in report.parity if r.accuracy is not None]
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
    from ulsam_deploy.artifacts import now, write_bytes, write_json

    bench = result.bench.to_dict() if result.bench is not None else None
    summary = {
        "schema": "ulsam-deploy-demo/1",
        "created": now(),
        "passed": result.passed,
        "seconds": round(result.seconds, 2),
        "model": {"name": entry.name, "title": entry.title, "card": entry.card.name, "config": entry["config"]},
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items() if k != "out"},
        "steps": [{**asdict(s), "artifact": Path(s.artifact).name if s.artifact else None, "seconds": round(s.seconds, 3)}
                  for s in result.steps],
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "bench": bench,
        "files": sorted({p.name for p in work.iterdir()} | set(REPORT_FILES)),  # what --force may replace later
    }
    write_json(summary, work / "demo.json")
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
    write_bytes(text.encode(), work / "README.md")


def _artifact_table(report) -> str:
    """One row per artifact x backend x batch, named by its file, precision and int8 target (from bench's rows)."""
    from ulsam_deploy.bench.report import describe_precision, fmt_pct, footnotes, rows

    notes_index, _ = footnotes(report)
    lines = ["| model | artifact | backend | precision | batch | top-1 | top-1 agreement | max abs diff | median ms | "
             "img/s | parity |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows(report):
        is_ref = row["reference"] == "reference"
        key = (row["model"], row["backend"], row["precision"], row["artifact"])
        if row["parity_passed"] is None:
            verdict = "-"
        elif is_ref:
            verdict = "reference"
        else:
            verdict = "PASS" if row["parity_passed"] else f"FAIL [{notes_index[key]}]"
        median = "" if row["latency_median_ms"] is None else f"{row['latency_median_ms']:.3g}"
        if row["latency_meaningful"] is False:
            median += "*"
        agreement = "reference" if is_ref else fmt_pct(row["top1_agreement"])
        diff = "" if row["max_abs_diff"] is None else f"{row['max_abs_diff']:.2g}"
        rate = "" if row["images_per_s"] is None else f"{row['images_per_s']:.0f}"
        lines.append(f"| {row['model']} | {row['file']} | {row['backend']} | {describe_precision(row)} | "
                     f"{row['batch'] or '-'} | {fmt_pct(row['top1_accuracy'])} | {agreement} | {diff} | {median} | "
                     f"{rate} | {verdict} |")
    lines += ["", "\\* latency of a simulation (int8 Q/DQ for TensorRT, run as exact fake quantization) or of the "
                  "NumPy reference op: not deployment speed, and no speed comparison uses it."]
    return "\n".join(lines)


__all__ = ["DemoOptions", "DemoResult", "Step", "run_demo"]
