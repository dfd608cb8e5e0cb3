"""ONNX Runtime implementation of the fused ``SubspaceAttention`` op (NumPy, via onnxruntime-extensions).

The fused graph written by :mod:`ulsam_deploy.passes.fuse` follows :mod:`ulsam_deploy.op_spec` exactly: one
input, one output, the folded constants as FLOATS attributes (what TensorRT's ONNX parser hands to the
plugin). onnxruntime-extensions' Python custom ops (0.15) have two limits that shape this module:

* they read only INT / FLOAT / STRING attributes (a FLOATS attribute fails session creation with
  "Attribute name and type don't match"), and
* a float16 output, or any Python exception raised by the op, *aborts the process* (C++ terminate).

So ONNX Runtime never sees the on-disk node as is. :func:`prepare_model` makes an in-memory ONNX Runtime
view: each ``SubspaceAttention`` node gets its four constant vectors as float32 initializer inputs
(validated there, where an error can still be a normal exception), non-float32 tensors are wrapped in
``Cast`` nodes (fp16 I/O, fp32 math), and the op itself never raises: on a bad input it records the
problem (see :func:`take_errors`) and returns NaNs, which every parity check rejects.

:class:`~ulsam_deploy.backends.OrtRunner` with ``custom_ops=True`` calls :func:`register_custom_ops` and
:func:`prepare_model`; do the same for a hand-made session::

    options = onnxruntime.SessionOptions()
    register_custom_ops(options)
    session = onnxruntime.InferenceSession(prepare_model("model.fused.onnx"), options)
"""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ulsam_deploy import op_spec
from ulsam_deploy.errors import BackendUnavailable, UserError
from ulsam_deploy.onnx_graph import elem_types, tensor_names, unique_namer

_ORT_INPUTS = (op_spec.ATTR_DW_SCALE, op_spec.ATTR_DW_SHIFT, op_spec.ATTR_PW_WEIGHT, op_spec.ATTR_PW_BIAS)
_lock = threading.Lock()
_registered = False
_errors: list[str] = []


# ----------------------------------------------------------------------------------------- the math

def subspace_attention(x: np.ndarray, groups: int, dw_scale, dw_shift, pw_weight, pw_bias,
                       relu_dw: bool = True, relu_pw: bool = True) -> np.ndarray:
    """The op on a NumPy array ``[N, C, H, W]``, result in ``x``'s dtype.

    Delegates to the shared oracle :func:`ulsam_deploy.kernels.reference.subspace_attention_numpy`
    (vectorised; padding of the max pool never wins). fp16 inputs are computed in fp32 (as the deployed
    kernels do); fp32 inputs in fp64, so that on ONNX Runtime the fused graph is the more exact side of any
    fused-vs-unfused comparison. Raises ``ValueError`` on inconsistent shapes.
    """
    from ulsam_deploy.kernels.reference import subspace_attention_numpy

    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"SubspaceAttention expects a 4-D [N, C, H, W] input, got shape {x.shape}")
    if x.dtype not in (np.float32, np.float16):
        raise ValueError(f"SubspaceAttention supports float32 and float16 inputs, not {x.dtype}")
    return subspace_attention_numpy(x, int(groups), np.asarray(dw_scale, np.float32), np.asarray(dw_shift, np.float32),
                                    np.asarray(pw_weight, np.float32), np.asarray(pw_bias, np.float32),
                                    bool(relu_dw), bool(relu_pw),
                                    compute_dtype=np.float64 if x.dtype == np.float32 else np.float32,
                                    out_dtype=x.dtype)


def _op_body(x, dw_scale, dw_shift, pw_weight, pw_bias, groups=1, relu_dw=1, relu_pw=1):
    """What onnxruntime-extensions calls. Must never raise (an exception aborts the process)."""
    try:
        y = subspace_attention(x, groups, dw_scale, dw_shift, pw_weight, pw_bias, bool(relu_dw), bool(relu_pw))
        return np.ascontiguousarray(y, dtype=np.float32)
    except BaseException as exc:  # noqa: BLE001 - see module docstring
        message = f"SubspaceAttention failed on input {getattr(x, 'shape', '?')}: {exc}"
        with _lock:
            _errors.append(message)
        print(f"ulsam-deploy: {message}", file=sys.stderr)
        try:
            return np.full(np.shape(x), np.nan, dtype=np.float32)
        except BaseException:  # noqa: BLE001
            return np.full((1,), np.nan, dtype=np.float32)


def take_errors() -> list[str]:
    """Errors recorded by the op since the last call (and clear them)."""
    with _lock:
        out = list(_errors)
        _errors.clear()
    return out


# ------------------------------------------------------------------------------------- registration

def _import_extensions():
    """onnxruntime-extensions, imported without its optional converters' torch and transformers (a second of
    import time, and of no use for a custom op): where they are not loaded yet, they are hidden while it loads."""
    import sys

    hidden = [name for name in ("torch", "transformers") if name not in sys.modules]
    try:
        for name in hidden:
            sys.modules[name] = None  # its own try/except ImportError skips the converters that need them
        import onnxruntime_extensions
    except ImportError as exc:
        raise BackendUnavailable(
            "onnxruntime-extensions is not installed, so ONNX Runtime cannot run the fused SubspaceAttention op; "
            "run 'pip install onnxruntime-extensions' (or install ulsam-deploy[kernels])."
        ) from exc
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    return onnxruntime_extensions


def _define_op() -> None:
    global _registered
    with _lock:
        if _registered:
            return
        ext = _import_extensions()
        from onnxruntime_extensions import PyCustomOpDef, onnx_op

        if ext.default_opset_domain() != op_spec.DOMAIN:  # pragma: no cover - would be an extensions change
            raise BackendUnavailable(
                f"onnxruntime-extensions serves Python ops in domain '{ext.default_opset_domain()}', not "
                f"'{op_spec.DOMAIN}'; install onnxruntime-extensions 0.12-0.15."
            )
        f32, i64 = PyCustomOpDef.dt_float, PyCustomOpDef.dt_int64
        onnx_op(op_type=op_spec.OP_TYPE, domain=op_spec.DOMAIN, inputs=[f32] * 5, outputs=[f32],
                attrs={op_spec.ATTR_GROUPS: i64, op_spec.ATTR_RELU_DW: i64, op_spec.ATTR_RELU_PW: i64})(_op_body)
        _registered = True


def register_custom_ops(options) -> None:
    """Make ``SubspaceAttention`` (domain ai.onnx.contrib) available to sessions built with ``options``.

    Sessions must load the model through :func:`prepare_model` (OrtRunner does), because the Python op
    reads its constants from inputs, not from the FLOATS attributes.
    """
    _define_op()
    ext = _import_extensions()
    options.register_custom_ops_library(ext.get_library_path())


# ------------------------------------------------------------------------------- ONNX Runtime view

def _float_list(node: onnx.NodeProto, name: str) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == name:
            if attr.type == onnx.AttributeProto.FLOATS:
                return np.asarray(list(attr.floats), dtype=np.float32)
            if attr.type == onnx.AttributeProto.TENSOR:
                return numpy_helper.to_array(attr.t).astype(np.float32).reshape(-1)
            return None
    return None


def _int_attr(node: onnx.NodeProto, name: str, default: int | None = None) -> int | None:
    for attr in node.attribute:
        if attr.name == name and attr.type == onnx.AttributeProto.INT:
            return int(attr.i)
    return default


def _load(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        return proto
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    from ulsam_deploy.artifacts import load_onnx

    return load_onnx(model)


def is_fused(model: onnx.ModelProto) -> bool:
    return any(n.op_type == op_spec.OP_TYPE and n.domain == op_spec.DOMAIN for n in model.graph.node)


def prepare_model(model: "str | os.PathLike | bytes | onnx.ModelProto") -> bytes:
    """Serialized ONNX Runtime view of ``model`` (unchanged when it has no SubspaceAttention node).

    Raises :class:`UserError` for a SubspaceAttention node whose attributes break op_spec, so a bad file
    fails here with a sentence instead of aborting inside ONNX Runtime.
    """
    proto = _load(model)
    if not is_fused(proto):
        return model if isinstance(model, (bytes, bytearray)) else proto.SerializeToString()
    graph = proto.graph
    types = elem_types(proto)
    fresh = unique_namer(tensor_names(graph))
    new_nodes, new_inits = [], []

    for index, node in enumerate(graph.node):
        if not (node.op_type == op_spec.OP_TYPE and node.domain == op_spec.DOMAIN):
            new_nodes.append(node)
            continue
        label = node.name or f"{op_spec.OP_TYPE} #{index}"
        if len(node.input) != 1 or len(node.output) != 1:
            raise UserError(f"{label} has {len(node.input)} inputs and {len(node.output)} outputs; "
                            f"{op_spec.OP_TYPE} takes exactly one of each (re-run 'ulsam-deploy fuse').")
        groups = _int_attr(node, op_spec.ATTR_GROUPS)
        relu = [_int_attr(node, op_spec.ATTR_RELU_DW, 1), _int_attr(node, op_spec.ATTR_RELU_PW, 1)]
        consts = [_float_list(node, name) for name in _ORT_INPUTS]
        missing = [name for name, c in zip(_ORT_INPUTS, consts) if c is None or c.size == 0]
        if groups is None or missing:
            raise UserError(f"{label} lacks the attribute(s) {', '.join(missing or [op_spec.ATTR_GROUPS])} "
                            f"that {op_spec.OP_TYPE} needs; re-run 'ulsam-deploy fuse' on the unfused model.")
        channels = consts[0].size
        if groups < 1 or channels % groups or any(c.size != channels for c in consts[1:3]) or consts[3].size != groups \
                or any(r not in (0, 1) for r in relu):
            raise UserError(f"{label} has inconsistent attributes (groups {groups}, {channels} channel scales, "
                            f"{consts[1].size} shifts, {consts[2].size} pointwise weights, {consts[3].size} biases); "
                            "re-run 'ulsam-deploy fuse' on the unfused model.")
        if not all(np.isfinite(c).all() for c in consts):
            raise UserError(f"{label} has non-finite constants; the source model's weights are broken.")
        ins = []
        for name, values in zip(_ORT_INPUTS, consts):
            init = numpy_helper.from_array(values.astype(np.float32), fresh(f"{node.output[0]}::{name}"))
            new_inits.append(init)
            ins.append(init.name)
        x, y = node.input[0], node.output[0]
        dtype = types.get(x, TensorProto.FLOAT)
        attrs = {op_spec.ATTR_GROUPS: int(groups), op_spec.ATTR_RELU_DW: int(relu[0]),
                 op_spec.ATTR_RELU_PW: int(relu[1])}
        if dtype == TensorProto.FLOAT:
            new_nodes.append(helper.make_node(op_spec.OP_TYPE, [x] + ins, [y], name=node.name, domain=op_spec.DOMAIN,
                                              **attrs))
        else:  # fp16 (or other float) I/O: compute in fp32, cast back
            x32, y32 = fresh(f"{x}::fp32"), fresh(f"{y}::fp32")
            new_nodes.append(helper.make_node("Cast", [x], [x32], name=fresh(f"{label}::cast_in"),
                                              to=TensorProto.FLOAT))
            new_nodes.append(helper.make_node(op_spec.OP_TYPE, [x32] + ins, [y32], name=node.name,
                                              domain=op_spec.DOMAIN, **attrs))
            new_nodes.append(helper.make_node("Cast", [y32], [y], name=fresh(f"{label}::cast_out"), to=dtype))
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    return proto.SerializeToString()


__all__ = ["is_fused", "prepare_model", "register_custom_ops", "subspace_attention", "take_errors"]
