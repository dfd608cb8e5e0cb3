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


class Driver:
    """The few driver calls the launch needs, through ctypes (nothing linked)."""

    def __init__(self):
        self.lib = ctypes.CDLL("libcuda.so.1")
        self.ctx = ctypes.c_void_p()
        dev = ctypes.c_int()
        self.ok(self.lib.cuInit(0), "cuInit")
        self.ok(self.lib.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
        self.ok(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(self.ctx), dev), "cuDevicePrimaryCtxRetain")
        self.ok(self.lib.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.ok(self.lib.cuDeviceGetAttribute(ctypes.byref(major), 75, dev), "cc major")
        self.ok(self.lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev), "cc minor")
        self.cc = major.value * 10 + minor.value
        name = ctypes.create_string_buffer(256)
        self.lib.cuDeviceGetName(name, 256, dev)
        self.name = name.value.decode()
        self.lib.cuMemAlloc_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]
        self.lib.cuMemFree_v2.argtypes = [ctypes.c_uint64]
        self.lib.cuMemcpyHtoD_v2.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t]
        self.lib.cuMemcpyDtoH_v2.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t]
        self.lib.cuMemsetD8_v2.argtypes = [ctypes.c_uint64, ctypes.c_ubyte, ctypes.c_size_t]
        self.lib.cuLaunchKernel.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [
            ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]

    def ok(self, status: int, what: str) -> None:
        if status != 0:
            text = ctypes.c_char_p()
            self.lib.cuGetErrorName(status, ctypes.byref(text))
            raise RuntimeError(f"{what} failed: {text.value.decode() if text.value else status}")

    def alloc(self, nbytes: int, fill: int | None = None) -> int:
        ptr = ctypes.c_uint64()
        self.ok(self.lib.cuMemAlloc_v2(ctypes.byref(ptr), max(nbytes, 1)), "cuMemAlloc")
        if fill is not None:
            self.ok(self.lib.cuMemsetD8_v2(ptr.value, fill, nbytes), "cuMemsetD8")
        return ptr.value

    def upload(self, array: np.ndarray) -> int:
        array = np.ascontiguousarray(array)
        ptr = self.alloc(array.nbytes)
        self.ok(self.lib.cuMemcpyHtoD_v2(ptr, array.ctypes.data, array.nbytes), "cuMemcpyHtoD")
        return ptr

    def download(self, ptr: int, nbytes: int) -> bytes:
        out = ctypes.create_string_buffer(nbytes)
        self.ok(self.lib.cuMemcpyDtoH_v2(out, ptr, nbytes), "cuMemcpyDtoH")
        return out.raw

    def function(self, ptx: str, entry: str, shared: int):
        module, func = ctypes.c_void_p(), ctypes.c_void_p()
        t0 = time.perf_counter()
        self.ok(self.lib.cuModuleLoadData(ctypes.byref(module), ptx.encode() + b"\0"), "cuModuleLoadData (PTX JIT)")
        jit_ms = (time.perf_counter() - t0) * 1e3
        self.ok(self.lib.cuModuleGetFunction(ctypes.byref(func), module, entry.encode()), "cuModuleGetFunction")
        if shared > 48 * 1024:
            self.ok(self.lib.cuFuncSetAttribute(func, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, shared),
                    "cuFuncSetAttribute")
        return module, func, jit_ms

    def launch(self, func, grid: int, block: int, shared: int, args: list) -> None:
        holders = [ctypes.c_uint64(v) if kind == "u64" else ctypes.c_int32(v) for kind, v in args]
        params = (ctypes.c_void_p * len(holders))(*[ctypes.cast(ctypes.byref(h), ctypes.c_void_p) for h in holders])
        self.ok(self.lib.cuLaunchKernel(func, grid, 1, 1, block, 1, 1, shared, None, params, None), "cuLaunchKernel")
        self.ok(self.lib.cuCtxSynchronize(), "the kernel (cuCtxSynchronize)")


def run_case(driver: Driver, case, dtype: str, width_known: bool) -> dict:
    from ulsam_deploy.kernels import reference as R

    n, c, h, w, g = case
    kernel, launch, scalars = plan(n, c, h, w, g, dtype, width_known, driver.cc)
    np_dtype = np.float16 if dtype == "fp16" else np.float32
    rng = np.random.default_rng(n * 1000 + c + h + w + g)
    x = rng.standard_normal((n, c, h, w)).astype(np_dtype)
    p = R.random_params(c, g, seed=c + g, logit_scale=3.0)
    module, func, jit_ms = driver.function(kernel.ptx, kernel.entry, kernel.shared_bytes)
    inputs = [driver.upload(x)] + [driver.upload(np.asarray(v, np.float32))
                                   for v in (p.dw_scale, p.dw_shift, p.pw_weight, p.pw_bias)]
    y_bytes, ws_bytes = x.nbytes, int(np.prod(launch["ws_shape"])) * 4
    y = driver.alloc(y_bytes + CANARY, fill=0xA5)
    ws = driver.alloc(ws_bytes + CANARY, fill=0xA5)
    args = [("u64", v) for v in inputs] + [("u32", int(v)) for v in scalars] + [("u64", y), ("u64", ws)]
    driver.launch(func, launch["grid"], kernel.threads, kernel.shared_bytes, args)
    raw = driver.download(y, y_bytes + CANARY)
    got = np.frombuffer(raw[:y_bytes], dtype=np_dtype).reshape(x.shape).astype(np.float64)
    canaries = raw[y_bytes:] == b"\xa5" * CANARY and driver.download(ws + ws_bytes, CANARY) == b"\xa5" * CANARY
    ref = R.subspace_attention_numpy(x.astype(np.float64), g, p.dw_scale, p.dw_shift, p.pw_weight, p.pw_bias,
                                     True, True, out_dtype=np.float64)
    tol = 2e-3 * np.abs(ref) + 2e-3 if dtype == "fp16" else 1e-5 * np.abs(ref) + 1e-5
    err = float(np.abs(got - ref).max())
    ok = bool((np.abs(got - ref) <= tol).all()) and canaries
    for ptr in [*inputs, y, ws]:
        driver.lib.cuMemFree_v2(ptr)
    driver.lib.cuModuleUnload(module)
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
        try:
            driver = Driver()
        except (OSError, RuntimeError) as exc:
            print(f"SKIP no CUDA driver or GPU: {exc}")
            return 77
        print(f"device {driver.name} (sm_{driver.cc})")
        for case in CASES:
            for dtype in ("fp32", "fp16"):
                for known in (True, False):
                    try:
                        row = run_case(driver, case, dtype, known)
                    except RuntimeError as exc:
                        row = {"shape": list(case), "dtype": dtype, "width_known": known, "ok": False,
                               "error": str(exc)}
                    rows.append(row)
                    failures += not row["ok"]
                    detail = row.get("error") or (f"max|err| {row['max_abs_err']:.3g}, PTX sm_{row['ptx_arch']} "
                                                  f"JIT {row['jit_ms']:.0f} ms, canaries "
                                                  f"{'intact' if row['canaries'] else 'OVERWRITTEN'}")
                    print(f"{'PASS' if row['ok'] else 'FAIL'} qdp N={case[0]} C={case[1]} {case[2]}x{case[3]} "
                          f"g={case[4]} {dtype} width {'known' if known else 'dynamic'}: {detail}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "failures": failures}, indent=1) + "\n")
    print(f"{'PASSED' if not failures else 'FAILED'}: {len(rows)} launches, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
