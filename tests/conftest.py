"""Shared fixtures (helpers live in tests/helpers.py, imported as ``helpers``)."""

from __future__ import annotations

import os
import random
import sys

import pytest

os.environ.setdefault("COLUMNS", "160")
# PyTorch's OpenMP threads spin-wait by default; on a shared 2-core machine a descheduled spinner stalls every
# operator (5-10x slower). Set before any test module imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _has_cuda_gpu() -> bool:
    from ulsam_deploy.backends.trt.cuda import probe_cuda_driver

    return bool(probe_cuda_driver().gpus)


# Probed once, before any test loads a stub libcuda into this process (a loaded library whose soname is
# libcuda.so.1 would answer every later dlopen("libcuda.so.1") and pass for a GPU).
HAS_CUDA_GPU = _has_cuda_gpu()

# Triton reads TRITON_INTERPRET when triton.language is first imported: set it before any test module imports
# triton, so the kernel runs in the CPU interpreter wherever there is no GPU (AOT tests use clean subprocesses)
if not HAS_CUDA_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")


_REASONS: dict[str, str | None] = {}


def _missing(marker: str) -> str | None:
    """Why a test with ``marker`` cannot run here (None: it can), probed once per session."""
    if marker not in _REASONS:
        if marker == "gpu":
            _REASONS[marker] = None if HAS_CUDA_GPU else "needs a CUDA GPU (the CUDA driver finds none here)"
        else:
            try:
                import tensorrt

                reason = None if hasattr(tensorrt, "IBuilderConfig") else "the importable 'tensorrt' is not TensorRT's"
            except Exception as exc:  # noqa: BLE001 - a broken install raises anything
                reason = (f"needs TensorRT's Python bindings ({type(exc).__name__}); trt_api tests run once per "
                          "TensorRT version in tests/test_trt_bindings.py" if marker == "trt_api" else
                          f"needs TensorRT ({type(exc).__name__}: pip install tensorrt on an x86 GPU machine) and a "
                          "GPU")
            if reason is None and marker == "tensorrt" and not HAS_CUDA_GPU:
                reason = "needs TensorRT and a GPU: TensorRT is here, no GPU"
            _REASONS[marker] = reason
    return _REASONS[marker]


def pytest_runtest_setup(item):
    """The ``gpu``, ``tensorrt`` and ``trt_api`` markers skip by themselves, with the reason (pyproject registers
    them; --strict-markers refuses any other)."""
    for marker in ("gpu", "tensorrt", "trt_api"):
        if item.get_closest_marker(marker) is not None:
            reason = _missing(marker)
            if reason:
                pytest.skip(reason)


def pytest_collection_modifyitems(config, items):
    """In the bindings matrix, leave out trt_api tests written for other TensorRT versions (never skip them)."""
    version = os.environ.get("ULSAM_TRT_BINDINGS")
    if not version:
        return
    from ulsam_deploy.backends.trt.runtime import parse_version

    here, keep, drop = parse_version(version), [], []
    for item in items:
        marker = item.get_closest_marker("trt_api")
        low, high = (marker.kwargs.get("min"), marker.kwargs.get("below")) if marker else (None, None)
        applies = (low is None or here >= parse_version(low)) and (high is None or here < parse_version(high))
        (keep if applies else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def _seeded_global_rngs():
    """Every test starts from the same global random state (Python, NumPy, PyTorch once imported), so a test's
    random weights and inputs are the same whatever ran before it: a failure is reproducible alone."""
    random.seed(0)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(0)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(0)


@pytest.fixture
def fresh_qdp(trt, monkeypatch):
    """``tensorrt.plugin`` without our plugin's definition, registering into a recorder (see trt_fakes)."""
    from trt_fakes import fresh_tensorrt_plugin

    yield from fresh_tensorrt_plugin(trt, monkeypatch)


@pytest.fixture(scope="session")
def trt():
    """TensorRT's real Python module (a matrix subprocess's bindings, or a real install); skips otherwise."""
    from trt_bindings import real_tensorrt

    return real_tensorrt()


@pytest.fixture
def cli_runner():
    from typer.testing import CliRunner

    return CliRunner()
