"""GPU-only checks (marker ``gpu``): the Triton kernel and the C++ launcher's AOT PTX on a real
GPU via scripts/gpu_kernel_bench.py. Skipped with the reason where no CUDA GPU is present."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_kernel_bench.py"
HAVE_GPU = torch.cuda.is_available()


def _load():
    spec = importlib.util.spec_from_file_location("gpu_kernel_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_GPU, reason="needs a CUDA GPU")
def test_kernel_and_launcher_on_gpu():
    """Triton kernel vs oracle on the GPU, then the CMake-built launcher self-test (AOT PTX)."""
    assert _load().main(["--quick", "--skip-bench"]) == 0


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_GPU, reason="needs a CUDA GPU")
def test_benchmark_runs_and_writes_rows(tmp_path):
    out = tmp_path / "bench.md"
    assert _load().main(["--quick", "--skip-launcher", "--out", str(out)]) == 0
    text = out.read_text()
    assert "fused us" in text
    assert text.count("\n| ") >= 8


def test_script_skips_cleanly_without_gpu(monkeypatch, capsys):
    mod = _load()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert mod.main([]) == 0
    assert mod.main(["--strict-skip"]) == 77
    assert "SKIP" in capsys.readouterr().out
