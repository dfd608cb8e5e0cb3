"""Shared ONNX helpers: loading with clear errors, atomic saving, IR version, checking, counting."""

from __future__ import annotations

import functools
import hashlib
import os
from collections import Counter
from pathlib import Path

import onnx
from onnx import helper

from ulsam_deploy.errors import UserError
from ulsam_deploy.artifacts import atomic_target


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    path = Path(path)
    if not path.exists():
        raise UserError(f"ONNX file '{path}' does not exist; check the path or run 'ulsam-deploy export' first.")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError and friends
        raise UserError(f"'{path}' is not a readable ONNX model ({type(exc).__name__}); re-export it.") from exc


def save_onnx_atomic(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write to a temp file beside ``path`` and rename, so a failure never leaves half a file."""
    with atomic_target(path) as tmp:
        onnx.save(model, tmp)
    return Path(path)


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> Path:
    with atomic_target(path) as tmp:
        Path(tmp).write_bytes(data)
    return Path(path)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def ort_max_ir_version() -> int:
    """Highest ONNX IR version the installed onnxruntime loads (probed, not guessed from versions)."""
    import numpy as np
    import onnxruntime as ort

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    for ir in range(onnx.IR_VERSION, 6, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=ir)
        try:
            sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            sess.run(None, {"x": np.zeros(1, np.float32)})
            return ir
        except Exception:
            continue
    return 8


def fit_ir_version(model: onnx.ModelProto) -> onnx.ModelProto:
    """Lower ``ir_version`` to what onnxruntime accepts (onnx 1.23 writes 14, ORT 1.31 reads 13)."""
    limit = ort_max_ir_version()
    if model.ir_version > limit:
        model.ir_version = limit
    return model


def check_model(model: onnx.ModelProto) -> None:
    """``onnx.checker`` full check (with shape inference); raises UserError with the checker's words."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise UserError(f"The ONNX model failed onnx.checker: {first}; this is a bug in the export, please report it.") from exc


def tensor_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a graph already uses (initializers, inputs, node outputs)."""
    return ({t.name for t in graph.initializer} | {i.name for i in graph.input}
            | {o for n in graph.node for o in n.output})


def unique_namer(taken: set[str]):
    """A function giving ``base``, or ``base_1``, ``base_2``... the first name not in ``taken`` (then taken)."""

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        return name

    return fresh


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(node.op_type for node in model.graph.node).most_common())


def opset_of(model: onnx.ModelProto, domain: str = "") -> int | None:
    for entry in model.opset_import:
        if entry.domain in (domain, "ai.onnx" if domain == "" else domain):
            return int(entry.version)
    return None
