"""What travels between the fleet's client and its workers: plain JSON, validated on arrival at either end.

The client sends a :class:`DeviceTask` (as JSON text) and the artifacts' bytes; a worker sends back a
:class:`DeviceResult` as JSON text. Neither side acts on an object it did not validate with these schemas, the
way sidecars are read (:mod:`ulsam_deploy.sidecars`).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ulsam_deploy.errors import UserError
from ulsam_deploy.sidecars import validation_sentence

FLEET_SCHEMA = "ulsam-deploy-fleet/1"
MAX_RESULT_BYTES = 64 << 20
KIND_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # a device kind is a Dask resource name
_SHA256 = r"^[0-9a-f]{64}$"
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}$")
ARTIFACT_SUFFIXES = (".onnx", ".onnx.json")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArtifactFile(_Strict):
    """One file sent to every worker: a bare name (no folders), its size and sha256 (checked on arrival)."""

    name: str
    sha256: str = Field(pattern=_SHA256)
    size: int = Field(ge=0, le=2 << 30)

    @field_validator("name")
    @classmethod
    def _bare_name(cls, value: str) -> str:
        if not _FILE_NAME.match(value) or ".." in value or not value.endswith(ARTIFACT_SUFFIXES + (".tar",)):
            raise ValueError(f"'{value}' is not a bare ONNX, sidecar or image-archive file name")
        return value


class BenchSettings(_Strict):
    """The bench flags every device runs with (the same on all of them, so the matrix compares like with like)."""

    batch_sizes: list[int] = Field(default=[1], min_length=1, max_length=16)
    warmup_ms: float = Field(default=500.0, ge=0, le=600_000)
    iterations: int = Field(default=10, ge=1, le=1_000_000)
    duration_s: float = Field(default=3.0, ge=0, le=3600)
    num_inputs: int | None = Field(default=None, ge=1, le=100_000)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    threads: int | None = Field(default=None, ge=1, le=256)
    images: str | None = None  # the name of the image archive among the files (labelled images: top-1)

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, value: list[int]) -> list[int]:
        if any(not 1 <= b <= 4096 for b in value):
            raise ValueError("batch sizes must be from 1 to 4096")
        return value


class DeviceTask(_Strict):
    """What one device kind runs: the artifacts, which steps, with which settings, within which time."""

    schema_: Literal["ulsam-deploy-fleet/1"] = Field(default=FLEET_SCHEMA, alias="schema")
    version: str = Field(max_length=64)  # the client's ulsam-deploy version; a worker of another one refuses
    kind: str = Field(pattern=KIND_PATTERN)
    files: list[ArtifactFile] = Field(min_length=1, max_length=64)
    reference: str  # the fp32 ONNX every other artifact is judged against
    engines: bool = True  # build a TensorRT engine per ONNX meant for TensorRT (where TensorRT is)
    plugin: Literal["auto", "lib", "python"] | None = "auto"
    fetch_engines: bool = False
    time_limit_s: float = Field(default=1800.0, gt=0, le=86_400)
    bench: BenchSettings = Field(default_factory=BenchSettings)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)


class StepRun(_Strict):
    """One command run on the device, as a user would type it there (paths relative to its work folder)."""

    step: str
    command: list[str]
    exit_code: int | None  # None: not finished (time limit)
    seconds: float
    output_tail: str = Field(default="", max_length=20_000)


class EngineFile(_Strict):
    name: str
    onnx: str
    sha256: str = Field(pattern=_SHA256)
    size: int = Field(ge=0)
    path_on_device: str  # where it stays on the board
    data_b64: str | None = None  # only with --fetch-engines


Status = Literal["ok", "failed", "timed out", "worker lost", "cancelled", "no worker", "refused"]


class DeviceResult(_Strict):
    """What one device kind sends back (or what the client writes for it when it never answered)."""

    schema_: Literal["ulsam-deploy-fleet/1"] = Field(default=FLEET_SCHEMA, alias="schema")
    kind: str = Field(pattern=KIND_PATTERN)
    status: Status
    reason: str = Field(default="", max_length=4000)
    worker: str | None = None
    host: str | None = None
    started: str | None = None
    finished: str | None = None
    seconds: float = 0.0
    doctor: dict[str, Any] | None = None  # the device's `ulsam-deploy doctor --json`
    steps: list[StepRun] = Field(default_factory=list)
    bench: dict[str, Any] | None = None  # the device's `ulsam-deploy bench --json` report
    engines: list[EngineFile] = Field(default_factory=list)
    skipped: list[dict[str, str]] = Field(default_factory=list)  # {"artifact", "backend", "reason"}

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)


def doctor_checks(doctor: dict | None) -> dict[str, dict]:
    """A device's ``doctor --json`` report as its checks by name (nothing for a device whose doctor did not run)."""
    return {c.get("name"): c for c in (doctor or {}).get("checks", []) if isinstance(c, dict)}


def parse_task(text: str) -> DeviceTask:
    try:
        return DeviceTask.model_validate_json(text, strict=True)
    except ValidationError as exc:
        raise UserError(f"The fleet task sent to this worker is invalid ({validation_sentence(exc)}); run the client and the "
                        "workers from the same ulsam-deploy version.") from None


def parse_result(text: object, kind: str) -> DeviceResult:
    """A worker's answer, validated; anything else (not text, too large, not our schema) is refused."""
    if not isinstance(text, str) or len(text) > MAX_RESULT_BYTES:
        raise UserError(f"The worker of '{kind}' sent back something that is not a fleet result "
                        f"({type(text).__name__}); is it running ulsam-deploy's worker?")
    try:
        result = DeviceResult.model_validate_json(text, strict=True)
    except ValidationError as exc:
        raise UserError(f"The worker of '{kind}' sent back an invalid result ({validation_sentence(exc)}); run the client and "
                        "the workers from the same ulsam-deploy version.") from None
    if result.kind != kind:
        raise UserError(f"The worker asked for '{kind}' answered for '{result.kind}'; check the worker's --resources.")
    return result


__all__ = ["ArtifactFile", "BenchSettings", "DeviceResult", "DeviceTask", "EngineFile", "FLEET_SCHEMA",
           "KIND_PATTERN", "StepRun", "doctor_checks", "parse_result", "parse_task"]
