"""How bench runs: which backends, batches, inputs, timing and tolerances; checked when made."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import numpy as np

from ulsam_deploy.backends.judge import PRECISIONS, tolerances_for
from ulsam_deploy.bench.latency import TimingConfig
from ulsam_deploy.declared import Flag, check_flags
from ulsam_deploy.errors import UserError

MAX_BATCH = 4096


def _backend_names() -> tuple[str, ...]:
    from ulsam_deploy.backends.registry import names

    return names()


@dataclass
class BenchOptions:
    backends: tuple[str, ...] = ("torch", "ort", "trt")
    reference: str = "torch"
    batches: Annotated[tuple[int, ...], Flag("--batch-sizes", ge=1, le=MAX_BATCH)] = (1,)
    timing: TimingConfig = field(default_factory=TimingConfig)
    threads: Annotated[int | None, Flag("--threads", ge=1, le=256)] = None
    ort_providers: tuple[str, ...] = ("cpu",)
    ort_spinning: bool | None = None
    torch_device: str = "cpu"
    trt_device: Annotated[int, Flag("--trt-device", ge=0, le=63)] = 0
    inputs: str | None = None  # None: random; else image dir / file / glob
    num_inputs: Annotated[int | None, Flag("--num-inputs", ge=1)] = None  # random count (default 16) or image limit
    seed: Annotated[int, Flag("--seed", ge=0, le=2**32 - 1)] = 0
    label_regex: str | None = None
    mean: tuple | None = None
    std: tuple | None = None
    resize: int | None = None
    crop_pct: float | None = None
    threshold_overrides: dict = field(default_factory=dict)
    parity: bool = True
    latency: bool = True
    parity_batch: Annotated[int, Flag("--parity-batch", ge=1)] = 16
    export_missing_onnx: bool = True
    sizes: tuple[tuple[int, int], ...] | None = None  # input (H, W) to time and judge at [default: the model's own]

    def __post_init__(self) -> None:
        known = _backend_names()
        unknown = [b for b in self.backends if b not in known]
        if unknown:
            raise UserError(f"Unknown backend(s) {', '.join(unknown)}; choose from {', '.join(known)} (e.g. --backends torch,ort).")
        if not self.backends:
            raise UserError("--backends is empty; choose from torch, ort, trt.")
        if self.reference not in _backend_names():
            raise UserError(f"--reference must be one of {', '.join(_backend_names())}, not '{self.reference}'.")
        if not self.batches:
            raise UserError(f"--batch-sizes needs integers from 1 to {MAX_BATCH} such as 1,8,32.")
        check_flags(self)
        self.batches = tuple(dict.fromkeys(int(b) for b in self.batches))
        if self.std is not None and not all(np.isfinite(s) and s > 0 for s in self.std):
            raise UserError(f"--std values must be positive, not {list(self.std)}.")
        if self.mean is not None and not all(np.isfinite(m) for m in self.mean):
            raise UserError(f"--mean values must be finite numbers, not {list(self.mean)}.")
        if self.inputs is None and any(v is not None for v in (self.mean, self.std, self.resize, self.crop_pct,
                                                               self.label_regex)):
            raise UserError("--mean, --std, --resize, --crop-pct and --label-regex describe images: use them with "
                            "--inputs (random inputs are already normalized).")
        if self.sizes is not None:
            self.sizes = tuple(dict.fromkeys((int(h), int(w)) for h, w in self.sizes))
            if not self.sizes or any(not 8 <= v <= 4096 for hw in self.sizes for v in hw):
                raise UserError(f"--input-size needs sizes from 8 to 4096 pixels such as 224,320,480 (or HxW), not "
                                f"{','.join(f'{h}x{w}' for h, w in self.sizes) or 'nothing'}.")
            if self.inputs is not None and any(h != w for h, w in self.sizes):
                raise UserError("Real images (--inputs) are center-cropped to squares; give square --input-size values "
                                "such as 320, or bench non-square sizes on random inputs.")

    def to_dict(self) -> dict:
        return {"backends": list(self.backends), "reference": self.reference, "batches": list(self.batches),
                "timing": {"warmup_s": self.timing.warmup_s, "min_iterations": self.timing.min_iters,
                           "min_seconds": self.timing.min_seconds, "block_s": self.timing.block_s,
                           "interleaved": True},
                "threads": self.threads, "ort_providers": list(self.ort_providers), "torch_device": self.torch_device,
                "trt_device": self.trt_device, "seed": self.seed, "parity": self.parity, "latency": self.latency,
                "sizes": [list(hw) for hw in self.sizes] if self.sizes else None,
                "tolerances": {p: tolerances_for(p, self.threshold_overrides).to_dict() for p in PRECISIONS}}


def parse_sizes(text: str | None) -> tuple[tuple[int, int], ...] | None:
    """``"224,320,480"`` -> ((224, 224), (320, 320), (480, 480)); ``"320x480"`` -> ((320, 480),); None -> None."""
    if text is None or not str(text).strip():
        return None
    sizes = []
    for token in (t.strip().lower() for t in str(text).split(",") if t.strip()):
        parts = token.split("x")
        if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
            raise UserError(f"--input-size '{text}' is not a comma-separated list of sizes such as 224,320,480 (or "
                            "HxW such as 320x480).")
        h, w = int(parts[0]), int(parts[-1])
        sizes.append((h, w))
    return tuple(sizes)


__all__ = ["BenchOptions", "MAX_BATCH", "parse_sizes"]
