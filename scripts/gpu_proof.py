#!/usr/bin/env python3
"""The GPU proof of issue 19 as one prepared command: every check, one results folder, non-zero on any failure.

    ULSAM_TRT_HEADERS=third_party_fetched python scripts/gpu_proof.py --out gpu-proof [--budget 540]

``ULSAM_TRT_HEADERS`` names a folder holding TensorRT header sets (any ``*/include/NvInfer.h`` below it, e.g.
NVIDIA/TensorRT's ``include/`` at v10.3.0 and v11.1, fetched into the git-ignored ``third_party_fetched/``; never
committed). Default: ``third_party_fetched``.

Checks, in order (each one a row of ``results.json`` with its status, seconds, reason and log file):

- host (any machine): the plugin built against each header set (undefined symbols: libc/libstdc++/libgcc only);
  the plugin's lifecycle self-test without a driver and against the stub driver; the launcher's stub self-test;
- GPU (a CUDA driver and GPU present; else each is ``skipped`` with the reason): the launcher self-test on the
  device with the native cubins and with forced PTX JIT; compute-sanitizer memcheck, racecheck, synccheck and
  initcheck over the cubin self-test; the ``gpu``-marked tests (``backends/trt/cuda.py`` on the real driver, the
  Triton kernel); ``scripts/gpu_kernel_bench.py`` (correctness, fused vs decomposed, bandwidth, goals).

On a GPU, per header set, also ``ulsam_sa_plugin_gpu_harness`` (plugins/subspace_attention/plugin_gpu_harness.cpp):
the plugin driven in TensorRT's build and runtime call order on device memory against a float64 reference, with
the serialization round trip, a second context on another thread, CUDA-graph capture and replay, enqueue without
onShapeChange, and canaries; plus compute-sanitizer memcheck over it. Not yet written, listed as ``not written`` so
nobody mistakes silence for a pass: the whole-network benchmark (issue 19, part 4, second bullet).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED_UNDEFINED = ("GLIBC", "GLIBCXX", "CXXABI", "GCC")


class Proof:
    def __init__(self, out: Path, budget_s: float):
        self.out = out
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + budget_s
        self.rows: list[dict] = []

    def record(self, name: str, status: str, seconds: float = 0.0, reason: str = "", log: str | None = None,
               data: dict | None = None) -> dict:
        row = {"check": name, "status": status, "seconds": round(seconds, 2), "reason": reason, "log": log,
               **({"data": data} if data else {})}
        self.rows.append(row)
        print(f"{status.upper():11s} {name}" + (f" - {reason}" if reason else ""), flush=True)
        return row

    def run(self, name: str, command: list[str], *, ok_codes=(0,), skip_code: int | None = None,
            env: dict | None = None, expect: str | None = None) -> dict:
        left = self.deadline - time.monotonic()
        if left < 5:
            return self.record(name, "skipped", reason="the time budget ran out")
        log = self.logs / (name.replace(" ", "_").replace("/", "_") + ".log")
        started = time.perf_counter()
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=left, cwd=ROOT,
                                  env={**os.environ, **(env or {})})
            text = f"$ {' '.join(map(str, command))}\n{proc.stdout}\n{proc.stderr}"
            code = proc.returncode
        except subprocess.TimeoutExpired as exc:
            text, code = f"$ {' '.join(map(str, command))}\n(timed out)\n{exc.stdout or ''}", None
        log.write_text(text)
        seconds = time.perf_counter() - started
        if code is None:
            return self.record(name, "failed", seconds, "timed out (time budget)", str(log))
        if skip_code is not None and code == skip_code:
            return self.record(name, "skipped", seconds, _last_line(text), str(log))
        if code not in ok_codes or (expect is not None and expect not in text) or "\nFAIL " in "\n" + proc.stdout:
            return self.record(name, "failed", seconds, f"exit {code}: {_last_line(text)}", str(log))
        return self.record(name, "passed", seconds, log=str(log))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def gpu_present() -> str | None:
    """None when a CUDA driver with a GPU is here, else why not."""
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            lib = None
    if lib is None:
        return "no CUDA driver (libcuda.so.1 not found)"
    count = ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return "the CUDA driver finds no GPU"
    return None


def header_sets(folder: Path) -> list[Path]:
    return sorted({p.parent.parent for p in folder.glob("**/include/NvInfer.h")})


def foreign_symbols(library: Path) -> list[str] | None:
    """Undefined (strong) symbols of ``library`` that libc, libstdc++ and libgcc do not provide (TensorRT's would
    be listed here); None without nm."""
    nm = shutil.which("nm")
    if nm is None:
        return None
    out = subprocess.run([nm, "-D", "--undefined-only", str(library)], capture_output=True, text=True).stdout
    foreign = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0] == "w":  # weak: the toolchain's optional hooks
            continue
        version = parts[-1].partition("@")[2].lstrip("@")
        if not version.startswith(ALLOWED_UNDEFINED):
            foreign.append(parts[-1])
    return foreign


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "gpu-proof")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for everything (the device's limit)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    headers = Path(os.environ.get("ULSAM_TRT_HEADERS") or ROOT / "third_party_fetched")
    proof = Proof(args.out, args.budget)
    started = time.perf_counter()
    sys.path.insert(0, str(ROOT))
    from ulsam_deploy.backends.trt.plugin_build import build_plugin

    no_gpu = gpu_present()
    sets = header_sets(headers) if headers.is_dir() else []
    if not sets:
        proof.record("headers", "failed", reason=f"no TensorRT header set (include/NvInfer.h) under {headers}; fetch "
                     "NVIDIA/TensorRT's include/ at v10.3.0 and v11.x into it")
    launcher = None
    harnesses: list[tuple[str, Path, Path]] = []  # (tag, harness, plugin library)
    for root in sets:
        tag = root.name
        t0 = time.perf_counter()
        try:
            built = build_plugin(args.out / f"build-{tag}", tensorrt_root=root, jobs=args.jobs, clean=True)
        except Exception as exc:  # noqa: BLE001 - a failed build is a failed check, with its message
            proof.record(f"build {tag}", "failed", time.perf_counter() - t0, f"{type(exc).__name__}: {exc}")
            continue
        version = built.tensorrt.version if built.tensorrt else "?"
        proof.record(f"build {tag}", "passed", time.perf_counter() - t0, data={"tensorrt": version})
        launcher = launcher or built
        foreign = foreign_symbols(built.plugin_library)
        if foreign is None:
            proof.record(f"link {tag}", "skipped", reason="nm is not installed")
        else:
            proof.record(f"link {tag}", "failed" if foreign else "passed",
                         reason=f"undefined symbols beyond libc/libstdc++/libgcc: {foreign[:5]}" if foreign else "")
        proof.run(f"plugin lifecycle, no driver {tag}", [str(built.plugin_selftest), str(built.plugin_library)])
        harness = built.build_dir / "ulsam_sa_plugin_gpu_harness"
        if harness.is_file():
            harnesses.append((tag, harness, built.plugin_library))
        else:
            proof.record(f"plugin on the GPU, TensorRT's call order {tag}", "failed", reason="the harness was not built")
        proof.run(f"plugin lifecycle, stub driver {tag}", [str(built.plugin_selftest), str(built.plugin_library),
                                                           "--stub", str(built.cuda_stub)],
                  expect="enqueue (fp16) x3: three launches, no allocation")
    if launcher is not None:
        proof.run("launcher, stub driver", [str(launcher.selftest), "--stub", str(launcher.cuda_stub)])
    gpu_checks = ["launcher on the GPU, native cubins", "launcher on the GPU, forced PTX JIT",
                  *[f"compute-sanitizer {tool}" for tool in ("memcheck", "racecheck", "synccheck", "initcheck")],
                  "gpu-marked tests", "kernel benchmark"]
    gpu_checks += [f"plugin on the GPU, TensorRT's call order {tag}" for tag, _, _ in harnesses]
    if no_gpu is not None:
        for name in gpu_checks:
            proof.record(name, "skipped", reason=no_gpu)
    elif launcher is None:
        for name in gpu_checks:
            proof.record(name, "skipped", reason="nothing was built")
    else:
        selftest = str(launcher.selftest)
        proof.run(gpu_checks[0], [selftest, "--images=cubin"], skip_code=77)
        proof.run(gpu_checks[1], [selftest, "--images=ptx"], skip_code=77)
        sanitizer = shutil.which("compute-sanitizer")
        for tool, name in zip(("memcheck", "racecheck", "synccheck", "initcheck"), gpu_checks[2:6]):
            if sanitizer is None:
                proof.record(name, "skipped", reason="compute-sanitizer is not on PATH")
                continue
            proof.run(name, [sanitizer, "--tool", tool, "--error-exitcode", "99", selftest, "--images=cubin"])
        proof.run(gpu_checks[6], [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                                  "tests/test_trt_cuda.py", "tests/test_gpu_kernel.py"])
        proof.run(gpu_checks[7], [sys.executable, "scripts/gpu_kernel_bench.py", "--json",
                                  str(args.out / "kernel_bench.json")])
        for tag, harness, library in harnesses:
            name = f"plugin on the GPU, TensorRT's call order {tag}"
            proof.run(name, [str(harness), str(library)], skip_code=77)
            if sanitizer is not None and tag == harnesses[-1][0]:
                proof.run(f"compute-sanitizer memcheck, plugin harness {tag}",
                          [sanitizer, "--tool", "memcheck", "--error-exitcode", "99", str(harness), str(library),
                           "--quick"], skip_code=77)
    proof.record("whole-network benchmark, decomposed vs fused (issue 19, part 4)", "not written",
                 reason="the benchmark is not written yet")
    failed = [r["check"] for r in proof.rows if r["status"] == "failed"]
    result = {"machine": {"host": platform.node(), "machine": platform.machine(), "gpu": no_gpu or "present"},
              "headers": [str(s) for s in sets], "seconds": round(time.perf_counter() - started, 1),
              "passed": not failed, "failed": failed, "checks": proof.rows}
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'PASSED' if not failed else 'FAILED'}: {len(proof.rows)} checks, {len(failed)} failed; "
          f"{args.out / 'results.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
