#!/usr/bin/env python3
"""Accuracy of int8 artifacts in a default ONNX Runtime session (ORT's own int8 kernels) on all 10,000
Fashion-MNIST test images, judged by the one judge against the fp32 model in a default session.

It answers what a CPU's SIMD does to each artifact, so run it natively and under
``qemu-x86_64 -cpu Haswell`` (an AVX2 CPU without AVX-512 / VNNI: ONNX Runtime's MLAS reads CPUID there):

    U=.venv/bin/ulsam-deploy; FM=/usr/share/datasets/fashion-mnist; cd DIR
    $U export "$(python -c 'from ulsam_deploy import bundled; print(bundled.checkpoint_path())')" -o model.onnx
    $U convert model.onnx --precision int8 --target tensorrt --calib-data $FM -o model.int8-tensorrt.onnx ...
    $U convert model.onnx --precision int8 --target ort --reduce-range --calib-data $FM -o model.int8-ort-reduce-range.onnx ...
    $U convert model.onnx --precision int8 --target ort --full-range --calib-data $FM -o model.int8-ort-full-range.onnx ...
    python scripts/int8_default_session_accuracy.py DIR native.json
    qemu-x86_64 -cpu Haswell .venv/bin/python scripts/int8_default_session_accuracy.py DIR avx2.json

The TensorRT-target model is run in a default session ON PURPOSE here (optimization "all"): that is how it was
wrongly judged before; ``bench`` and ``convert`` run it as exact Q/DQ.
"""
import json
import sys
import time
from pathlib import Path
from ulsam_deploy.sidecars import read_onnx_sidecar
from ulsam_deploy.backends.base import infer_in_chunks
from ulsam_deploy.backends.judge import judge, tolerances_for
from ulsam_deploy.backends.onnxrt.cpu import int8_capabilities, ort_int8_recipe
from ulsam_deploy.backends.onnxrt.runner import OrtRunner
from ulsam_deploy.data.sources import fashion_mnist_set, preprocess_of

here = Path(sys.argv[1])
limit = int(sys.argv[3]) if len(sys.argv) > 3 else None
images = fashion_mnist_set(preprocess_of(read_onnx_sidecar(here / "model.onnx")), "test", limit)
caps = int8_capabilities()
out = {"cpu": caps.summary(), "recipe_here": ort_int8_recipe(caps).to_dict(), "images": len(images), "rows": {}}


def run(name, optimization=None):
    t0 = time.time()
    with OrtRunner(here / name, threads=2, optimization=optimization) as r:
        return infer_in_chunks(r, images.images, 256)[0], r.mode, time.time() - t0


ref, _, s = run("model.onnx")
out["rows"]["model.onnx"] = {"top1": float((ref.argmax(1) == images.labels).mean()), "seconds": round(s, 1)}
for name, opt in (("model.int8-ort-reduce-range.onnx", None), ("model.int8-ort-full-range.onnx", None),
                  ("model.int8-tensorrt.onnx", "all")):
    got, mode, s = run(name, opt)
    v = judge(ref, got, tolerances_for("int8"), labels=images.labels)
    out["rows"][name] = {"session": "default" if opt is None or opt == "all" else opt, "mode": mode or "ORT int8 kernels on a TensorRT-target model",
                         "top1": v.main.accuracy_candidate.top1, "drop_points": v.accuracy_drop_points(),
                         "agreement": v.main.comparison.top1_agreement, "passes_int8_gate": v.passed, "seconds": round(s, 1)}
    print(name, out["rows"][name], flush=True)
Path(sys.argv[2]).write_text(json.dumps(out, indent=2))
