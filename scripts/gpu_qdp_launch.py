#!/usr/bin/env python3
"""The TensorRT Python-plugin (QDP) route's exact launch on a real GPU, without TensorRT (issue 19, part 3).

    python scripts/gpu_qdp_launch.py [--json qdp_launch.json]     # on a GPU
    python scripts/gpu_qdp_launch.py --dry-run                     # anywhere: the planned launches, checked

What a TensorRT engine built with ``build-trt --plugin python`` does with our AOT plugin, done by hand:
``kernels/qdp_plugin.select_qdp_kernel`` picks the shipped PTX (ISA 8.0, Triton's two hidden scratch parameters
stripped), ``cuModuleLoadData`` JIT-compiles it for this GPU, ``cuModuleGetFunction`` finds the entry, and
``cuLaunchKernel`` runs it with TensorRT's AOT argument layout: the five inputs (x, dw_scale, dw_shift, pw_weight,
pw_bias), the nine int32 scalars of ``qdp_extra_args``, the two outputs (y, ws), on ``grid = N * groups`` blocks of
the kernel's threads with its shared memory (``qdp_launch_config``). Each output is compared with the float64
oracle (kernels/reference.py); canaries after y and ws must survive. Both a known width (its tile family) and an
unknown one (the 16-column family a dynamic-width engine gets) run, fp32 and fp16.

``--dry-run`` (no GPU) checks what can be checked without one: every case's stripped PTX declares exactly the 16
parameters the launch passes, in that order of types. Exit 0 pass, 1 fail, 77 no GPU (without --dry-run).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# (N, C, H, W, groups)
CASES = ((1, 96, 14, 14, 4), (8, 160, 7, 7, 4), (2, 512, 14, 14, 16), (1, 1024, 7, 7, 8), (3, 24, 13, 11, 4),
         (4, 32, 1, 1, 2), (64, 96, 14, 14, 4))
CANARY = 256  # bytes after y and ws
CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
PARAM_TYPES = ["u64"] * 5 + ["u32"] * 9 + ["u64"] * 2  # what the launch passes: inputs, int32 scalars, outputs


def ptx_param_types(ptx: str) -> list[str]:
    """The ``.param`` types of the PTX's ``.entry`` (``u64`` / ``u32`` / ``b32`` ... as written)."""
    m = re.search(r"\.entry\s+\w+\s*\((.*?)\)", ptx, re.S)
    return [p.split()[1].lstrip(".") for p in (m.group(1).split(",") if m else []) if p.strip()]


def plan(n, c, h, w, g, dtype, width_known: bool, arch: int | None):
    from ulsam_deploy.kernels.qdp_plugin import qdp_extra_args, qdp_launch_config, select_qdp_kernel

    kernel = select_qdp_kernel(dtype, c, g, w if width_known else None, arch)
    launch = qdp_launch_config(n, c, h, w, g)
    scalars = qdp_extra_args(c // g, h, w, g, launch["items"], True, True)
    return kernel, launch, scalars


class Launcher:
    """The launch on top of ``backends/trt/cuda.py`` (its driver, primary context, pinned memory, stream, errors):
    only the module and launch calls are added here."""

    def __init__(self):
        from ulsam_deploy.backends.trt.cuda import open_cuda_memory

        self.memory = open_cuda_memory(0)
        gpu = self.memory.driver.gpus()[0]
        self.name, self.cc = gpu.name, int(gpu.sm.removeprefix("sm_"))
        lib, ptr = self.memory.driver.lib, ctypes.POINTER
        for fn, args in (("cuModuleLoadData", [ptr(ctypes.c_void_p), ctypes.c_char_p]),
                         ("cuModuleGetFunction", [ptr(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_char_p]),
                         ("cuFuncSetAttribute", [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]),
                         ("cuModuleUnload", [ctypes.c_void_p]),
                         ("cuLaunchKernel", [ctypes.c_void_p] + [ctypes.c_uint] * 7
                          + [ctypes.c_void_p, ptr(ctypes.c_void_p), ctypes.c_void_p])):
            getattr(lib, fn).restype, getattr(lib, fn).argtypes = ctypes.c_int, args

    def upload(self, array: np.ndarray):
        """A device copy of ``array`` (through pinned memory, on the stream)."""
        host = self.memory.host_empty(array.shape, array.dtype)
        np.copyto(host, array)
        dev = self.memory.device_empty(array.shape, array.dtype)
        self.memory.h2d(dev, host)
        self.memory.synchronize()
        return dev

    def download(self, dev) -> bytes:
        host = self.memory.host_empty((dev.nbytes,), np.uint8)
        self.memory.d2h(host, dev)
        self.memory.synchronize()
        return host.tobytes()

    def function(self, ptx: str, entry: str, shared: int):
        call = self.memory.driver.call
        module, func = ctypes.c_void_p(), ctypes.c_void_p()
        t0 = time.perf_counter()
        call("cuModuleLoadData", ctypes.byref(module), ptx.encode() + b"\0")  # the driver JIT-compiles the PTX
        jit_ms = (time.perf_counter() - t0) * 1e3
        call("cuModuleGetFunction", ctypes.byref(func), module, entry.encode())
        if shared > 48 * 1024:
            call("cuFuncSetAttribute", func, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, shared)
        return module, func, jit_ms

    def launch(self, func, grid: int, block: int, shared: int, args: list) -> None:
        holders = [ctypes.c_uint64(v) if kind == "u64" else ctypes.c_int32(v) for kind, v in args]
        params = (ctypes.c_void_p * len(holders))(*[ctypes.cast(ctypes.byref(h), ctypes.c_void_p) for h in holders])
        self.memory.driver.call("cuLaunchKernel", func, grid, 1, 1, block, 1, 1, shared, self.memory.stream, params,
                                None)
        self.memory.synchronize()


def run_case(launcher: Launcher, case, dtype: str, width_known: bool) -> dict:
    from ulsam_deploy.kernels import reference as R

    n, c, h, w, g = case
    kernel, launch, scalars = plan(n, c, h, w, g, dtype, width_known, launcher.cc)
    np_dtype = np.float16 if dtype == "fp16" else np.float32
    rng = np.random.default_rng(n * 1000 + c + h + w + g)
    x = rng.standard_normal((n, c, h, w)).astype(np_dtype)
    p = R.random_params(c, g, seed=c + g, logit_scale=3.0)
    module, func, jit_ms = launcher.function(kernel.ptx, kernel.entry, kernel.shared_bytes)
    inputs = [launcher.upload(x)] + [launcher.upload(np.asarray(v, np.float32))
                                     for v in (p.dw_scale, p.dw_shift, p.pw_weight, p.pw_bias)]
    y_bytes, ws_bytes = x.nbytes, int(np.prod(launch["ws_shape"])) * 4
    y = launcher.upload(np.full(y_bytes + CANARY, 0xA5, np.uint8))
    ws = launcher.upload(np.full(ws_bytes + CANARY, 0xA5, np.uint8))
    args = [("u64", d.ptr) for d in inputs] + [("u32", int(v)) for v in scalars] + [("u64", y.ptr), ("u64", ws.ptr)]
    launcher.launch(func, launch["grid"], kernel.threads, kernel.shared_bytes, args)
    raw, raw_ws = launcher.download(y), launcher.download(ws)
    launcher.memory.driver.call("cuModuleUnload", module)
    got = np.frombuffer(raw[:y_bytes], dtype=np_dtype).reshape(x.shape).astype(np.float64)
    canaries = raw[y_bytes:] == b"\xa5" * CANARY and raw_ws[ws_bytes:] == b"\xa5" * CANARY
    ref = R.subspace_attention_numpy(x.astype(np.float64), g, p.dw_scale, p.dw_shift, p.pw_weight, p.pw_bias,
                                     True, True, out_dtype=np.float64)
    tol = 2e-3 * np.abs(ref) + 2e-3 if dtype == "fp16" else 1e-5 * np.abs(ref) + 1e-5
    err = float(np.abs(got - ref).max())
    ok = bool((np.abs(got - ref) <= tol).all()) and canaries
    return {"shape": list(case), "dtype": dtype, "width_known": width_known, "entry": kernel.entry,
            "ptx_arch": kernel.arch, "variant": kernel.variant, "grid": launch["grid"], "threads": kernel.threads,
            "shared_bytes": kernel.shared_bytes, "jit_ms": jit_ms, "max_abs_err": err, "canaries": canaries,
            "ok": ok}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the results to this JSON file")
    ap.add_argument("--dry-run", action="store_true", help="no GPU: check the planned launches against the PTX")
    args = ap.parse_args(argv)
    rows, failures = [], 0
    if args.dry_run:
        for case in CASES:
            for dtype in ("fp32", "fp16"):
                for known in (True, False):
                    kernel, launch, scalars = plan(*case, dtype, known, None)
                    types = ptx_param_types(kernel.ptx)
                    passed = [t[0] for t in PARAM_TYPES] == [t[0] for t in types] and len(scalars) == 9 and \
                        launch["grid"] == case[0] * case[4]
                    failures += not passed
                    rows.append({"shape": list(case), "dtype": dtype, "width_known": known, "ptx_params": types,
                                 "grid": launch["grid"], "ok": passed})
                    print(f"{'PASS' if passed else 'FAIL'} plan N={case[0]} C={case[1]} {case[2]}x{case[3]} "
                          f"g={case[4]} {dtype} width {'known' if known else 'dynamic'}: {kernel.entry} "
                          f"({len(types)} params), grid {launch['grid']} x {kernel.threads} threads")
    else:
        from ulsam_deploy.backends.trt.cuda import CudaError, CudaUnavailable

        try:
            launcher = Launcher()
        except CudaUnavailable as exc:
            print(f"SKIP no CUDA driver or GPU: {exc}")
            return 77
        print(f"device {launcher.name} (sm_{launcher.cc})")
        for case in CASES:
            for dtype in ("fp32", "fp16"):
                for known in (True, False):
                    try:
                        row = run_case(launcher, case, dtype, known)
                    except CudaError as exc:
                        row = {"shape": list(case), "dtype": dtype, "width_known": known, "ok": False,
                               "error": str(exc)}
                    rows.append(row)
                    failures += not row["ok"]
                    detail = row.get("error") or (f"max|err| {row['max_abs_err']:.3g}, PTX sm_{row['ptx_arch']} "
                                                  f"JIT {row['jit_ms']:.0f} ms, canaries "
                                                  f"{'intact' if row['canaries'] else 'OVERWRITTEN'}")
                    print(f"{'PASS' if row['ok'] else 'FAIL'} qdp N={case[0]} C={case[1]} {case[2]}x{case[3]} "
                          f"g={case[4]} {dtype} width {'known' if known else 'dynamic'}: {detail}", flush=True)
        launcher.memory.close()
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "failures": failures}, indent=1) + "\n")
    print(f"{'PASSED' if not failures else 'FAILED'}: {len(rows)} launches, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
