"""Shared fixtures and helpers for the test suite."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("COLUMNS", "160")


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics so folding mistakes cannot hide."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
                if n == 1:  # ULSAM's bn_point: keep most logits above relu_point's zero so maps vary
                    m.weight.fill_(2.0)
                    m.bias.fill_(1.0)
            elif isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 0.2, generator=gen)
    return model


def pytest_configure(config):
    config.addinivalue_line("markers", "trt_api(min=None, below=None): runs on TensorRT's real Python bindings, once "
                                       "per version of the matrix in tests/test_trt_bindings.py (skipped elsewhere "
                                       "without TensorRT); min/below: the TensorRT versions it applies to")


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


def attention_spread(module: torch.nn.Module, x: torch.Tensor) -> float:
    """Largest spread (max - min) of the attention maps an eval ULSAM applies to ``x``.

    ``y = x * (1 + A)``, so ``A = y / x - 1`` where ``x`` is not tiny. A uniform map (spread 0)
    would hide wrong constants, so tests assert a spread well above zero.
    """
    with torch.no_grad():
        y = module(x)
    mask = x.abs() > 1e-3
    a = torch.where(mask, y / torch.where(mask, x, torch.ones_like(x)) - 1, torch.nan)
    spread = a.flatten(2).nan_to_num(nan=0.0).amax(2) - a.flatten(2).nan_to_num(nan=1e9).amin(2)
    return float(spread.max())
