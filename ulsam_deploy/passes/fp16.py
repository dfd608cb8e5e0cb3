"""fp16 pass: weights and activations in float16, the numerically delicate parts kept float32.

onnxconverter-common's maintained float16 converter (``convert_float_to_float16``; onnxruntime ships a copy,
``onnxruntime.transformers.float16``, used as fallback, whose duplicate-Cast bug is repaired here) does the
work. Softmax and GlobalAveragePool/ReduceMean stay fp32 behind Casts, and so does every unfused ULSAM block
(found by :mod:`ulsam_deploy.passes.ulsam_pattern`). A fused ``SubspaceAttention`` node takes and returns
fp16: its fp16 kernel (and the ONNX Runtime reference op) reads fp16 and accumulates the softmax in fp32.
Graph I/O stays fp32 unless ``io_fp16``.
"""

from __future__ import annotations

import copy
import logging
import warnings

import onnx

from ulsam_deploy.errors import UserError
from ulsam_deploy.onnx_graph import fused_nodes, name_nodes, toposort, unshare_initializers

FP16_BLOCKED_OPS = ("Softmax", "GlobalAveragePool", "ReduceMean")


def _converter():
    """(convert_float_to_float16, default op block list, tool name): onnxconverter-common's, else onnxruntime's."""
    try:
        import onnxconverter_common
        from onnxconverter_common.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        return convert_float_to_float16, DEFAULT_OP_BLOCK_LIST, f"onnxconverter-common {onnxconverter_common.__version__}"
    except ImportError:
        import onnxruntime
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        return convert_float_to_float16, DEFAULT_OP_BLOCK_LIST, f"onnxruntime.transformers.float16 ({onnxruntime.__version__})"


def _dedupe_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop repeated identical nodes writing the same tensor (onnxruntime's float16 copy emits one Cast per blocked
    consumer of a tensor, all with the same output name; onnxconverter-common does not)."""
    seen: dict[str, bytes] = {}
    keep = []
    for node in model.graph.node:
        key = node.output[0] if node.output else None
        body = node.SerializeToString(deterministic=True).replace(node.name.encode(), b"")
        if key and key in seen:
            if seen[key] != body:
                raise UserError(f"The fp16 converter wrote tensor '{key}' twice with different nodes; please report it.")
            continue
        if key:
            seen[key] = body
        keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def isolate_outputs(model: onnx.ModelProto) -> int:
    """Give every graph output that nodes inside the graph also read (a backbone's feature maps feed the next
    layer) its own ``Identity``, in place; returns how many. With fp32 graph I/O the converter casts such an output
    back to fp32 under its own name, so the inner readers would get the fp32 tensor next to fp16 weights."""
    from onnx import helper

    from ulsam_deploy.onnx_graph import tensor_names, unique_namer

    readers = {i for n in model.graph.node for i in n.input}
    outputs = [o.name for o in model.graph.output if o.name in readers]
    if not outputs:
        return 0
    fresh = unique_namer(tensor_names(model.graph) | {n.name for n in model.graph.node})
    renamed = {name: fresh(f"{name}::inner") for name in outputs}
    for node in model.graph.node:
        node.output[:] = [renamed.get(o, o) for o in node.output]
        node.input[:] = [renamed.get(i, i) for i in node.input]
    for name, inner in renamed.items():
        model.graph.node.append(helper.make_node("Identity", [inner], [name], name=fresh(f"{name}::output")))
    return len(renamed)


def to_fp16(model: onnx.ModelProto, io_fp16: bool = False, keep_ulsam_fp32: bool = True) -> tuple[onnx.ModelProto, dict]:
    """The fp16 graph (not verified) and what was kept in fp32 (ops by type, unfused ULSAM blocks by node)."""
    from ulsam_deploy.passes.ulsam_pattern import find_ulsam_blocks

    convert, default_block, tool = _converter()
    model = name_nodes(copy.deepcopy(model))
    unshared = unshare_initializers(model)
    isolated = isolate_outputs(model) if not io_fp16 else 0
    blocks = find_ulsam_blocks(model).blocks if keep_ulsam_fp32 else []
    node_block = [name for b in blocks for name in b.nodes]
    ops = list(default_block) + list(FP16_BLOCKED_OPS)
    logging.getLogger("onnxruntime.transformers.float16").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one warning per weight clamped to fp16's range
        converted = convert(model, min_positive_val=5.96e-08, max_finite_val=65504.0, keep_io_types=not io_fp16,
                            op_block_list=ops, node_block_list=node_block)
    converted = toposort(_dedupe_outputs(converted))
    del converted.graph.value_info[:]  # stale type hints (the converters leave some fp32 ones on fp16 tensors)
    casts = lambda m: sum(1 for n in m.graph.node if n.op_type == "Cast")  # noqa: E731
    kept = {"op_types": [op for op in FP16_BLOCKED_OPS if any(n.op_type == op for n in model.graph.node)],
            "ulsam_blocks": len(blocks), "ulsam_nodes": node_block, "fused_fp16": len(fused_nodes(model)),
            "casts_added": casts(converted) - casts(model), "outputs_isolated": isolated,
            "initializers_unshared": unshared, "tool": tool}
    return converted, kept


__all__ = ["FP16_BLOCKED_OPS", "isolate_outputs", "to_fp16"]
