"""The paper's ULSAM position notation.

``"k:1"`` inserts a ULSAM right after paper layer ``k``; ``"k"`` replaces layer ``k`` by a ULSAM,
which is only legal where the layer keeps channels and resolution (in == out, stride 1).
Several positions are comma-separated: ``"8:1,9:1,11"``. The empty string means no ULSAM.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ulsam_deploy.errors import ConfigError


@dataclass(frozen=True)
class LayerSpec:
    """One paper-numbered layer of a network at a given width (what positions are checked against)."""

    number: int
    op: str  # e.g. "conv3x3", "dws", "inverted_residual", "conv1x1", "classifier"
    in_channels: int
    out_channels: int
    stride: int
    spatial: bool = True  # produces an N x C x h x w map (False for the classifier)

    @property
    def replaceable(self) -> bool:
        return self.spatial and self.stride == 1 and self.in_channels == self.out_channels


@dataclass(frozen=True)
class Position:
    layer: int
    replace: bool  # True: "k" (replace layer k); False: "k:1" (insert after layer k)

    def __str__(self) -> str:
        return str(self.layer) if self.replace else f"{self.layer}:1"


_TOKEN = re.compile(r"^(\d+)(?::(\d+))?$")


def parse_positions(text: str | None) -> list[Position]:
    """Parse ``"8:1,9:1,11"`` into positions (syntax only; see :func:`validate_positions`)."""
    if text is None:
        return []
    text = text.strip()
    if text.lower() in ("", "none", "vanilla"):
        return []
    positions: list[Position] = []
    for raw in text.split(","):
        token = raw.strip()
        match = _TOKEN.match(token)
        if not match:
            raise ConfigError(
                f"ULSAM position '{token}' is not in the paper's notation; "
                "write 'k:1' to insert after layer k or 'k' to replace layer k, e.g. '8:1,9:1,11'."
            )
        layer = int(match.group(1))
        if match.group(2) is not None and match.group(2) != "1":
            raise ConfigError(
                f"ULSAM position '{token}' is not defined: only 'k:1' (one ULSAM after layer k) exists; use '{layer}:1'."
            )
        pos = Position(layer, replace=match.group(2) is None)
        if pos in positions:
            raise ConfigError(f"ULSAM position '{pos}' is given twice; list each position once.")
        positions.append(pos)
    return positions


def format_positions(positions: list[Position]) -> str:
    return ",".join(str(p) for p in sorted(positions, key=lambda p: (p.layer, not p.replace)))


def validate_positions(
    positions: list[Position], layers: list[LayerSpec], groups: int, arch: str
) -> None:
    """Raise :class:`ConfigError` naming the layer when a position is illegal for this network."""
    by_number = {spec.number: spec for spec in layers}
    last = max(spec.number for spec in layers if spec.spatial)
    for pos in positions:
        spec = by_number.get(pos.layer)
        if spec is not None and not spec.spatial and arch == "mv1":
            spec = None  # the paper does not number MV1's classifier
        if spec is None:
            raise ConfigError(
                f"ULSAM position '{pos}': {arch} has no layer {pos.layer}; its feature layers are numbered 1 to {last}."
            )
        if not spec.spatial:
            raise ConfigError(
                f"ULSAM position '{pos}': layer {pos.layer} of {arch} is the classifier, which has no feature map; "
                "place ULSAM after a convolutional layer."
            )
        if pos.replace:
            if not spec.replaceable:
                raise ConfigError(
                    f"ULSAM position '{pos}': layer {pos.layer} of {arch} ({spec.op}, {spec.in_channels}->"
                    f"{spec.out_channels} channels, stride {spec.stride}) changes channels or resolution, so ULSAM "
                    f"cannot replace it; use '{pos.layer}:1' to insert after it instead."
                )
            channels = spec.in_channels
        else:
            channels = spec.out_channels
        if channels % groups != 0:
            raise ConfigError(
                f"ULSAM position '{pos}': layer {pos.layer} of {arch} has {channels} channels, which do not split "
                f"into {groups} groups; choose groups that divide {channels}."
            )
