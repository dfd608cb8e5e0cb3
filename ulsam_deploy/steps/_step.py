"""The one step driver: every file-to-file command (export, fuse, convert, build-trt) runs through it.

A step checks its output paths before any work, times its stages, finalizes an ONNX (IR version
ORT reads, ``onnx.checker``), requires the judge's verdict to pass, and writes the artifact and its
sidecar together, atomically, so a failure leaves neither. The sidecar gets a :class:`StepRecord` of
what ran. One output is written by one process at a time (a lock per output path).

Passes (:mod:`ulsam_deploy.passes`) know nothing of files; steps know nothing of graph internals.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ulsam_deploy.artifacts import atomic_target, check_output, load_onnx, now, sha256_file, tool_versions
from ulsam_deploy.sidecars import OnnxSidecar, StepRecord, sidecar_path
from ulsam_deploy.errors import ParityError, UserError
from ulsam_deploy.events import SILENT, Events


@dataclass
class StepResult:
    """What a step wrote: the artifact, its sidecar (typed for ONNX, a dict for engines) and the figures."""

    path: Path
    sidecar_path: Path
    sidecar: Any
    verdict: Any = None  # ulsam_deploy.backends.judge.Verdict
    report: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def check_sidecar_matches(model, sidecar, path: Path) -> None:
    """Refuse a sidecar whose inputs/outputs contradict the ONNX graph (names, ranks, fixed sizes)."""
    from ulsam_deploy.onnx_graph import io_specs

    inputs, outputs = io_specs(model)
    for kind, declared, actual in (("input", sidecar.inputs, inputs), ("output", sidecar.outputs, outputs)):
        if len(declared) != len(actual):
            raise UserError(f"The sidecar of '{path}' lists {len(declared)} {kind}(s) but the ONNX has {len(actual)}; "
                            "re-run the step that wrote it.")
        for d, a in zip(declared, actual):
            same = d.name == a["name"] and len(d.shape) == len(a["shape"]) and all(
                not (isinstance(x, int) and isinstance(y, int)) or x == y for x, y in zip(d.shape, a["shape"]))
            if not same:
                raise UserError(f"The sidecar of '{path}' says {kind} '{d.name}' is {d.shape} but the ONNX has "
                                f"'{a['name']}' {a['shape']}; re-run the step that wrote it.")
    shape = inputs[0]["shape"] if len(inputs) == 1 and len(inputs[0]["shape"]) == 4 else None
    if shape is None:
        return
    claims = []  # (what the sidecar says, the value, the ONNX's value): fixed sizes must agree
    if sidecar.preprocess is not None:
        p = sidecar.preprocess
        claims += [("preprocess.in_channels", p.in_channels, shape[1]), ("preprocess.size", p.size, shape[2]),
                   ("preprocess.size", p.size, shape[3])]
    if sidecar.model is not None:
        from ulsam_deploy.models.config import ModelConfig

        config = ModelConfig.from_dict(sidecar.model.config)
        claims += [("model.config.in_channels", config.in_channels, shape[1]),
                   ("model.config.input_size", config.input_size, shape[2])]
        if sidecar.is_classifier:
            claims.append(("model.config.num_classes", config.num_classes, outputs[0]["shape"][-1]))
    for field_name, claimed, actual in claims:
        if isinstance(actual, int) and claimed != actual:
            raise UserError(f"The sidecar of '{path}' says {field_name} is {claimed} but the ONNX has {actual}; "
                            "re-run the step that wrote it.")


def load_with_sidecar(path: str | os.PathLike, *, required: bool = True):
    """``(model, sidecar)``: the ONNX and its validated sidecar (None when absent and not ``required``), which must
    describe this very file and graph."""
    from ulsam_deploy.sidecars import read_onnx_sidecar

    model = load_onnx(path)
    sidecar = read_onnx_sidecar(path, required=required)
    if sidecar is not None:
        check_sidecar_matches(model, sidecar, Path(path))
    return model, sidecar


def finalize_onnx(model, *, ours: bool = True):
    """Tidy (tools' metadata, unused opset imports, redundant Casts), lower the IR version to what ONNX Runtime
    reads and run ``onnx.checker``'s full check."""
    from ulsam_deploy.onnx_graph import check_model, fit_ir_version, tidy

    tidy(model)
    model = fit_ir_version(model)
    check_model(model, ours=ours)
    return model


def serialize_onnx(model) -> bytes:
    return model.SerializeToString()


def _lock_dir() -> Path:
    """This user's private lock folder (in the shared temp folder, so never a link or someone else's folder)."""
    folder = Path(tempfile.gettempdir()) / f"ulsam-deploy-locks-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise UserError(f"The lock folder '{folder}' is not a private folder of yours (a link, or another user's); "
                        "remove it and run the command again.")
    return folder


@contextlib.contextmanager
def output_lock(path: Path):
    """Hold an exclusive lock on ``path`` for the whole step: a second writer fails at once with one sentence."""
    resolved = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(path))), os.path.basename(path))
    key = hashlib.sha256(resolved.encode("utf-8", "surrogateescape")).hexdigest()[:32]  # one file, one lock
    fd = os.open(_lock_dir() / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"Another ulsam-deploy process is writing '{path}' right now; wait for it to finish or "
                            "choose another output path.") from None
        yield
    finally:
        os.close(fd)


class Step:
    """One run of a file-to-file step; use as a context manager (it holds the output's lock)."""

    def __init__(self, name: str, output: str | os.PathLike, *, force: bool, inputs=(), events: Events = SILENT,
                 options: dict | None = None, sidecar: bool = True):
        self.name = name
        guarded = tuple(inputs) + tuple(sidecar_path(p) for p in inputs)  # an input's sidecar is never overwritten
        self.output = check_output(output, force=force, what=f"{name} output", inputs=guarded)
        self.sidecar_file = sidecar_path(self.output) if sidecar else None
        if self.sidecar_file is not None:
            check_output(self.sidecar_file, force=True, what="sidecar", inputs=guarded)
            if not force and self.sidecar_file.is_file():
                raise UserError(f"'{self.sidecar_file}' already exists (where the sidecar of '{self.output.name}' goes); "
                                "pass --force to replace it or choose another output path.")
        self.inputs = [Path(p) for p in inputs]
        self.events = events
        self.options = dict(options or {})
        self.seconds: dict[str, float] = {}
        self._lock = output_lock(self.output)
        self._started = time.perf_counter()

    def __enter__(self) -> "Step":
        self._lock.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._lock.__exit__(*exc)

    @contextlib.contextmanager
    def stage(self, title: str, key: str | None = None):
        """A stage shown to the user; its duration is recorded under ``key``."""
        t0 = time.perf_counter()
        with self.events.stage(title):
            yield
        if key:
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0

    def finalize(self, model):
        with self.stage("Checking with onnx.checker", "check"):
            return finalize_onnx(model)

    def require(self, verdict, what: str, fix: str, *, reference: str = "the input model") -> None:
        """Raise ParityError (nothing written) unless the judge passed ``verdict``. A reference whose own outputs
        prove nothing (NaN, all zero, constant) is blamed, not this step."""
        from ulsam_deploy.backends.judge import REFERENCE_FIX

        if verdict.reference_problem is not None:
            raise ParityError(f"The outputs of {reference} are {verdict.reference_problem}, so parity would prove "
                              f"nothing and nothing was written; {REFERENCE_FIX}.")
        if not verdict.passed:
            raise ParityError(f"{what}: {verdict.sentence()}; nothing was written ({fix}).")

    def record(self, *, source: Path | None = None, report: dict | None = None, verdict=None,
               versions=("onnx", "onnxruntime")) -> StepRecord:
        src = None
        if source is not None:
            src = {"path": str(Path(source).resolve()), "sha256": sha256_file(source)}
        return StepRecord(step=self.name, created=now(), source=src, options=_jsonable(self.options),
                          report=_jsonable(report or {}), verdict=verdict.to_dict() if verdict is not None else None,
                          seconds={k: round(v, 3) for k, v in self.seconds.items()}, versions=tool_versions(*versions))

    def write(self, payload: bytes, sidecar_text: str | None) -> None:
        """Write the artifact and its sidecar: both appear, or neither does (the new sidecar is removed
        again if the artifact's rename fails after it)."""
        wrote_sidecar = False
        with self.stage(f"Writing {self.output}"):
            try:
                with atomic_target(self.output) as tmp:
                    Path(tmp).write_bytes(payload)
                    if self.sidecar_file is not None and sidecar_text is not None:
                        with atomic_target(self.sidecar_file) as side:
                            Path(side).write_text(sidecar_text, encoding="utf-8")
                        wrote_sidecar = True
            except BaseException:
                if wrote_sidecar:
                    self.sidecar_file.unlink(missing_ok=True)
                raise
        self.seconds["total"] = time.perf_counter() - self._started

    def write_onnx(self, model, sidecar: OnnxSidecar, record: StepRecord, *, verdict=None,
                   report: dict | None = None) -> StepResult:
        """Serialize ``model``, stamp its sha256 and graph facts into ``sidecar`` and write both."""
        from ulsam_deploy.onnx_graph import graph_facts

        payload = serialize_onnx(model)
        sidecar = sidecar.model_copy(deep=True)
        sidecar.onnx = self.output.name
        sidecar.sha256 = hashlib.sha256(payload).hexdigest()
        sidecar.graph = graph_facts(model)
        sidecar.steps.append(record)
        self.write(payload, sidecar.to_json())
        return StepResult(self.output, self.sidecar_file, sidecar, verdict, report or {}, dict(self.seconds))


def _jsonable(data):
    import json

    from ulsam_deploy.artifacts import json_default

    return json.loads(json.dumps(data, default=json_default))


__all__ = ["Step", "StepResult", "check_sidecar_matches", "finalize_onnx", "load_onnx", "load_with_sidecar", "output_lock"]
