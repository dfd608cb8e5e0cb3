#!/usr/bin/env python3
"""int8 for each runtime: accuracy of the bundled model and ONNX Runtime CPU speed of ImageNet MV2.

    .venv/bin/python scripts/int8_benchmarks.py accuracy --json acc.json     # bundled Fashion-MNIST, 10,000 test images
    .venv/bin/python scripts/int8_benchmarks.py speed --json speed.json      # ImageNet MV2 (+ ULSAM 17:1) at 224

``accuracy`` exports the bundled Fashion-MNIST model and converts it with ``convert`` itself, for both int8
targets, calibrated on 512 training images and verified on all 10,000 test images; every figure is the
one judge's (the same numbers ``convert`` prints). It also runs the TensorRT-target model in a default ONNX
Runtime session, the way it was wrongly judged before (ORT's own int8 kernels). Run it natively and under
``qemu-x86_64 -cpu Haswell`` to see an AVX2-only CPU (ORT's MLAS and this tool both read CPUID there).

``speed`` times fp32 against the ``--target ort`` int8 model on ONNX Runtime CPU, interleaved in one run
(``bench``'s loop), at batch 1 and 32 on 2 threads, for vanilla MV2 and MV2 + ULSAM ``17:1`` (torchvision's
ImageNet weights; calibrated on foolbox's 20 ImageNet photos: enough for speed, not for an accuracy claim).
It also profiles the int8 model (``SessionOptions.enable_profiling``): time per op type, and the op counts of
the graph ONNX Runtime actually runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _machine() -> dict:
    from ulsam_deploy.backends.onnxrt.cpu import int8_capabilities, ort_int8_recipe
    from ulsam_deploy.bench.machine import machine_info, versions

    caps = int8_capabilities()
    return {"machine": machine_info(), "versions": versions(), "int8": caps.to_dict(),
            "ort_recipe": ort_int8_recipe(caps).to_dict()}


def accuracy(args) -> dict:
    from ulsam_deploy import bundled
    from ulsam_deploy.backends.base import infer_in_chunks
    from ulsam_deploy.backends.judge import accuracy as top1
    from ulsam_deploy.backends.onnxrt.runner import OrtRunner
    from ulsam_deploy.data.resources import fashion_mnist_dir
    from ulsam_deploy.data.sources import fashion_mnist_set, preprocess_of
    from ulsam_deploy.sidecars import read_onnx_sidecar
    from ulsam_deploy.steps.convert import ConvertOptions, convert_file
    from ulsam_deploy.steps.export import ExportOptions, export_checkpoint

    out: dict = {"what": "bundled fashion-mnist, calibration 512 train images, verification 10,000 test images",
                 **_machine(), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fp32 = export_checkpoint(bundled.checkpoint_path("fashion-mnist"), tmp / "model.onnx", ExportOptions()).path
        images = fashion_mnist_set(preprocess_of(read_onnx_sidecar(fp32)), "test")
        with OrtRunner(fp32, threads=args.threads) as r:
            ref = infer_in_chunks(r, images.images, 256)[0]
        out["rows"].append({"artifact": "model.onnx", "precision": "fp32", "runner": "default ORT session",
                            "top1": top1(ref, images.labels).top1})
        for target in ("tensorrt", "ort"):
            t0 = time.perf_counter()
            result = convert_file(fp32, tmp / f"model.int8-{target}.onnx",
                                  ConvertOptions(precision="int8", target=target, threads=args.threads,
                                                 tolerances={"int8": {"max_top1_drop": 1.0, "min_top1_agreement": 0.0,
                                                                      "min_cosine": 0.0}}),
                                  calib_data=fashion_mnist_dir(), verify_data=fashion_mnist_dir())
            v = result.verdict
            out["rows"].append({"artifact": result.path.name, "precision": "int8", "target": target,
                                "runner": result.report["verification"]["candidate"],
                                "top1": v.main.accuracy_candidate.top1, "reference_top1": v.main.accuracy_reference.top1,
                                "drop_points": v.accuracy_drop_points(),
                                "top1_agreement": v.main.comparison.top1_agreement,
                                "passes_default_gate": _default_gate(result.path, fp32, images, args.threads),
                                "recipe": result.report.get("recipe"), "seconds": round(time.perf_counter() - t0, 1)})
            if target == "tensorrt":  # how it was judged before: ORT's own int8 kernels in a default session
                with OrtRunner(result.path, optimization="all", threads=args.threads) as r:
                    got = infer_in_chunks(r, images.images, 256)[0]
                out["rows"].append({"artifact": result.path.name, "precision": "int8", "target": target,
                                    "runner": "default ORT session (ORT's int8 kernels; NOT how it is meant to run)",
                                    "top1": top1(got, images.labels).top1,
                                    "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean())})
    return out


def _default_gate(path: Path, fp32: Path, images, threads) -> bool:
    """The verdict with the default int8 tolerances (what 'convert' without overrides says)."""
    import onnx

    from ulsam_deploy.steps.convert import verify

    return verify(onnx.load(str(fp32)), onnx.load(str(path)), images, "int8",
                  {"int8": {"max_top1_drop": 0.01}}, threads=threads)[0].passed


def _ops_of_optimized(path: Path, threads: int) -> dict:
    import onnx
    import onnxruntime as ort

    from ulsam_deploy.onnx_graph import op_counts

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    dump = path.with_name(path.stem + ".ort-optimized.onnx")
    options.optimized_model_filepath = str(dump)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return op_counts(onnx.load(str(dump)))


def _profile(path: Path, batch: int, threads: int, runs: int = 20) -> dict:
    """Share of kernel time per op type (ORT's profiler), over ``runs`` runs at ``batch``."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([batch] + list(inp.shape[1:])).astype(np.float32)
    for _ in range(runs):
        session.run(None, {inp.name: x})
    trace = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for event in trace:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            per_op[event.get("args", {}).get("op_name", "?")] += event.get("dur", 0) / 1000.0
    total = sum(per_op.values()) or 1.0
    return {op: round(ms / total, 4) for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])}


def speed(args) -> dict:
    import torch

    from ulsam_deploy import bundled
    from ulsam_deploy.bench.latency import TimingConfig
    from ulsam_deploy.bench.options import BenchOptions
    from ulsam_deploy.bench.models import ModelSpec
    from ulsam_deploy.bench.run import run_bench
    from ulsam_deploy.data.resources import foolbox_data_dir, mv2_weights_path
    from ulsam_deploy.models import build_model, load_pretrained, save_checkpoint
    from ulsam_deploy.models.checkpoint import load_checkpoint_with_info
    from ulsam_deploy.steps.convert import ConvertOptions, convert_file
    from ulsam_deploy.steps.export import ExportOptions, export_checkpoint

    torch.set_num_threads(args.threads)
    out: dict = {"what": "ONNX Runtime CPU, fp32 vs int8 --target ort, interleaved in one run", **_machine(),
                 "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vanilla = build_model("mv2")
        load_pretrained(vanilla, mv2_weights_path())
        _, info = load_checkpoint_with_info(bundled.checkpoint_path("imagenet"))
        checkpoints = {"mv2": save_checkpoint(vanilla.eval(), tmp / "mv2.pt", class_names=info.class_names,
                                              mean=info.mean, std=info.std, preprocess=info.meta["preprocess"]),
                       "mv2+17:1": bundled.checkpoint_path("imagenet")}
        photos = foolbox_data_dir()
        open_gate = {"int8": {"max_top1_drop": 1.0, "min_top1_agreement": 0.0, "min_cosine": 0.0}}
        specs = []
        for name, ckpt in checkpoints.items():
            fp32 = export_checkpoint(ckpt, tmp / f"{name}.onnx", ExportOptions()).path
            int8 = convert_file(fp32, tmp / f"{name}.int8-ort.onnx",
                                ConvertOptions(precision="int8", target="ort", threads=args.threads, tolerances=open_gate),
                                calib_data=photos, verify_data=None)
            out["models"][name] = {"recipe": int8.report.get("recipe"),
                                   "int8_top1_agreement_on_20_photos": int8.verdict.main.comparison.top1_agreement,
                                   "ort_optimized_ops": {"fp32": _ops_of_optimized(fp32, args.threads),
                                                         "int8": _ops_of_optimized(int8.path, args.threads)},
                                   "profile_int8_batch32": _profile(int8.path, 32, args.threads),
                                   "profile_fp32_batch32": _profile(fp32, 32, args.threads)}
            specs.append(ModelSpec(name=name, onnx=[fp32, int8.path]))
            from ulsam_deploy.bench.models import apply_onnx_sidecar

            apply_onnx_sidecar(specs[-1], fp32)
        timing = TimingConfig(warmup_s=1.0, min_iters=20, min_seconds=args.seconds)
        report = run_bench(specs, BenchOptions(backends=("ort",), reference="ort", batches=(1, 32), threads=args.threads,
                                               timing=timing, parity=False))
        rows = {(r.model, r.precision, r.batch): r.stats.median for r in report.latency}
        out["latency_median_ms"] = {f"{m} {p} b{b}": round(v, 3) for (m, p, b), v in rows.items()}
        out["speedup_int8_over_fp32"] = {f"{m} b{b}": round(rows[(m, "fp32", b)] / rows[(m, "int8", b)], 3)
                                        for (m, p, b) in rows if p == "int8"}
        out["unstable_rows"] = [f"{r.model} {r.precision} b{r.batch} (CV {r.stats.cv:.1%})" for r in report.latency
                                if r.stats.unstable]
        out["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("accuracy", "speed"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="speed: timed seconds per row and batch")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    data = accuracy(args) if args.what == "accuracy" else speed(args)
    text = json.dumps(data, indent=2, default=str)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
