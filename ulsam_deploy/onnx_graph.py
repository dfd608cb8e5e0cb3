"""ONNX utilities every layer may use (in-memory only): IR version, checking, naming, counting, facts, tidying."""

from __future__ import annotations

import copy
import functools
from collections import Counter

import onnx
from onnx import TensorProto, helper

from ulsam_deploy import op_spec
from ulsam_deploy.errors import UserError

STD_DOMAINS = ("", "ai.onnx")
INT8_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
            "DynamicQuantizeLinear", "QLinearAdd", "QLinearMul", "QGemm"}
# ONNX metadata_props key telling which runtime an int8 model was made for ("tensorrt" or "ort")
INT8_TARGET_KEY = "ulsam_deploy.int8_target"
DTYPE_NAMES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16"}


@functools.lru_cache(maxsize=1)
def ort_max_ir_version() -> int:
    """Highest ONNX IR version the installed onnxruntime loads (probed, not guessed from versions)."""
    import numpy as np
    import onnxruntime as ort

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    for ir in range(onnx.IR_VERSION, 6, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=ir)
        try:
            sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            sess.run(None, {"x": np.zeros(1, np.float32)})
            return ir
        except Exception:  # noqa: BLE001 - any failure means "not this IR version"
            continue
    return 8


def fit_ir_version(model: onnx.ModelProto) -> onnx.ModelProto:
    """Lower ``ir_version`` to what onnxruntime accepts (onnx 1.23 writes 14, ORT 1.31 reads 13)."""
    limit = ort_max_ir_version()
    if model.ir_version > limit:
        model.ir_version = limit
    return model


def check_model(model: onnx.ModelProto, *, ours: bool = True) -> None:
    """``onnx.checker`` full check (with shape inference); one sentence with the checker's own words.

    ``ours``: the model was produced by ulsam-deploy (a failure is our bug); otherwise it is the user's input.
    """
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        fix = "this is a bug in ulsam-deploy, please report it with the model" if ours else "re-export the model"
        raise UserError(f"The ONNX model failed onnx.checker ({first}); {fix}.") from None


def unshare_initializers(model: onnx.ModelProto) -> int:
    """Give every node its own copy of each initializer it shares with another node, in place; returns how many
    copies were made. Exporters and onnxsim merge equal constants (all-zero folded biases, say) into one tensor, so
    a pass that changes some readers' types (fp16 around a block kept in fp32; int8 weights per channel) would
    otherwise leave the other readers with a tensor of the wrong type."""
    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for slot, name in enumerate(node.input):
            if name in inits:
                readers.setdefault(name, []).append((node, slot))
    fresh = unique_namer(tensor_names(model.graph))
    copies = 0
    for name, uses in readers.items():
        for node, slot in uses[1:]:
            clone = copy.deepcopy(inits[name])
            clone.name = fresh(f"{name}::{node.name or node.op_type}")
            model.graph.initializer.append(clone)
            node.input[slot] = clone.name
            copies += 1
    return copies


def producers_and_consumers(graph: onnx.GraphProto) -> tuple[dict, dict]:
    """``(producer, consumers)``: the node writing each tensor, and the nodes reading it (main graph)."""
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producer, consumers


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


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed node a unique name (block and exclude lists work by name); in place."""
    fresh = unique_namer({n.name for n in model.graph.node if n.name})
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = fresh(f"{node.op_type}_{index}")
    return model


def toposort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reorder nodes topologically in place (the float16 converter appends its input Casts at the end)."""
    available = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    pending, ordered = list(model.graph.node), []
    while pending:
        progress, rest = False, []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
                progress = True
            else:
                rest.append(node)
        if not progress:  # a cycle or a dangling input: leave the order to onnx.checker to report
            ordered.extend(rest)
            break
        pending = rest
    nodes = [copy.deepcopy(n) for n in ordered]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the outer scope (conservatively: all)."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            for inner in g.node:
                names.update(i for i in inner.input if i)
                names.update(subgraph_reads(inner))
    return names


def eliminate_dead_code(model: onnx.ModelProto) -> int:
    """Drop nodes that feed no graph output, unused initializers and stale value_info; returns nodes dropped."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(i for i in node.input if i)
            needed.update(subgraph_reads(node))
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


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(node.op_type for node in model.graph.node).most_common())


def opset_of(model: onnx.ModelProto, domain: str = "") -> int | None:
    for entry in model.opset_import:
        if entry.domain in (domain, "ai.onnx" if domain == "" else domain):
            return int(entry.version)
    return None


def fused_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op_spec.OP_TYPE]


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)


def precision_of(model: onnx.ModelProto) -> str:
    """'int8' (Q/DQ or integer ops), 'fp16' (fp16 initializers or I/O), else 'fp32'."""
    ops = {n.op_type for n in model.graph.node}
    if ops & INT8_OPS:
        return "int8"
    inputs = graph_inputs(model)
    io_fp16 = bool(inputs) and inputs[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    if io_fp16 or any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


def int8_target(model: onnx.ModelProto) -> str | None:
    """The runtime an int8 model was made for: 'tensorrt' (exact Q/DQ semantics) or 'ort'; None otherwise.

    Unmarked Q/DQ models (made by other tools) are taken as TensorRT-style explicit quantization.
    """
    if precision_of(model) != "int8":
        return None
    return metadata(model).get(INT8_TARGET_KEY, "tensorrt")


def dims_of(vi: onnx.ValueInfoProto) -> list[int | str]:
    """Declared dims of a value: ints, or the dynamic axis' name ('?' when unnamed)."""
    dims: list[int | str] = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return dims


def io_specs(model: onnx.ModelProto) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) as ``{"name", "shape", "dtype"}`` dicts read from the graph."""
    def spec(vi):
        dtype = DTYPE_NAMES.get(vi.type.tensor_type.elem_type)
        if dtype is None:
            raise UserError(f"'{vi.name}' has element type "
                            f"{TensorProto.DataType.Name(vi.type.tensor_type.elem_type)}; ulsam-deploy handles "
                            "float32 and float16 image models only.")
        return {"name": vi.name, "shape": dims_of(vi), "dtype": dtype}

    return [spec(v) for v in graph_inputs(model)], [spec(v) for v in model.graph.output]


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor (shape inference, with the fused op seen as the Identity it is type-wise)."""
    see_through = onnx.ModelProto()
    see_through.CopyFrom(model)
    for node in see_through.graph.node:
        if node.op_type == op_spec.OP_TYPE and len(node.input) >= 1:
            del node.attribute[:]
            del node.input[1:]
            node.op_type, node.domain = "Identity", ""
    try:
        inferred = onnx.shape_inference.infer_shapes(see_through, strict_mode=False)
    except Exception:  # noqa: BLE001 - types are a convenience: fall back to what the file declares
        inferred = see_through
    graph = inferred.graph
    types = {}
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    return types


OUR_METADATA_PREFIX = "ulsam_deploy."
WIDENING = {(TensorProto.FLOAT16, TensorProto.FLOAT), (TensorProto.FLOAT16, TensorProto.DOUBLE),
            (TensorProto.BFLOAT16, TensorProto.FLOAT), (TensorProto.FLOAT, TensorProto.DOUBLE)}  # exact round trips


def tidy(model: onnx.ModelProto) -> dict:
    """Remove what tools leave behind in a file we write, in place: their ``metadata_props`` (onnxsim's lists of
    removed nodes, ``onnx.infer``, ``onnx.quant.pre_process``; ours, ``ulsam_deploy.*``, stay), opset imports of
    domains no node uses (ONNX Runtime's optimizer declares ten), and Casts that undo the Cast before them or cast
    to the type they read. Returns what was removed."""
    kept = [p for p in model.metadata_props if p.key.startswith(OUR_METADATA_PREFIX)]
    dropped_meta = len(model.metadata_props) - len(kept)
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    used = {n.domain or "" for n in model.graph.node} | {""}
    imports = [o for o in model.opset_import if (o.domain or "") in used]
    dropped_domains = sorted(o.domain for o in model.opset_import if (o.domain or "") not in used)
    del model.opset_import[:]
    model.opset_import.extend(imports)
    return {"metadata_props": dropped_meta, "opset_imports": dropped_domains, "casts": remove_redundant_casts(model)}


def remove_redundant_casts(model: onnx.ModelProto) -> int:
    """Drop ``Cast(to=T)`` whose input already has type T, or that undoes a widening ``Cast`` of a tensor of type T
    (fp16 -> fp32 -> fp16 changes nothing; fp32 -> fp16 -> fp32 rounds, and stays): its readers read that tensor
    instead; the same tensor cast to the same type twice is cast once, and a cast constant becomes a constant of
    that type. Graph outputs are never touched."""
    from onnx import numpy_helper

    types = elem_types(model)
    producer, _ = producers_and_consumers(model.graph)
    outputs = {o.name for o in model.graph.output}
    inits = {t.name: t for t in model.graph.initializer}
    replace: dict[str, str] = {}
    first: dict[tuple[str, int], str] = {}  # (input, to) -> the first Cast's output
    for node in model.graph.node:
        if node.op_type != "Cast" or node.domain not in ("", "ai.onnx") or node.output[0] in outputs:
            continue
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        source = replace.get(node.input[0], node.input[0])
        before = producer.get(source)
        widened = before is not None and before.op_type == "Cast" and types.get(before.input[0]) == to \
            and (to, next((a.i for a in before.attribute if a.name == "to"), None)) in WIDENING
        if (source, to) in first:  # the same tensor cast to the same type twice
            replace[node.output[0]] = first[(source, to)]
        elif types.get(source) == to:
            replace[node.output[0]] = source
        elif widened:
            replace[node.output[0]] = replace.get(before.input[0], before.input[0])
        elif source in inits and to in (TensorProto.FLOAT, TensorProto.FLOAT16):  # a constant: cast it once, here
            value = numpy_helper.to_array(inits[source]).astype(helper.tensor_dtype_to_np_dtype(to))
            model.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            inits[node.output[0]] = model.graph.initializer[-1]
            node.output[0] = f"{node.output[0]}::folded"  # the node is dead now; the initializer takes its name
        else:
            first[(source, to)] = node.output[0]
    folded = sum(1 for n in model.graph.node if n.op_type == "Cast" and n.output[0].endswith("::folded"))
    if not replace and not folded:
        return 0
    for node in model.graph.node:
        node.input[:] = [replace.get(i, i) for i in node.input]
    eliminate_dead_code(model)
    return len(replace) + folded


def graph_facts(model: onnx.ModelProto) -> dict:
    """What a sidecar records about a graph: opset, IR version, node and op counts, fused nodes."""
    return {"opset": opset_of(model), "ir_version": int(model.ir_version), "nodes": len(model.graph.node),
            "ops": op_counts(model), "fused_nodes": len(fused_nodes(model))}


__all__ = ["INT8_TARGET_KEY", "check_model", "dims_of", "elem_types", "eliminate_dead_code", "fit_ir_version", "fused_nodes",
           "graph_facts", "graph_inputs", "int8_target", "io_specs", "metadata", "name_nodes", "op_counts", "opset_of",
           "ort_max_ir_version", "precision_of", "producers_and_consumers", "remove_redundant_casts", "set_metadata", "subgraph_reads",
           "tensor_names", "tidy", "toposort", "unique_namer", "unshare_initializers"]
