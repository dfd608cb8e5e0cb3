#!/usr/bin/env python3
"""The GPU proof of issue 19 as one prepared command: every check, one results folder, non-zero on any failure.

    python scripts/gpu_proof.py --prepare            # here, once: fill the carry folder gpu-carry/
    python scripts/gpu_proof.py --out gpu-proof      # on the GPU machine (and here: host checks only)
    python scripts/gpu_proof.py --summarize gpu-proof  # its results as Markdown, for docs/benchmarks.md

The carry folder (git-ignored ``gpu-carry/``, never committed; travels with the working tree) holds what the GPU
machine cannot fetch: TensorRT header sets (``*/include/NvInfer.h``: NVIDIA/TensorRT's ``include/`` at v10.3.0 and
v11.1, copied by ``--prepare`` from ``third_party_fetched/``) and ``fused-onnx/``: the fused SubspaceAttention
nodes of every paper configuration (ULSAM.md: MV1 and MV2 at their positions, g = 1, 2, 4, 8, 16, 224 x 224),
exported and fused by our own steps from networks with calibrated BatchNorm statistics, each node kept verbatim
with its input's shape (one whole fused MV2 too), and a manifest. ``ULSAM_TRT_HEADERS`` names another header
folder; ``--onnx-dir`` another node folder.

Checks, in order (each one a row of ``results.json`` with its status, seconds, reason and log file):

- host (any machine): the plugin built against each header set (undefined symbols: libc/libstdc++/libgcc only);
  the plugin's lifecycle self-test without a driver and against the stub driver; the fields every carried ONNX
  node gives, loaded the way TensorRT's ONNX parser loads them, route to our creator with none missing; the
  launcher's stub self-test; the QDP launch plan (``scripts/gpu_qdp_launch.py --dry-run``: every stripped PTX
  declares exactly the 16 arguments TensorRT passes);
- GPU (a CUDA driver and GPU present; else each is ``skipped`` with the reason): the launcher self-test on the
  device with the native cubins and with forced PTX JIT; the QDP route's exact launch (``gpu_qdp_launch.py``:
  the stripped ISA 8.0 PTX through cuModuleLoadData and cuLaunchKernel with TensorRT's argument layout and grid,
  against the oracle, canaries intact); compute-sanitizer memcheck, racecheck, synccheck and
  initcheck over the cubin self-test; ``backends/trt/cuda.py`` on the real driver (its ``gpu``-marked test:
  memory, pinned memory, stream, events, a round trip, another thread, errors); ``scripts/gpu_kernel_bench.py``
  (correctness, fused vs decomposed, bandwidth, goals);
  ``scripts/gpu_network_bench.py`` (whole networks, decomposed vs fused ULSAM, eager and CUDA graphs); last, an
  Nsight Compute profile of the kernel on the goal shapes (speed of light, memory, launch, occupancy: why a speed
  goal is met or missed).

On a GPU, per header set, also ``ulsam_sa_plugin_gpu_harness`` (plugins/subspace_attention/plugin_gpu_harness.cpp):
the plugin driven in TensorRT's build and runtime call order on device memory against a float64 reference, on
synthetic shapes and on every carried fused node (batch 1, 8, 64, fp32 and fp16), with the serialization round
trip, a second context on another thread, CUDA-graph capture and replay, enqueue without onShapeChange, and
canaries; plus compute-sanitizer memcheck over its quick mode.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED_UNDEFINED = ("GLIBC", "GLIBCXX", "CXXABI", "GCC")
# what compute-sanitizer and ncu say on a machine that does not let them work (gVisor, the device tool's notes):
# the check is then skipped with that line, not failed
TOOL_REFUSALS = ("Device not supported", "LibraryNotLoaded", "ERR_NVGPUCTRPERM", "Failed to initialize the profiler")


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
            env: dict | None = None, expect: str | None = None, cap: float | None = None,
            unsupported: tuple[str, ...] = ()) -> dict:
        """Run ``command`` as the check ``name``; a failure whose output holds one of ``unsupported`` (the tool
        refusing this machine, not a finding) is recorded as skipped with that line."""
        left = self.deadline - time.monotonic()
        if left < 5:
            return self.record(name, "skipped", reason="the time budget ran out")
        left = min(left, cap) if cap else left
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
            return self.record(name, "failed", seconds, f"timed out after {seconds:.0f} s (not proven either way)",
                               str(log))
        if skip_code is not None and code == skip_code:
            return self.record(name, "skipped", seconds, _last_line(text), str(log))
        refusal = next((line.strip() for line in text.splitlines() if any(u in line for u in unsupported)), None)
        if code != 0 and refusal:
            return self.record(name, "skipped", seconds, f"the tool cannot run on this machine: {refusal[:200]}",
                               str(log))
        if code not in ok_codes or (expect is not None and expect not in text) or "\nFAIL " in "\n" + proc.stdout:
            return self.record(name, "failed", seconds, f"exit {code}: {_last_line(text)}", str(log))
        return self.record(name, "passed", seconds, log=str(log))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def gpu_present(driver=None) -> str | None:
    """None when a CUDA driver with a GPU is here, else why not (``backends/trt/cuda.py``'s probe, or ``driver``,
    its result)."""
    from ulsam_deploy.backends.trt.cuda import probe_cuda_driver

    driver = driver or probe_cuda_driver()
    return None if driver.gpus else f"no usable CUDA driver or GPU: {driver.error or 'the driver reports none'}"


def find_cuda_tool(name: str) -> str | None:
    """A CUDA tool (compute-sanitizer, ncu) on PATH, else in the toolkit's bin/ (CUDA_HOME, /usr/local/cuda)."""
    found = shutil.which(name)
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if found is None and home and (Path(home) / "bin" / name).is_file():
            found = str(Path(home) / "bin" / name)
    return found


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


CARRY = ROOT / "gpu-carry"
FETCHED = ROOT / "third_party_fetched"


def carry_name(arch: str, width: float, positions: str, groups: int) -> str:
    """``mv1-x0.75-8_1+9_1+11-g4``: a configuration as a file name."""
    return f"{arch}-x{width:g}-{positions.replace(',', '+').replace(':', '_')}-g{groups}"


def plugin_nodes(model):
    """The fused plugin nodes of ``model``, verbatim, in a graph of their own: each node's input and output with
    the shapes the exported graph gives them. What the harness needs of a whole fused file, at a few KB."""
    from onnx import helper

    from ulsam_deploy.op_spec import OP_TYPE

    graph = model.graph
    infos = {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}
    nodes = [n for n in graph.node if n.op_type == OP_TYPE]
    inputs, outputs = [], []
    for node in nodes:
        src = infos[node.input[0]]
        inputs.append(src)
        out = helper.make_tensor_value_info(node.output[0], src.type.tensor_type.elem_type, None)
        out.type.CopyFrom(src.type)  # the op keeps the shape and the dtype
        outputs.append(out)
    small = helper.make_model(helper.make_graph(nodes, "fused_nodes", inputs, outputs),
                              opset_imports=list(model.opset_import), producer_name="gpu_proof --prepare")
    small.ir_version = model.ir_version
    return small, [{"name": n.name, "shape": [d.dim_value or d.dim_param for d in
                                              infos[n.input[0]].type.tensor_type.shape.dim]} for n in nodes]


def prepare(carry: Path, headers_from: Path, items: list[tuple[str, float, str, int]],
            whole: tuple[str, float, str, int] | None, log=print) -> dict:
    """Fill ``carry``: header sets copied from ``headers_from``; ``fused-onnx/`` with the fused nodes of every
    ``(arch, width, positions, groups)`` item, exported and fused by ``export_model`` (the ``export --fuse`` step)
    from a network whose BatchNorm statistics come from a few random batches, at 224 x 224; ``whole`` kept whole."""
    import onnx
    import torch

    from ulsam_deploy.models import build_model, calibrate_batchnorm
    from ulsam_deploy.models.checkpoint import CheckpointInfo
    from ulsam_deploy.steps.export import ExportOptions, export_model

    carry.mkdir(parents=True, exist_ok=True)
    for root in header_sets(headers_from) if headers_from.is_dir() else []:
        target = carry / root.name / "include"
        if not (target / "NvInfer.h").is_file():
            shutil.copytree(root / "include", target, dirs_exist_ok=True)
            log(f"headers {root.name} -> {target}")
    out_dir = carry / "fused-onnx"
    out_dir.mkdir(exist_ok=True)
    manifest = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch, width, positions, g in items:
            name = carry_name(arch, width, positions, g)
            torch.manual_seed(g)
            model = build_model(arch, width, positions, groups=g)
            calibrate_batchnorm(model, torch.randn(4, 3, 224, 224))
            t0 = time.perf_counter()
            result = export_model(model, CheckpointInfo(config=model.config), Path(tmp) / f"{name}.onnx",
                                  ExportOptions(fuse=True, parity_batches=(1,)))
            is_whole = whole == (arch, width, positions, g)
            nodes_model, nodes = plugin_nodes(onnx.load(str(result.path)))
            target = out_dir / f"{name}.onnx"
            if is_whole:
                shutil.copyfile(result.path, target)
            else:
                onnx.save(nodes_model, str(target))
            manifest.append({"file": target.name, "arch": arch, "width": width, "positions": positions,
                             "groups": g, "whole_model": is_whole, "nodes": nodes})
            log(f"{target.name}: {len(nodes)} node(s){' (whole model)' if is_whole else ''}, "
                f"{time.perf_counter() - t0:.1f} s")
    (out_dir / "manifest.json").write_text(json.dumps({"input_size": 224, "files": manifest}, indent=1) + "\n")
    return {"files": manifest}


def summarize(out: Path) -> str:
    """A finished proof as Markdown for docs/benchmarks.md: machine, driver, every check, the benchmark tables."""
    result = json.loads((out / "results.json").read_text())
    driver = result["machine"].get("driver") or {}
    gpus = ", ".join(f"{g['name']} ({g['sm']}, {g['total_memory_bytes'] / 2**30:.0f} GiB)"
                     for g in driver.get("gpus", [])) or result["machine"]["gpu"]
    lines = [f"### GPU proof on {gpus}", "",
             f"Driver {driver.get('driver_version') or '?'} ({driver.get('library') or 'no libcuda'}), host "
             f"{result['machine']['host']} ({result['machine']['machine']}); TensorRT header sets "
             f"{', '.join(Path(h).name for h in result['headers'])}; {len(result.get('fused_onnx', []))} fused ONNX "
             f"files; {result['seconds']:.0f} s; "
             f"{'PASSED' if result['passed'] else 'FAILED: ' + ', '.join(result['failed'])}.",
             "", "| check | status | seconds | note |", "|---|---|---|---|"]
    for row in result["checks"]:
        note = row["reason"].replace("|", "/")
        lines.append(f"| {row['check']} | {row['status']} | {row['seconds']:.1f} | {note} |")
    tables = out / "benchmarks.md"
    if tables.is_file():
        lines += ["", tables.read_text().strip()]
    return "\n".join(lines) + "\n"


def onnx_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.onnx")) if folder.is_dir() else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "gpu-proof")
    parser.add_argument("--budget", type=float, default=520.0,
                        help="seconds for everything (under the device's 540 s limit, with time to write results)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--carry", type=Path, default=CARRY, help="the carry folder (headers, fused ONNX nodes)")
    parser.add_argument("--onnx-dir", type=Path, help="fused ONNX files for the harness (default: CARRY/fused-onnx)")
    parser.add_argument("--build-root", type=Path, default=Path(tempfile.gettempdir()) / "ulsam-gpu-proof",
                        help="where the plugin builds go (kept out of --out, which travels back from a GPU machine)")
    parser.add_argument("--prepare", action="store_true", help="fill the carry folder here, then stop")
    parser.add_argument("--summarize", type=Path, metavar="OUT",
                        help="print a finished proof's results (OUT/results.json, OUT/benchmarks.md) as Markdown")
    parser.add_argument("--headers-from", type=Path, default=FETCHED, help="--prepare: where the fetched headers are")
    parser.add_argument("--configs", nargs="*", help="--prepare: only these, as bench specs (mv2+17:1/g4)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.summarize:
        print(summarize(args.summarize))
        return 0
    if args.prepare:
        from ulsam_deploy.bench.models import parse_model_spec
        from ulsam_deploy.models import PAPER_CONFIGS, PAPER_GROUPS

        if args.configs:
            chosen = [parse_model_spec(text) for text in args.configs]
            if None in chosen:
                parser.error(f"--configs: not a model spec: {args.configs[chosen.index(None)]}")
            items = [(c.arch, c.width, c.ulsam, c.groups) for c in chosen]
        else:
            items = [(*cfg, g) for cfg in PAPER_CONFIGS for g in PAPER_GROUPS]
        prepare(args.carry, args.headers_from, items, whole=("mv2", 1.0, "17:1", 4))
        return 0
    headers = Path(os.environ.get("ULSAM_TRT_HEADERS") or args.carry)
    onnx_dir = args.onnx_dir or args.carry / "fused-onnx"
    cases = onnx_files(onnx_dir)
    proof = Proof(args.out, args.budget)
    started = time.perf_counter()
    from ulsam_deploy.backends.trt.cuda import probe_cuda_driver
    from ulsam_deploy.backends.trt.plugin_build import build_plugin

    driver = probe_cuda_driver()
    no_gpu = gpu_present(driver)
    sets = header_sets(headers) if headers.is_dir() else []
    if not sets:
        proof.record("headers", "failed", reason=f"no TensorRT header set (include/NvInfer.h) under {headers}; fetch "
                     "NVIDIA/TensorRT's include/ at v10.3.0 and v11.x into third_party_fetched/ and run --prepare")
    if not cases:
        proof.record("fused ONNX nodes", "failed", reason=f"no fused ONNX under {onnx_dir}; run this script with "
                     "--prepare first")
    launcher = None
    harnesses: list[tuple[str, Path, Path]] = []  # (tag, harness, plugin library)
    for root in sets:
        tag = root.name
        t0 = time.perf_counter()
        try:
            built = build_plugin(args.build_root / f"build-{tag}", tensorrt_root=root, jobs=args.jobs, clean=True)
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
            if cases:
                proof.run(f"fields of {len(cases)} fused ONNX files, as TensorRT's parser loads them {tag}",
                          [str(harness), "--fields", str(built.plugin_library), *map(str, cases)])
        else:
            proof.record(f"plugin on the GPU, TensorRT's call order {tag}", "failed",
                         reason="the harness was not built")
        proof.run(f"plugin lifecycle, stub driver {tag}", [str(built.plugin_selftest), str(built.plugin_library),
                                                           "--stub", str(built.cuda_stub)],
                  expect="enqueue (fp16) x3: three launches, no allocation")
    if launcher is not None:
        proof.run("launcher, stub driver", [str(launcher.selftest), "--stub", str(launcher.cuda_stub)])
    proof.run("QDP launch plan: the stripped PTX takes exactly TensorRT's arguments",
              [sys.executable, "scripts/gpu_qdp_launch.py", "--dry-run"])
    # GPU checks, most telling first, each with a time cap so that one stuck check cannot eat the others' time
    sanitizer, ncu = find_cuda_tool("compute-sanitizer"), find_cuda_tool("ncu")
    plan: list[tuple[str, list[str] | None, float, str | None]] = []  # (name, command, cap s, reason to skip)
    selftest = str(launcher.selftest) if launcher else ""
    plan.append(("launcher on the GPU, native cubins", [selftest, "--images=cubin"], 60, None))
    plan.append(("launcher on the GPU, forced PTX JIT", [selftest, "--images=ptx"], 60, None))
    for tag, harness, library in harnesses:
        plan.append((f"plugin on the GPU, TensorRT's call order {tag}",
                     [str(harness), str(library), "--onnx", *map(str, cases)], 120, None))
    plan.append(("QDP route on the GPU: stripped ISA 8.0 PTX, cuModuleLoadData + cuLaunchKernel as TensorRT",
                 [sys.executable, "scripts/gpu_qdp_launch.py", "--json", str(args.out / "qdp_launch.json")], 90,
                 None))
    if harnesses:
        tag, harness, library = harnesses[-1]
        plan.append((f"compute-sanitizer memcheck, plugin harness {tag}",
                     [sanitizer or "", "--tool", "memcheck", "--error-exitcode", "99", str(harness), str(library),
                      "--quick"], 120, None if sanitizer else "compute-sanitizer is not on PATH"))
    plan.append(("backends/trt/cuda.py on the real driver", [sys.executable, "-m", "pytest", "-q", "-s", "-m", "gpu",
                                                              "-p", "no:cacheprovider", "tests/test_trt_cuda.py"],
                 90, None))
    for name, script, data in (("kernel benchmark", "gpu_kernel_bench.py", "kernel_bench.json"),
                               ("whole-network benchmark, decomposed vs fused", "gpu_network_bench.py",
                                "network_bench.json")):
        plan.append((name, [sys.executable, f"scripts/{script}", "--quick", "--strict-skip", "--json",
                            str(args.out / data), "--out", str(args.out / "benchmarks.md")], 150, None))
    for tool in ("memcheck", "racecheck", "synccheck", "initcheck"):
        plan.append((f"compute-sanitizer {tool}", [sanitizer or "", "--tool", tool, "--error-exitcode", "99",
                                                    selftest, "--images=cubin"], 60,
                     None if sanitizer else "compute-sanitizer is not on PATH"))
    # why a speed goal is or is not met: Nsight Compute's speed-of-light and memory sections for the goal shapes
    plan.append(("Nsight Compute profile of the kernel (goal shapes)", [
        ncu or "", "--clock-control", "none", "--target-processes", "all", "--kernel-name", "regex:ulsam",
        "--launch-count", "4",
        "--section", "SpeedOfLight", "--section", "MemoryWorkloadAnalysis", "--section", "LaunchStats",
        "--section", "Occupancy", sys.executable, "scripts/gpu_kernel_bench.py", "--profile-case"], 90,
        None if ncu else "ncu (Nsight Compute) is not on PATH"))
    refused: dict[str, str] = {}  # tool -> why it cannot run here (seen once, not tried again)
    for name, command, cap, skip in plan:
        reason = no_gpu or ("nothing was built" if launcher is None else None) or skip or refused.get(command[0])
        if reason:
            proof.record(name, "skipped", reason=reason)
            continue
        # a GPU is here: a check that answers "no GPU" (77) or runs no test has failed, not skipped
        tool = command[0] in (sanitizer, ncu)
        row = proof.run(name, command, cap=cap, expect="1 passed" if "pytest" in command else None,
                        unsupported=TOOL_REFUSALS if tool else ())
        if tool and row["status"] == "skipped":
            refused[command[0]] = row["reason"]
    failed = [r["check"] for r in proof.rows if r["status"] == "failed"]
    result = {"machine": {"host": platform.node(), "machine": platform.machine(), "gpu": no_gpu or "present",
                          "driver": driver.to_dict()},
              "headers": [str(s) for s in sets], "fused_onnx": [c.name for c in cases],
              "seconds": round(time.perf_counter() - started, 1),
              "passed": not failed, "failed": failed, "checks": proof.rows}
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'PASSED' if not failed else 'FAILED'}: {len(proof.rows)} checks, {len(failed)} failed; "
          f"{args.out / 'results.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
