#!/usr/bin/env python
"""The fleet's overhead on one local worker against a plain ``bench`` of the same artifacts, side by side.

Both are the commands a user types, timed from start to exit, alternated (bench, fleet, bench, fleet, ...) so the
machine's drift hits both alike. The fleet's wall time includes what it adds: starting Dask, sending the files,
the device's ``doctor``, and gathering the report.

    python scripts/fleet_overhead.py --rounds 3 --out docs/results/fleet-overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "ulsam_deploy"]


def run(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(CLI + args, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="bench --duration per row")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["ULSAM_FLEET_DIR"] = str(work / "boards")
        run(["export", "fashion-mnist", "-o", "m.onnx"], work)
        run(["convert", "m.onnx", "--precision", "fp16", "-o", "m.fp16.onnx"], work)
        timing = ["--batch-sizes", args.batch_sizes, "--duration", str(args.duration)]
        bench_cmd = ["bench", "m.onnx", "--onnx", "m.fp16.onnx", "--backends", "ort", "--reference", "ort",
                     *timing, "--json", "bench.json", "--force"]
        fleet_cmd = ["fleet", "m.onnx", "m.fp16.onnx", "--kinds", "cpu", *timing, "--json", "fleet.json", "--force"]
        bench_s, fleet_s = [], []
        for i in range(args.rounds):
            bench_s.append(run(bench_cmd, work))
            fleet_s.append(run(fleet_cmd, work))
            print(f"round {i + 1}: bench {bench_s[-1]:.2f} s, fleet {fleet_s[-1]:.2f} s", flush=True)
        rows = json.loads((work / "fleet.json").read_text())["matrix"]
    result = {
        "what": "ulsam-deploy fleet (embedded cluster, one cpu worker) vs ulsam-deploy bench, same artifacts and "
                "timing flags, wall time of the whole command, alternated",
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "cpus": os.cpu_count()},
        "artifacts": ["m.onnx (bundled fashion-mnist, fp32)", "m.fp16.onnx"],
        "bench_command": "ulsam-deploy " + " ".join(bench_cmd), "fleet_command": "ulsam-deploy " + " ".join(fleet_cmd),
        "bench_seconds": [round(s, 3) for s in bench_s], "fleet_seconds": [round(s, 3) for s in fleet_s],
        "bench_median_s": round(statistics.median(bench_s), 3), "fleet_median_s": round(statistics.median(fleet_s), 3),
        "overhead": round(statistics.median(fleet_s) / statistics.median(bench_s) - 1, 4),
        "goal": "<= 0.10", "fleet_rows": len(rows),
    }
    print(json.dumps({k: result[k] for k in ("bench_median_s", "fleet_median_s", "overhead")}))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
