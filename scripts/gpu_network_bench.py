#!/usr/bin/env python3
"""Whole networks on a GPU, ULSAM decomposed against ULSAM fused: does the fused block pay off end to end, and does
the paper's MACs cut show up as GPU time? (issue 19, part 4). A benchmark, not a test: it writes figures.

    python scripts/gpu_network_bench.py --json network_bench.json [--out table.md] [--quick]
    python scripts/gpu_network_bench.py --smoke --json smoke.json    # CPU: tiny networks, Triton's interpreter

Networks (224 x 224, 1000 classes, BatchNorm statistics from random batches, seeded): vanilla MV2, MV2 + ULSAM
``17:1``, MV2 + ULSAM ``13,14,16,17`` (the paper's replacing configuration, 0.747x MACs), vanilla MV1 and MV1 +
ULSAM ``8:1,9:1,11``; g = 4. Each ULSAM network runs in two forms:

- ``decomposed``: ``to_export_form`` (the op sequence the unfused ONNX graph holds: depthwise 1x1, max-pool,
  grouped 1x1, softmax, multiply-add), what any backend without our plugin runs;
- ``fused``: ``kernels/torch_op.with_fused_ulsam`` (every ULSAM block as ``torch.ops.ulsam.subspace_attention``, the
  Triton kernel the plugin ships).

Timings: batch 1, 8, 64; fp32 and fp16; torch eager and CUDA-graph replay. All forms of all networks at one
(dtype, batch, mode) are timed side by side by ``bench``'s interleaved loop (one synchronous call = one sample:
``model(x)`` or ``graph.replay()``, then ``torch.cuda.synchronize()``), so their ratios are fair on a shared machine.

Parity: at batch 64, every form and precision against the decomposed fp32 network, by ``bench``'s judge and its
per-precision tolerances. A fused fp16 network that fails where the decomposed fp16 one passes is a failure (exit 1);
one that fails alongside it is reported (random classifier weights have near-tied logits).

Without a GPU it prints ``SKIP: ...`` and exits 0 (77 with ``--strict-skip``); ``--smoke`` runs the same code on the
CPU with tiny networks (width 0.5, 32 x 32, batch 1, fp32 and fp16, eager) under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NETWORKS = (("mv2", ""), ("mv2", "17:1"), ("mv2", "13,14,16,17"), ("mv1", ""), ("mv1", "8:1,9:1,11"))
GROUPS = 4


def network_name(arch: str, ulsam: str) -> str:
    return f"{arch}+{ulsam}" if ulsam else arch


def build_forms(arch: str, ulsam: str, *, width: float, size: int, classes: int, device: str, seed: int = 0) -> dict:
    """``{form: eval-mode module}`` of one network: ``vanilla`` without ULSAM, else ``decomposed`` and ``fused``."""
    import torch

    from ulsam_deploy.kernels.torch_op import with_fused_ulsam
    from ulsam_deploy.models import build_model, calibrate_batchnorm
    from ulsam_deploy.models.ulsam import to_export_form

    torch.manual_seed(seed)
    model = build_model(arch, width, ulsam, groups=GROUPS, num_classes=classes, input_size=size)
    calibrate_batchnorm(model, torch.randn(8, 3, size, size))
    if not ulsam:
        return {"vanilla": model.eval().to(device)}
    return {"decomposed": to_export_form(model).to(device), "fused": with_fused_ulsam(model).to(device)}


def macs(arch: str, ulsam: str, width: float, size: int, classes: int) -> int:
    from ulsam_deploy.models import build_model
    from ulsam_deploy.models.profile import profile_model

    return profile_model(build_model(arch, width, ulsam, groups=GROUPS, num_classes=classes, input_size=size)).macs


def runner(module, x, mode: str, device: str):
    """One synchronous call of ``module`` on ``x``: eager, or the replay of a CUDA graph captured here."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if mode == "eager":
        def run():
            with torch.no_grad():
                module(x)
            sync()
        return run
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(stream):
        for _ in range(3):  # warm-up outside the graph: Triton's JIT, cuDNN's algorithm choice
            module(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        module(x)
    torch.cuda.synchronize()

    def replay():
        graph.replay()
        sync()
    return replay


def time_side_by_side(forms: dict, x, mode: str, device: str, config) -> dict:
    """``{(network, form): LatencyStats}`` of every form, timed in turn by bench's interleaved loop."""
    from ulsam_deploy.bench.latency import TimingTarget, measure_interleaved

    targets = [TimingTarget(key, runner(module, x, mode, device)) for key, module in forms.items()]
    return {r.key: r.stats for r in measure_interleaved(targets, config)}


def parity(networks: dict, x, dtypes: list[str]) -> list[dict]:
    """Both forms of every ULSAM network at every precision against its decomposed fp32 form, by bench's judge; a
    fused row ``counts_as_failure`` where it fails and the decomposed row of its precision passes."""
    import torch

    from ulsam_deploy.backends.judge import judge, tolerances_for

    rows = []
    for name, forms in networks.items():
        if "fused" not in forms:
            continue
        with torch.no_grad():
            reference = forms["decomposed"].float()(x.float()).float().cpu().numpy()
        for dtype in dtypes:
            torch_dtype = torch.float16 if dtype == "fp16" else torch.float32
            for form in ("decomposed", "fused"):  # decomposed first: the fused row is judged beside it
                module = forms[form].to(torch_dtype)
                with torch.no_grad():
                    out = module(x.to(torch_dtype)).float().cpu().numpy()
                module.float()
                verdict = judge(reference, out, tolerances_for(dtype))
                c = verdict.comparison
                row = {"network": name, "form": form, "dtype": dtype, "passed": verdict.passed,
                       "failures": verdict.failures, "max_abs": c.max_abs, "cosine": c.cosine,
                       "top1_agreement": c.top1_agreement}
                if form == "fused":
                    row["counts_as_failure"] = not verdict.passed and rows[-1]["passed"]
                rows.append(row)
    return rows


def markdown(result: dict) -> list[str]:
    dev = result["device"]
    smoke = (" - SMOKE RUN: CPU, Triton's interpreter, tiny networks; the figures mean nothing" if result["smoke"]
             else "")
    lines = [f"\n### Whole networks on {dev['name']} (torch {result['versions']['torch']}, "
             f"triton {result['versions']['triton']}, {result['input_size']} x {result['input_size']}){smoke}\n",
             "Median ms per synchronous call. `fused/dec`: the fused network's time over the decomposed one's; "
             "`dec/van` and `fused/van`: over the vanilla network of the same family, beside the MACs ratio.\n",
             "| network | dtype | batch | mode | vanilla ms | decomposed ms | fused ms | fused/dec | dec/van | "
             "fused/van | MACs ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["timings"]:
        if row["form"] != "fused":
            continue
        lines.append(f"| {row['network']} | {row['dtype']} | {row['batch']} | {row['mode']} | "
                     f"{row['vanilla_ms']:.3f} | {row['decomposed_ms']:.3f} | {row['median_ms']:.3f} | "
                     f"{row['fused_over_decomposed']:.2f} | {row['decomposed_over_vanilla']:.2f} | "
                     f"{row['over_vanilla']:.2f} | {row['macs_ratio']:.3f} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the results to this JSON file")
    ap.add_argument("--out", help="append a markdown table to this file")
    ap.add_argument("--quick", action="store_true", help="shorter timings (0.15 s per target and round)")
    ap.add_argument("--smoke", action="store_true", help="CPU: tiny networks under Triton's interpreter")
    ap.add_argument("--strict-skip", action="store_true", help="exit 77 (not 0) when there is no GPU")
    args = ap.parse_args(argv)

    def write_json(data):
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(data, indent=1) + "\n")

    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
    try:
        import torch
    except ImportError:
        print("SKIP: torch is not installed")
        write_json({"skipped": "torch is not installed"})
        return 77 if args.strict_skip else 0
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("SKIP: no CUDA GPU visible (this benchmark runs on a GPU machine; --smoke runs it small on the CPU)")
        write_json({"skipped": "no CUDA GPU visible"})
        return 77 if args.strict_skip else 0
    import triton

    from ulsam_deploy.bench.latency import TimingConfig

    log = lambda s: print(s, flush=True)  # noqa: E731
    started = time.time()
    if args.smoke:
        width, size, classes, batches, dtypes, modes = 0.5, 64, 10, (1,), ["fp32", "fp16"], ["eager"]
        config = TimingConfig(warmup_s=0.0, min_iters=1, min_seconds=0.0, block_s=0.001)
        parity_batch = 2
    else:
        torch.backends.cudnn.benchmark = True
        width, size, classes, batches, dtypes, modes = 1.0, 224, 1000, (1, 8, 64), ["fp32", "fp16"], ["eager", "graph"]
        per = 0.15 if args.quick else 0.4
        config = TimingConfig(warmup_s=0.1, min_iters=20, min_seconds=per, block_s=per / 4)
        parity_batch = 64
    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine()
    result = {"device": {"name": name, "kind": device}, "input_size": size, "width": width, "groups": GROUPS,
              "versions": {"python": platform.python_version(), "torch": torch.__version__,
                           "triton": triton.__version__, "cuda": torch.version.cuda},
              "smoke": args.smoke, "quick": args.quick, "timings": []}
    networks = {network_name(a, u): build_forms(a, u, width=width, size=size, classes=classes, device=device)
                for a, u in NETWORKS}
    cost = {network_name(a, u): macs(a, u, width, size, classes) for a, u in NETWORKS}
    vanilla_of = {network_name(a, u): a for a, u in NETWORKS}
    result["macs"] = cost
    gen = torch.Generator().manual_seed(1)
    x_parity = torch.randn(parity_batch, 3, size, size, generator=gen).to(device)
    result["parity"] = parity(networks, x_parity, dtypes)
    failures = 0
    for row in result["parity"]:
        failures += bool(row.get("counts_as_failure"))
        log(f"PARITY {row['network']} {row['form']} {row['dtype']}: {'pass' if row['passed'] else 'FAIL'} "
            f"max|d|={row['max_abs']:.3g} cos={row['cosine']:.6f} top1={row['top1_agreement']:.3f}"
            + (f" ({'; '.join(row['failures'])})" if row["failures"] else ""))
    for dtype in dtypes:
        torch_dtype = torch.float16 if dtype == "fp16" else torch.float32
        for net in networks.values():
            for module in net.values():
                module.to(torch_dtype)
        for batch in batches:
            x = torch.randn(batch, 3, size, size, generator=gen).to(device=device, dtype=torch_dtype)
            for mode in modes:
                forms = {(n, f): m for n, net in networks.items() for f, m in net.items()}
                stats = time_side_by_side(forms, x, mode, device, config)
                for (net_name, form), s in stats.items():
                    vanilla = stats[(vanilla_of[net_name], "vanilla")].median
                    decomposed = stats.get((net_name, "decomposed"))
                    row = {"network": net_name, "form": form, "dtype": dtype, "batch": batch, "mode": mode,
                           "median_ms": s.median, "p90_ms": s.p90, "samples": s.count, "cv": s.cv,
                           "over_vanilla": s.median / vanilla,
                           "macs_ratio": cost[net_name] / cost[vanilla_of[net_name]]}
                    if decomposed is not None:
                        row["vanilla_ms"] = vanilla
                        row["decomposed_ms"] = decomposed.median
                        row["decomposed_over_vanilla"] = decomposed.median / vanilla
                        row["fused_over_decomposed"] = s.median / decomposed.median
                    result["timings"].append(row)
                    if form == "fused":
                        log(f"NET {net_name} {dtype} b{batch} {mode}: decomposed {decomposed.median:.3f} ms, fused "
                            f"{s.median:.3f} ms ({row['fused_over_decomposed']:.2f}x), vs vanilla "
                            f"{row['over_vanilla']:.2f} (MACs {row['macs_ratio']:.3f})")
    result["failures"] = failures
    result["seconds"] = time.time() - started
    write_json(result)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write("\n".join(markdown(result)) + "\n")
    log(f"{'FAIL' if failures else 'PASS'}: {failures} parity failure(s) in {result['seconds']:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
