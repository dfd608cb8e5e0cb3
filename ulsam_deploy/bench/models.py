"""What bench runs: one model (checkpoint, ONNX + sidecar, engine + sidecar, or a spec such as ``mv2+17:1/g4``
built with seeded random weights) and every artifact of it, checked to belong together before any runner opens."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ulsam_deploy.artifacts import check_input_file, user_path
from ulsam_deploy import extras
from ulsam_deploy.backends.trt.runner import BUILD_ENGINE
from ulsam_deploy.errors import UserError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
_SPEC = re.compile(r"^(?P<arch>mv[12])(?:x(?P<width>[0-9.]+))?(?:\+(?P<ulsam>[0-9:,]+))?(?:/g(?P<groups>\d+))?"
                   r"(?:@(?P<size>\d+))?$", re.IGNORECASE)


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
    dynamic: object | None = None  # sidecars.DynamicRange of its ONNX: the sizes it is proven at
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
    from ulsam_deploy.sidecars import read_engine_sidecar

    try:
        sidecar = read_engine_sidecar(engine, required=False)
    except UserError:
        sidecar = None  # the runner refuses the engine with the sentence; no metadata from it here
    if sidecar is not None and sidecar.onnx is not None:
        ref = Path(sidecar.onnx.file)
        candidate = ref if ref.is_absolute() else engine.parent / ref.name
        small = candidate.is_file() and candidate.stat().st_size <= MAX_ONNX_BYTES  # never hash a huge file
        if small and (sidecar.onnx.sha256 is None or sha256_file(candidate) == sidecar.onnx.sha256):
            return candidate
    guess = engine.with_suffix(".onnx")
    return guess if guess.is_file() else None


def apply_onnx_sidecar(spec: ModelSpec, onnx_path: Path) -> None:
    """Config, preprocessing, class names and checkpoint from the ONNX's (validated, hash-checked) sidecar."""
    from ulsam_deploy.sidecars import read_onnx_sidecar
    from ulsam_deploy.data.sources import preprocess_of
    from ulsam_deploy.models.config import ModelConfig
    from ulsam_deploy.steps import load_with_sidecar

    sidecar = read_onnx_sidecar(onnx_path, required=False)
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
        from ulsam_deploy.sidecars import sidecar_path

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
            apply_onnx_sidecar(spec, path)
        elif suffix in ENGINE_SUFFIXES:
            spec.engines.append(path)
            onnx_beside = _engine_sidecar_onnx(path)
            if onnx_beside is not None:
                apply_onnx_sidecar(spec, onnx_beside)
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
            apply_onnx_sidecar(spec, p)
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
    from ulsam_deploy.artifacts import load_onnx, sha256_file
    from ulsam_deploy.sidecars import read_onnx_sidecar
    from ulsam_deploy.onnx_graph import io_specs
    from ulsam_deploy.steps import check_sidecar_matches

    model = load_onnx(path)
    inputs, outputs = io_specs(model)
    if len(inputs) != 1:
        raise UserError(f"'{path}' has {len(inputs)} inputs ({', '.join(i['name'] for i in inputs) or 'none'}); bench "
                        "runs image models with exactly one input.")
    shape = inputs[0]["shape"]
    if len(shape) != 4:
        raise UserError(f"'{path}' takes input '{inputs[0]['name']}' of shape {shape}; bench runs [N, C, H, W] image "
                        "models.")
    sidecar = read_onnx_sidecar(path, required=False)
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
    from ulsam_deploy.steps import finalize_onnx
    from ulsam_deploy.steps.export import ExportOptions, onnx_from_model

    model = spec.module.model if isinstance(spec.module, Backbone) else spec.module
    size = model.config.input_size
    values = [v for hw in sizes or () for v in hw]
    input_range = (min(values + [size]), size, max(values + [size])) if values and set(values) != {size} else None
    options = ExportOptions(opset=opset, features=",".join(map(str, spec.features)) if spec.features else None,
                            input_range=input_range)
    proto, _ = onnx_from_model(model, options)
    return finalize_onnx(proto).SerializeToString()


__all__ = ["CHECKPOINT_SUFFIXES", "ENGINE_SUFFIXES", "ModelSpec", "apply_onnx_sidecar", "check_onnx_fits",
           "export_in_memory", "parse_model_spec", "resolve_model"]
