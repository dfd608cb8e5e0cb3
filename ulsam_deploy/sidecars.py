"""The sidecars: ``model.onnx.json`` beside an ONNX, ``model.engine.json`` beside a TensorRT engine.

One home for both schemas, their versions, their typed reads and the checks that make a sidecar trustworthy
(strict JSON types, sizes, the sha256 of the artifact beside it). A sidecar is untrusted input when read back:
readers get the validated model, never a dict, and an old or foreign sidecar is refused with one sentence.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ulsam_deploy.artifacts import json_text, sha256_file
from ulsam_deploy.errors import UserError

SIDECAR_SCHEMA = "ulsam-deploy/onnx"
SIDECAR_VERSION = 2
_SHA256 = r"^[0-9a-f]{64}$"
BUNDLED_PREFIX = "bundled:"  # a sidecar's checkpoint 'bundled:NAME' is the bundled model NAME (see demo)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


Dim = int | str  # a size, or the name of a dynamic axis


class TensorSpec(_Strict):
    """One graph input or output as the ONNX declares it (a backbone output also names its layer)."""

    name: str = Field(min_length=1, max_length=256)
    shape: list[Dim] = Field(min_length=1, max_length=8)
    dtype: Literal["float32", "float16"] = "float32"
    layer: int | None = Field(default=None, ge=1, le=64)  # paper layer number of a feature output
    stride: int | None = Field(default=None, ge=1, le=1024)
    channels: int | None = Field(default=None, ge=1, le=65536)

    @field_validator("shape")
    @classmethod
    def _dims(cls, dims: list[Dim]) -> list[Dim]:
        for d in dims:
            if isinstance(d, int) and not 1 <= d <= 1 << 20:
                raise ValueError(f"dimension {d} is out of range")
        return dims


class PreprocessSpec(_Strict):
    """How images become this model's input (the fields of :class:`ulsam_deploy.data.images.Preprocess`)."""

    size: int = Field(ge=8, le=4096)
    in_channels: Literal[1, 3] = 3
    crop_pct: float = Field(default=1.0, gt=0.0, le=1.0)
    mean: list[float] = Field(min_length=1, max_length=3)
    std: list[float] = Field(min_length=1, max_length=3)

    @model_validator(mode="after")
    def _per_channel(self) -> "PreprocessSpec":
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(f"mean and std need {self.in_channels} value(s) each")
        if not all(math.isfinite(v) for v in self.mean):
            raise ValueError("mean values must be finite")
        if not all(math.isfinite(v) and v > 0 for v in self.std):
            raise ValueError("std values must be positive and finite")
        return self


class ModelInfo(_Strict):
    """What the network is (torch-free: the config as a plain dict, see ModelConfig.from_dict)."""

    config: dict[str, Any]
    description: str = Field(default="", max_length=4096)
    class_names: list[str] | None = Field(default=None, max_length=100_000)
    checkpoint: str | None = Field(default=None, min_length=1, max_length=4096)  # absolute path of the source
    checkpoint_sha256: str | None = Field(default=None, pattern=_SHA256)
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("config")
    @classmethod
    def _config(cls, value: dict[str, Any]) -> dict[str, Any]:
        """The same rules as every model config (types, ranges, positions), so later steps can trust it."""
        from ulsam_deploy.models.config import ModelConfig

        try:
            ModelConfig.from_dict(value)
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _one_name_per_class(self) -> "ModelInfo":
        classes = self.config.get("num_classes")
        if self.class_names is not None and isinstance(classes, int) and len(self.class_names) != classes:
            raise ValueError(f"class_names has {len(self.class_names)} names for the model's {classes} classes")
        return self

    @property
    def bundled_name(self) -> str | None:
        """The bundled model's name when the recorded checkpoint is one ('bundled:NAME'), else None."""
        if self.checkpoint and self.checkpoint.startswith(BUNDLED_PREFIX):
            return self.checkpoint[len(BUNDLED_PREFIX):]
        return None

    def checkpoint_path(self, sidecar_file: str | os.PathLike) -> Path | None:
        """The recorded checkpoint as a path: absolute as recorded, or relative to the sidecar's folder."""
        if not self.checkpoint or ":" in self.checkpoint.split("/")[0]:  # none, or a name such as 'bundled:...'
            return None
        path = Path(self.checkpoint).expanduser()
        return path if path.is_absolute() else Path(sidecar_file).parent / path


class DynamicRange(_Strict):
    """The (min, opt, max) of each dynamic axis that later steps prove parity at (fuse) and build TensorRT's
    optimization profile for (build-trt, unless its flags say otherwise); the ONNX itself may accept more.
    ``multiple_of``: input H and W must be multiples of it (the stride of the deepest map the graph computes)."""

    batch: tuple[int, int, int] = (1, 1, 8)
    height: tuple[int, int, int] | None = None
    width: tuple[int, int, int] | None = None
    multiple_of: int | None = Field(default=None, ge=1, le=1024)

    @model_validator(mode="after")
    def _ordered(self) -> "DynamicRange":
        for name in ("batch", "height", "width"):
            value = getattr(self, name)
            if value is not None and not 1 <= value[0] <= value[1] <= value[2] <= 1 << 16:
                raise ValueError(f"{name} range {list(value)} is not 1 <= min <= opt <= max")
            if value is not None and name != "batch" and self.multiple_of and any(v % self.multiple_of for v in value):
                raise ValueError(f"{name} range {list(value)} has sizes that are not multiples of {self.multiple_of}")
        return self


class StepRecord(_Strict):
    """One step that produced (or changed) the artifact: what ran, on what, and the judge's verdict."""

    step: str = Field(max_length=64)
    created: str = Field(max_length=64)
    source: dict[str, Any] | None = None  # {"path": absolute path, "sha256": ...}
    options: dict[str, Any] = Field(default_factory=dict)
    report: dict[str, Any] = Field(default_factory=dict)
    verdict: dict[str, Any] | None = None
    seconds: dict[str, float] = Field(default_factory=dict)
    versions: dict[str, str | None] = Field(default_factory=dict)


class OnnxSidecar(_Strict):
    """``model.onnx.json``: everything later steps need to know about the ONNX beside it."""

    schema_: Literal["ulsam-deploy/onnx"] = Field(default=SIDECAR_SCHEMA, alias="schema")
    version: Literal[2] = SIDECAR_VERSION
    onnx: str = Field(min_length=1, max_length=4096)
    sha256: str = Field(pattern=_SHA256)
    model: ModelInfo | None = None
    preprocess: PreprocessSpec | None = None
    inputs: list[TensorSpec] = Field(min_length=1, max_length=16)
    outputs: list[TensorSpec] = Field(min_length=1, max_length=64)
    dynamic: DynamicRange | None = None
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    int8_target: Literal["tensorrt", "ort"] | None = None
    fused_blocks: int = Field(default=0, ge=0, le=10_000)
    graph: dict[str, Any] = Field(default_factory=dict, max_length=64)  # opset, ir_version, nodes, ops
    steps: list[StepRecord] = Field(default_factory=list, max_length=1000)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @property
    def is_classifier(self) -> bool:
        return len(self.outputs) == 1 and self.outputs[0].layer is None and len(self.outputs[0].shape) == 2

    @property
    def num_classes(self) -> int | None:
        if not self.is_classifier:
            return None
        last = self.outputs[0].shape[-1]
        return last if isinstance(last, int) else None

    def to_json(self) -> str:
        return json_text(self.model_dump(mode="json", by_alias=True))

    def with_step(self, record: StepRecord) -> "OnnxSidecar":
        out = self.model_copy(deep=True)
        out.steps.append(record)
        return out


ENGINE_SIDECAR_FORMAT = "ulsam-deploy-engine/1"
ENGINE_PRECISIONS = ("fp32", "fp16", "int8", "bf16", "fp8")


class _Open(BaseModel):
    """An engine-sidecar section: the fields read back are typed, the rest is informational and kept as written."""

    model_config = ConfigDict(extra="allow")


class EngineOnnx(_Open):
    """The ONNX the engine was built from (bench finds the ONNX Runtime reference of an engine through ``file``)."""

    file: str = Field(min_length=1, max_length=4096)
    sha256: str | None = Field(default=None, pattern=_SHA256)
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    fused_nodes: int = Field(default=0, ge=0)
    opset: int | None = None


class EngineTensorRT(_Open):
    version: str | None = None


class EngineGpu(_Open):
    name: str | None = None
    compute_capability: str | None = None
    sm: str | None = None


class EnginePlugin(_Open):
    route: Literal["lib", "python"] | None = None
    library: str | None = None
    library_sha256: str | None = Field(default=None, pattern=_SHA256)
    python_module: str | None = None
    fused_blocks: int | None = Field(default=None, ge=0)


class EngineBuildFlags(_Open):
    """The sidecar's ``build`` section: the compatibility flags the engine was built with."""

    hardware_compatibility_level: str = "NONE"
    version_compatible: bool = False


class EngineSidecar(_Open):
    """``model.engine.json`` (written by build-trt): what :mod:`ulsam_deploy.backends.trt.compat`, the runner and
    bench read back to decide whether, and how, the engine loads here. ``precision`` is one word (bench labels rows
    with it); details live in ``precision_details``."""

    format: Literal[ENGINE_SIDECAR_FORMAT] = ENGINE_SIDECAR_FORMAT
    engine: str = Field(min_length=1, max_length=4096)
    engine_sha256: str | None = Field(default=None, pattern=_SHA256)
    rebuild_command: str | None = None
    tensorrt: EngineTensorRT | None = None
    gpu: EngineGpu | None = None
    build: EngineBuildFlags = Field(default_factory=EngineBuildFlags)
    plugin: EnginePlugin | None = None
    precision: Literal[ENGINE_PRECISIONS] = "fp32"  # type: ignore[valid-type]
    onnx: EngineOnnx | None = None
    model: dict[str, Any] | None = None
    profiles: list[dict[str, Any]] | None = None
    engine_bytes: int | None = Field(default=None, ge=0)
    cuda: dict[str, Any] | None = None
    precision_details: dict[str, Any] | None = None
    steps: list[StepRecord] = Field(default_factory=list, max_length=1000)  # the ONNX's steps, then build-trt

    def to_json(self) -> str:
        return json_text(self.model_dump(mode="json", exclude_none=False))


def sidecar_path(artifact: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.onnx.json`` (the same rule for engines: ``model.engine.json``)."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


MAX_SIDECAR_BYTES = 64 << 20


def validation_sentence(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "(top level)"
    return f"field '{where}': {first.get('msg', 'invalid')}"


def read_sidecar_json(path: Path, fix: str) -> tuple[str, Any]:
    """The text and JSON value of the sidecar file ``path``, read as untrusted input: a regular file (a FIFO would
    hang), at most 64 MiB, valid UTF-8 JSON; otherwise one sentence ending in ``fix``."""
    if not path.is_file():
        raise UserError(f"The sidecar '{path}' is not a regular file (a folder, device or FIFO); {fix}.")
    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            raise UserError(f"The sidecar '{path}' is larger than {MAX_SIDECAR_BYTES >> 20} MiB, so it is not ours; "
                            f"{fix}.")
        text = path.read_text(encoding="utf-8")
        return text, json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise UserError(f"The sidecar '{path}' is not readable JSON ({type(exc).__name__}); {fix}.") from None


def validate_sidecar(schema: type[BaseModel], text: str, path: Path, fix: str):
    """``schema`` validated strictly (JSON types exactly, no coercion) over ``text``, or one sentence naming the
    first bad field."""
    try:
        return schema.model_validate_json(text, strict=True)
    except ValidationError as exc:
        raise UserError(f"The sidecar '{path}' is invalid ({validation_sentence(exc)}); {fix}.") from None


def check_recorded_sha256(artifact: Path, recorded: str, sidecar_file: Path, noun: str, fix: str) -> None:
    """Refuse a sidecar that records another ``noun`` (file, engine) than ``artifact``, naming both files."""
    actual = sha256_file(artifact)
    if actual != recorded:
        raise UserError(f"The sidecar '{sidecar_file}' describes another {noun} than '{artifact}' (sha256 "
                        f"{recorded[:12]}... recorded, {actual[:12]}... found); {fix}.")


def read_onnx_sidecar(onnx_path: str | os.PathLike, *, required: bool = True, check_hash: bool = True) -> OnnxSidecar | None:
    """The validated sidecar of ``onnx_path`` (None when absent and not ``required``).

    Refused with one sentence: unreadable or oversized JSON, an old or foreign schema, any field of the
    wrong type or out of range, and an ``sha256`` that does not match the ONNX file (``check_hash``).
    """
    onnx_path = Path(onnx_path)
    path = sidecar_path(onnx_path)
    if not path.exists():
        if required:
            raise UserError(f"'{path}' (written by 'ulsam-deploy export' beside the ONNX) is missing; re-export the "
                            "model, or keep the sidecar next to its ONNX when copying it.")
        return None
    text, data = read_sidecar_json(path, "re-export the model, or delete the damaged file")
    if not isinstance(data, dict):
        raise UserError(f"The sidecar '{path}' is not a JSON object; re-export the model.")
    if data.get("schema") != SIDECAR_SCHEMA or data.get("version") != SIDECAR_VERSION:
        found = data.get("schema") or data.get("format") or "no schema"
        raise UserError(f"The sidecar '{path}' has schema '{found}' (version {data.get('version', '?')}), not "
                        f"'{SIDECAR_SCHEMA}' version {SIDECAR_VERSION}; it was written by another ulsam-deploy "
                        "version: re-export the model with this one.")
    sidecar = validate_sidecar(OnnxSidecar, text, path, "re-export the model")
    if check_hash:
        check_recorded_sha256(onnx_path, sidecar.sha256, path, "file", "re-run the step that wrote the ONNX, or put "
                              "the matching sidecar beside it")
    return sidecar




REBUILD_ENGINE = "rebuild the engine with 'ulsam-deploy build-trt'"


def read_engine_sidecar(engine: str | os.PathLike, *, required: bool = True) -> EngineSidecar | None:
    """The validated ``model.engine.json`` of ``engine`` (or that sidecar's own path), checked to describe this very
    engine; None when absent and not ``required``, else one sentence naming the problem."""
    engine = Path(engine)
    path = engine if engine.suffix == ".json" else sidecar_path(engine)
    if not path.exists():
        if not required:
            return None
        raise UserError(f"'{path}' (written by 'ulsam-deploy build-trt' beside the engine) is missing, so the engine "
                        "cannot be checked against this TensorRT and GPU; rebuild it with 'ulsam-deploy build-trt'.")
    text, data = read_sidecar_json(path, REBUILD_ENGINE)
    if not isinstance(data, dict) or data.get("format") != ENGINE_SIDECAR_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise UserError(f"'{path}' is not an engine sidecar of this tool (format {found!r}); {REBUILD_ENGINE}.")
    sidecar = validate_sidecar(EngineSidecar, text, path, REBUILD_ENGINE)
    if sidecar.engine_sha256 and engine.suffix != ".json" and engine.is_file():
        check_recorded_sha256(engine, sidecar.engine_sha256, path, "engine", "rebuild the engine, or put its own "
                              "sidecar beside it")
    return sidecar


__all__ = ["BUNDLED_PREFIX", "DynamicRange", "ENGINE_PRECISIONS", "ENGINE_SIDECAR_FORMAT", "EngineBuildFlags",
           "EngineGpu", "EngineOnnx", "EnginePlugin", "EngineSidecar", "EngineTensorRT", "ModelInfo", "OnnxSidecar",
           "PreprocessSpec", "SIDECAR_SCHEMA", "SIDECAR_VERSION", "StepRecord", "TensorSpec", "check_recorded_sha256",
           "read_engine_sidecar", "read_onnx_sidecar", "read_sidecar_json", "sidecar_path", "validate_sidecar",
           "validation_sentence"]
