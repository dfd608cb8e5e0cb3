"""The network configuration and layer table, torch-free (sidecars, bench and build-trt read them on a
board without PyTorch). Paper layer numbers are ULSAM.md's; ``LayerSpec`` rows drive the networks,
the position grammar and the cost counting alike.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field

from ulsam_deploy.errors import ConfigError
from ulsam_deploy.models.positions import LayerSpec, Position, format_positions, parse_positions

ARCHS = ("mv1", "mv2")
# (arch, width, positions) of every configuration the paper trains (ULSAM.md), each with groups in PAPER_GROUPS
PAPER_CONFIGS = (
    ("mv1", 1.0, "11:1"), ("mv1", 1.0, "12:1"), ("mv1", 1.0, "13:1"),
    ("mv1", 1.0, "8:1,9:1,11"), ("mv1", 0.75, "8:1,9:1,11"), ("mv1", 0.5, "8:1,9:1,11"),
    ("mv2", 1.0, "17:1"), ("mv2", 1.0, "13"), ("mv2", 1.0, "16"), ("mv2", 1.0, "9,13"),
    ("mv2", 1.0, "16,17"), ("mv2", 1.0, "14,17"), ("mv2", 1.0, "13,14,16,17"),
)
PAPER_GROUPS = (1, 2, 4, 8, 16)
MAX_INPUT_SIZE = 4096  # the sidecar schema's bound too
MAX_IN_CHANNELS = 64
MAX_CLASSES = 1_000_000
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
        if not isinstance(self.arch, str) or not isinstance(self.ulsam, str):
            raise ConfigError(f"arch and ulsam must be text, not {self.arch!r} and {self.ulsam!r}.")
        self.arch = canonical_arch(self.arch)
        self.width = _number(self.width, "width", float)
        self.groups = _number(self.groups, "groups", int)
        self.num_classes = _number(self.num_classes, "num_classes", int)
        self.input_size = _number(self.input_size, "input_size", int)
        self.in_channels = _number(self.in_channels, "in_channels", int)
        self.dropout = _number(self.dropout, "dropout", float)
        if not isinstance(self.plain_ulsam, bool):
            raise ConfigError(f"plain_ulsam must be true or false, not {self.plain_ulsam!r}.")
        if not isinstance(self.extra, dict):
            raise ConfigError(f"extra must be a mapping, not {type(self.extra).__name__}.")
        self.ulsam = format_positions(parse_positions(self.ulsam))
        if self.width <= 0 or self.width > 4:
            raise ConfigError(f"Width multiplier {self.width} is out of range; use a value in (0, 4], e.g. 1.0, 0.75, 0.5.")
        if self.groups not in (1, 2, 4, 8, 16, 32):
            raise ConfigError(f"ULSAM groups must be one of 1, 2, 4, 8, 16 (32 also allowed), not {self.groups}.")
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1, not {self.num_classes}.")
        if self.input_size < 8:
            raise ConfigError(f"Input size {self.input_size} is too small; use at least 8 pixels (224 for ImageNet).")
        if self.input_size > MAX_INPUT_SIZE:
            raise ConfigError(f"Input size {self.input_size} is too large; use at most {MAX_INPUT_SIZE} pixels.")
        if not 1 <= self.in_channels <= MAX_IN_CHANNELS:
            raise ConfigError(f"in_channels must be from 1 to {MAX_IN_CHANNELS}, not {self.in_channels}.")
        if self.num_classes > MAX_CLASSES:
            raise ConfigError(f"{self.num_classes:,} classes are more than the {MAX_CLASSES:,} ulsam-deploy builds "
                              "(a damaged file, or a typo in --num-classes).")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), not {self.dropout}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """A config from stored data (checkpoint, sidecar): anything of the wrong kind is a ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"The model config must be a mapping, not {type(data).__name__}.")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def parameter_count(self) -> int:
        """Weights of the network, estimated from the layer table (torch-free; within a few percent)."""
        total = 0
        for spec in layer_specs(self):
            cin, cout = spec.in_channels, spec.out_channels
            if spec.op == "conv3x3":
                total += cin * cout * 9
            elif spec.op == "dws":
                total += cin * 9 + cin * cout
            elif spec.op.startswith("inverted_residual"):
                hidden = cin * int(spec.op.split("t=")[1].rstrip(")"))
                total += cin * hidden + hidden * 9 + hidden * cout
            else:  # conv1x1, classifier
                total += cin * cout + cout
        return total

    @property
    def positions(self) -> list[Position]:
        return parse_positions(self.ulsam)

    def describe(self) -> str:
        name = {"mv1": "MobileNet-V1", "mv2": "MobileNet-V2"}[self.arch]
        att = f" + ULSAM {self.ulsam} (g={self.groups})" if self.ulsam else ""
        return f"{name} x{self.width:g}{att}, {self.num_classes} classes, {self.input_size}x{self.input_size}"


def _number(value, name: str, kind):
    """``value`` as ``kind`` (int or float); booleans, text and fractions for ints are refused (stored configs are
    untrusted input)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, not {value!r}.")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number, not {value!r}.")
    if kind is int:
        if number != int(number):
            raise ConfigError(f"{name} must be a whole number, not {value!r}.")
        return int(number)
    return number


# ---------------------------------------------------------------------------------------- layers

def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's channel rounding for MobileNet-V2 (keeps its weights' shapes)."""
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


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


# ------------------------------------------------------------------------------------ features

@dataclass(frozen=True)
class FeatureTap:
    """One backbone output: the map after paper layer ``layer`` (and after a ULSAM inserted there, ``k:1``)."""

    layer: int
    stride: int  # input pixels per feature cell
    channels: int
    name: str  # graph output name: feat_s8 for the last layer at stride 8, feat_s8_l6 for an earlier one

    def to_dict(self) -> dict:
        return asdict(self)


def layer_strides(config: ModelConfig) -> dict[int, tuple[int, int]]:
    """``{paper layer: (cumulative stride, output channels)}`` of every spatial layer (a replaced layer keeps both)."""
    out, stride = {}, 1
    for spec in layer_specs(config):
        if not spec.spatial:
            continue
        stride *= spec.stride
        out[spec.number] = (stride, spec.out_channels)
    return out


def stride_layers(config: ModelConfig) -> dict[int, int]:
    """``{stride: the last paper layer at that stride}``: what ``s8`` names (MV2: s8 = 7, s16 = 14, s32 = 19)."""
    return {stride: layer for layer, (stride, _) in sorted(layer_strides(config).items())}


def _valid_features(config: ModelConfig) -> str:
    layers = layer_strides(config)
    strides = ", ".join(f"s{s} (layer {k})" for s, k in stride_layers(config).items())
    return f"layers {min(layers)}-{max(layers)} or strides {strides}"


def feature_taps(config: ModelConfig, text: str) -> list[FeatureTap]:
    """Parse ``--features`` (``"7,14,19"`` paper layers, ``"s8,s16,s32"`` strides, or a mix) into taps sorted by
    layer; a layer or stride this network does not have is a one-sentence :class:`ConfigError`."""
    layers = layer_strides(config)
    by_stride = stride_layers(config)
    name = {"mv1": "MobileNet-V1", "mv2": "MobileNet-V2"}[config.arch]
    chosen: list[int] = []
    tokens = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    if not tokens:
        raise ConfigError(f"--features is empty; choose {_valid_features(config)}, e.g. 's8,s16,s32'.")
    for token in tokens:
        if token.startswith("s") and token[1:].isdigit():
            layer = by_stride.get(int(token[1:]))
            if layer is None:
                raise ConfigError(f"{name} has no feature map at stride {token[1:]} ('{token}'); choose "
                                  f"{_valid_features(config)}.")
        elif token.isdigit():
            layer = int(token)
            if layer not in layers:
                what = " (the classifier)" if layer == max(layers) + 1 and config.arch == "mv2" else ""
                raise ConfigError(f"{name} has no feature layer {layer}{what}; choose {_valid_features(config)}.")
        else:
            raise ConfigError(f"--features '{token}' is neither a paper layer number nor a stride such as s8; choose "
                              f"{_valid_features(config)}.")
        if layer in chosen:
            raise ConfigError(f"--features names layer {layer} twice ('{text}'); list each feature map once.")
        chosen.append(layer)
    taps = []
    for layer in sorted(chosen):
        stride, channels = layers[layer]
        tag = f"feat_s{stride}" if by_stride[stride] == layer else f"feat_s{stride}_l{layer}"
        taps.append(FeatureTap(layer, stride, channels, tag))
    return taps


def network_stride(config: ModelConfig, taps: list[FeatureTap] | None = None) -> int:
    """The stride of the deepest map the exported graph computes: input sizes must be multiples of it."""
    if taps:
        return max(t.stride for t in taps)
    return max(stride for stride, _ in layer_strides(config).values())
