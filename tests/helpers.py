"""Helpers shared by the tests (import as ``from helpers import ...``; pytest puts tests/ on the path)."""

from __future__ import annotations

import torch

PAPER_CONFIGS = [
    ("mv1", 1.0, "11:1"), ("mv1", 1.0, "12:1"), ("mv1", 1.0, "13:1"),
    ("mv1", 1.0, "8:1,9:1,11"), ("mv1", 0.75, "8:1,9:1,11"), ("mv1", 0.5, "8:1,9:1,11"),
    ("mv2", 1.0, "17:1"), ("mv2", 1.0, "13"), ("mv2", 1.0, "16"), ("mv2", 1.0, "9,13"),
    ("mv2", 1.0, "16,17"), ("mv2", 1.0, "14,17"), ("mv2", 1.0, "13,14,16,17"),
]


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial affine weights and statistics so folding mistakes cannot hide.

    A model with a ``config`` then gets the statistics of a few seeded random batches (calibrate_batchnorm): with
    made-up statistics alone its logits are the same for every input, and the gates refuse to call such parity
    proven."""
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
                m.weight.normal_(0, 0.02, generator=gen)
    config = getattr(model, "config", None)
    if config is not None:
        from ulsam_deploy.models import calibrate_batchnorm

        size = config.input_size
        calibrate_batchnorm(model, [torch.randn(8, config.in_channels, size, size, generator=gen) for _ in range(3)])
    return model


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
