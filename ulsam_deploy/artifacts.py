"""What goes on disk: safe output paths, atomic writes, sha256, and the typed sidecars.

Every file ulsam-deploy writes appears whole or not at all (temp file beside it, then rename), gets the
umask's mode, and never replaces a symlink, device, FIFO or directory. An existing regular file is
replaced only when the caller says ``force``.

A sidecar (``model.onnx.json`` beside ``model.onnx``) is untrusted input when read back: it is parsed
with one validating schema (:class:`OnnxSidecar`), its sha256 must match the ONNX beside it, and its
paths are stored absolute. Old or foreign sidecars are refused with one sentence.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ulsam_deploy.errors import IOFailure, UserError, os_error_sentence

SIDECAR_SCHEMA = "ulsam-deploy/onnx"
SIDECAR_VERSION = 2
_SHA256 = r"^[0-9a-f]{64}$"
BUNDLED_PREFIX = "bundled:"  # a sidecar's checkpoint 'bundled:NAME' is the bundled model NAME (see demo)
STDOUT_NAMES = ("-", "/dev/stdout")
STDOUT_CLOSED = False  # set by the CLI when the caller closed standard output


# ----------------------------------------------------------------------------------------- paths

def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def user_path(path: str | os.PathLike, what: str = "path") -> Path:
    """A path as the user typed it, made usable once for every command: ``~`` and ``~user`` expanded (an unknown
    user is one sentence), and a name that is not valid text in this locale refused before any work."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(text).decode("utf-8", "backslashreplace")
        raise UserError(f"The {what} '{shown}' is not valid UTF-8; rename it, or give a path in plain text.") from None
    if text.startswith("~"):
        expanded = os.path.expanduser(text)
        if expanded.startswith("~"):
            user = text[1:].split(os.sep, 1)[0]
            raise UserError(f"The {what} '{text}' starts with '~{user}', but there is no user '{user}' here; give the "
                            "folder's full path.")
        text = expanded
    return Path(text)


def is_stdout(path: str | os.PathLike | None) -> bool:
    return path is not None and str(path) in STDOUT_NAMES


def is_stream(path: str | os.PathLike | None) -> bool:
    """A report path that names a stream rather than a file: standard output, or ``/dev/null`` (discarded)."""
    return is_stdout(path) or (path is not None and str(path) == os.devnull)


def path_kind(path: str | os.PathLike, what: str, fix: str) -> str:
    """What is at ``path``, without following a link: ``missing``, ``link``, ``dir``, ``file`` or ``special``
    (a device, FIFO or socket); a path that cannot be looked at is one sentence naming ``what`` and ``fix``."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        raise UserError(f"Cannot use '{path}' as the {what} ({exc.strerror}); {fix}.") from None
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "special"


def nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists: where a folder about to be created would go."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output(path: str | os.PathLike, *, force: bool, what: str = "output",
                 inputs: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Refuse, in one sentence, an output path that cannot or must not be written; return it as a Path.

    Refused: a directory, a symlink, a FIFO/device/socket, an existing regular file without ``force``,
    one of the ``inputs`` themselves, and a parent that is not a writable directory.
    """
    if is_stdout(path):
        raise UserError(f"The {what} cannot go to standard output ('{path}'); give a file path ('-' is for the "
                        "JSON, CSV and Markdown reports).")
    path = Path(path)
    if str(path) in ("", "."):
        raise UserError(f"The {what} path '{path}' is a directory; give a file name such as 'model.onnx'.")
    kind = path_kind(path, what, "choose another path")
    if kind != "missing":
        if kind == "link":
            raise UserError(f"The {what} '{path}' is a symbolic link; ulsam-deploy never replaces links, so give the "
                            "real file's path or another one.")
        if kind == "dir":
            raise UserError(f"The {what} '{path}' is a directory; give a file path inside it, such as "
                            f"'{path / 'model.onnx'}'.")
        if kind == "special":
            raise UserError(f"The {what} '{path}' is not a regular file (a device, FIFO or socket); choose a file path.")
        for source in inputs:
            with contextlib.suppress(OSError):
                if os.path.samefile(source, path):
                    raise UserError(f"The {what} '{path}' is the input itself; choose another path.")
        if not force:
            raise UserError(f"'{path}' already exists; pass --force to replace it or choose another path.")
    probe = nearest_existing(path.parent)
    if not probe.is_dir():
        raise UserError(f"Cannot write '{path}': '{probe}' is a file, not a directory.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"Cannot write '{path}': the directory '{probe}' is not writable; choose another location.")
    return path


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temp path beside ``path``; on success give it the umask's mode and rename it onto ``path``.

    The temp file is removed on any failure (including KeyboardInterrupt and SIGTERM, which the CLI turns
    into an exception). A symlink, directory or special file that appeared at ``path`` meanwhile is never
    replaced.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserError(f"Cannot write '{path}' ({exc.strerror}); choose a writable location.") from None
    os.close(fd)
    try:
        try:
            yield tmp
        except OSError as exc:
            if exc.errno is None or exc.filename not in (None, tmp):
                raise
            raise IOFailure(f"{os_error_sentence(exc, str(path)).rstrip('.')}; nothing was written there.") from None
        os.chmod(tmp, _umask_mode())
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISREG(os.lstat(path).st_mode):
                raise UserError(f"'{path}' became a link, directory or special file while writing; nothing was "
                                "written there.")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    with atomic_target(path) as tmp:
        Path(tmp).write_bytes(data)
    return Path(path)


def write_text_output(text: str, path: str | os.PathLike, *, force: bool, what: str = "report") -> Path | None:
    """A report to a file (atomic, same rules as every output), to standard output for ``-``/``/dev/stdout``, or
    nowhere for ``/dev/null``."""
    if is_stream(path):
        if is_stdout(path):
            if STDOUT_CLOSED:
                raise IOFailure(f"The {what} was asked for on standard output ('{path}'), which is closed; keep it "
                                "open or give a file path.")
            try:
                sys.stdout.write(text)
                sys.stdout.flush()
            except OSError as exc:
                raise IOFailure(f"Cannot write the {what} to standard output ({exc.strerror or exc}); give a file "
                                "path instead.") from None
        return None
    check_output(path, force=force, what=what)
    return write_bytes(text.encode(), path)


def json_default(obj: Any):
    try:
        import numpy as np

        if isinstance(obj, (np.floating, np.integer)):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _finite(data: Any) -> Any:
    """JSON has no NaN or Infinity: non-finite numbers become null."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def json_text(data: Any) -> str:
    """Strict JSON (non-finite numbers as null), indented, numpy values and paths included."""
    plain = json.loads(json.dumps(data, default=json_default))
    return json.dumps(_finite(plain), indent=2, allow_nan=False) + "\n"


def write_json(data: Any, path: str | os.PathLike) -> Path:
    return write_bytes(json_text(data).encode(), path)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


MAX_ONNX_BYTES = 2 << 30  # protobuf's limit; weights beyond it live in external data files


def check_input_file(path: str | os.PathLike, what: str, fix: str, *, remake: str | None = None,
                     error: type[UserError] = UserError) -> Path:
    """The checks every file argument passes before it is opened: it exists, is a regular file and is not empty.

    ``what`` names the file ("ONNX file", "engine"), ``fix`` says what to do when it is missing and ``remake``
    (default ``fix``) when it is empty. A FIFO is refused here because reading one would hang."""
    path = Path(path)
    article = "an" if what[:1].lower() in "aeiou" else "a"
    if not path.exists():
        raise error(f"{what[:1].upper() + what[1:]} '{path}' does not exist; {fix}.")
    if path.is_dir():
        raise error(f"'{path}' is a directory, not {article} {what}; give the path of the file itself.")
    if not path.is_file():
        raise error(f"'{path}' is not a regular file (a device, FIFO or socket), so not {article} {what}; give the "
                    "path of the file itself.")
    if path.stat().st_size == 0:
        raise error(f"{what[:1].upper() + what[1:]} '{path}' is empty; {remake or fix}.")
    return path


def load_onnx(path: str | os.PathLike, what: str = "ONNX file"):
    """A readable, non-empty ONNX model, or one sentence saying why not (external data is checked too)."""
    import onnx

    path = check_input_file(path, what, "check the path or run 'ulsam-deploy export' first", remake="re-export it")
    size = path.stat().st_size
    if size > MAX_ONNX_BYTES:
        raise UserError(f"'{path}' is {size / 2**30:.1f} GiB, larger than an ONNX file can be (2 GiB, external data "
                        "aside); it is not an ONNX model: check the path.")
    from ulsam_deploy.limits import require_memory

    require_memory(size * 3, f"Reading '{path}' ({size / 2**20:.0f} MiB)", "it is not a MobileNet model: check the "
                   "path, or read it on a larger machine")  # the bytes, the parsed proto and a copy
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError, external-data errors and friends
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"'{path}' is not a readable ONNX model ({reason}); re-export it.") from None
    if not model.HasField("graph") or not model.graph.node or not model.graph.output:
        raise UserError(f"'{path}' holds no ONNX graph (no nodes or no outputs); it is not a model: re-export it.")
    unsorted = first_unsorted_node(model.graph)
    if unsorted is not None:
        raise UserError(f"'{path}' is not a valid ONNX graph: node '{unsorted}' reads a tensor that no earlier node, "
                        "input or initializer gives (a cycle, or nodes out of order); re-export the model.")
    return model


def first_unsorted_node(graph) -> str | None:
    """The first node (name or op type) of the main graph that reads a tensor not produced before it, or None.
    ONNX requires topological order, and a cycle can never have one."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    known |= {t.values.name for t in getattr(graph, "sparse_initializer", [])}
    for node in graph.node:
        if any(name not in known for name in node.input):
            return node.name or node.op_type
        known.update(node.output)
    return None


# ---------------------------------------------------------------------------------------- sidecars

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
class _Open(BaseModel):
    """An engine-sidecar section: the fields read back are typed, the rest is informational and kept as written."""

    model_config = ConfigDict(extra="allow")


class EngineTensorRT(_Open):
    version: str | None = None


class EngineGpu(_Open):
    name: str | None = None
    compute_capability: str | None = None


class EnginePlugin(_Open):
    library: str | None = None
    library_sha256: str | None = Field(default=None, pattern=_SHA256)


class EngineBuildFlags(_Open):
    """The sidecar's ``build`` section: the compatibility flags the engine was built with."""

    hardware_compatibility_level: str | None = None
    version_compatible: bool | None = None


class EngineSidecar(_Open):
    """``model.engine.json`` (written by build-trt): what :mod:`ulsam_deploy.backends.trt.compat` and the runner read
    back to decide whether, and how, the engine loads here."""

    format: Literal[ENGINE_SIDECAR_FORMAT]
    engine: str | None = None
    engine_sha256: str | None = None
    rebuild_command: str | None = None
    tensorrt: EngineTensorRT | None = None
    gpu: EngineGpu | None = None
    build: EngineBuildFlags | None = None
    plugin: EnginePlugin | None = None
    precision: str | dict[str, Any] | None = None
    onnx: str | dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    profiles: list[Any] | None = None

    @field_validator("engine_sha256")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(_SHA256, value):
            raise ValueError("not a sha256")
        return value


def sidecar_path(artifact: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.onnx.json`` (the same rule for engines: ``model.engine.json``)."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


MAX_SIDECAR_BYTES = 64 << 20


def _validation_sentence(exc: ValidationError) -> str:
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
        raise UserError(f"The sidecar '{path}' is invalid ({_validation_sentence(exc)}); {fix}.") from None


def check_recorded_sha256(artifact: Path, recorded: str, sidecar_file: Path, noun: str, fix: str) -> None:
    """Refuse a sidecar that records another ``noun`` (file, engine) than ``artifact``, naming both files."""
    actual = sha256_file(artifact)
    if actual != recorded:
        raise UserError(f"The sidecar '{sidecar_file}' describes another {noun} than '{artifact}' (sha256 "
                        f"{recorded[:12]}... recorded, {actual[:12]}... found); {fix}.")


def read_sidecar(onnx_path: str | os.PathLike, *, required: bool = True, check_hash: bool = True) -> OnnxSidecar | None:
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


def tool_versions(*modules: str) -> dict[str, str | None]:
    """Versions of ulsam-deploy, Python and the named packages, without importing them (an already imported
    module reports its own ``__version__``; else the installed distribution's metadata; else None)."""
    import importlib.metadata
    import platform

    from ulsam_deploy import __version__

    out: dict[str, str | None] = {"ulsam_deploy": __version__, "python": platform.python_version()}
    for name in modules:
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None) if module is not None else None
        if version is None:
            for dist in (name, name.replace("_", "-")):
                try:
                    version = importlib.metadata.version(dist)
                    break
                except importlib.metadata.PackageNotFoundError:
                    continue
        out[name] = str(version) if version is not None else None
    return out


__all__ = ["DynamicRange", "ENGINE_SIDECAR_FORMAT", "EngineSidecar", "ModelInfo", "OnnxSidecar", "PreprocessSpec",
           "StepRecord", "TensorSpec", "atomic_target", "check_output", "check_recorded_sha256", "is_stdout",
           "is_stream", "json_text", "load_onnx", "now", "read_sidecar", "read_sidecar_json", "sha256_file",
           "sidecar_path", "tool_versions", "validate_sidecar", "write_bytes", "write_json", "write_text_output"]
