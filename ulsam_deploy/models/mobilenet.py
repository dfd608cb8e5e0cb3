"""MobileNet-V1 and MobileNet-V2 with ULSAM at any legal paper position.

Layout: ``features[k-1]`` is paper layer ``k`` (for MV2 exactly torchvision's key layout, so its
ImageNet weights load); a replaced layer's slot holds the ULSAM itself; an inserted ULSAM ("k:1")
lives in ``ulsam_after[str(k)]`` so the surrounding keys keep their torchvision names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ulsam_deploy.errors import ConfigError
from ulsam_deploy.models.positions import LayerSpec, Position, format_positions, parse_positions, validate_positions
from ulsam_deploy.models.ulsam import ULSAM

ARCHS = ("mv1", "mv2")
ARCH_ALIASES = {
    "mv1": "mv1", "mobilenet_v1": "mv1", "mobilenetv1": "mv1", "mobilenet-v1": "mv1",
    "mv2": "mv2", "mobilenet_v2": "mv2", "mobilenetv2": "mv2", "mobilenet-v2": "mv2",
}


def canonical_arch(arch: str) -> str:
    key = str(arch).strip().lower()
    if key not in ARCH_ALIASES:
        raise ConfigError(f"Unknown architecture '{arch}'; choose one of: {', '.join(ARCHS)}.")
    return ARCH_ALIASES[key]


@dataclass
class ModelConfig:
    """Everything needed to rebuild a network; stored in checkpoints and ONNX sidecars."""

    arch: str = "mv2"
    width: float = 1.0
    ulsam: str = ""
    groups: int = 4
    num_classes: int = 1000
    input_size: int = 224
    in_channels: int = 3
    plain_ulsam: bool = False
    dropout: float = 0.2
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.arch = canonical_arch(self.arch)
        self.width = float(self.width)
        self.groups, self.num_classes = int(self.groups), int(self.num_classes)
        self.input_size, self.in_channels = int(self.input_size), int(self.in_channels)
        self.ulsam = format_positions(parse_positions(self.ulsam))
        if self.width <= 0 or self.width > 4:
            raise ConfigError(f"Width multiplier {self.width} is out of range; use a value in (0, 4], e.g. 1.0, 0.75, 0.5.")
        if self.groups not in (1, 2, 4, 8, 16, 32):
            raise ConfigError(f"ULSAM groups must be one of 1, 2, 4, 8, 16 (32 also allowed), not {self.groups}.")
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1, not {self.num_classes}.")
        if self.input_size < 8:
            raise ConfigError(f"Input size {self.input_size} is too small; use at least 8 pixels (224 for ImageNet).")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def positions(self) -> list[Position]:
        return parse_positions(self.ulsam)

    def describe(self) -> str:
        name = {"mv1": "MobileNet-V1", "mv2": "MobileNet-V2"}[self.arch]
        att = f" + ULSAM {self.ulsam} (g={self.groups})" if self.ulsam else ""
        return f"{name} x{self.width:g}{att}, {self.num_classes} classes, {self.input_size}x{self.input_size}"


# ---------------------------------------------------------------------------------------- layers

def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's channel rounding for MobileNet-V2 (keeps its weights' shapes)."""
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


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


def mv1_layer_specs(width: float, num_classes: int, in_channels: int = 3) -> list[LayerSpec]:
    c = lambda ch: max(1, int(ch * width))  # noqa: E731
    specs = [LayerSpec(1, "conv3x3", in_channels, c(32), 2)]
    plan = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)]
    plan += [(512, 512, 1)] * 5 + [(512, 1024, 2), (1024, 1024, 1)]
    for number, (cin, cout, stride) in enumerate(plan, start=2):
        specs.append(LayerSpec(number, "dws", c(cin), c(cout), stride))
    specs.append(LayerSpec(15, "classifier", c(1024), num_classes, 1, spatial=False))
    return specs


MV2_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def mv2_layer_specs(width: float, num_classes: int, in_channels: int = 3) -> list[LayerSpec]:
    cin = make_divisible(32 * width)
    last = make_divisible(1280 * max(1.0, width))
    specs = [LayerSpec(1, "conv3x3", in_channels, cin, 2)]
    number = 2
    for t, ch, n, s in MV2_SETTINGS:
        cout = make_divisible(ch * width)
        for i in range(n):
            specs.append(LayerSpec(number, f"inverted_residual(t={t})", cin, cout, s if i == 0 else 1))
            cin, number = cout, number + 1
    specs.append(LayerSpec(19, "conv1x1", cin, last, 1))
    specs.append(LayerSpec(20, "classifier", last, num_classes, 1, spatial=False))
    return specs


def layer_specs(config: ModelConfig) -> list[LayerSpec]:
    fn = mv1_layer_specs if config.arch == "mv1" else mv2_layer_specs
    return fn(config.width, config.num_classes, config.in_channels)


# -------------------------------------------------------------------------------------- networks

class MobileNetULSAM(nn.Module):
    """MV1 / MV2 backbone with ULSAM blocks; ``features[k-1]`` is paper layer ``k``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
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
