"""Parameters and MACs per paper layer, counted the paper's way.

Rule (as the paper counts): multiply-accumulates and weights of convolution and linear layers only
(no biases, BatchNorm, pooling or softmax), batch 1, at the model's input size. ULSAM is counted by
the same rule, which gives the paper's ``2m`` parameters and ``2*m*h*w`` MACs per block.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ulsam_deploy.models.config import layer_specs
from ulsam_deploy.models.mobilenet import MobileNetULSAM
from ulsam_deploy.models.ulsam import ULSAM


@dataclass
class LayerCost:
    layer: str  # paper number, "k:1" for an inserted ULSAM
    op: str
    in_channels: int
    out_channels: int
    stride: int
    out_hw: str
    params: int
    macs: int
    ulsam: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ModelCost:
    params: int
    macs: int
    all_params: int
    layers: list[LayerCost]

    def to_dict(self) -> dict:
        return {"params": self.params, "macs": self.macs, "all_params": self.all_params,
                "layers": [layer.to_dict() for layer in self.layers]}


def _owner(name: str) -> str:
    """Map a module name to its paper layer key ("5", "17:1", or "head")."""
    parts = name.split(".")
    if parts[0] == "features":
        return str(int(parts[1]) + 1)
    if parts[0] == "ulsam_after":
        return f"{parts[1]}:1"
    return "head"


@torch.no_grad()
def profile_model(model: MobileNetULSAM, input_size: int | None = None) -> ModelCost:
    from ulsam_deploy.limits import ACTIVATION_FACTOR, fit_side

    config = model.config
    size = input_size or config.input_size
    fit_side(size, config.in_channels * 4 * ACTIVATION_FACTOR, "Counting MACs (one forward pass)", "--input-size")
    costs: dict[str, list[int]] = {}
    out_hw: dict[str, str] = {}
    hooks = []

    def hook(name):
        def fn(module, inputs, output):
            key = _owner(name)
            entry = costs.setdefault(key, [0, 0])
            entry[0] += module.weight.numel()
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                entry[1] += output[0].numel() * (module.in_channels // module.groups) * kh * kw
            else:
                entry[1] += module.in_features * module.out_features
        return fn

    def shape_hook(key):
        def fn(module, inputs, output):
            out_hw[key] = f"{output.shape[-2]}x{output.shape[-1]}"
        return fn

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(hook(name)))
    for index, layer in enumerate(model.features):
        hooks.append(layer.register_forward_hook(shape_hook(str(index + 1))))
    for key, layer in model.ulsam_after.items():
        hooks.append(layer.register_forward_hook(shape_hook(f"{key}:1")))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, config.in_channels, size, size))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()

    specs = {spec.number: spec for spec in layer_specs(config)}
    rows: list[LayerCost] = []
    for number, spec in sorted(specs.items()):
        key = str(number) if spec.spatial else "head"
        is_ulsam = spec.spatial and isinstance(model.features[number - 1], ULSAM)
        params, macs = costs.get(key, [0, 0])
        op = f"ULSAM (replaces {spec.op}, g={config.groups})" if is_ulsam else spec.op
        cout = spec.in_channels if is_ulsam else spec.out_channels
        label = str(number) if spec.spatial or config.arch == "mv2" else "fc"
        rows.append(LayerCost(label, op, spec.in_channels, cout, 1 if is_ulsam else spec.stride,
                              out_hw.get(key, "1x1"), params, macs, is_ulsam))
        if f"{number}:1" in costs:
            p, m = costs[f"{number}:1"]
            rows.append(LayerCost(f"{number}:1", f"ULSAM (g={config.groups})", spec.out_channels,
                                  spec.out_channels, 1, out_hw.get(f"{number}:1", ""), p, m, True))
    return ModelCost(
        params=sum(r.params for r in rows),
        macs=sum(r.macs for r in rows),
        all_params=sum(p.numel() for p in model.parameters()),
        layers=rows,
    )
