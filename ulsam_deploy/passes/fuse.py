"""Fusion pass: every ULSAM block becomes one ``SubspaceAttention`` node (see :mod:`ulsam_deploy.op_spec`).

Where the blocks are, and why a near-match is not one, is :mod:`ulsam_deploy.passes.ulsam_pattern`'s
answer; this pass only rewrites. Run it after onnxsim: shape inference stops at the custom op.
"""

from __future__ import annotations

import onnx
from onnx import helper

from ulsam_deploy import op_spec
from ulsam_deploy.onnx_graph import eliminate_dead_code, unique_namer
from ulsam_deploy.passes.ulsam_pattern import UlsamBlock, find_ulsam_blocks


def _common_prefix(names: list[str]) -> str:
    names = [n for n in names if n]
    if not names:
        return ""
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    return prefix[: prefix.rfind("/") + 1] if "/" in prefix else ""


def fused_node(block: UlsamBlock, name: str) -> onnx.NodeProto:
    """The ``SubspaceAttention`` node replacing ``block`` (its constants as FLOATS attributes)."""
    return helper.make_node(op_spec.OP_TYPE, [block.x], [block.y], name=name, domain=op_spec.DOMAIN,
                            **block.params.attributes())


def fuse_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """Replace every fusable ULSAM block of ``model`` with one SubspaceAttention node.

    Returns ``(fused_model, report)``; ``model`` is not modified. ``report`` holds ``fused`` (count),
    ``blocks`` (name, input, output, channels, groups, form, ReLUs, BN folded, nodes replaced),
    ``left_alone`` (node, op, reason for every near-match), ``already_fused`` (SubspaceAttention nodes the input
    had) and node counts before/after.
    """
    work = onnx.ModelProto()
    work.CopyFrom(model)
    match = find_ulsam_blocks(work)
    accepted = match.blocks
    report = {
        "fused": len(accepted),
        "op": {"type": op_spec.OP_TYPE, "domain": op_spec.DOMAIN, "plugin_namespace": op_spec.PLUGIN_NAMESPACE,
               "plugin_version": op_spec.PLUGIN_VERSION},
        "blocks": [],
        "left_alone": match.refused,
        "already_fused": sum(n.op_type == op_spec.OP_TYPE and n.domain == op_spec.DOMAIN for n in model.graph.node),
        "nodes_before": len(model.graph.node),
        "nodes_after": len(model.graph.node),
    }
    if not accepted:
        return work, report
    nodes = list(work.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    fresh_node_name = unique_namer({n.name for n in nodes if n.name})
    claimed: set[int] = set()
    at_position: dict[int, onnx.NodeProto] = {}
    for k, block in enumerate(accepted):
        prefix = _common_prefix([nodes[i].name for i in block.node_indices])
        name = fresh_node_name(f"{prefix}{op_spec.OP_TYPE}" if prefix else f"{op_spec.OP_TYPE}_{k}")
        at_position[producer[block.y]] = fused_node(block, name)
        claimed |= set(block.node_indices)
        report["blocks"].append({
            "name": name, "input": block.x, "output": block.y, "channels": block.channels, "groups": block.groups,
            "form": block.form, "relu_dw": bool(block.params.relu_dw), "relu_pw": bool(block.params.relu_pw),
            "batchnorm_folded": block.batchnorms, "nodes_replaced": len(block.node_indices),
        })
    new_nodes = [at_position[i] if i in at_position else n for i, n in enumerate(nodes)
                 if i in at_position or i not in claimed]
    del work.graph.node[:]
    work.graph.node.extend(new_nodes)
    eliminate_dead_code(work)
    if not any(o.domain == op_spec.DOMAIN for o in work.opset_import):
        work.opset_import.append(helper.make_opsetid(op_spec.DOMAIN, 1))
    report["nodes_after"] = len(work.graph.node)
    return work, report


__all__ = ["fuse_model", "fused_node"]
