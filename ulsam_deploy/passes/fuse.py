"""Fusion pass: every ULSAM block in an ONNX graph becomes one ``SubspaceAttention`` node (see op_spec).

Recognised (structure, never node names; see ``docs/fusion.md``):

* the export form (:class:`~ulsam_deploy.models.ULSAMExport`), simplified or not, TorchScript or dynamo:
  ``Conv(depthwise 1x1) [BN] [Relu] MaxPool(3,1,1) Conv(1x1, g maps, group g) [BN] [Relu] Reshape Softmax
  Reshape``, applied as ``Reshape(x)[N,g,G,HW] * (A + 1)`` and reshaped back;
* the per-subspace form (exporting the training :class:`~ulsam_deploy.models.ULSAM` directly): ``Split`` or
  ``Slice`` into ``g`` contiguous chunks, one such branch per chunk (BN folded or not, ReLUs or the plain
  variant), applied as ``Expand(A) * x_k + x_k``, then ``Concat`` on channels.

Every invariant is checked (1x1 kernels, depthwise/grouped counts, pool parameters, softmax axis,
reshape targets against C/g/HW under two probe values of every dynamic dimension, constant operands,
intermediates used only inside the block). A near-match is left alone and reported with the reason.
Constants are folded exactly like :func:`~ulsam_deploy.models.fold_ulsam` (BN with its own epsilon).
Run it after onnxsim: shape inference stops at the custom op.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ulsam_deploy import op_spec
from ulsam_deploy.passes.common import unique_namer

_STD_DOMAINS = ("", "ai.onnx")
_UNARY_SAME_SHAPE = {"Identity", "Relu", "Sigmoid", "Softmax", "LogSoftmax", "Cast", "Clip", "LeakyRelu", "Neg",
                     "Abs", "Exp", "Log", "Sqrt", "Tanh", "HardSigmoid", "HardSwish", "Dropout", "CastLike"}
_BROADCAST_OPS = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Equal", "Less", "Greater", "And", "Or"}


class _Refuse(Exception):
    """A near-match that cannot be fused safely; ``str()`` is the reason shown to the user."""


class _NotConst(Exception):
    """A value that is not known before run time."""


# --------------------------------------------------------------------------------------------- helpers

def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type} -> {node.output[0] if node.output else '?'}"


def _broadcast(*shapes) -> tuple[int, ...]:
    rank = max(len(s) for s in shapes)
    out = []
    for axis in range(rank):
        dims = {s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise _Refuse(f"shapes {' and '.join(str(list(s)) for s in shapes)} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def _resolve_reshape(shape: tuple[int, ...], target: np.ndarray, allowzero: int) -> tuple[int, ...]:
    target = [int(v) for v in np.asarray(target).reshape(-1)]
    out = []
    for i, v in enumerate(target):
        if v == 0 and not allowzero:
            if i >= len(shape):
                raise _Refuse(f"reshape target {target} copies a dimension the input {list(shape)} lacks")
            out.append(shape[i])
        else:
            out.append(v)
    total = math.prod(shape)
    if out.count(-1) > 1:
        raise _Refuse(f"reshape target {target} has more than one -1")
    if -1 in out:
        known = math.prod(v for v in out if v != -1)
        if known == 0 or total % known:
            raise _Refuse(f"reshape target {target} does not fit an input of shape {list(shape)}")
        out[out.index(-1)] = total // known
    if math.prod(out) != total or any(v < 0 for v in out):
        raise _Refuse(f"reshape target {target} does not fit an input of shape {list(shape)}")
    return tuple(out)


class _Env:
    """One probe assignment of the dynamic (symbolic) dimensions: each symbol gets a distinct prime."""

    _POOLS = ((7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47), (53, 59, 61, 67, 71, 73, 79, 83, 89, 97, 101, 103))

    def __init__(self, index: int):
        self.index = index
        self.values: dict[str, int] = {}
        self._pool = iter(self._POOLS[index])
        self._next = 1000 + index

    def dim(self, d) -> int:
        if isinstance(d, int):
            return d
        if d not in self.values:
            self.values[d] = next(self._pool, None) or self._bump()
        return self.values[d]

    def _bump(self) -> int:
        self._next += 7
        return self._next


# ------------------------------------------------------------------------------------------- the graph

class _Graph:
    """Index of one graph: producers, consumers, constants, declared shapes; evaluates shape arithmetic."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        graph = model.graph
        self.nodes = list(graph.node)
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for i, node in enumerate(self.nodes):
            for out in node.output:
                if out:
                    self.producer[out] = i
            for name in list(node.input) + sorted(_subgraph_reads(node)):
                if name and i not in self.consumers[name]:
                    self.consumers[name].append(i)
        self.inits = {t.name: t for t in graph.initializer}
        self.graph_inputs = {v.name for v in graph.input}
        self.graph_outputs = {v.name for v in graph.output}
        self.opset = next((int(o.version) for o in model.opset_import if o.domain in _STD_DOMAINS), 13)
        self.dims = self._declared_dims(model)
        # only symbols of graph inputs are real dimensions; output/intermediate symbols may stand for "unknown"
        self.named = {d for v in graph.input for d in (self._dims_of(v) or []) if isinstance(d, str)}
        self.envs = (_Env(0), _Env(1))
        self._values: dict = {}
        self._shapes: dict = {}

    @staticmethod
    def _dims_of(vi: onnx.ValueInfoProto) -> list | None:
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            return None
        dims = []
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                dims.append(d.dim_param)
            else:
                dims.append(None)
        return dims

    def _declared_dims(self, model: onnx.ModelProto) -> dict[str, list]:
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        except Exception:  # noqa: BLE001 - declared shapes are an aid; computed shapes are the authority
            inferred = model
        out = {}
        g = inferred.graph
        for vi in list(g.value_info) + list(g.output) + list(g.input):
            dims = self._dims_of(vi)
            if dims is not None:
                out[vi.name] = dims
        return out

    def node(self, name: str) -> onnx.NodeProto | None:
        i = self.producer.get(name)
        return None if i is None else self.nodes[i]

    def reshape_root(self, name: str) -> str:
        """The tensor ``name`` is a pure reshape of (same elements, same row-major order)."""
        for _ in range(16):
            node = self.node(name)
            if node is None or node.op_type not in ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity") \
                    or node.domain not in _STD_DOMAINS:
                break
            name = node.input[0]
        return name

    # ----------------------------------------------------------------------------------- values
    def value(self, name: str, env: _Env) -> np.ndarray:
        key = (name, env.index)
        if key not in self._values:
            self._values[key] = None  # cycle guard
            try:
                self._values[key] = self._value(name, env)
            except Exception:
                del self._values[key]
                raise
        result = self._values[key]
        if result is None:
            raise _NotConst(f"'{name}' depends on itself")
        return result

    def _value(self, name: str, env: _Env) -> np.ndarray:
        if name in self.graph_inputs:
            raise _NotConst(f"'{name}' is a graph input (it can change at run time)")
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.node(name)
        if node is None:
            raise _NotConst(f"'{name}' has no producer")
        if node.domain not in _STD_DOMAINS:
            raise _NotConst(f"'{name}' is produced by the custom op {node.op_type}")
        op, a = node.op_type, _attrs(node)
        ins = list(node.input)
        v = lambda i: self.value(ins[i], env)  # noqa: E731
        has = lambda i: len(ins) > i and ins[i] != ""  # noqa: E731
        if op == "Constant":
            for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
                if key in a:
                    val = a[key]
                    return numpy_helper.to_array(val) if key == "value" else np.asarray(val)
            raise _NotConst(f"Constant '{name}' has no numeric value")
        if op in ("Identity", "Dropout") and node.output[0] == name:
            return v(0)
        if op == "Cast":
            return v(0).astype(helper.tensor_dtype_to_np_dtype(a["to"]))
        if op == "CastLike":
            return v(0).astype(v(1).dtype)
        if op == "Shape":
            shape = self.shape(ins[0], env)
            if shape is None:
                raise _NotConst(f"the shape of '{ins[0]}' is unknown")
            rank = len(shape)
            start, end = a.get("start", 0), a.get("end", rank)
            return np.asarray(shape[slice(start, end)], dtype=np.int64)
        if op == "Size":
            shape = self.shape(ins[0], env)
            if shape is None:
                raise _NotConst(f"the shape of '{ins[0]}' is unknown")
            return np.asarray(math.prod(shape), dtype=np.int64)
        if op == "Gather":
            return np.take(v(0), v(1), axis=a.get("axis", 0))
        if op in ("Unsqueeze", "Squeeze"):
            data = v(0)
            axes = a.get("axes") if "axes" in a else ([int(x) for x in v(1).reshape(-1)] if has(1) else None)
            if op == "Squeeze":
                return np.squeeze(data, axis=None if axes is None else tuple(axes))
            rank = data.ndim + len(axes)
            for axis in sorted(ax % rank for ax in axes):
                data = np.expand_dims(data, axis)
            return data
        if op == "Concat":
            return np.concatenate([self.value(i, env) for i in ins], axis=a.get("axis", 0))
        if op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Equal", "Pow"):
            x, y = v(0), v(1)
            if op == "Div" and np.issubdtype(x.dtype, np.integer):
                return np.trunc(x / y).astype(x.dtype)
            fn = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Max": np.maximum,
                  "Min": np.minimum, "Equal": np.equal, "Pow": np.power}[op]
            return fn(x, y).astype(np.result_type(x, y)) if op != "Equal" else fn(x, y)
        if op in ("Neg", "Abs", "Floor", "Ceil", "Sqrt", "Reciprocal"):
            fn = {"Neg": np.negative, "Abs": np.abs, "Floor": np.floor, "Ceil": np.ceil, "Sqrt": np.sqrt,
                  "Reciprocal": np.reciprocal}[op]
            return fn(v(0))
        if op == "Where":
            return np.where(v(0), v(1), v(2))
        if op == "Slice":
            data = v(0)
            if self.opset < 10 or not has(1):
                starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
            else:
                starts, ends = v(1).tolist(), v(2).tolist()
                axes = v(3).tolist() if has(3) else None
                steps = v(4).tolist() if has(4) else None
            axes = axes if axes is not None else list(range(len(starts)))
            steps = steps if steps is not None else [1] * len(starts)
            index = [slice(None)] * data.ndim
            for s, e, ax, st in zip(starts, ends, axes, steps):
                index[ax % data.ndim] = slice(int(s), int(e), int(st))
            return data[tuple(index)]
        if op == "Reshape":
            data = v(0)
            shape = _resolve_reshape(data.shape, v(1), a.get("allowzero", 0))
            return data.reshape(shape)
        if op == "ConstantOfShape":
            fill = numpy_helper.to_array(a["value"]).reshape(-1)[0] if "value" in a else np.float32(0)
            return np.full([int(d) for d in v(0)], fill, dtype=np.asarray(fill).dtype)
        if op == "Range":
            return np.arange(v(0), v(1), v(2))
        if op == "Expand":
            data, shape = v(0), [int(d) for d in v(1)]
            return np.broadcast_to(data, _broadcast(data.shape, tuple(shape))).copy()
        if op == "Transpose":
            return np.transpose(v(0), a.get("perm"))
        raise _NotConst(f"'{name}' is computed by {op} at run time")

    # ----------------------------------------------------------------------------------- shapes
    def shape(self, name: str, env: _Env) -> tuple[int, ...] | None:
        key = (name, env.index)
        if key not in self._shapes:
            self._shapes[key] = None  # cycle guard
            self._shapes[key] = self._shape(name, env)
        return self._shapes[key]

    def _shape(self, name: str, env: _Env) -> tuple[int, ...] | None:
        if name in self.inits:
            return tuple(int(d) for d in self.inits[name].dims)
        declared = self.dims.get(name)
        if declared is not None and all(isinstance(d, int) or d in self.named for d in declared):
            return tuple(env.dim(d) for d in declared)
        node = self.node(name)
        if node is not None and node.domain in _STD_DOMAINS:
            try:
                return self._node_shape(node, name, env)
            except (_NotConst, _Refuse, KeyError, IndexError, ValueError, TypeError):
                return None
        return None

    def _node_shape(self, node: onnx.NodeProto, name: str, env: _Env) -> tuple[int, ...] | None:
        op, a, ins = node.op_type, _attrs(node), list(node.input)
        s = lambda i: self.shape(ins[i], env)  # noqa: E731
        if op in _UNARY_SAME_SHAPE or (op == "BatchNormalization" and name == node.output[0]):
            return s(0)
        if op in _BROADCAST_OPS:
            shapes = [s(i) for i in range(len(ins))]
            return None if any(x is None for x in shapes) else _broadcast(*shapes)
        if op in ("Conv", "MaxPool", "AveragePool"):
            x = s(0)
            if x is None or len(x) < 3 or name != node.output[0]:
                return None
            spatial = len(x) - 2
            if op == "Conv":
                w = s(1)
                if w is None:
                    return None
                kernel, channels = list(w[2:]), w[0]
            else:
                kernel, channels = list(a["kernel_shape"]), x[1]
            strides = list(a.get("strides", [1] * spatial))
            dil = list(a.get("dilations", [1] * spatial))
            pads = list(a.get("pads", [0] * 2 * spatial))
            auto = a.get("auto_pad", b"NOTSET")
            auto = auto.decode() if isinstance(auto, bytes) else auto
            ceil = a.get("ceil_mode", 0)
            out = []
            for i in range(spatial):
                if auto in ("SAME_UPPER", "SAME_LOWER"):
                    out.append(-(-x[2 + i] // strides[i]))
                    continue
                if auto == "VALID":
                    pads[i] = pads[i + spatial] = 0
                eff = dil[i] * (kernel[i] - 1) + 1
                span = x[2 + i] + pads[i] + pads[i + spatial] - eff
                out.append((-(-span // strides[i]) if ceil else span // strides[i]) + 1)
            return (x[0], channels, *out)
        if op == "Reshape":
            x = s(0)
            return None if x is None else _resolve_reshape(x, self.value(ins[1], env), a.get("allowzero", 0))
        if op == "Flatten":
            x = s(0)
            axis = a.get("axis", 1) % (len(x) + 1) if x is not None else 0
            return None if x is None else (math.prod(x[:axis]), math.prod(x[axis:]))
        if op in ("Unsqueeze", "Squeeze"):
            x = s(0)
            if x is None:
                return None
            if "axes" in a:
                axes = a["axes"]
            else:
                axes = [int(v) for v in self.value(ins[1], env)] if len(ins) > 1 and ins[1] else None
            if op == "Squeeze":
                if axes is None:
                    return tuple(d for d in x if d != 1)
                drop = {ax % len(x) for ax in axes}
                return tuple(d for i, d in enumerate(x) if i not in drop)
            out = list(x)
            rank = len(x) + len(axes)
            for axis in sorted(ax % rank for ax in axes):
                out.insert(axis, 1)
            return tuple(out)
        if op == "Expand":
            x = s(0)
            return None if x is None else _broadcast(x, tuple(int(d) for d in self.value(ins[1], env)))
        if op == "Concat":
            shapes = [s(i) for i in range(len(ins))]
            if any(x is None for x in shapes):
                return None
            axis = a["axis"] % len(shapes[0])
            out = list(shapes[0])
            out[axis] = sum(x[axis] for x in shapes)
            return tuple(out)
        if op in ("Slice", "Split"):
            x = s(0)
            if x is None:
                return None
            if op == "Slice":
                axis, start, stop = self.slice_range(node, x, env)
            else:
                axis, ranges = self.split_ranges(node, x, env)
                start, stop = ranges[list(node.output).index(name)]
            out = list(x)
            out[axis] = stop - start
            return tuple(out)
        if op == "Transpose":
            x = s(0)
            perm = a.get("perm", list(range(len(x) - 1, -1, -1))) if x is not None else None
            return None if x is None else tuple(x[p] for p in perm)
        if op == "Shape":
            x = s(0)
            return None if x is None else (len(x[slice(a.get("start", 0), a.get("end", len(x)))]),)
        return None

    def slice_range(self, node: onnx.NodeProto, shape: tuple[int, ...], env: _Env) -> tuple[int, int, int]:
        """(axis, start, stop) of a one-axis, step-1 Slice, clamped like ONNX; refuses anything else."""
        a, ins = _attrs(node), list(node.input)
        if self.opset < 10 or len(ins) < 3:
            starts, ends, axes, steps = a.get("starts", []), a.get("ends", []), a.get("axes"), None
        else:
            starts = self.value(ins[1], env).reshape(-1).tolist()
            ends = self.value(ins[2], env).reshape(-1).tolist()
            axes = self.value(ins[3], env).reshape(-1).tolist() if len(ins) > 3 and ins[3] else None
            steps = self.value(ins[4], env).reshape(-1).tolist() if len(ins) > 4 and ins[4] else None
        axes = axes if axes is not None else list(range(len(starts)))
        steps = steps if steps is not None else [1] * len(starts)
        if len(starts) != 1 or int(steps[0]) != 1:
            raise _Refuse(f"{_label(node)} is not a contiguous slice of one axis")
        axis = int(axes[0]) % len(shape)
        dim = shape[axis]
        clamp = lambda v: min(max(int(v) + dim if int(v) < 0 else int(v), 0), dim)  # noqa: E731
        return axis, clamp(starts[0]), clamp(ends[0])

    def split_ranges(self, node: onnx.NodeProto, shape: tuple[int, ...], env: _Env) -> tuple[int, list]:
        a, ins = _attrs(node), list(node.input)
        axis = a.get("axis", 0) % len(shape)
        dim, n = shape[axis], len(node.output)
        if len(ins) > 1 and ins[1]:
            sizes = [int(v) for v in self.value(ins[1], env).reshape(-1)]
        elif "split" in a:
            sizes = [int(v) for v in a["split"]]
        else:
            n = int(a.get("num_outputs", n))
            chunk = -(-dim // n)
            sizes = [min(chunk, dim - k * chunk) for k in range(n)]
        if sum(sizes) != dim or len(sizes) != len(node.output):
            raise _Refuse(f"{_label(node)} splits {dim} channels into {sizes}")
        ranges, start = [], 0
        for size in sizes:
            ranges.append((start, start + size))
            start += size
        return axis, ranges


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the outer scope (conservatively: all)."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            for inner in g.node:
                names.update(i for i in inner.input if i)
                names.update(_subgraph_reads(inner))
    return names


# ---------------------------------------------------------------------------------------- matching

@dataclass
class _Branch:
    """One attention branch: softmax maps from ``xin`` applied back to ``xin`` (or its reshape)."""

    softmax: int
    xin: str
    out: str
    mode: str  # "grouped" (export form, g maps from one branch) or "direct" (one map, per-subspace form)
    channels: int
    groups: int
    dw_scale: np.ndarray
    dw_shift: np.ndarray
    pw_weight: np.ndarray
    pw_bias: np.ndarray
    relu_dw: bool
    relu_pw: bool
    batchnorms: int
    nodes: set[int] = field(default_factory=set)


@dataclass
class _Block:
    x: str
    y: str
    branches: list[_Branch]
    form: str
    nodes: set[int]
    anchor: int  # node index reported when the block is refused

    @property
    def groups(self) -> int:
        return sum(b.groups for b in self.branches)

    @property
    def channels(self) -> int:
        return sum(b.channels for b in self.branches)


class _Matcher:
    def __init__(self, g: _Graph):
        self.g = g

    # ------------------------------------------------------------------------------ small checks
    def single_consumer(self, tensor: str, what: str) -> int:
        users = self.g.consumers.get(tensor, [])
        if tensor in self.g.graph_outputs or len(users) != 1:
            extra = " and is a graph output" if tensor in self.g.graph_outputs else ""
            raise _Refuse(f"the {what} '{tensor}' has {len(users)} consumers{extra}; ULSAM uses it once")
        return users[0]

    def const(self, name: str, what: str) -> np.ndarray:
        try:
            return np.asarray(self.g.value(name, self.g.envs[0]), dtype=np.float64)
        except _NotConst as exc:
            raise _Refuse(f"the {what} is not a constant ({exc})") from None

    def check_1x1(self, node: onnx.NodeProto, weight: np.ndarray, what: str) -> None:
        a = _attrs(node)
        kernel = list(a.get("kernel_shape", weight.shape[2:]))
        bad = []
        if weight.ndim != 4 or kernel != [1, 1] or list(weight.shape[2:]) != [1, 1]:
            bad.append(f"kernel {kernel}")
        if any(v != 1 for v in a.get("strides", [1, 1])):
            bad.append(f"strides {list(a['strides'])}")
        if any(v != 1 for v in a.get("dilations", [1, 1])):
            bad.append(f"dilations {list(a['dilations'])}")
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto == "NOTSET" and any(v != 0 for v in a.get("pads", [0, 0, 0, 0])):
            bad.append(f"pads {list(a['pads'])}")
        if bad:
            raise _Refuse(f"the {what} is not a plain 1x1 convolution ({', '.join(bad)})")

    def check_pool(self, node: onnx.NodeProto) -> None:
        a = _attrs(node)
        kernel, strides = list(a.get("kernel_shape", [])), list(a.get("strides", [1, 1]))
        pads, dil = list(a.get("pads", [0, 0, 0, 0])), list(a.get("dilations", [1, 1]))
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        same = auto in ("SAME_UPPER", "SAME_LOWER")
        padded = same or (auto == "NOTSET" and pads == [1, 1, 1, 1])
        if kernel != [3, 3] or strides != [1, 1] or dil != [1, 1] or not padded:
            raise _Refuse(f"MaxPool {_label(node)} is not 3x3/stride 1/pad 1 (kernel {kernel}, strides {strides}, "
                          f"pads {pads if not same else auto}, dilations {dil})")
        if len(node.output) > 1 and node.output[1] and self.g.consumers.get(node.output[1]):
            raise _Refuse(f"MaxPool {_label(node)} also returns indices that are used")

    def fold_bn(self, node: onnx.NodeProto, size: int, what: str) -> tuple[np.ndarray, np.ndarray]:
        a = _attrs(node)
        if a.get("training_mode", 0) or a.get("spatial", 1) != 1 or a.get("is_test", 1) == 0:
            raise _Refuse(f"the {what} BatchNormalization runs in training mode")
        if any(o and self.g.consumers.get(o) for o in node.output[1:]):
            raise _Refuse(f"the {what} BatchNormalization's running statistics outputs are used")
        gamma, beta, mean, var = (self.const(node.input[i], f"{what} BatchNormalization parameter")
                                  for i in range(1, 5))
        if any(p.reshape(-1).shape[0] != size for p in (gamma, beta, mean, var)):
            raise _Refuse(f"the {what} BatchNormalization has parameters for the wrong channel count")
        scale = gamma.reshape(-1) / np.sqrt(var.reshape(-1) + float(a.get("epsilon", 1e-5)))
        return scale, beta.reshape(-1) - mean.reshape(-1) * scale

    def conv_chain(self, tensor: str, what: str) -> tuple[onnx.NodeProto, onnx.NodeProto | None, bool, list[int]]:
        """Walk back from ``tensor`` over [Relu] [BatchNormalization] to a Conv: (conv, bn, relu, node ids)."""
        ids, bn, relu = [], None, False
        index = self.g.producer.get(tensor)
        seen = []
        while index is not None and self.g.nodes[index].op_type in ("Relu", "BatchNormalization") and len(seen) < 3:
            node = self.g.nodes[index]
            seen.append(node.op_type)
            ids.append(index)
            if node.op_type == "Relu":
                if relu or bn is not None:
                    raise _Refuse(f"unexpected {' -> '.join(reversed(seen))} after the {what}")
                relu = True
            else:
                if bn is not None:
                    raise _Refuse(f"two BatchNormalization nodes after the {what}")
                bn = node
            index = self.g.producer.get(node.input[0])
        if index is None or self.g.nodes[index].op_type != "Conv":
            found = "a graph input" if index is None else self.g.nodes[index].op_type
            raise _Refuse(f"the {what} should be a Conv but {found} was found")
        ids.append(index)
        return self.g.nodes[index], bn, relu, ids

    # ------------------------------------------------------------------------------------ branch
    def match_branch(self, sm_index: int) -> _Branch | None:
        """Match the branch around one Softmax; None if it is not ULSAM-like at all, _Refuse if a near-match."""
        g = self.g
        sm = g.nodes[sm_index]
        # candidacy: Softmax <- (Reshape/Flatten/Relu/BN)* <- Conv <- MaxPool
        pre, index = [], g.producer.get(sm.input[0])
        while index is not None and g.nodes[index].op_type in ("Reshape", "Flatten", "Relu", "BatchNormalization",
                                                                  "Identity", "Unsqueeze", "Squeeze") and len(pre) < 6:
            pre.append(index)
            index = g.producer.get(g.nodes[index].input[0])
        if index is None or g.nodes[index].op_type != "Conv":
            return None
        pw = g.nodes[index]
        pool_index = g.producer.get(pw.input[0])
        if pool_index is None or g.nodes[pool_index].op_type != "MaxPool":
            return None
        pool = g.nodes[pool_index]

        # ---- attention branch, backwards
        reshapes = [i for i in pre if g.nodes[i].op_type in ("Reshape", "Flatten")]
        if len(reshapes) != 1 or pre[0] != reshapes[0]:
            ops = " -> ".join(g.nodes[i].op_type for i in reversed(pre)) or "nothing"
            raise _Refuse(f"expected [BN] [Relu] Reshape between the pointwise Conv and the Softmax, found {ops}")
        r1 = g.nodes[pre[0]]
        pw_conv, pw_bn, relu_pw, pw_ids = self.conv_chain(r1.input[0], "pointwise Conv")
        if pw_conv is not pw:  # pragma: no cover - guarded by the candidacy walk
            raise _Refuse("the softmax input does not come from the pointwise Conv")
        self.check_pool(pool)
        dw, dw_bn, relu_dw, dw_ids = self.conv_chain(pool.input[0], "depthwise Conv before the MaxPool")
        xin = dw.input[0]
        envs = g.envs
        s0 = g.shape(xin, envs[0])
        if s0 is None or len(s0) != 4:
            raise _Refuse(f"the attention input '{xin}' is not a 4-D tensor of known shape")
        channels = s0[1]
        dw_w = self.const(dw.input[1], "depthwise Conv weight")
        self.check_1x1(dw, dw_w, "depthwise Conv")
        if dw_w.shape[:2] != (channels, 1) or int(_attrs(dw).get("group", 1)) != channels:
            raise _Refuse(f"the first Conv is not depthwise over {channels} channels "
                          f"(weight {list(dw_w.shape)}, group {_attrs(dw).get('group', 1)})")
        dw_b = self.const(dw.input[2], "depthwise Conv bias").reshape(-1) if len(dw.input) > 2 and dw.input[2] \
            else np.zeros(channels)
        scale, shift = dw_w.reshape(-1), dw_b
        if dw_bn is not None:
            bn_s, bn_t = self.fold_bn(dw_bn, channels, "depthwise")
            scale, shift = scale * bn_s, shift * bn_s + bn_t
        pw_w = self.const(pw.input[1], "pointwise Conv weight")
        self.check_1x1(pw, pw_w, "pointwise Conv")
        groups = int(pw_w.shape[0]) if pw_w.ndim == 4 else 0
        pw_group = int(_attrs(pw).get("group", 1))
        if groups < 1 or channels % groups or pw_w.shape[1] * groups != channels or pw_group != groups:
            raise _Refuse(f"the pointwise Conv (weight {list(pw_w.shape)}, group {pw_group}) does not "
                          f"map {channels} channels to one map per group")
        pw_b = self.const(pw.input[2], "pointwise Conv bias").reshape(-1) if len(pw.input) > 2 and pw.input[2] \
            else np.zeros(groups)
        weight = pw_w.reshape(-1)  # [g, G] -> [C]: channel c belongs to group c // G
        bias = pw_b
        if pw_bn is not None:
            bn_s, bn_t = self.fold_bn(pw_bn, groups, "pointwise")
            weight = weight * np.repeat(bn_s, channels // groups)
            bias = bias * bn_s + bn_t
        nodes = set(dw_ids) | set(pw_ids) | {pool_index, pre[0], sm_index}

        # ---- softmax over h*w of each map
        axis_attr = _attrs(sm).get("axis", -1 if g.opset >= 13 else 1)
        for env in envs:
            n, c, h, w = self.xshape(xin, env)
            pre_shape = g.shape(sm.input[0], env)
            if pre_shape is None:
                raise _Refuse(f"the reshape before the Softmax has a target that cannot be resolved ('{r1.input[1]}')")
            axis = axis_attr % len(pre_shape)
            ok = (pre_shape[axis] == h * w and math.prod(pre_shape[axis + 1:]) == 1) if g.opset >= 13 \
                else math.prod(pre_shape[axis:]) == h * w
            if not ok or math.prod(pre_shape) != n * groups * h * w:
                raise _Refuse(f"Softmax (axis {axis_attr}) on shape {list(pre_shape)} does not normalise each map over "
                              f"its {h}x{w} positions")

        # ---- attention applied to x, forwards
        att, chain, pre_expand = sm.output[0], [], None
        while True:
            user = self.single_consumer(att, "softmax output" if not chain else "attention map")
            node = g.nodes[user]
            reshaping = node.op_type in ("Reshape", "Unsqueeze", "Flatten", "Expand") and node.input[0] == att
            if reshaping and len(chain) < 4:
                if node.op_type == "Expand" and pre_expand is None:
                    pre_expand = att
                chain.append(user)
                att = node.output[0]
                continue
            break
        pre_expand = pre_expand or att
        op = g.nodes[user]
        if op.op_type not in ("Add", "Mul"):
            raise _Refuse(f"the attention map feeds {op.op_type} {_label(op)}, not x * (1 + A) or A * x + x")
        other = lambda node, t: node.input[1] if node.input[0] == t else node.input[0]  # noqa: E731
        nodes |= set(chain) | {user}
        if op.op_type == "Add":  # x * (A + 1)
            one = other(op, att)
            ones = self.const(one, "'+1' added to the attention map")
            if ones.size == 0 or not np.all(ones == 1.0):
                raise _Refuse(f"the attention map is offset by {ones.reshape(-1)[:4].tolist()}, not by 1")
            mul = g.nodes[self.single_consumer(op.output[0], "1 + attention")]
            if mul.op_type != "Mul":
                raise _Refuse(f"1 + attention feeds {mul.op_type}, not Mul")
            xr, result = other(mul, op.output[0]), mul.output[0]
            nodes.add(g.producer[result])
            applied = [op.output[0]]
        else:  # A * x + x
            xr = other(op, att)
            add = g.nodes[self.single_consumer(op.output[0], "attention * x")]
            if add.op_type != "Add" or other(add, op.output[0]) != xr:
                raise _Refuse("attention * x is not followed by adding the same x (the residual of ULSAM)")
            result = add.output[0]
            nodes.add(g.producer[result])
            applied = [op.output[0]]

        # x itself, or a pure reshape of the same tensor (same elements in the same order): onnxsim turns
        # Reshape(Reshape(y, [N,C,H,W]), [N,g,G,HW]) of consecutive blocks into y itself
        if g.reshape_root(xr) != g.reshape_root(xin):
            raise _Refuse(f"the attention is applied to '{xr}', which is neither the attention input '{xin}' "
                          "nor a reshape of it")
        if xr == xin or any(g.shape(xr, env) == g.shape(xin, env) for env in envs):
            mode, out = "direct", result
        else:
            # the Reshape back to [N, C, H, W]; other users (the next block after onnxsim) are judged by check_block
            finals = [g.nodes[i] for i in g.consumers.get(result, []) if g.nodes[i].op_type == "Reshape"
                      and g.nodes[i].input[0] == result
                      and g.shape(g.nodes[i].output[0], envs[0]) == g.shape(xin, envs[0])]
            if len(finals) != 1:
                users = ", ".join(g.nodes[i].op_type for i in g.consumers.get(result, [])) or "nothing"
                raise _Refuse(f"the attended tensor feeds {users}, not one Reshape back to the input shape")
            final = finals[0]
            mode, out = "grouped", final.output[0]
            nodes.add(g.producer[out])
            xr_node = g.node(xr)
            if xr_node is not None and xr_node.op_type == "Reshape" and xr_node.input[0] == xin:
                nodes.add(g.producer[xr])

        for env in envs:
            n, c, h, w = shape = self.xshape(xin, env)
            a0, a1 = g.shape(pre_expand, env), g.shape(att, env)
            res = g.shape(result, env)
            if a0 is None or a1 is None or res is None:
                raise _Refuse("a reshape/expand target of the attention map cannot be resolved from constants "
                              "and shapes")
            for t in applied:
                if g.shape(t, env) is None:
                    raise _Refuse("the shape of the attended tensor cannot be resolved")
            if mode == "direct":
                if g.shape(xr, env) != shape:
                    raise _Refuse(f"the attention is applied to '{xr}' of shape {list(g.shape(xr, env) or [])}, "
                                  f"not to the input shape {list(shape)}")
                if groups != 1:
                    raise _Refuse(f"{groups} attention maps are applied to the whole input without a grouping reshape")
                if a0 != (n, 1, h, w) or res != shape or _broadcast(a1, shape) != shape:
                    raise _Refuse(f"the attention map {list(a0)} is not broadcast over the channels of {list(shape)}")
            else:
                big = c // groups
                xs = g.shape(xr, env)
                layouts = {(n, groups, big, h * w): (n, groups, 1, h * w), (n, groups, big, h, w): (n, groups, 1, h, w)}
                if xs not in layouts or a0 != layouts[xs]:
                    raise _Refuse(f"x reshaped to {list(xs) if xs else '?'} and attention {list(a0)} do not match "
                                  f"[N, g, C/g, HW] / [N, g, 1, HW] for g={groups}")
                if res != xs or _broadcast(a1, xs) != xs:
                    raise _Refuse(f"x * (1 + A) has shape {list(res)}, not {list(xs)}")
                if g.shape(out, env) != shape:
                    raise _Refuse(f"the final reshape gives {list(g.shape(out, env) or [])}, not the input shape "
                                  f"{list(shape)}")
        return _Branch(sm_index, xin, out, mode, channels, groups, scale, shift, weight, bias, relu_dw, relu_pw,
                       int(dw_bn is not None) + int(pw_bn is not None), nodes)

    def xshape(self, name: str, env: _Env) -> tuple[int, int, int, int]:
        shape = self.g.shape(name, env)
        if shape is None or len(shape) != 4:
            raise _Refuse(f"the attention input '{name}' is not a 4-D tensor of known shape")
        return shape

    # ------------------------------------------------------------------------------------ blocks
    def chunk_of(self, tensor: str) -> tuple[str, int, list] | None:
        """(source, producer index, [(start, stop) per env]) when ``tensor`` is a channel slice/split output."""
        g = self.g
        index = g.producer.get(tensor)
        if index is None or g.nodes[index].op_type not in ("Slice", "Split"):
            return None
        node = g.nodes[index]
        source = node.input[0]
        ranges = []
        for env in g.envs:
            shape = g.shape(source, env)
            if shape is None or len(shape) != 4:
                return None
            try:
                if node.op_type == "Slice":
                    axis, start, stop = g.slice_range(node, shape, env)
                else:
                    axis, parts = g.split_ranges(node, shape, env)
                    start, stop = parts[list(node.output).index(tensor)]
            except (_Refuse, _NotConst):
                return None
            if axis != 1:
                return None
            ranges.append((start, stop, shape[1]))
        return source, index, ranges

    def blocks(self, branches: dict[int, _Branch], refused: list) -> list[_Block]:
        g = self.g
        out: list[_Block] = []
        concat_groups: dict[int, list[_Branch]] = defaultdict(list)
        for br in branches.values():
            if br.mode == "grouped":
                out.append(_Block(br.xin, br.out, [br], "export", set(br.nodes), br.softmax))
                continue
            chunk = self.chunk_of(br.xin)
            users = g.consumers.get(br.out, [])
            if chunk and len(users) == 1 and g.nodes[users[0]].op_type == "Concat" and br.out not in g.graph_outputs:
                concat_groups[users[0]].append(br)
            elif chunk and all(r[0] == 0 and r[1] == r[2] for r in chunk[2]):  # a single slice of everything (g=1)
                out.append(_Block(chunk[0], br.out, [br], "per-subspace", set(br.nodes) | {chunk[1]}, br.softmax))
            else:
                out.append(_Block(br.xin, br.out, [br], "per-subspace", set(br.nodes), br.softmax))
        for concat_index, members in concat_groups.items():
            try:
                out.append(self.concat_block(concat_index, members))
            except _Refuse as exc:
                refused.append(_refusal(g.nodes[concat_index], str(exc), [b.softmax for b in members], g))
        return out

    def concat_block(self, concat_index: int, members: list[_Branch]) -> _Block:
        g = self.g
        concat = g.nodes[concat_index]
        by_out = {b.out: b for b in members}
        others = [t for t in concat.input if t not in by_out]
        if others:
            raise _Refuse(f"Concat joins {len(members)} fusable ULSAM subspace(s) with {len(others)} other tensor(s) "
                          "(a subspace that cannot be fused, see its own entry)")
        if len(set(concat.input)) != len(concat.input):
            raise _Refuse("Concat uses the same subspace twice")
        ordered = [by_out[t] for t in concat.input]
        chunks = [self.chunk_of(b.xin) for b in ordered]
        sources = {c[0] for c in chunks}
        if len(sources) != 1:
            raise _Refuse("the subspaces are not chunks of one tensor")
        source = sources.pop()
        for e, env in enumerate(g.envs):
            shape = g.shape(source, env)
            concat_shape = g.shape(concat.output[0], env)
            axis = _attrs(concat).get("axis", 1) % 4
            if axis != 1 or concat_shape != shape:
                raise _Refuse(f"Concat (axis {_attrs(concat).get('axis')}) does not rebuild the input's channels")
            expected = 0
            size = shape[1] // len(ordered)
            for b, c in zip(ordered, chunks):
                start, stop, _ = c[2][e]
                if start != expected or stop - start != size or b.channels != size:
                    raise _Refuse(f"the subspaces are not {len(ordered)} equal contiguous channel chunks in order "
                                  f"(found channels {start}:{stop} at position {expected})")
                expected = stop
            if expected != shape[1]:
                raise _Refuse("the subspaces do not cover all channels")
        if len({(b.relu_dw, b.relu_pw) for b in ordered}) != 1:
            raise _Refuse("the subspaces disagree on their ReLUs")
        nodes = set().union(*(b.nodes for b in ordered)) | {c[1] for c in chunks} | {concat_index}
        return _Block(source, concat.output[0], ordered, "per-subspace", nodes, concat_index)

    def check_block(self, block: _Block, removed: set[int]) -> None:
        """Intermediates must die with the block: no graph outputs, no users outside the nodes being removed
        (``removed``: this and the other accepted blocks; shape-only users feeding nothing else go too)."""
        g = self.g
        memo: dict[int, bool] = {}

        def removable(index: int, depth: int = 0) -> bool:
            if index in removed:
                return True
            if index in memo:
                return memo[index]
            memo[index] = False
            node = g.nodes[index]
            ok = depth < 12 and node.domain in _STD_DOMAINS and all(
                o not in g.graph_outputs and all(removable(u, depth + 1) for u in g.consumers.get(o, []))
                for o in node.output if o)
            memo[index] = ok
            return ok

        for index in block.nodes:
            for t in g.nodes[index].output:
                if not t or t == block.y:
                    continue
                if t in g.graph_outputs:
                    raise _Refuse(f"the intermediate tensor '{t}' is a graph output")
                for user in g.consumers.get(t, []):
                    if not removable(user):
                        raise _Refuse(f"the intermediate tensor '{t}' is also used by {_label(g.nodes[user])} "
                                      "outside the ULSAM block")
        if block.x in {o for i in block.nodes for o in g.nodes[i].output}:
            raise _Refuse("the block input is produced inside the block")


def _refusal(node: onnx.NodeProto, reason: str, softmaxes=(), g: _Graph | None = None) -> dict:
    entry = {"node": _label(node), "op": node.op_type, "reason": reason}
    if softmaxes and g is not None:
        entry["softmax_nodes"] = [_label(g.nodes[i]) for i in softmaxes]
    return entry


# ----------------------------------------------------------------------------------------- rewrite

def _common_prefix(names: list[str]) -> str:
    names = [n for n in names if n]
    if not names:
        return ""
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    return prefix[: prefix.rfind("/") + 1] if "/" in prefix else ""


def _fused_node(block: _Block, name: str) -> onnx.NodeProto:
    branches = block.branches

    def cat(key: str) -> np.ndarray:
        return np.concatenate([np.asarray(getattr(b, key), np.float64).reshape(-1) for b in branches])

    floats = lambda arr: [float(v) for v in arr.astype(np.float32)]  # noqa: E731
    return helper.make_node(
        op_spec.OP_TYPE, [block.x], [block.y], name=name, domain=op_spec.DOMAIN,
        **{"plugin_version": op_spec.PLUGIN_VERSION, "plugin_namespace": op_spec.PLUGIN_NAMESPACE,
           op_spec.ATTR_GROUPS: block.groups, op_spec.ATTR_RELU_DW: int(branches[0].relu_dw),
           op_spec.ATTR_RELU_PW: int(branches[0].relu_pw),
           op_spec.ATTR_DW_SCALE: floats(cat("dw_scale")), op_spec.ATTR_DW_SHIFT: floats(cat("dw_shift")),
           op_spec.ATTR_PW_WEIGHT: floats(cat("pw_weight")), op_spec.ATTR_PW_BIAS: floats(cat("pw_bias"))},
    )


def eliminate_dead_code(model: onnx.ModelProto) -> int:
    """Drop nodes that feed no graph output, unused initializers and stale value_info; returns nodes dropped."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(i for i in node.input if i)
            needed.update(_subgraph_reads(node))
    dropped = len(graph.node) - len(keep)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inputs = {i.name for i in graph.input}
    inits = [t for t in graph.initializer if t.name in needed or t.name in inputs]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    alive = needed | {o for n in keep for o in n.output}
    infos = [v for v in graph.value_info if v.name in alive]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return dropped


def fuse_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """Replace every ULSAM block of ``model`` with one SubspaceAttention node.

    Returns ``(fused_model, report)``; ``model`` is not modified. ``report`` holds ``fused`` (count),
    ``blocks`` (name, input, output, channels, groups, form, ReLUs, BN folded, nodes replaced),
    ``left_alone`` (node, op, reason for every near-match) and node counts before/after.
    """
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20000))  # shape/value recursion follows long chains in deep graphs
    try:
        return _fuse(model)
    finally:
        sys.setrecursionlimit(limit)


def _fuse(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    work = onnx.ModelProto()
    work.CopyFrom(model)
    g = _Graph(work)
    matcher = _Matcher(g)
    branches: dict[int, _Branch] = {}
    refused: list[dict] = []
    for index, node in enumerate(g.nodes):
        if node.op_type != "Softmax" or node.domain not in _STD_DOMAINS:
            continue
        try:
            branch = matcher.match_branch(index)
        except _Refuse as exc:
            refused.append(_refusal(node, str(exc)))
            continue
        except (KeyError, IndexError, ValueError, TypeError, ZeroDivisionError) as exc:  # malformed near-match
            refused.append(_refusal(node, f"could not analyse it ({type(exc).__name__}: {exc})"))
            continue
        if branch is not None:
            branches[index] = branch

    claimed: set[int] = set()
    accepted: list[_Block] = []
    for block in sorted(matcher.blocks(branches, refused), key=lambda b: max(b.nodes)):
        if block.nodes & claimed:
            refused.append(_refusal(g.nodes[block.anchor], "it overlaps another ULSAM block"))
            continue
        claimed |= block.nodes
        accepted.append(block)
    # a block may use a neighbour's intermediate (consecutive blocks after onnxsim) only if that neighbour
    # is fused too: drop failing blocks until every remaining one checks out
    while True:
        claimed = set().union(*(b.nodes for b in accepted)) if accepted else set()
        failed = []
        for block in accepted:
            try:
                matcher.check_block(block, claimed)
            except _Refuse as exc:
                failed.append((block, str(exc)))
        if not failed:
            break
        for block, reason in failed:
            refused.append(_refusal(g.nodes[block.anchor], reason))
        accepted = [b for b in accepted if all(b is not f for f, _ in failed)]

    report = {
        "fused": len(accepted),
        "op": {"type": op_spec.OP_TYPE, "domain": op_spec.DOMAIN, "plugin_namespace": op_spec.PLUGIN_NAMESPACE,
               "plugin_version": op_spec.PLUGIN_VERSION},
        "blocks": [],
        "left_alone": refused,
        "nodes_before": len(model.graph.node),
        "nodes_after": len(model.graph.node),
    }
    if not accepted:
        return work, report

    fresh_node_name = unique_namer({n.name for n in g.nodes if n.name})
    at_position: dict[int, onnx.NodeProto] = {}
    for k, block in enumerate(accepted):
        prefix = _common_prefix([g.nodes[i].name for i in block.nodes])
        name = fresh_node_name(f"{prefix}{op_spec.OP_TYPE}" if prefix else f"{op_spec.OP_TYPE}_{k}")
        at_position[g.producer[block.y]] = _fused_node(block, name)
        first = block.branches[0]
        report["blocks"].append({
            "name": name, "input": block.x, "output": block.y, "channels": block.channels, "groups": block.groups,
            "form": block.form, "relu_dw": bool(first.relu_dw), "relu_pw": bool(first.relu_pw),
            "batchnorm_folded": sum(b.batchnorms for b in block.branches), "nodes_replaced": len(block.nodes),
        })
    new_nodes = []
    for index, node in enumerate(g.nodes):
        if index in at_position:
            new_nodes.append(at_position[index])
        elif index not in claimed:
            new_nodes.append(node)
    del work.graph.node[:]
    work.graph.node.extend(new_nodes)
    eliminate_dead_code(work)
    if not any(o.domain == op_spec.DOMAIN for o in work.opset_import):
        work.opset_import.append(helper.make_opsetid(op_spec.DOMAIN, 1))
    report["nodes_after"] = len(work.graph.node)
    return work, report


__all__ = ["eliminate_dead_code", "fuse_model"]
