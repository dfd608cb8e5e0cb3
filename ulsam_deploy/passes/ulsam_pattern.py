"""The one ULSAM pattern: where the ULSAM blocks of an ONNX graph are, what constants they fold to,
and why near-matches are not blocks. The fusion pass, the fp16 pass and the int8 pass all ask it.

Recognised (structure, never node names; see ``docs/fusion.md``):

* the export form (:class:`~ulsam_deploy.models.ULSAMExport`), simplified or not, TorchScript or dynamo:
  ``Conv(depthwise 1x1) [BN] [Relu] MaxPool(3,1,1) Conv(1x1, g maps, group g) [BN] [Relu] Reshape Softmax
  Reshape``, applied as ``Reshape(x)[N,g,G,HW] * (A + 1)`` and reshaped back;
* the per-subspace form (exporting the training :class:`~ulsam_deploy.models.ULSAM` directly): ``Split`` or
  ``Slice`` into ``g`` contiguous chunks, one such branch per chunk (BN folded or not, ReLUs or the plain
  variant), applied as ``Expand(A) * x_k + x_k``, then ``Concat`` on channels;
* either form where the softmax runs over one position (a 1x1 map), which onnxsim folds to
  ``ConstantOfShape(Shape(logits))`` of ones: still a block (the fused op computes the same 1).

Every invariant is checked (1x1 kernels, depthwise/grouped counts, pool parameters, softmax axis,
reshape targets against C/g/HW, constant operands, intermediates used only inside the block) under two
probe assignments of every dynamic input dimension. Shapes come from ``onnx.shape_inference`` (with data
propagation) on probe copies whose inputs have those concrete sizes, and computed constants (a reshape
target built from ``Shape``) from ``onnx.reference`` on the few nodes that compute them: no hand-written
shape inference or constant folding. Constants fold exactly like :func:`~ulsam_deploy.models.fold_ulsam`.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ulsam_deploy import op_spec
from ulsam_deploy.onnx_graph import STD_DOMAINS, subgraph_reads

_STD_DOMAINS = STD_DOMAINS
PROBE_DIMS = ((3, 67, 71, 73, 79, 83, 89), (5, 101, 103, 107, 109, 113, 127))  # batch-like axis 0, then the others
MAX_CONST_NODES = 64


class _Refuse(Exception):
    """A near-match that cannot be treated as a ULSAM block; ``str()`` is the reason shown to the user."""


class _NotConst(Exception):
    """A value that is not known before run time."""


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


# ------------------------------------------------------------------------------------------- probes

SHAPE_OPERANDS = {"Reshape": (1,), "Expand": (1,), "Slice": (1, 2, 3, 4), "Split": (1,), "Unsqueeze": (1,),
                  "Squeeze": (1,), "ConstantOfShape": (0,), "Tile": (1,), "Range": (0, 1, 2)}


class _Probe:
    """One concrete assignment of the graph inputs' dynamic dimensions. Every tensor's shape comes from
    ``onnx.shape_inference`` on a copy whose inputs have those sizes; operands that shape the data (reshape
    targets, slice bounds...) but are computed at run time from ``Shape`` are evaluated by ``onnx.reference``
    and frozen into that copy, and inference runs again, until nothing more folds."""

    def __init__(self, model: onnx.ModelProto, index: int, source: "_Graph"):
        self.index = index
        self.source = source
        probe = copy.deepcopy(model)
        for node in probe.graph.node:  # the fused op keeps its input's shape: let inference see through it
            if node.op_type == op_spec.OP_TYPE and len(node.input) >= 1 and len(node.output) == 1:
                del node.attribute[:]
                del node.input[1:]
                node.op_type, node.domain = "Identity", ""
        pool, symbols = list(PROBE_DIMS[index][1:]), {}
        inits = {t.name for t in probe.graph.initializer}
        for vi in probe.graph.input:
            if vi.name in inits or not vi.type.HasField("tensor_type"):
                continue
            for axis, d in enumerate(vi.type.tensor_type.shape.dim):
                if d.HasField("dim_value") and d.dim_value > 0:
                    continue
                key = d.dim_param or f"{vi.name}:{axis}"
                if key not in symbols:
                    symbols[key] = PROBE_DIMS[index][0] if axis == 0 else (pool.pop(0) if pool else 131 + 2 * len(symbols))
                d.Clear()
                d.dim_value = symbols[key]
        self.symbols = symbols
        del probe.graph.value_info[:]
        for vi in probe.graph.output:
            if vi.type.HasField("tensor_type"):
                vi.type.tensor_type.ClearField("shape")
        self.folded: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._infer(probe)
        for _ in range(8):  # fold what the new shapes allow, infer again
            added = self._fold(probe)
            if not added:
                break
            self._infer(probe)

    def _infer(self, probe: onnx.ModelProto) -> None:
        try:
            inferred = onnx.shape_inference.infer_shapes(probe, check_type=False, strict_mode=False, data_prop=True)
        except Exception:  # noqa: BLE001 - a graph inference cannot read: its shapes stay unknown, blocks are refused
            inferred = probe
        g = inferred.graph
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
                continue
            dims = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
            if all(v > 0 for v in dims) or not dims:
                self.shapes[vi.name] = tuple(int(v) for v in dims)
        for t in g.initializer:
            self.shapes[t.name] = tuple(int(d) for d in t.dims)

    def _fold(self, probe: onnx.ModelProto) -> int:
        """Freeze every computable shape operand into ``probe`` (as an initializer); returns how many."""
        names = {t.name for t in probe.graph.initializer}
        added = 0
        for node in probe.graph.node:
            for position in SHAPE_OPERANDS.get(node.op_type, ()):
                if position >= len(node.input) or not node.input[position]:
                    continue
                name = node.input[position]
                if name in names or name in self.folded:
                    continue
                try:
                    value = self.value(name)
                except _NotConst:
                    continue
                self.folded[name] = value
                probe.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
                names.add(name)
                added += 1
        return added

    def value(self, name: str) -> np.ndarray:
        """A constant: an initializer, a Constant node, a folded operand, or computed by ``onnx.reference`` from
        those and the known shapes (``Shape``/``Size`` of a tensor whose shape is known become constants)."""
        if name in self.folded:
            return self.folded[name]
        g = self.source
        if name in g.inits:
            return numpy_helper.to_array(g.inits[name])
        if name in g.graph_inputs:
            raise _NotConst(f"'{name}' is a graph input (it can change at run time)")
        nodes, stack, seen = [], [name], set()
        while stack:
            t = stack.pop()
            if not t or t in seen or t in g.inits or t in self.folded:
                continue
            seen.add(t)
            node = g.node(t)
            if node is None:
                raise _NotConst(f"'{t}' is a graph input (it can change at run time)" if t in g.graph_inputs
                                else f"'{t}' has no producer")
            if node.domain not in _STD_DOMAINS:
                raise _NotConst(f"'{t}' is produced by the custom op {node.op_type}")
            if node.op_type in ("Shape", "Size"):
                shape = self.shapes.get(node.input[0])
                if shape is None:
                    raise _NotConst(f"the shape of '{node.input[0]}' is unknown")
                nodes.append(_shape_constant(node, shape))
                continue
            if len(nodes) > MAX_CONST_NODES:
                raise _NotConst(f"'{name}' is computed by more than {MAX_CONST_NODES} nodes")
            nodes.append(node)
            stack.extend(i for i in node.input if i)
        if len(nodes) == 1 and nodes[0].op_type == "Constant":
            return _constant_value(nodes[0])
        order = {n.output[0]: k for k, n in enumerate(g.nodes) if n.output}
        nodes.sort(key=lambda n: order.get(n.output[0], -1))
        used = {i for n in nodes for i in n.input}
        inits = [g.inits[i] for i in used if i in g.inits]
        inits += [numpy_helper.from_array(np.asarray(self.folded[i]), i) for i in used if i in self.folded]
        out = helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)
        model = helper.make_model(helper.make_graph(nodes, "const", [], [out], initializer=inits),
                                  opset_imports=[helper.make_opsetid("", g.opset)])
        try:
            from onnx.reference import ReferenceEvaluator

            return np.asarray(ReferenceEvaluator(model).run(None, {})[0])
        except Exception as exc:  # noqa: BLE001 - anything the reference evaluator cannot compute is not constant
            raise _NotConst(f"'{name}' could not be evaluated ({type(exc).__name__})") from None


class _Graph:
    """Index of one graph (producers, consumers, constants) and its two probes."""

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
            for name in list(node.input) + sorted(subgraph_reads(node)):
                if name and i not in self.consumers[name]:
                    self.consumers[name].append(i)
        self.inits = {t.name: t for t in graph.initializer}
        self.graph_inputs = {v.name for v in graph.input} - set(self.inits)
        self.graph_outputs = {v.name for v in graph.output}
        self.opset = next((int(o.version) for o in model.opset_import if o.domain in _STD_DOMAINS), 13)
        self.probes = (_Probe(model, 0, self), _Probe(model, 1, self))
        self.envs = (0, 1)
        self._values: dict = {}

    def node(self, name: str) -> onnx.NodeProto | None:
        i = self.producer.get(name)
        return None if i is None else self.nodes[i]

    def shape(self, name: str, env: int) -> tuple[int, ...] | None:
        return self.probes[env].shapes.get(name)

    def reshape_root(self, name: str) -> str:
        """The tensor ``name`` is a pure reshape of (same elements, same row-major order)."""
        for _ in range(16):
            node = self.node(name)
            if node is None or node.op_type not in ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity") \
                    or node.domain not in _STD_DOMAINS:
                break
            name = node.input[0]
        return name

    def value(self, name: str, env: int) -> np.ndarray:
        """A constant tensor under probe ``env`` (see :meth:`_Probe.value`)."""
        key = (name, env)
        if key not in self._values:
            self._values[key] = self.probes[env].value(name)
        return self._values[key]

    # ------------------------------------------------------------------------------ slices/splits
    def slice_range(self, node: onnx.NodeProto, shape: tuple[int, ...], env: int) -> tuple[int, int, int]:
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

    def split_ranges(self, node: onnx.NodeProto, shape: tuple[int, ...], env: int) -> tuple[int, list]:
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


def _is_one(value) -> bool:
    if value is None:
        return False  # ConstantOfShape's default fill is 0
    arr = numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)
    return arr.size == 1 and np.issubdtype(arr.dtype, np.floating) and float(arr.reshape(-1)[0]) == 1.0


def _shape_constant(node: onnx.NodeProto, shape: tuple[int, ...]) -> onnx.NodeProto:
    a = _attrs(node)
    if node.op_type == "Size":
        value = np.asarray(math.prod(shape), dtype=np.int64)
    else:
        rank = len(shape)
        value = np.asarray(shape[slice(a.get("start", 0), a.get("end", rank))], dtype=np.int64)
    return helper.make_node("Constant", [], [node.output[0]], value=numpy_helper.from_array(value))


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    a = _attrs(node)
    if "value" in a:
        return numpy_helper.to_array(a["value"])
    for key in ("value_float", "value_floats", "value_int", "value_ints"):
        if key in a:
            return np.asarray(a[key])
    raise _NotConst(f"Constant '{_label(node)}' has no numeric value")


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

    def params(self) -> op_spec.SubspaceAttentionParams:
        """The block's folded constants (subspaces concatenated in channel order)."""
        def cat(key: str) -> np.ndarray:
            return np.concatenate([np.asarray(getattr(b, key), np.float64).reshape(-1) for b in self.branches])

        first = self.branches[0]
        return op_spec.SubspaceAttentionParams(self.groups, cat("dw_scale").astype(np.float32),
                                               cat("dw_shift").astype(np.float32), cat("pw_weight").astype(np.float32),
                                               cat("pw_bias").astype(np.float32), bool(first.relu_dw),
                                               bool(first.relu_pw))


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
        # a softmax over one position is 1: onnxsim leaves ConstantOfShape(Shape(logits)) of ones in its place
        shape_node = g.node(sm.input[0]) if sm.op_type == "ConstantOfShape" else None
        if sm.op_type == "ConstantOfShape" and (shape_node is None or shape_node.op_type != "Shape"
                                               or not _is_one(_attrs(sm).get("value"))):
            return None
        logits = shape_node.input[0] if shape_node is not None else sm.input[0]
        # candidacy: Softmax <- (Reshape/Flatten/Relu/BN)* <- Conv <- MaxPool
        pre, index = [], g.producer.get(logits)
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
        if shape_node is not None:
            nodes.add(g.producer[sm.input[0]])

        # ---- softmax over h*w of each map
        axis_attr = -1 if shape_node is not None else _attrs(sm).get("axis", -1 if g.opset >= 13 else 1)
        for env in envs:
            n, c, h, w = self.xshape(xin, env)
            if shape_node is not None and h * w != 1:
                raise _Refuse(f"a constant stands where the softmax over {h}x{w} positions should be")
            pre_shape = g.shape(logits, env)
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

    def xshape(self, name: str, env: int) -> tuple[int, int, int, int]:
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




# ------------------------------------------------------------------------------------------ results

@dataclass
class UlsamBlock:
    """One ULSAM block of a graph: its input and output tensors, the nodes it spans, its folded constants."""

    x: str
    y: str
    form: str  # "export" or "per-subspace"
    nodes: list[str]  # node names, in graph order
    node_indices: list[int]
    params: op_spec.SubspaceAttentionParams
    batchnorms: int = 0
    anchor: str = ""  # the Softmax (or first Conv) node it is reported by

    @property
    def channels(self) -> int:
        return self.params.channels

    @property
    def groups(self) -> int:
        return int(self.params.groups)


@dataclass
class PatternMatch:
    """Every block found, and every near-match left alone with its reason."""

    blocks: list[UlsamBlock] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)


def find_ulsam_blocks(model: onnx.ModelProto) -> PatternMatch:
    """Locate the ULSAM blocks of ``model`` (not modified); see the module docstring.

    Nodes are reported by name: unnamed nodes get their op type and first output (``Op -> tensor``).
    """
    g = _Graph(model)
    matcher = _Matcher(g)
    branches: dict[int, _Branch] = {}
    refused: list[dict] = []
    for index, node in enumerate(g.nodes):
        if node.op_type not in ("Softmax", "ConstantOfShape") or node.domain not in _STD_DOMAINS:
            continue
        try:
            branch = matcher.match_branch(index)
        except _Refuse as exc:
            refused.append(_refusal(node, str(exc)))
            continue
        except (_NotConst, KeyError, IndexError, ValueError, TypeError, ZeroDivisionError) as exc:  # malformed
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
    # is a block too: drop failing blocks until every remaining one checks out
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

    result = PatternMatch(refused=refused)
    for block in accepted:
        indices = sorted(block.nodes)
        result.blocks.append(UlsamBlock(block.x, block.y, block.form, [_label(g.nodes[i]) for i in indices], indices,
                                        block.params(), sum(b.batchnorms for b in block.branches),
                                        _label(g.nodes[block.anchor])))
    return result


__all__ = ["PatternMatch", "UlsamBlock", "find_ulsam_blocks"]
