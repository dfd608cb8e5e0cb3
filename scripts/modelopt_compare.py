#!/usr/bin/env python3
"""Our int8 layout for TensorRT side by side with NVIDIA ModelOpt's, on the same fp32 ONNX and calibration images.

ModelOpt is the field's reference for Q/DQ placement, but it brings torch and CUDA wheels: it is never our
dependency. This script installs it into a throwaway venv (``--no-deps`` plus the CPU torch of our constraints and
the few packages its ONNX quantizer imports), runs ``python -m modelopt.onnx.quantization --quantize_mode int8`` there,
and compares, in this environment: Q/DQ counts, which op types are quantized, how each residual Add is fed, the
structural check of ``passes.int8.tensorrt_fusions`` and top-1 on the verification images with exact Q/DQ (ONNX
Runtime with graph optimizations off, TensorRT's semantics). Not part of CI.

    .venv/bin/python scripts/modelopt_compare.py model.onnx --out docs/results/int8-modelopt.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
MODELOPT = "nvidia-modelopt==0.47.0"
# what modelopt.onnx.quantization imports on a CPU machine (its [onnx] extra minus the GPU runtimes)
MODELOPT_DEPS = ["numpy", "packaging", "tqdm", "PyYAML", "omegaconf", "pulp<4", "pydantic>=2", "regex", "rich",
                 "safetensors", "scipy", "ninja", "nvidia-ml-py", "onnx-graphsurgeon", "onnxconverter-common",
                 "ml_dtypes", "onnxscript", "onnxslim", "polygraphy", "lief", "cppimport", "setuptools>=80",
                 "onnx", "onnxruntime"]


def _run(cmd, **kw):
    print("+", " ".join(map(str, cmd)), file=sys.stderr, flush=True)
    return subprocess.run(list(map(str, cmd)), check=True, **kw)


def modelopt_venv(root: Path) -> Path:
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", venv])
    pip = [venv / "bin" / "python", "-m", "pip", "-q", "--disable-pip-version-check", "install"]
    _run([*pip, "-c", ROOT / "constraints.txt", "torch"])  # CPU torch first: no CUDA wheels
    _run([*pip, *MODELOPT_DEPS])
    _run([*pip, "--no-deps", MODELOPT])
    return venv / "bin" / "python"


def layout(model: onnx.ModelProto) -> dict:
    from ulsam_deploy.passes.int8 import tensorrt_fusions

    producer = {o: n for n in model.graph.node for o in n.output}
    quantized = Counter()
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if any(getattr(producer.get(i), "op_type", None) == "DequantizeLinear" for i in node.input):
            quantized[node.op_type] += 1
    return {"nodes": len(model.graph.node),
            "qdq_pairs": sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear"),
            "quantized_op_types": dict(sorted(quantized.items())),
            "all_op_types": dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
            "tensorrt_fusions": tensorrt_fusions(model)}


def top1(model_path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    from ulsam_deploy.backends.onnxrt.runner import OrtRunner

    with OrtRunner(str(model_path), optimization="none") as runner:  # exact Q/DQ, whoever wrote it
        logits = np.concatenate([runner.infer(images[i:i + 500]) for i in range(0, len(images), 500)])
    return float((logits.argmax(1) == labels).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="fp32 ONNX from 'ulsam-deploy export' (with its sidecar)")
    parser.add_argument("--calib", type=int, default=512, help="calibration images (Fashion-MNIST train split)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the comparison")
    args = parser.parse_args()

    from ulsam_deploy.sidecars import read_onnx_sidecar
    from ulsam_deploy.data.sources import fashion_mnist_set, preprocess_of
    from ulsam_deploy.steps.convert import ConvertOptions, convert_file

    pre = preprocess_of(read_onnx_sidecar(args.model))
    calib = fashion_mnist_set(pre, "train", args.calib)
    test = fashion_mnist_set(pre, "test", None)
    with tempfile.TemporaryDirectory(prefix="ulsam-modelopt-") as tmp:
        tmp = Path(tmp)
        ours = convert_file(args.model, tmp / "ours.onnx", ConvertOptions(precision="int8", calib_limit=args.calib))
        np.save(tmp / "calib.npy", calib.images)
        python = modelopt_venv(tmp)
        started = time.perf_counter()
        _run([python, "-m", "modelopt.onnx.quantization", "--onnx_path", args.model, "--quantize_mode", "int8",
              "--calibration_data", tmp / "calib.npy", "--calibration_eps", "cpu", "--high_precision_dtype", "fp32",
              "--output_path", tmp / "modelopt.onnx"])
        seconds = time.perf_counter() - started
        result = {
            "model": str(args.model), "calibration_images": len(calib), "test_images": len(test),
            "ours": {**layout(onnx.load(str(ours.path))), "top1": top1(ours.path, test.images, test.labels)},
            "modelopt": {**layout(onnx.load(str(tmp / "modelopt.onnx"))),
                         "top1": top1(tmp / "modelopt.onnx", test.images, test.labels), "seconds": round(seconds, 1),
                         "version": MODELOPT},
        }
        result["fp32_top1"] = top1(args.model, test.images, test.labels)
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
