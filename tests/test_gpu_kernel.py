"""GPU-only checks (marker ``gpu``): the Triton kernel and the C++ launcher's AOT PTX on a real
GPU via scripts/gpu_kernel_bench.py. Skipped with the reason where no CUDA GPU is present."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_kernel_bench.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_kernel_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.gpu
def test_kernel_and_launcher_on_gpu():
    """Triton kernel vs oracle on the GPU, then the CMake-built launcher self-test on the shipped
    images (cubin and PTX)."""
    assert _load().main(["--quick", "--skip-bench"]) == 0


@pytest.mark.gpu
def test_benchmark_runs_and_writes_rows(tmp_path):
    out = tmp_path / "bench.md"
    assert _load().main(["--quick", "--skip-launcher", "--out", str(out)]) == 0
    text = out.read_text()
    assert "fused us" in text
    assert text.count("\n| ") >= 8


def test_script_skips_cleanly_without_gpu(monkeypatch, capsys, tmp_path):
    mod = _load()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert mod.main([]) == 0
    assert mod.main(["--strict-skip"]) == 77
    assert "SKIP" in capsys.readouterr().out
    assert mod.main(["--json", str(tmp_path / "r.json")]) == 0
    assert "no CUDA GPU" in json.loads((tmp_path / "r.json").read_text())["skipped"]


def test_selftest_output_parsing():
    """The launcher self-test lines the JSON is built from (format of launcher_selftest.cpp)."""
    out = ("device: X (sm_90, 132 SMs, L2 51200 KiB, driver CUDA 12.8)\n"
           "IMAGE fp32 variant=0 cubin sm_90\nIMAGE fp32 variant=1 cubin sm_90\nPREPARE fp32 1.5 ms\n"
           "IMAGE fp16 variant=0 ptx sm_75\nPREPARE fp16 230.0 ms\n"
           "PASS N=1 C=96 14x14 g=4 relu=11 fp32 err/tol=0.1\nFAIL N=2 C=160 7x7 g=1 relu=11 fp16 err/tol=3\n"
           "BENCH N=64 C=512 14x14 g=4 fp16 12.50 us 2055.0 GB/s (min traffic) err/tol=0.2\n")
    info = _load().parse_selftest(out)
    assert [i["kind"] for i in info["images"]] == ["cubin", "cubin", "ptx"] and info["images"][2]["arch"] == 75
    assert info["prepare_ms"] == {"fp32": 1.5, "fp16": 230.0}
    assert (info["checks_passed"], info["checks_failed"]) == (1, 1)
    assert info["bench"] == [{"shape": [64, 512, 14, 14, 4], "dtype": "fp16", "us": 12.5, "gbs": 2055.0}]


def test_goals_use_the_stated_thresholds():
    mod = _load()
    row = {"bytes_moved": 64 << 20, "pct_of_peak": 61.0, "speedup_vs_decomposed": 2.9}
    rows = [dict(row, shape=[64, 512, 14, 14, 4], dtype="fp32"), dict(row, shape=[1, 96, 14, 14, 4], dtype="fp32"),
            dict(row, shape=[64, 160, 7, 7, 4], dtype="fp16", bytes_moved=1 << 20, pct_of_peak=5.0)]
    got = mod.goals(rows)
    bw, sp = got["bandwidth_batch64_pct_of_peak>=60"], got["speedup_batch1_vs_decomposed>=3x"]
    assert bw["met"] and len(bw["rows"]) == 1  # the 1 MiB row is launch-latency bound, not counted
    assert not sp["met"] and sp["rows"][0]["speedup"] == 2.9
