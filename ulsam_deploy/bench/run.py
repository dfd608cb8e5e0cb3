"""``bench``: parity and latency of every backend on identical inputs, as a library.

``run_bench(models, options) -> BenchReport`` is what the CLI (and ``demo``) call:

1. resolve each model (checkpoint, ONNX + sidecar, engine + sidecar, or a spec such as
   ``mv2+17:1/g4`` built with seeded random weights for latency-only comparisons);
2. open one runner per backend (torch / ort per ONNX file and provider / trt per engine);
   unavailable ones are listed as skipped with their reason;
3. build the inputs once (seeded random tensors or preprocessed real images);
4. parity: every runner on all inputs, compared with the model's reference runner and judged by the one
   judge (:mod:`ulsam_deploy.backends.judge`) with the tolerances of each artifact's precision, exactly as
   ``convert`` judges it; each runner runs its artifact as it is meant to run (an int8 model for TensorRT as
   exact Q/DQ, one for ONNX Runtime in a default session);
5. latency: for each batch size, all runners of all models timed in ONE interleaved loop
   (:mod:`ulsam_deploy.bench.latency`);
6. with two or more models, MACs ratio next to measured latency ratio, per backend.

Nothing is written or printed here; :mod:`ulsam_deploy.bench.report` renders and writes the report.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


from ulsam_deploy.artifacts import check_input_file, user_path
from ulsam_deploy.backends.base import Runner, infer_in_chunks
from ulsam_deploy.backends.judge import (PRECISIONS, REFERENCE_FIX, Tolerances, Verdict, accuracy, judge, reference_problem,
                                        tolerances_for)
from ulsam_deploy.backends.trt.runner import BUILD_ENGINE
from ulsam_deploy.bench.latency import LatencyStats, TimingConfig, TimingTarget, measure_interleaved, throughput
from ulsam_deploy.data.sources import ImageSet, load_images, random_images, resolve_preprocess
from ulsam_deploy.errors import BackendUnavailable, ParityError, UserError
from ulsam_deploy import extras

BACKENDS = ("torch", "ort", "trt")
MAX_BATCH = 4096
SCHEMA = "ulsam-deploy-bench/2"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
_SPEC = re.compile(r"^(?P<arch>mv[12])(?:x(?P<width>[0-9.]+))?(?:\+(?P<ulsam>[0-9:,]+))?(?:/g(?P<groups>\d+))?"
                   r"(?:@(?P<size>\d+))?$", re.IGNORECASE)

Event = Callable[..., None]


# ------------------------------------------------------------------------------------ models

@dataclass
class ModelSpec:
    """One model and the artifacts each backend runs."""

    name: str
    config: object | None = None  # ModelConfig
    module: object | None = None  # eval-mode torch model (torch backend, in-memory export)
    checkpoint: Path | None = None
    onnx: list = field(default_factory=list)  # paths or bytes (exported in memory)
    engines: list = field(default_factory=list)
    preprocess: object | None = None  # data.images.Preprocess from the checkpoint or sidecar
    class_names: list | None = None
    random_weights: bool = False
    notes: list = field(default_factory=list)
    graph_shape: tuple | None = None  # (channels, size, classes) read from an ONNX graph without sidecar
    features: list | None = None  # paper layers of a backbone's outputs (from its sidecar); None: a classifier
    dynamic: object | None = None  # artifacts.DynamicRange of its ONNX: the sizes it is proven at
    warnings: list = field(default_factory=list)  # what the report must say (a reference that could not be used)
    _macs: int | None = None
    _params: int | None = None

    def input_info(self) -> tuple[int, int, int | None] | None:
        """(channels, square size, classes) from the config, else from the ONNX graph; None when unknown."""
        if self.config is not None:
            return self.config.in_channels, self.config.input_size, self.config.num_classes
        return self.graph_shape

    @property
    def is_backbone(self) -> bool:
        return bool(self.features)

    def cost(self) -> tuple[int | None, int | None]:
        """(MACs, params) counted the paper's way, for a backbone up to its deepest feature layer: from the torch
        model (or the config) when torch is here, else from the first ONNX file's graph (torch-free, so
        ``--compare`` of ONNX files works on a board); None when neither is."""
        if self._macs is not None:
            return self._macs, self._params
        files = [o for o in self.onnx if not isinstance(o, (bytes, bytearray))]
        if self.module is not None or (self.config is not None and not files and not extras.missing("torch")):
            from ulsam_deploy.models import profile_model
            from ulsam_deploy.models.mobilenet import Backbone, MobileNetULSAM

            model = self.module if self.module is not None else MobileNetULSAM(self.config)
            model = model.model if isinstance(model, Backbone) else model
            rows = profile_model(model).layers
            if self.features:
                deepest = max(self.features)
                rows = [r for r in rows if r.layer.split(":")[0].isdigit() and int(r.layer.split(":")[0]) <= deepest]
            self._macs, self._params = sum(r.macs for r in rows), sum(r.params for r in rows)
        elif files:
            from ulsam_deploy.passes.cost import onnx_cost

            try:
                self._macs, self._params = onnx_cost(files[0])
            except Exception:  # noqa: BLE001 - an unreadable graph is reported by its runner, not here
                pass
        return self._macs, self._params

    def describe(self) -> dict:
        macs, params = self.cost()
        return {"name": self.name, "config": self.config.to_dict() if self.config is not None else None,
                "description": self.config.describe() if self.config is not None else None,
                "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "onnx": [str(o) if not isinstance(o, (bytes, bytearray)) else "(exported in memory)" for o in self.onnx],
                "engines": [str(e) for e in self.engines], "macs": macs, "params": params,
                "random_weights": self.random_weights, "features": self.features,
                "dynamic": self.dynamic.model_dump() if self.dynamic is not None else None, "notes": list(self.notes)}


def parse_model_spec(text: str):
    """``mv2``, ``mv2+17:1``, ``mv2+13,14,16,17/g4``, ``mv1x0.75+8:1,9:1,11@160`` -> ModelConfig, or None."""
    m = _SPEC.match(text.strip())
    if not m:
        return None
    from ulsam_deploy.models.config import ModelConfig

    return ModelConfig(arch=m["arch"].lower(), width=float(m["width"] or 1.0), ulsam=m["ulsam"] or "",
                       groups=int(m["groups"] or 4), input_size=int(m["size"] or 224))


def _engine_sidecar_onnx(engine: Path) -> Path | None:
    """The ONNX an engine was built from (recorded in its validated sidecar, matching the recorded sha256), else the
    ONNX beside it of the same stem."""
    from ulsam_deploy.artifacts import MAX_ONNX_BYTES, sha256_file
    from ulsam_deploy.backends.trt.compat import engine_sidecar_path, read_engine_sidecar

    data: dict = {}
    if engine_sidecar_path(engine).exists():
        try:
            data = read_engine_sidecar(engine)
        except UserError:
            data = {}  # the runner refuses the engine with the sentence; no metadata from it here
    ref = data.get("onnx")
    recorded_sha = ref.get("sha256") if isinstance(ref, dict) else None
    ref = (ref.get("file") or ref.get("path")) if isinstance(ref, dict) else ref
    if isinstance(ref, str) and ref:
        candidate = Path(ref) if Path(ref).is_absolute() else engine.parent / Path(ref).name
        small = candidate.is_file() and candidate.stat().st_size <= MAX_ONNX_BYTES  # never hash a huge file
        if small and (not isinstance(recorded_sha, str) or sha256_file(candidate) == recorded_sha):
            return candidate
    guess = engine.with_suffix(".onnx")
    return guess if guess.is_file() else None


def _apply_onnx_sidecar(spec: ModelSpec, onnx_path: Path) -> None:
    """Config, preprocessing, class names and checkpoint from the ONNX's (validated, hash-checked) sidecar."""
    from ulsam_deploy.artifacts import read_sidecar
    from ulsam_deploy.data.sources import preprocess_of
    from ulsam_deploy.models.config import ModelConfig
    from ulsam_deploy.steps._step import load_with_sidecar

    sidecar = read_sidecar(onnx_path, required=False)
    if sidecar is None:
        spec.notes.append(f"{onnx_path.name} has no sidecar: input shape from the graph, ImageNet mean/std")
        if spec.graph_shape is None:
            spec.graph_shape = _graph_shape(onnx_path)
        return
    load_with_sidecar(onnx_path)  # the sidecar must describe this graph
    features = [o.layer for o in sidecar.outputs if o.layer is not None] or None
    spec.features = spec.features or features
    spec.dynamic = spec.dynamic or sidecar.dynamic
    if spec.config is None and sidecar.model is not None:
        spec.config = ModelConfig.from_dict(sidecar.model.config)
    spec.preprocess = spec.preprocess or preprocess_of(sidecar)
    spec.class_names = spec.class_names or (sidecar.model.class_names if sidecar.model else None)
    recorded = sidecar.model.checkpoint if sidecar.model else None
    if spec.checkpoint is None and recorded:
        from ulsam_deploy.artifacts import sidecar_path

        where = sidecar.model.checkpoint_path(sidecar_path(onnx_path))
        bundled_name = sidecar.model.bundled_name
        if bundled_name is not None and extras.missing("torch"):
            spec.notes.append(f"the bundled model '{bundled_name}' recorded in {onnx_path.name}'s sidecar is not loaded: "
                              "PyTorch is not installed")
        elif bundled_name is not None:
            from ulsam_deploy import bundled

            spec.checkpoint = bundled.checkpoint_path(bundled_name)  # one sentence if the name is not bundled here
        elif where is not None and where.is_file():
            spec.checkpoint = where
        else:
            message = (f"the checkpoint '{recorded}' recorded in {onnx_path.name}'s sidecar is not there, so there is "
                       "no torch reference and parity compares ONNX artifacts only; pass the checkpoint as the model "
                       f"('ulsam-deploy bench CHECKPOINT --onnx {onnx_path}') to compare with PyTorch")
            spec.notes.append(message)
            spec.warnings.append(message)


def _graph_shape(onnx_path: Path) -> tuple | None:
    """(channels, size, classes) of an N x C x S x S image model, read from its graph (no weights loaded)."""
    from ulsam_deploy.artifacts import load_onnx

    proto = load_onnx(onnx_path)  # one sentence for an empty, damaged or foreign file
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if not inputs:
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(inputs) != 1:
        raise UserError(f"'{onnx_path}' has {len(inputs)} inputs; bench runs image models with exactly one input.")
    if len(dims) != 4 or None in dims[1:] or dims[2] != dims[3]:
        return None
    out = [d.dim_value if d.HasField("dim_value") else None for d in proto.graph.output[0].type.tensor_type.shape.dim]
    return int(dims[1]), int(dims[2]), (int(out[-1]) if out and out[-1] else None)


def resolve_model(arg: str | os.PathLike, *, onnx: Sequence = (), engines: Sequence = (), seed: int = 0,
                  load_module: bool = True, overrides: dict | None = None) -> ModelSpec:
    """A :class:`ModelSpec` from a checkpoint, an ONNX file, an engine, or a model spec string.

    A checkpoint or spec string needs torch (exit 4 naming the extra where it is missing); a checkpoint only
    recorded in an ONNX sidecar is left unloaded without torch, and the torch backend is skipped with that reason.
    """
    text = str(arg)
    path = user_path(text, "model")
    spec = ModelSpec(name=path.stem if path.exists() else text)
    if path.is_dir():
        raise UserError(f"'{path}' is a directory; give a checkpoint (.pt), an ONNX file or an engine to bench.")
    if path.exists():
        suffix = path.suffix.lower()
        if suffix == ".onnx":
            spec.onnx.append(path)
            _apply_onnx_sidecar(spec, path)
        elif suffix in ENGINE_SUFFIXES:
            spec.engines.append(path)
            onnx_beside = _engine_sidecar_onnx(path)
            if onnx_beside is not None:
                _apply_onnx_sidecar(spec, onnx_beside)
                spec.notes.append(f"metadata from {onnx_beside.name}")
        else:
            extras.require("bench", "torch", what=f"a checkpoint ('{path.name}')")
            spec.checkpoint = path
    else:
        config = parse_model_spec(text)
        if config is None:
            raise UserError(f"'{text}' is neither an existing file nor a model spec such as 'mv2', 'mv2+17:1/g4' or "
                            "'mv1x0.75+8:1,9:1,11'; check the path.")
        extras.require("bench", "torch", what=f"the model spec '{text}' (seeded random weights)")
        import torch

        from ulsam_deploy.models.mobilenet import MobileNetULSAM, calibrate_batchnorm

        torch.manual_seed(seed)
        size = config.input_size
        gen = torch.Generator().manual_seed(seed)
        spec.module = calibrate_batchnorm(MobileNetULSAM(config), [  # so that its outputs depend on the input
            torch.randn(8, config.in_channels, size, size, generator=gen) for _ in range(2)])
        spec.config = config
        spec.random_weights = True
        spec.notes.append("seeded random weights (BatchNorm statistics from seeded random batches): latency and "
                          "parity are meaningful, accuracy is not")
    if spec.checkpoint is not None and load_module and extras.missing("torch"):
        spec.notes.append(f"the checkpoint '{spec.checkpoint}' recorded in the sidecar is not loaded: PyTorch is not "
                          "installed")
    elif spec.checkpoint is not None and load_module:
        from ulsam_deploy.models.checkpoint import load_checkpoint_with_info
        from ulsam_deploy.steps.export import preprocess_spec

        overrides = dict(overrides or {})
        if spec.config is not None:  # an export may set its own input size (e.g. the opt of a dynamic range)
            overrides.setdefault("input_size", spec.config.input_size)
        model, info = load_checkpoint_with_info(spec.checkpoint, **overrides)
        if spec.config is not None and spec.config.to_dict() != info.config.to_dict():
            raise UserError(f"The checkpoint '{spec.checkpoint}' is {info.config.describe()}, but the ONNX given with it "
                            f"is {spec.config.describe()}; bench a checkpoint with its own exports.")
        spec.module, spec.config = model, info.config
        if spec.features:  # the reference of a backbone ONNX is the same network cut at the same layers
            from ulsam_deploy.models.mobilenet import Backbone

            spec.module = Backbone(model, spec.features)
        if spec.preprocess is None:
            from ulsam_deploy.data.images import Preprocess

            pre = preprocess_spec(info)
            spec.preprocess = Preprocess(pre.size, pre.in_channels, pre.crop_pct, tuple(pre.mean), tuple(pre.std))
        spec.class_names = spec.class_names or info.class_names
    for extra in onnx:
        p = check_input_file(extra, "ONNX file", "check the path or run 'ulsam-deploy export' first",
                             remake="re-export it")
        spec.onnx.append(p)
        if spec.config is None:
            _apply_onnx_sidecar(spec, p)
    _check_variants(spec)
    for extra in engines:
        spec.engines.append(check_input_file(extra, "engine", BUILD_ENGINE))
    for artifact in spec.onnx:
        if not isinstance(artifact, (bytes, bytearray)):
            check_onnx_fits(spec, Path(artifact))
    return spec


def _check_variants(spec: ModelSpec) -> None:
    """Every ONNX of one model must have the same outputs (variants of one export), else one sentence."""
    import onnx

    seen = None
    for path in spec.onnx:
        if isinstance(path, (bytes, bytearray)):
            continue
        try:
            names = [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]
        except Exception:  # noqa: BLE001 - an unreadable file is reported when its runner loads
            continue
        if seen is not None and names != seen[1]:
            raise UserError(f"'{path}' outputs {', '.join(names)} but '{seen[0]}' outputs {', '.join(seen[1])}; bench "
                            "variants (fp16, int8, fused) of one export together, and other models as separate "
                            "arguments.")
        seen = seen or (path, names)


def check_onnx_fits(spec: ModelSpec, path: Path) -> None:
    """Refuse, before any runner opens, an ONNX that cannot be judged as this model: not one image input, neither a
    classifier nor a backbone its sidecar describes, another input or class count, or (by its sidecar) another
    network or checkpoint."""
    from ulsam_deploy.artifacts import load_onnx, read_sidecar, sha256_file
    from ulsam_deploy.onnx_graph import io_specs
    from ulsam_deploy.steps._step import check_sidecar_matches

    model = load_onnx(path)
    inputs, outputs = io_specs(model)
    if len(inputs) != 1:
        raise UserError(f"'{path}' has {len(inputs)} inputs ({', '.join(i['name'] for i in inputs) or 'none'}); bench "
                        "runs image models with exactly one input.")
    shape = inputs[0]["shape"]
    if len(shape) != 4:
        raise UserError(f"'{path}' takes input '{inputs[0]['name']}' of shape {shape}; bench runs [N, C, H, W] image "
                        "models.")
    sidecar = read_sidecar(path, required=False)
    backbone = spec.is_backbone or (sidecar is not None and any(o.layer is not None for o in sidecar.outputs))
    if not backbone and (len(outputs) != 1 or len(outputs[0]["shape"]) != 2):
        described = ", ".join(f"{o['name']} {o['shape']}" for o in outputs)
        raise UserError(f"'{path}' is not a classifier (outputs {described}) and no sidecar names its feature layers; "
                        "bench judges classifiers on their [N, classes] logits and backbones from 'ulsam-deploy "
                        "export --features' on their feature maps.")
    known = spec.input_info()
    if known is not None:
        channels, size, classes = known
        for axis, want in ((1, channels), (2, size), (3, size)):  # fixed sizes only (a symbolic H/W takes any)
            if isinstance(shape[axis], int) and shape[axis] != want:
                raise UserError(f"'{path}' takes {shape[1:]} inputs but {spec.name} takes [{channels}, {size}, "
                                f"{size}]; bench each model with its own exports.")
        got = outputs[0]["shape"][-1]
        if not backbone and classes and isinstance(got, int) and got != classes:
            raise UserError(f"'{path}' gives {got} classes but {spec.name} has {classes}; bench each model with its "
                            "own exports.")
    if sidecar is None or sidecar.model is None:
        return
    check_sidecar_matches(model, sidecar, path)
    if spec.config is not None:
        from ulsam_deploy.models.config import ModelConfig

        theirs = ModelConfig.from_dict(sidecar.model.config)
        mine, other = spec.config.to_dict(), theirs.to_dict()
        mine.pop("input_size"), other.pop("input_size")
        if mine != other:
            raise UserError(f"'{path}' is {theirs.describe()}, but {spec.name} is {spec.config.describe()}; bench each "
                            "model with its own exports.")
    recorded = sidecar.model.checkpoint_sha256
    actual = sha256_file(spec.checkpoint) if spec.checkpoint is not None and recorded else recorded
    if actual != recorded:
        raise UserError(f"'{path}' was exported from another checkpoint than '{spec.checkpoint}' (its sidecar records "
                        f"sha256 {recorded[:12]}..., the checkpoint is {actual[:12]}...); bench a checkpoint with its "
                        "own exports, or re-export it.")


def export_in_memory(spec: ModelSpec, opset: int = 17, sizes: Sequence[tuple[int, int]] | None = None) -> bytes:
    """The export pipeline (export form, TorchScript exporter, onnxsim, checked) without writing files; a backbone
    keeps its feature outputs, and H/W are symbolic when ``sizes`` (bench's --input-size) asks for other sizes."""
    from ulsam_deploy.models.mobilenet import Backbone
    from ulsam_deploy.steps._step import finalize_onnx
    from ulsam_deploy.steps.export import ExportOptions, onnx_from_model

    model = spec.module.model if isinstance(spec.module, Backbone) else spec.module
    size = model.config.input_size
    values = [v for hw in sizes or () for v in hw]
    input_range = (min(values + [size]), size, max(values + [size])) if values and set(values) != {size} else None
    options = ExportOptions(opset=opset, features=",".join(map(str, spec.features)) if spec.features else None,
                            input_range=input_range)
    proto, _ = onnx_from_model(model, options)
    return finalize_onnx(proto).SerializeToString()


# ----------------------------------------------------------------------------------- options

@dataclass
class BenchOptions:
    backends: tuple[str, ...] = ("torch", "ort", "trt")
    reference: str = "torch"
    batches: tuple[int, ...] = (1,)
    timing: TimingConfig = field(default_factory=TimingConfig)
    threads: int | None = None
    ort_providers: tuple[str, ...] = ("cpu",)
    ort_spinning: bool | None = None
    torch_device: str = "cpu"
    trt_device: int = 0
    inputs: str | None = None  # None: random; else image dir / file / glob
    num_inputs: int | None = None  # random count (default 16) or image limit
    seed: int = 0
    label_regex: str | None = None
    mean: tuple | None = None
    std: tuple | None = None
    resize: int | None = None
    crop_pct: float | None = None
    threshold_overrides: dict = field(default_factory=dict)
    parity: bool = True
    latency: bool = True
    parity_batch: int = 16
    export_missing_onnx: bool = True
    sizes: tuple[tuple[int, int], ...] | None = None  # input (H, W) to time and judge at [default: the model's own]

    def __post_init__(self) -> None:
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:
            raise UserError(f"Unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)} (e.g. --backends torch,ort).")
        if not self.backends:
            raise UserError("--backends is empty; choose from torch, ort, trt.")
        if self.reference not in BACKENDS:
            raise UserError(f"--reference must be one of {', '.join(BACKENDS)}, not '{self.reference}'.")
        if not self.batches or any(not 1 <= int(b) <= MAX_BATCH for b in self.batches):
            raise UserError(f"--batch-sizes needs integers from 1 to {MAX_BATCH} such as 1,8,32, not "
                            f"{','.join(map(str, self.batches))}.")
        self.batches = tuple(dict.fromkeys(int(b) for b in self.batches))
        if self.threads is not None and int(self.threads) < 1:
            raise UserError(f"--threads must be at least 1, not {self.threads}.")
        if self.num_inputs is not None and int(self.num_inputs) < 1:
            raise UserError(f"--num-inputs must be at least 1, not {self.num_inputs}.")
        if self.std is not None and not all(np.isfinite(s) and s > 0 for s in self.std):
            raise UserError(f"--std values must be positive, not {list(self.std)}.")
        if self.mean is not None and not all(np.isfinite(m) for m in self.mean):
            raise UserError(f"--mean values must be finite numbers, not {list(self.mean)}.")
        if self.inputs is None and any(v is not None for v in (self.mean, self.std, self.resize, self.crop_pct,
                                                               self.label_regex)):
            raise UserError("--mean, --std, --resize, --crop-pct and --label-regex describe images: use them with "
                            "--inputs (random inputs are already normalized).")
        if int(self.parity_batch) < 1:
            raise UserError(f"--parity-batch must be at least 1, not {self.parity_batch}.")
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


# ------------------------------------------------------------------------------------ report

def artifact_name(artifact: str) -> str:
    """What a row names: the file (``model.int8-tensorrt.onnx``), or what it is when there is none."""
    if artifact in ("(in memory)", ""):
        return artifact or "-"
    return Path(artifact).name


@dataclass
class RunnerEntry:
    model: str
    runner: Runner
    artifact: str

    @property
    def label(self) -> str:
        return self.runner.label

    @property
    def precision(self) -> str:
        return self.runner.precision

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.model, self.label, self.precision, self.artifact)

    def describe_artifact(self) -> dict:
        facts = getattr(self.runner, "facts", {}) or {}
        return {"artifact": self.artifact, "file": artifact_name(self.artifact), "precision": self.precision,
                "int8_target": facts.get("int8_target"), "mode": self.runner.mode,
                "latency_meaningful": bool(self.runner.latency_meaningful)}


@dataclass
class ParityRow:
    model: str
    backend: str
    precision: str
    artifact: str
    reference: str
    verdict: Verdict | None  # None for the reference itself
    accuracy: object | None = None  # judge.Accuracy of this runner (labelled inputs)
    mode: str = ""
    int8_target: str | None = None
    problem: str | None = None  # the reference's own outputs prove nothing (judge.reference_problem)

    @property
    def is_reference(self) -> bool:
        return self.verdict is None

    @property
    def comparison(self):
        return None if self.verdict is None else self.verdict.comparison

    @property
    def failures(self) -> list[str]:
        if self.verdict is None:
            return [] if self.problem is None else [f"its own outputs are {self.problem}; {REFERENCE_FIX}"]
        return list(self.verdict.failures)

    @property
    def tolerances(self) -> Tolerances | None:
        return None if self.verdict is None else self.verdict.tolerances

    @property
    def reference_accuracy(self):
        return None if self.verdict is None else self.verdict.main.accuracy_reference

    @property
    def outputs(self) -> list:
        """The judge's figures per output (per input size and output name, ``320x320/feat_s8``)."""
        return [] if self.verdict is None else list(self.verdict.outputs)

    @property
    def worst(self) -> dict | None:
        """The worst figure of each kind over every output: what one table row shows."""
        if not self.outputs:
            return None
        cs = [o.comparison for o in self.outputs]
        return {"max_abs": max(c.max_abs for c in cs), "mean_abs": max(c.mean_abs for c in cs),
                "min_required_atol": max(c.min_required_atol for c in cs),
                "min_required_rtol": max(c.min_required_rtol for c in cs), "cosine": min(c.cosine for c in cs),
                "top1_agreement": min(c.top1_agreement for c in cs) if self.outputs[0].classifier else None,
                "top5_overlap": min(c.top5_overlap for c in cs) if self.outputs[0].classifier else None}

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def file(self) -> str:
        return artifact_name(self.artifact)

    def to_dict(self) -> dict:
        data = {"model": self.model, "backend": self.backend, "precision": self.precision, "artifact": self.artifact,
                "file": self.file, "int8_target": self.int8_target, "mode": self.mode, "reference": self.reference,
                "is_reference": self.is_reference, "passed": self.passed, "failures": self.failures,
                "comparison": self.comparison.to_dict() if self.comparison else None,
                "tolerances": self.tolerances.to_dict() if self.tolerances else None,
                "worst": self.worst, "outputs": [o.to_dict() for o in self.outputs],
                "accuracy": self.accuracy.to_dict() if self.accuracy else None}
        if self.accuracy and self.reference_accuracy and not self.is_reference:
            data["accuracy_delta"] = {"top1": self.accuracy.top1 - self.reference_accuracy.top1,
                                      "top5": self.accuracy.top5 - self.reference_accuracy.top5}
        return data


@dataclass
class LatencyRow:
    model: str
    backend: str
    precision: str
    artifact: str
    batch: int
    stats: LatencyStats
    samples_ms: list[float]
    gpu: dict[str, LatencyStats] | None
    warmup_iters: int
    mode: str = ""
    meaningful: bool = True  # False: a simulation or reference op, not deployment speed
    size: tuple[int, int] | None = None  # input (H, W)

    @property
    def file(self) -> str:
        return artifact_name(self.artifact)

    @property
    def size_text(self) -> str:
        return f"{self.size[0]}x{self.size[1]}" if self.size else ""

    @property
    def qps(self) -> float:
        return throughput(self.stats, self.batch)[0]

    @property
    def images_per_s(self) -> float:
        return throughput(self.stats, self.batch)[1]

    def to_dict(self) -> dict:
        data = {"model": self.model, "backend": self.backend, "precision": self.precision, "artifact": self.artifact,
                "file": self.file, "mode": self.mode, "latency_meaningful": self.meaningful,
                "batch": self.batch, "input_size": list(self.size) if self.size else None,
                "latency_ms": self.stats.to_dict(), "throughput_qps": self.qps,
                "images_per_s": self.images_per_s, "warmup_iterations": self.warmup_iters,
                "gpu": {f"{k}_ms": v.to_dict() for k, v in self.gpu.items()} if self.gpu else None}
        return data


@dataclass
class CompareRow:
    backend: str
    precision: str
    batch: int
    model: str
    baseline: str
    macs: int | None
    baseline_macs: int | None
    median_ms: float
    baseline_median_ms: float
    size: tuple[int, int] | None = None

    @property
    def macs_ratio(self) -> float | None:
        return self.macs / self.baseline_macs if self.macs and self.baseline_macs else None

    @property
    def latency_ratio(self) -> float:
        return self.median_ms / self.baseline_median_ms

    def to_dict(self) -> dict:
        return {"backend": self.backend, "precision": self.precision, "batch": self.batch,
                "input_size": list(self.size) if self.size else None, "model": self.model,
                "baseline": self.baseline, "macs": self.macs, "baseline_macs": self.baseline_macs,
                "macs_ratio": self.macs_ratio, "median_ms": self.median_ms,
                "baseline_median_ms": self.baseline_median_ms, "latency_ratio": self.latency_ratio}


@dataclass
class BenchReport:
    created: str
    machine: dict
    versions: dict
    settings: dict
    inputs: dict
    models: list[dict]
    runners: list[dict]
    skipped: list[dict]
    parity: list[ParityRow]
    latency: list[LatencyRow]
    compare: list[CompareRow]
    warnings: list[str]
    seconds: float = 0.0

    @property
    def parity_failures(self) -> list[ParityRow]:
        return [row for row in self.parity if not row.passed]

    @property
    def passed(self) -> bool:
        return not self.parity_failures

    @property
    def has_labels(self) -> bool:
        return any(row.accuracy is not None for row in self.parity)

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "created": self.created, "passed": self.passed, "seconds": round(self.seconds, 3),
                "machine": self.machine, "versions": self.versions, "settings": self.settings, "inputs": self.inputs,
                "models": self.models, "runners": self.runners, "skipped": self.skipped,
                "parity": [r.to_dict() for r in self.parity], "latency": [r.to_dict() for r in self.latency],
                "compare": [r.to_dict() for r in self.compare], "warnings": list(self.warnings)}

    def raise_for_parity(self) -> None:
        """ParityError (exit 3) naming the failed rows, when any backend failed its thresholds."""
        bad = self.parity_failures
        if bad:
            first = bad[0]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise ParityError(f"Parity failed: {first.backend} ({first.precision}) of {first.model} against "
                              f"{first.reference}: {first.failures[0]}{more}; see the report for every figure.")


# ------------------------------------------------------------------------------- environment

def machine_info() -> dict:
    info = {"hostname": socket.gethostname(), "platform": platform.platform(), "machine": platform.machine(),
            "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        pass
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    from ulsam_deploy.backends.onnxrt.cpu import int8_capabilities

    info["int8"] = int8_capabilities().to_dict()
    try:
        from ulsam_deploy.backends.trt.cuda import probe_cuda_driver

        driver = probe_cuda_driver()
        info["cuda_driver"] = driver.driver_version
        info["gpus"] = [g.to_dict() for g in driver.gpus]
    except Exception:  # noqa: BLE001 - machine facts are best effort
        info["gpus"] = []
    return info


def versions() -> dict:
    from ulsam_deploy.artifacts import tool_versions

    return tool_versions("numpy", "onnx", "onnxruntime", "torch", "tensorrt")


# ------------------------------------------------------------------------------- the runners

def _open_runners(spec: ModelSpec, options: BenchOptions, skipped: list[dict], warnings: list[str],
                  event: Event) -> list[RunnerEntry]:
    entries: list[RunnerEntry] = []

    def skip(backend: str, reason: str, artifact: str = "") -> None:
        skipped.append({"model": spec.name, "backend": backend, "artifact": artifact, "reason": reason})
        event("skip", model=spec.name, backend=backend, reason=reason)

    def try_load(runner: Runner, artifact: str, catch=(BackendUnavailable,)) -> None:
        event("load", model=spec.name, backend=runner.label, artifact=artifact)
        try:
            runner.load()
        except catch as exc:
            skip(runner.label, str(exc), artifact)
            return
        for message in getattr(runner, "warnings", []):
            warnings.append(f"{spec.name} {runner.label}: {message}")
        entries.append(RunnerEntry(spec.name, runner, artifact))

    for backend in options.backends:
        if backend == "torch":
            if extras.missing("torch"):
                skip("torch", f"PyTorch is not installed; install it with: {extras.install_command('torch')}")
                continue
            if spec.module is None:
                skip("torch", "no checkpoint for this model (pass the .pt, or an ONNX whose sidecar names an existing "
                              "checkpoint)")
                continue
            from ulsam_deploy.backends.torch.runner import TorchRunner

            try_load(TorchRunner(spec.module, options.torch_device, options.threads),
                     str(spec.checkpoint) if spec.checkpoint else spec.name)
        elif backend == "ort":
            variants = list(spec.onnx)
            if not variants:
                if spec.module is not None and options.export_missing_onnx:
                    event("export", model=spec.name)
                    variants = [export_in_memory(spec, sizes=options.sizes)]
                    spec.onnx = variants
                    spec.notes.append("ONNX exported in memory for the ort backend (export pipeline, not written)")
                else:
                    skip("ort", "no ONNX file for this model (run 'ulsam-deploy export' or pass --onnx)")
                    continue
            for variant in variants:
                artifact = "(in memory)" if isinstance(variant, (bytes, bytearray)) else str(variant)
                for provider in options.ort_providers:
                    from ulsam_deploy.backends.onnxrt.runner import OrtRunner

                    try_load(OrtRunner(variant, provider=provider, threads=options.threads,
                                       spinning=options.ort_spinning), artifact)
        elif backend == "trt":
            if not spec.engines:
                skip("trt", "no TensorRT engine for this model (build one with 'ulsam-deploy build-trt', then pass "
                            "--engine)")
                continue
            from ulsam_deploy.backends.trt.runner import TrtRunner
            from ulsam_deploy.backends.trt.compat import EngineMismatch

            for engine in spec.engines:
                try_load(TrtRunner(engine, options.trt_device), str(engine), catch=(BackendUnavailable, EngineMismatch))
    return entries


def _pick_reference(entries: list[RunnerEntry], options: BenchOptions, warnings: list[str], model: str) -> RunnerEntry | None:
    if not entries:
        return None
    for entry in entries:
        if entry.runner.name == options.reference and entry.precision == "fp32":
            return entry
    for entry in entries:
        if entry.runner.name == options.reference:
            return entry
    fallback = next((e for e in entries if e.precision == "fp32"), entries[0])
    warnings.append(f"{model}: reference backend '{options.reference}' is not available; parity is measured against "
                    f"{fallback.label} ({fallback.precision}) instead")
    return fallback


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


def _sizes(specs: list[ModelSpec], options: BenchOptions, warnings: list[str]) -> tuple[int, list[tuple[int, int]]]:
    """(channels, the input (H, W) sizes to run): ``options.sizes``, else the models' common size; a size a model's
    network cannot take (not a multiple of its stride) is refused, one outside its proven range warned about."""
    known = [(s, s.input_info()) for s in specs if s.input_info() is not None]
    if not known:
        raise UserError("Cannot tell the input shape: no checkpoint, sidecar, model spec or static ONNX input "
                        "describes the model; export with 'ulsam-deploy export' (it writes the sidecar) or give the checkpoint.")
    channels = {c for _, (c, _z, _n) in known}
    if len(channels) > 1:
        raise UserError(f"The models take {' and '.join(map(str, sorted(channels)))} input channels; compare models "
                        "with the same input channels.")
    if options.sizes is None:
        shapes = {(c, z) for _, (c, z, _n) in known}
        if len(shapes) > 1:
            listed = ", ".join(f"{c}x{z}x{z}" for c, z in sorted(shapes))
            raise UserError(f"The models take different inputs ({listed}); compare models with the same input size and "
                            "channels, or give --input-size.")
        size = known[0][1][1]
        return channels.pop(), [(size, size)]
    for spec in specs:
        dyn = spec.dynamic
        multiple = getattr(dyn, "multiple_of", None)
        for h, w in options.sizes:
            bad = [v for v in (h, w) if multiple and v % multiple]
            if bad:
                below = bad[0] // multiple * multiple
                near = f"{below} or {below + multiple}" if below else str(multiple)
                raise UserError(f"--input-size {h}x{w}: {bad[0]} is not a multiple of {multiple}, the stride "
                                f"{spec.name}'s network needs; use {near}.")
            if dyn is not None and dyn.height and dyn.width and not (dyn.height[0] <= h <= dyn.height[2]
                                                                    and dyn.width[0] <= w <= dyn.width[2]):
                warnings.append(f"{spec.name}: {h}x{w} is outside {dyn.height[0]}..{dyn.height[2]} x {dyn.width[0]}.."
                                f"{dyn.width[2]}, the range its export proved parity at (bench's own parity covers it)")
    return channels.pop(), list(options.sizes)


def _build_inputs(specs: list[ModelSpec], options: BenchOptions, channels: int,
                  sizes: list[tuple[int, int]]) -> dict[tuple[int, int], ImageSet]:
    """The inputs at each size: seeded random tensors, or the images preprocessed at that size."""
    import dataclasses

    if options.inputs is None:
        return {hw: random_images(options.num_inputs or 16, channels, hw, options.seed) for hw in sizes}
    spec = next(s for s in specs if s.input_info() is not None)
    classes = spec.input_info()[2] if not spec.is_backbone else None
    class_names = spec.class_names if not spec.is_backbone else None
    if class_names is None and classes == 1000 and channels == 3:
        try:
            from ulsam_deploy.data import imagenet_class_names

            class_names = imagenet_class_names()
        except Exception:  # noqa: BLE001 - optional nicety
            class_names = None
    out = {}
    for h, w in sizes:
        base = dataclasses.replace(spec.preprocess, size=h) if spec.preprocess is not None else None
        preprocess = resolve_preprocess(h, channels, base=base, mean=options.mean, std=options.std,
                                        resize=options.resize, crop_pct=options.crop_pct)
        out[(h, w)] = load_images(options.inputs, preprocess, class_names=class_names, num_classes=classes,
                                  label_regex=options.label_regex, limit=options.num_inputs, seed=options.seed)
    return out


def _accepts(runner: Runner, hw: tuple[int, int]) -> bool:
    limits = runner.size_limits()
    return limits is None or all(lo <= v <= hi for v, (lo, hi) in zip(hw, limits))


# ------------------------------------------------------------------------------------- bench

def run_bench(models: Sequence[ModelSpec | str | os.PathLike], options: BenchOptions | None = None,
              event: Event | None = None) -> BenchReport:
    """Parity and interleaved latency of every available backend of every model (see the module doc)."""
    options = options or BenchOptions()
    event = event or (lambda *a, **k: None)
    started = time.perf_counter()
    specs = [m if isinstance(m, ModelSpec) else resolve_model(m, seed=options.seed) for m in models]
    if not specs:
        raise UserError("Give at least one model to bench (a checkpoint, an ONNX file, an engine or a spec like mv2+17:1).")
    names = [s.name for s in specs]
    for i, s in enumerate(specs):  # disambiguate equal names (model.onnx from two folders)
        if names.count(s.name) > 1:
            s.name = f"{s.name}#{i + 1}"
    warnings: list[str] = []
    skipped: list[dict] = []

    channels, sizes = _sizes(specs, options, warnings)
    from ulsam_deploy.limits import ACTIVATION_FACTOR, fit_count

    fit_count(max(max(options.batches), options.parity_batch), channels * max(h * w for h, w in sizes) * 4 *
              ACTIVATION_FACTOR, "images per batch", "--batch-sizes")  # before any input or runner exists
    inputs = _build_inputs(specs, options, channels, sizes)
    first = inputs[sizes[0]]
    warnings += first.warnings
    for spec in specs:
        warnings += [f"{spec.name}: {message}" for message in spec.warnings]
    event("inputs", inputs=first, sizes=sizes)

    per_model: dict[str, list[RunnerEntry]] = {}
    try:
        for spec in specs:
            per_model[spec.name] = _open_runners(spec, options, skipped, warnings, event)
        if not any(per_model.values()):
            reasons = "; ".join(f"{s['backend']}: {s['reason']}" for s in skipped[:3])
            raise BackendUnavailable(f"No backend could run here ({reasons}).")

        parity_rows: list[ParityRow] = []
        if options.parity:
            parity_rows = _parity(specs, per_model, inputs, options, warnings, event)

        latency_rows: list[LatencyRow] = []
        if options.latency:
            latency_rows = _latency(per_model, inputs, options, skipped, event)

        runners_info = [{"model": e.model, "label": e.label, "precision": e.precision, "artifact": e.artifact,
                         **e.runner.describe()} for entries in per_model.values() for e in entries]
    finally:
        for entries in per_model.values():
            for entry in entries:
                entry.runner.close()

    compare_rows = _compare(specs, latency_rows) if len(specs) > 1 else []
    if any(row.stats.unstable for row in latency_rows):
        from ulsam_deploy.bench.latency import UNSTABLE_WARNING

        warnings.append(UNSTABLE_WARNING)
    for spec in specs:
        warnings += [f"{spec.name}: {note}" for note in spec.notes if "random weights" in note]
    return BenchReport(
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), machine=machine_info(), versions=versions(),
        settings=options.to_dict(), inputs={**first.describe(), "sizes": [list(hw) for hw in sizes]},
        models=[s.describe() for s in specs],
        runners=runners_info, skipped=skipped, parity=parity_rows, latency=latency_rows, compare=compare_rows,
        warnings=warnings, seconds=time.perf_counter() - started)


def _output_names(entries: list[RunnerEntry], count: int) -> list[str]:
    for entry in entries:
        names = getattr(entry.runner, "output_names", None)
        if names and len(names) == count:
            return list(names)
    return ["logits"] if count == 1 else [f"output{i}" for i in range(count)]


def _parity(specs, per_model, inputs: dict, options: BenchOptions, warnings, event) -> list[ParityRow]:
    """Every runner on every input at every size, judged against its model's reference runner (the one judge, per
    precision; a backbone's feature maps without top-1), all outputs of all sizes in one verdict per runner."""
    rows = []
    sizes = list(inputs)
    multi_size = len(sizes) > 1
    for spec in specs:
        entries = per_model[spec.name]
        ref = _pick_reference(entries, options, warnings, spec.name)
        if ref is None:
            continue
        outputs: dict = {}
        for entry in entries:
            event("parity", model=spec.name, backend=entry.label, artifact=entry.artifact)
            for hw in sizes:
                if _accepts(entry.runner, hw):
                    outputs[entry.key + (hw,)] = infer_in_chunks(entry.runner, inputs[hw].images, options.parity_batch)
        ref_sizes = [hw for hw in sizes if ref.key + (hw,) in outputs]
        if not ref_sizes:
            warnings.append(f"{spec.name}: the reference {ref.label} takes none of the sizes "
                            f"{', '.join(f'{h}x{w}' for h, w in sizes)}; no parity for this model")
            continue
        first = inputs[ref_sizes[0]]
        labels = first.labels if first.labelled and not spec.is_backbone else None
        ref_first = outputs[ref.key + (ref_sizes[0],)]
        names = _output_names(entries, len(ref_first))
        ref_acc = accuracy(ref_first[0], labels) if labels is not None else None
        facts = ref.describe_artifact()
        ref_outputs = [o for hw in ref_sizes for o in outputs[ref.key + (hw,)]]
        rows.append(ParityRow(spec.name, ref.label, ref.precision, ref.artifact, "reference", None, ref_acc,
                              facts["mode"], facts["int8_target"], reference_problem(ref_outputs)))
        for entry in entries:
            if entry is ref:
                continue
            common = [hw for hw in ref_sizes if entry.key + (hw,) in outputs]
            if not common:
                warnings.append(f"{spec.name} {entry.label} ({artifact_name(entry.artifact)}): takes none of the sizes "
                                f"the reference ran; no parity")
                continue
            refs, cands, labelled = [], [], []
            for hw in common:
                a, b = outputs[ref.key + (hw,)], outputs[entry.key + (hw,)]
                if len(a) != len(b):
                    raise UserError(f"{spec.name}: {artifact_name(entry.artifact)} has {len(b)} outputs but the "
                                    f"reference has {len(a)}; bench variants of one export together.")
                refs += a
                cands += b
                labelled += [f"{hw[0]}x{hw[1]}/{n}" if multi_size else n for n in names]
            verdict = judge(refs, cands, tolerances_for(entry.precision, options.threshold_overrides,
                                                        features=spec.is_backbone),
                            labels=labels, names=labelled, classifier=not spec.is_backbone)
            facts = entry.describe_artifact()
            rows.append(ParityRow(spec.name, entry.label, entry.precision, entry.artifact,
                                  f"{ref.label} ({ref.precision}, {artifact_name(ref.artifact)})", verdict,
                                  verdict.main.accuracy_candidate, facts["mode"], facts["int8_target"]))
    return rows


def _latency(per_model, inputs: dict, options: BenchOptions, skipped, event) -> list[LatencyRow]:
    """For each input size and batch, every runner that takes it, all timed in one interleaved loop."""
    rows = []
    sized = len(inputs) > 1 or options.sizes is not None
    for hw, images in inputs.items():
        for batch in options.batches:
            data = images.batch(batch)
            targets, entries_by_key = [], {}
            for entries in per_model.values():
                for entry in entries:
                    limits = entry.runner.batch_limits()
                    if limits and not limits[0] <= batch <= limits[1]:
                        skipped.append({"model": entry.model, "backend": entry.label, "artifact": entry.artifact,
                                        "reason": f"batch {batch} is outside the model's batch range "
                                                  f"{limits[0]}..{limits[1]}", "batch": batch})
                        continue
                    if not _accepts(entry.runner, hw):
                        (h0, h1), (w0, w1) = entry.runner.size_limits()
                        skipped.append({"model": entry.model, "backend": entry.label, "artifact": entry.artifact,
                                        "reason": f"{hw[0]}x{hw[1]} is outside the sizes it takes ({h0}..{h1} x "
                                                  f"{w0}..{w1})", "batch": batch, "size": list(hw)})
                        continue
                    run, stages = entry.runner.prepare(data)
                    key = entry.key + (batch, hw)
                    entries_by_key[key] = entry
                    targets.append(TimingTarget(key=key, run=run, stages=stages))
            if not targets:
                continue
            event("latency_start", batch=batch, size=hw if sized else None, targets=len(targets), timing=options.timing)
            results = measure_interleaved(targets, options.timing, on_round=lambda r, ts, b=batch: event(
                "latency_round", batch=b, round=r, targets=ts))
            for result in results:
                model, label, precision, artifact, b, size = result.key
                facts = entries_by_key[result.key].describe_artifact()
                rows.append(LatencyRow(model, label, precision, artifact, b, result.stats, result.samples_ms,
                                       result.gpu, result.warmup_iters, facts["mode"], facts["latency_meaningful"],
                                       size if sized else None))
            event("latency_done", batch=batch)
    return rows


def _compare(specs: list[ModelSpec], latency_rows: list[LatencyRow]) -> list[CompareRow]:
    base = specs[0]
    base_macs = base.cost()[0]
    rows = []
    index = {(r.model, r.backend, r.precision, r.batch, r.size): r for r in latency_rows}
    for r in latency_rows:
        if r.model == base.name or not r.meaningful:
            continue
        baseline = index.get((base.name, r.backend, r.precision, r.batch, r.size))
        if baseline is None:
            continue
        spec = next(s for s in specs if s.name == r.model)
        rows.append(CompareRow(r.backend, r.precision, r.batch, r.model, base.name, spec.cost()[0], base_macs,
                               r.stats.median, baseline.stats.median, r.size))
    return rows


__all__ = ["BACKENDS", "BenchOptions", "BenchReport", "CompareRow", "LatencyRow", "ModelSpec", "ParityRow", "SCHEMA",
           "export_in_memory", "machine_info", "parse_model_spec", "parse_sizes", "resolve_model", "run_bench"]
