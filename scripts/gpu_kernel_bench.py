#!/usr/bin/env python3
"""GPU check + benchmark of the fused ULSAM subspace-attention kernel.

NEEDS A CUDA GPU. It has NOT been run on the machine this was written on (no GPU, no driver
there); without a GPU it prints "SKIP: ..." and exits 0 (exit 77 with --strict-skip).

What it does, in order:

1. correctness: the Triton kernel (JIT on the GPU) against the float64 NumPy oracle for a matrix
   of shapes (g in {1,4,8,16}, 1x1 .. 112x112, fp32/fp16, batch 1..64), plus the unfused eval-mode
   ULSAM module (ulsam_deploy.models) against the fused kernel on its folded constants;
2. the C++ launcher: builds plugins/subspace_attention with CMake (launcher + self-test, no
   TensorRT needed) and runs ``ulsam_sa_selftest`` (embedded AOT PTX, JIT by the driver) and
   ``ulsam_sa_selftest --bench``;
3. timing: fused Triton kernel vs the decomposed PyTorch ops (the folded reference, one op per
   step, and the unfused per-group module) for C=96@14x14, C=160@7x7, C=512@14x14, groups=4
   (and 1), batch 1 and 64, fp32 and fp16; achieved bandwidth = (read x + write y) / time vs the
   device's peak DRAM bandwidth (from the driver's memory clock and bus width, or --peak-gbs).

Writes markdown table rows to stdout (and appends them to --out FILE). Exit 1 on any failed
check. Usage::

    .venv/bin/python scripts/gpu_kernel_bench.py [--quick] [--out reports/kernel_bench.md]
        [--skip-launcher] [--peak-gbs 204.8]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


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


def cuda_time_us(fn, reps: int, warmup: int = 5) -> float:
    """Median per-call time (us) over `reps` calls, CUDA events around each call."""
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


def check_correctness(quick: bool, log) -> int:
    import numpy as np
    import torch

    from ulsam_deploy.kernels import reference as R
    from ulsam_deploy.kernels.triton_kernel import subspace_attention

    shapes = [(1, 96, 14, 14, 4), (2, 160, 7, 7, 1), (64, 512, 14, 14, 4), (3, 512, 14, 14, 16),
              (2, 16, 1, 1, 8), (1, 8, 17, 33, 2), (2, 64, 112, 112, 4), (4, 24, 9, 7, 8),
              (1, 1024, 7, 7, 2), (64, 160, 7, 7, 8)]
    if quick:
        shapes = shapes[:4]
    failures = 0
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
                log(f"{'PASS' if ok else 'FAIL'} triton N={n} C={c} {h}x{w} g={g} {str(dtype)[6:]} "
                    f"relu={int(relu[0])}{int(relu[1])} max|err|={np.abs(yf - ref).max():.3g}")
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
        ok = err < 1e-4
        failures += not ok
        log(f"{'PASS' if ok else 'FAIL'} unfused ULSAM module vs fused kernel max|err|={err:.3g}")
    except ImportError as exc:
        log(f"INFO unfused-module check skipped: {exc}")
    return failures


def check_launcher(bench: bool, log) -> int:
    from ulsam_deploy.errors import UserError
    from ulsam_deploy.backends.trt.plugin_build import build_plugin, run_selftest

    try:
        res = build_plugin(ROOT / "build" / "gpu_bench_launcher", use_tensorrt=False)
    except UserError as exc:
        log(f"FAIL launcher build: {exc}")
        return 1
    out = run_selftest(res, bench=bench)
    for line in out.stdout.splitlines():
        log(f"launcher: {line}")
    if out.returncode == 77:
        log("FAIL launcher self-test skipped although a GPU is present")
        return 1
    return 0 if out.returncode == 0 else 1


def benchmark(quick: bool, peak: float | None, log) -> list[str]:
    import torch

    from ulsam_deploy.kernels import reference as R
    from ulsam_deploy.kernels.plan import workspace_bytes
    from ulsam_deploy.kernels.triton_kernel import subspace_attention

    try:
        from ulsam_deploy.models.ulsam import ULSAM
    except ImportError:
        ULSAM = None
    props = torch.cuda.get_device_properties(0)
    rows = [f"\n### {props.name} (sm_{props.major}{props.minor}, {props.multi_processor_count} SMs, "
            f"peak DRAM {peak:.0f} GB/s)\n" if peak else f"\n### {props.name}\n",
            "| shape (N, C, HxW, g) | dtype | fused us | decomposed us | unfused module us | speed-up vs decomposed | fused GB/s | % of peak |",
            "|---|---|---|---|---|---|---|---|"]
    reps = 20 if quick else 100
    for n in (1, 64):
        for c, h, g in ((96, 14, 4), (160, 7, 4), (512, 14, 4), (512, 14, 1)):
            for dtype in (torch.float32, torch.float16):
                p = R.random_params(c, g, seed=1)
                x = torch.randn(n, c, h, h, device="cuda").to(dtype)
                consts = [torch.as_tensor(v, device="cuda") for v in (p.dw_scale, p.dw_shift, p.pw_weight, p.pw_bias)]
                dt = "fp16" if dtype == torch.float16 else "fp32"
                ws = torch.empty(workspace_bytes(n, c, h, h, g, dt) // 4, device="cuda")
                fused = lambda: subspace_attention(x, g, *consts, True, True, workspace=ws)  # noqa: E731
                decomposed = lambda: R.subspace_attention_torch(x, g, *consts, True, True)  # noqa: E731
                t_f = cuda_time_us(fused, reps)
                t_d = cuda_time_us(decomposed, reps)
                t_m = float("nan")
                if ULSAM is not None:
                    mod = ULSAM(c, groups=g).cuda().eval().to(dtype)
                    with torch.no_grad():
                        t_m = cuda_time_us(lambda: mod(x), reps)  # noqa: B023
                gbs = 2 * x.numel() * x.element_size() / (t_f * 1e-6) / 1e9
                pct = f"{100 * gbs / peak:.0f}%" if peak else "n/a"
                rows.append(f"| {n}, {c}, {h}x{h}, {g} | {str(dtype)[6:]} | {t_f:.1f} | {t_d:.1f} | "
                            f"{t_m:.1f} | {t_d / t_f:.2f}x | {gbs:.0f} | {pct} |")
                log(rows[-1])
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    ap.add_argument("--out", help="append the markdown rows to this file")
    ap.add_argument("--skip-launcher", action="store_true", help="do not build/run the C++ launcher")
    ap.add_argument("--skip-bench", action="store_true", help="correctness checks only")
    ap.add_argument("--peak-gbs", type=float, help="override the peak DRAM bandwidth (GB/s)")
    ap.add_argument("--strict-skip", action="store_true", help="exit 77 (not 0) when no GPU")
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("SKIP: torch is not installed")
        return 77 if args.strict_skip else 0
    if not torch.cuda.is_available():
        print("SKIP: no CUDA GPU visible (this script only runs on a GPU machine)")
        return 77 if args.strict_skip else 0
    log = lambda s: print(s, flush=True)  # noqa: E731
    t0 = time.time()
    failures = check_correctness(args.quick, log)
    if not args.skip_launcher:
        failures += check_launcher(bench=not args.skip_bench, log=log)
    rows = []
    if not args.skip_bench:
        rows = benchmark(args.quick, args.peak_gbs or peak_dram_gbs(), log)
    if args.out and rows:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as fh:
            fh.write("\n".join(rows) + "\n")
    log(f"{'FAIL' if failures else 'PASS'}: {failures} failed check(s) in {time.time() - t0:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
