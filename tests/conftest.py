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
            elif isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 0.2, generator=gen)
    return model


@pytest.fixture
def cli_runner():
    from typer.testing import CliRunner

    return CliRunner()
