#!/usr/bin/env python3
"""GPU check + benchmark of the fused ULSAM subspace-attention kernel, one command, JSON out.

NEEDS A CUDA GPU. Written and tested (skip path only) on a machine without one: no number in the
docs comes from it until someone runs it on a GPU. Without a GPU it prints "SKIP: ..." and exits 0
(77 with --strict-skip); with --json it still writes {"skipped": reason}.

    python scripts/gpu_kernel_bench.py --json kernel_bench.json [--quick] [--peak-gbs 4800]

What it does, in order (each section lands in the JSON):

1. ``correctness`` - the Triton kernel (JIT on this GPU) against the float64 NumPy oracle for a
   matrix of shapes, fp32 and fp16, plus the unfused eval-mode ULSAM module vs the kernel.
2. ``launcher`` - builds plugins/subspace_attention with CMake (launcher + self-test, no
   TensorRT needed) and runs ``ulsam_sa_selftest`` twice on the shipped images: ``--images=cubin``
   (native cubins, no JIT) and ``--images=ptx`` (forces the driver JIT of the ISA 8.0 PTX); each
   checks every variant against a CPU reference in fp32 and fp16 and reports the loaded image and
   the prepare time. ``--bench`` timings of the launcher come with it.
3. ``bench`` - fused kernel vs the decomposed ONNX ops (``ULSAMExport``: the op sequence the
   unfused ONNX graph holds) for MobileNet ULSAM shapes, batch 1 and 64, fp32 and fp16. Both
   sides are timed as CUDA-graph replays (no Python launch overhead, as inside an engine); eager
   timings are recorded too, and ONNX Runtime's CUDA provider on the exported unfused graph when
   onnxruntime-gpu is installed. Bandwidth = (read x + write y) / fused time, against the peak
   DRAM bandwidth (driver attributes, or --peak-gbs) and a measured device-to-device copy.
4. ``goals`` - >= 60 % of peak DRAM bandwidth at batch 64 (rows moving >= 16 MiB, where launch
   latency is not the limit) and >= 3x faster than the decomposed ops at batch 1.

Exit 1 on any failed check (goals are reported, not enforced).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BW_GOAL_PCT = 60.0
SPEEDUP_GOAL = 3.0
BW_MIN_BYTES = 16 << 20


def peak_dram_gbs() -> float | None:
    """Theoretical DRAM bandwidth of GPU 0 from the driver (2 x memory clock x bus width)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        dev, clk, bus = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        if cuda.cuInit(0) or cuda.cuDeviceGet(ctypes.byref(dev), 0):
            return None
        if cuda.cuDeviceGetAttribute(ctypes.byref(clk), 36, dev):  # MEMORY_CLOCK_RATE, kHz
            return None
        if cuda.cuDeviceGetAttribute(ctypes.byref(bus), 37, dev):  # GLOBAL_MEMORY_BUS_WIDTH, bits
            return None
        return 2.0 * clk.value * 1e3 * bus.value / 8 / 1e9
    except (OSError, AttributeError):
        return None


def driver_version() -> str | None:
    try:
        from ulsam_deploy.backends.trt.cuda import probe_cuda_driver

        return probe_cuda_driver().driver_version
    except Exception:  # noqa: BLE001
        return None


def eager_us(fn, reps: int, warmup: int = 5) -> float:
    """Median per-call time (us), CUDA events around each call (includes launch overhead)."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return statistics.median(times)


def graph_us(fn, reps: int, per_graph: int = 20) -> float:
    """Median time (us) of one call inside a CUDA graph of ``per_graph`` calls (GPU time only)."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(per_graph):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(max(3, reps // per_graph)):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / per_graph)
    return statistics.median(times)


def copy_gbs() -> float:
    """Measured device-to-device copy bandwidth (read + write) with a 1 GiB buffer."""
    import torch

    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    us = eager_us(lambda: dst.copy_(src), reps=10, warmup=2)
    return 2 * src.numel() * 4 / (us * 1e-6) / 1e9


def check_correctness(quick: bool, log) -> dict:
    import numpy as np
    import torch

    from ulsam_deploy.kernels import reference as R
    from ulsam_deploy.kernels.triton_kernel import subspace_attention

    shapes = [(1, 96, 14, 14, 4), (2, 160, 7, 7, 1), (64, 512, 14, 14, 4), (3, 512, 14, 14, 16),
              (2, 16, 1, 1, 8), (1, 8, 17, 33, 2), (2, 64, 112, 112, 4), (4, 24, 9, 7, 8),
              (1, 1024, 7, 7, 2), (64, 160, 7, 7, 8), (1, 128, 32, 32, 2)]
    if quick:
        shapes = shapes[:4] + shapes[-1:]
    rows, failures = [], 0
    for n, c, h, w, g in shapes:
        for dtype in (torch.float32, torch.float16):
            for relu in ((True, True), (False, False)):
                p = R.random_params(c, g, seed=c + h, relu_dw=relu[0], relu_pw=relu[1], logit_scale=3.0)
                x = torch.randn(n, c, h, w, device="cuda").to(dtype)
                y = subspace_attention(x, **p.as_kwargs())
                torch.cuda.synchronize()
                xf = x.float().cpu().numpy().astype(np.float64)
                ref = R.subspace_attention_numpy(xf, **p.as_kwargs())
                yf = y.float().cpu().numpy()
                tol = (2.0 ** -11 * np.abs(ref) * 1.001 + 1e-6 if dtype == torch.float16
                       else 4 * 1.2e-7 * np.abs(ref) + 1e-5 * np.abs(ref - xf).max() + 1e-12)
                ok = bool((np.abs(yf - ref) <= tol).all())
                failures += not ok
                dt = "fp16" if dtype == torch.float16 else "fp32"
                rows.append({"shape": [n, c, h, w, g], "dtype": dt, "relu": list(relu), "ok": ok,
                             "max_abs_err": float(np.abs(yf - ref).max())})
                log(f"{'PASS' if ok else 'FAIL'} triton N={n} C={c} {h}x{w} g={g} {dt} "
                    f"relu={int(relu[0])}{int(relu[1])} max|err|={rows[-1]['max_abs_err']:.3g}")
    module = {"ok": None}
    try:  # the unfused eval-mode module against the fused kernel on its folded constants
        from ulsam_deploy.models.ulsam import ULSAM, fold_ulsam

        mod = ULSAM(96, groups=4).cuda().eval()
        with torch.no_grad():
            for m in mod.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 1.5)
            x = torch.randn(2, 96, 14, 14, device="cuda")
            want = mod(x)
        f = fold_ulsam(mod)
        got = subspace_attention(x, f.groups, f.dw_scale, f.dw_shift, f.pw_weight, f.pw_bias,
                                 f.relu_dw, f.relu_pw)
        err = (got - want).abs().max().item()
        module = {"ok": err < 1e-4, "max_abs_err": err}
        failures += not module["ok"]
        log(f"{'PASS' if module['ok'] else 'FAIL'} unfused ULSAM module vs fused kernel max|err|={err:.3g}")
    except ImportError as exc:
        module = {"ok": None, "skipped": str(exc)}
    return {"rows": rows, "module_vs_fused": module, "failures": failures}


_IMAGE_RE = re.compile(r"IMAGE (fp\d+) variant=(\d+) (\w+) sm_(\d+)")
_PREPARE_RE = re.compile(r"PREPARE (fp\d+) ([\d.]+) ms")
_BENCH_RE = re.compile(r"BENCH N=(\d+) C=(\d+) (\d+)x(\d+) g=(\d+) (fp\d+) ([\d.]+) us ([\d.]+) GB/s")


def parse_selftest(stdout: str) -> dict:
    """The launcher self-test's lines as data (images loaded, prepare times, checks, timings)."""
    return {
        "images": [{"dtype": m[0], "variant": int(m[1]), "kind": m[2], "arch": int(m[3])}
                   for m in _IMAGE_RE.findall(stdout)],
        "prepare_ms": {m[0]: float(m[1]) for m in _PREPARE_RE.findall(stdout)},
        "checks_passed": sum(1 for line in stdout.splitlines() if line.startswith("PASS N=")),
        "checks_failed": sum(1 for line in stdout.splitlines() if line.startswith("FAIL")),
        "bench": [{"shape": [int(m[0]), int(m[1]), int(m[2]), int(m[3]), int(m[4])], "dtype": m[5],
                   "us": float(m[6]), "gbs": float(m[7])} for m in _BENCH_RE.findall(stdout)],
    }


def check_launcher(bench: bool, cc: int, log) -> dict:
    from ulsam_deploy.backends.trt.plugin_build import build_plugin, run_selftest
    from ulsam_deploy.errors import UserError
    from ulsam_deploy.kernels import aot

    try:
        res = build_plugin(ROOT / "build" / "gpu_bench_launcher", use_tensorrt=False)
    except UserError as exc:
        log(f"FAIL launcher build: {exc}")
        return {"error": f"build failed: {exc}", "failures": 1}
    out: dict = {"failures": 0}
    for images in ("cubin", "ptx"):
        if images == "cubin" and aot.find_cubin(aot.load_manifest(), cc, "fp32", 0) is None:
            out[images] = {"skipped": f"no shipped cubin runs on sm_{cc} (PTX JIT is the path here)"}
            continue
        run = run_selftest(res, images=images, bench=bench and images == "cubin")
        for line in run.stdout.splitlines():
            log(f"launcher[{images}]: {line}")
        info = parse_selftest(run.stdout)
        info["returncode"] = run.returncode
        info["all_images_are"] = all(i["kind"] == images for i in info["images"]) and bool(info["images"])
        ok = run.returncode == 0 and info["all_images_are"]
        if run.returncode == 77:
            log(f"FAIL launcher self-test ({images}) skipped although a GPU is present")
        out[images] = info
        out["failures"] += not ok
    return out


def benchmark(quick: bool, peak: float | None, log) -> list[dict]:
    import torch

    from ulsam_deploy.kernels import reference as R
    from ulsam_deploy.kernels.plan import workspace_bytes
    from ulsam_deploy.kernels.triton_kernel import subspace_attention
    from ulsam_deploy.models.ulsam import FoldedULSAM, ULSAMExport

    ort = _ort_cuda()
    reps = 40 if quick else 200
    rows = []
    for n in (1, 64):
        for c, h, g in ((96, 14, 4), (160, 7, 4), (512, 14, 4), (512, 14, 1)):
            for dtype in (torch.float32, torch.float16):
                dt = "fp16" if dtype == torch.float16 else "fp32"
                p = R.random_params(c, g, seed=1)
                x = torch.randn(n, c, h, h, device="cuda").to(dtype)
                consts = [torch.as_tensor(v, device="cuda") for v in (p.dw_scale, p.dw_shift, p.pw_weight, p.pw_bias)]
                ws = torch.empty(workspace_bytes(n, c, h, h, g, dt) // 4, device="cuda")
                y = torch.empty_like(x)
                def fused(x=x, g=g, consts=consts, y=y, ws=ws):
                    return subspace_attention(x, g, *consts, True, True, out=y, workspace=ws)

                folded = FoldedULSAM(g, p.dw_scale, p.dw_shift, p.pw_weight, p.pw_bias, True, True)
                dec = ULSAMExport(folded).cuda().eval().to(dtype)

                def decomposed(dec=dec, x=x):
                    with torch.no_grad():
                        return dec(x)

                row = {"shape": [n, c, h, h, g], "dtype": dt,
                       "fused_us": graph_us(fused, reps), "decomposed_us": graph_us(decomposed, reps),
                       "fused_eager_us": eager_us(fused, reps), "decomposed_eager_us": eager_us(decomposed, reps),
                       "ort_cuda_decomposed_us": ort(dec, x, reps) if ort else None}
                moved = 2 * x.numel() * x.element_size()
                row["bytes_moved"] = moved
                row["fused_gbs"] = moved / (row["fused_us"] * 1e-6) / 1e9
                row["pct_of_peak"] = 100 * row["fused_gbs"] / peak if peak else None
                row["speedup_vs_decomposed"] = row["decomposed_us"] / row["fused_us"]
                rows.append(row)
                pct = f", {row['pct_of_peak']:.0f}% of peak" if peak else ""
                log(f"BENCH N={n} C={c} {h}x{h} g={g} {dt}: fused {row['fused_us']:.1f} us "
                    f"({row['fused_gbs']:.0f} GB/s{pct}), decomposed {row['decomposed_us']:.1f} us "
                    f"-> {row['speedup_vs_decomposed']:.2f}x")
    return rows


def _ort_cuda():
    """A timer for the exported decomposed graph on ONNX Runtime's CUDA provider, or None."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None

    def run(module, x, reps):
        import io

        import torch

        buf = io.BytesIO()
        try:
            torch.onnx.export(module, (x,), buf, input_names=["x"], output_names=["y"], opset_version=17,
                              dynamo=False)
            sess = ort.InferenceSession(buf.getvalue(), providers=["CUDAExecutionProvider"])
            feed = {"x": x.cpu().numpy()}
            io_binding = sess.io_binding()
            io_binding.bind_input("x", "cuda", 0, feed["x"].dtype, list(x.shape), x.data_ptr())
            io_binding.bind_output("y", "cuda")
            for _ in range(5):
                sess.run_with_iobinding(io_binding)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                sess.run_with_iobinding(io_binding)
                times.append((time.perf_counter() - t0) * 1e6)
            return statistics.median(times)
        except Exception:  # noqa: BLE001 - an optional comparison never fails the run
            return None

    return run


def goals(rows: list[dict]) -> dict:
    bw_rows = [r for r in rows if r["shape"][0] == 64 and r["bytes_moved"] >= BW_MIN_BYTES and r["pct_of_peak"]]
    sp_rows = [r for r in rows if r["shape"][0] == 1]
    return {
        f"bandwidth_batch64_pct_of_peak>={BW_GOAL_PCT:.0f}": {
            "rows": [{"shape": r["shape"], "dtype": r["dtype"], "pct": r["pct_of_peak"]} for r in bw_rows],
            "met": bool(bw_rows) and all(r["pct_of_peak"] >= BW_GOAL_PCT for r in bw_rows),
            "note": f"batch-64 rows moving >= {BW_MIN_BYTES >> 20} MiB (smaller ones are launch-latency bound)"},
        f"speedup_batch1_vs_decomposed>={SPEEDUP_GOAL:.0f}x": {
            "rows": [{"shape": r["shape"], "dtype": r["dtype"], "speedup": r["speedup_vs_decomposed"]}
                     for r in sp_rows],
            "met": bool(sp_rows) and all(r["speedup_vs_decomposed"] >= SPEEDUP_GOAL for r in sp_rows),
            "note": "both sides as CUDA-graph replays; decomposed = ULSAMExport (the unfused ONNX op sequence)"},
    }


def markdown(result: dict) -> list[str]:
    dev = result["device"]
    lines = [f"\n### {dev['name']} (sm_{dev['cc']}, {dev['sms']} SMs, driver CUDA {dev['driver']}, "
             f"peak DRAM {dev['peak_dram_gbs'] or 0:.0f} GB/s, copy {dev['copy_gbs']:.0f} GB/s)\n",
             "| shape (N, C, HxW, g) | dtype | fused us | decomposed us | speed-up | fused GB/s | % of peak |",
             "|---|---|---|---|---|---|---|"]
    for r in result["bench"]:
        n, c, h, w, g = r["shape"]
        pct = f"{r['pct_of_peak']:.0f}%" if r["pct_of_peak"] else "n/a"
        lines.append(f"| {n}, {c}, {h}x{w}, {g} | {r['dtype']} | {r['fused_us']:.1f} | {r['decomposed_us']:.1f} | "
                     f"{r['speedup_vs_decomposed']:.2f}x | {r['fused_gbs']:.0f} | {pct} |")
    return lines


def profile_case(log) -> int:
    """Launch the fused kernel once on each goal shape, for a profiler to capture (four launches in all; Triton's
    compilation happens on the host before each first launch)."""
    import torch

    from ulsam_deploy.kernels import reference as R
    from ulsam_deploy.kernels.triton_kernel import subspace_attention

    for n in (64, 1):
        for dtype in (torch.float32, torch.float16):
            p = R.random_params(512, 4, seed=1)
            x = torch.randn(n, 512, 14, 14, device="cuda").to(dtype)
            subspace_attention(x, **p.as_kwargs())
            torch.cuda.synchronize()
            log(f"profiled N={n} C=512 14x14 g=4 {dtype}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    ap.add_argument("--json", help="write the results to this JSON file")
    ap.add_argument("--out", help="append markdown table rows to this file")
    ap.add_argument("--skip-launcher", action="store_true", help="do not build/run the C++ launcher")
    ap.add_argument("--skip-bench", action="store_true", help="correctness checks only")
    ap.add_argument("--peak-gbs", type=float, help="override the peak DRAM bandwidth (GB/s)")
    ap.add_argument("--strict-skip", action="store_true", help="exit 77 (not 0) when no GPU")
    ap.add_argument("--profile-case", action="store_true",
                    help="only launch the kernel once on each goal shape (512 ch 14x14 g4 at batch 64 and 1, fp32 "
                         "and fp16): what a profiler (ncu) is pointed at")
    args = ap.parse_args(argv)

    def write_json(data):
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(data, indent=1) + "\n")

    try:
        import torch
    except ImportError:
        print("SKIP: torch is not installed")
        write_json({"skipped": "torch is not installed"})
        return 77 if args.strict_skip else 0
    if not torch.cuda.is_available():
        print("SKIP: no CUDA GPU visible (this script only runs on a GPU machine)")
        write_json({"skipped": "no CUDA GPU visible"})
        return 77 if args.strict_skip else 0
    log = lambda s: print(s, flush=True)  # noqa: E731
    if args.profile_case:
        return profile_case(log)
    t0 = time.time()
    props = torch.cuda.get_device_properties(0)
    peak = args.peak_gbs or peak_dram_gbs()
    import triton

    result = {
        "device": {"name": props.name, "cc": props.major * 10 + props.minor, "sms": props.multi_processor_count,
                   "l2_bytes": getattr(props, "L2_cache_size", None), "driver": driver_version(),
                   "peak_dram_gbs": peak, "peak_source": "--peak-gbs" if args.peak_gbs else "driver attributes",
                   "copy_gbs": copy_gbs()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__},
        "quick": args.quick,
    }
    failures = 0
    result["correctness"] = check_correctness(args.quick, log)
    failures += result["correctness"]["failures"]
    if not args.skip_launcher:
        result["launcher"] = check_launcher(bench=not args.skip_bench, cc=result["device"]["cc"], log=log)
        failures += result["launcher"]["failures"]
    if not args.skip_bench:
        result["bench"] = benchmark(args.quick, peak, log)
        result["goals"] = goals(result["bench"])
        for name, goal in result["goals"].items():
            log(f"GOAL {name}: {'met' if goal['met'] else 'NOT met'}")
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as fh:
                fh.write("\n".join(markdown(result)) + "\n")
    result["failures"] = failures
    result["seconds"] = time.time() - t0
    write_json(result)
    log(f"{'FAIL' if failures else 'PASS'}: {failures} failed check(s) in {result['seconds']:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
