"""MobileNet-V1 and MobileNet-V2 with ULSAM at any legal paper position.

Layout: ``features[k-1]`` is paper layer ``k`` (for MV2 exactly torchvision's key layout, so its
ImageNet weights load); a replaced layer's slot holds the ULSAM itself; an inserted ULSAM ("k:1")
lives in ``ulsam_after[str(k)]`` so the surrounding keys keep their torchvision names.
"""

from __future__ import annotations

import torch
from torch import nn

from ulsam_deploy.models.config import (ModelConfig, layer_specs)
from ulsam_deploy.models.positions import LayerSpec, validate_positions
from ulsam_deploy.models.ulsam import ULSAM

class ConvBNAct(nn.Sequential):
    """Conv + BN + activation; keys ``0`` conv, ``1`` bn (torchvision's Conv2dNormActivation)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act=nn.ReLU6):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            act(inplace=True),
        )
        self.out_channels = cout


class DepthwiseSeparable(nn.Sequential):
    """MobileNet-V1 block: depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class InvertedResidual(nn.Module):
    """MobileNet-V2 block in torchvision's layout (``conv.0`` ... ``conv.3``)."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(cin, hidden, kernel=1))
        layers += [
            ConvBNAct(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# -------------------------------------------------------------------------------------- networks

class MobileNetULSAM(nn.Module):
    """MV1 / MV2 backbone with ULSAM blocks; ``features[k-1]`` is paper layer ``k``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        from ulsam_deploy.limits import fit_weights

        fit_weights(config.parameter_count(), config.describe())  # before any tensor exists
        self.config = config
        specs = layer_specs(config)
        positions = config.positions
        validate_positions(positions, specs, config.groups, config.arch)
        replaced = {p.layer for p in positions if p.replace}
        inserted = sorted(p.layer for p in positions if not p.replace)

        features: list[nn.Module] = []
        for spec in specs:
            if not spec.spatial:
                continue
            if spec.number in replaced:
                features.append(ULSAM(spec.in_channels, config.groups, config.plain_ulsam))
            else:
                features.append(self._make_layer(spec))
        self.features = nn.Sequential(*features)
        out_channels = {spec.number: spec.out_channels for spec in specs}
        self.ulsam_after = nn.ModuleDict(
            {str(k): ULSAM(out_channels[k], config.groups, config.plain_ulsam) for k in inserted}
        )
        head = specs[-1]
        self.classifier = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(head.in_channels, head.out_channels))
        self._init_weights()

    def _make_layer(self, spec: LayerSpec) -> nn.Module:
        mv1 = self.config.arch == "mv1"
        if spec.op == "conv3x3":
            return ConvBNAct(spec.in_channels, spec.out_channels, 3, spec.stride, act=nn.ReLU if mv1 else nn.ReLU6)
        if spec.op == "conv1x1":
            return ConvBNAct(spec.in_channels, spec.out_channels, 1, 1)
        if spec.op == "dws":
            return DepthwiseSeparable(spec.in_channels, spec.out_channels, spec.stride)
        t = int(spec.op.split("t=")[1].rstrip(")"))
        return InvertedResidual(spec.in_channels, spec.out_channels, spec.stride, t)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.features):
            x = layer(x)
            after = self.ulsam_after[str(index + 1)] if str(index + 1) in self.ulsam_after else None
            if after is not None:
                x = after(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)


class Backbone(nn.Module):
    """The feature maps of a :class:`MobileNetULSAM` after the paper layers ``layers`` (each with the ULSAM inserted
    after it, ``k:1``), as a tuple in layer order; layers past the deepest one and the classifier are not run."""

    def __init__(self, model: nn.Module, layers: list[int]):
        super().__init__()
        if not layers:
            raise ValueError("a backbone needs at least one feature layer")
        self.model = model
        self.config = model.config
        self.layers = sorted(int(k) for k in layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        taps, wanted = [], set(self.layers)
        for index in range(self.layers[-1]):
            x = self.model.features[index](x)
            key = str(index + 1)
            if key in self.model.ulsam_after:
                x = self.model.ulsam_after[key](x)
            if index + 1 in wanted:
                taps.append(x)
        return tuple(taps)


def build_model(
    arch: str = "mv2",
    width: float = 1.0,
    ulsam: str = "",
    groups: int = 4,
    num_classes: int = 1000,
    input_size: int = 224,
    **kwargs,
) -> MobileNetULSAM:
    """Build MV1/MV2 with ULSAM at paper positions, e.g. ``build_model("mv1", 0.75, "8:1,9:1,11")``."""
    config = ModelConfig(arch=arch, width=width, ulsam=ulsam or "", groups=groups,
                         num_classes=num_classes, input_size=input_size, **kwargs)
    return MobileNetULSAM(config)


def calibrate_batchnorm(model: nn.Module, inputs, *, batches: int | None = None) -> nn.Module:
    """Give every BatchNorm the statistics of ``inputs`` (a tensor N,C,H,W or an iterable of batches), then eval.

    A freshly built network keeps BatchNorm's default statistics, and in eval mode every layer then shrinks its
    activations: logits of ~1e-9, the same for every image, so any parity check of it passes and proves nothing
    (the gates refuse such outputs). A few forward passes over real (or at least varied) images fix that; weights
    are untouched. Returns ``model`` in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch given
    stream = [inputs] if isinstance(inputs, torch.Tensor) else inputs
    model.train()
    try:
        with torch.no_grad():
            for i, batch in enumerate(stream):
                if batches is not None and i >= batches:
                    break
                model(batch)
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.eval()
    return model
