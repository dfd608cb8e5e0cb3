"""The QDP pass: fused ``SubspaceAttention`` nodes -> the node signature of TensorRT's AOT Python plugin.

Pure ONNX to ONNX, like every pass; ``build-trt --plugin python`` runs it before TensorRT parses the model.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ulsam_deploy import op_spec
from ulsam_deploy.errors import UserError
from ulsam_deploy.onnx_graph import tensor_names, unique_namer


def to_qdp_model(model):
    """Rewrite every fused ``SubspaceAttention`` node into the AOT Python plugin's node.

    The QDP plugin (``ulsam::SubspaceAttentionAOT``) takes the folded constants as inputs (AOT
    plugin attributes are not serialized into the engine) and has a second, unused workspace
    output; see :mod:`ulsam_deploy.kernels.qdp_plugin`. Returns ``(model, count)``; the
    input model is not modified.
    """

    out = onnx.ModelProto()
    out.CopyFrom(model)
    fresh = unique_namer(tensor_names(out.graph))

    nodes, count = [], 0
    for index, node in enumerate(out.graph.node):
        if node.op_type != op_spec.OP_TYPE:
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        missing = [k for k in (op_spec.ATTR_GROUPS, *op_spec.FLOAT_LIST_ATTRS) if k not in attrs]
        if missing:
            raise UserError(f"SubspaceAttention node '{node.name}' lacks {', '.join(missing)}; re-run 'ulsam-deploy fuse'.")
        base = node.name or f"subspace_attention_{index}"
        consts = []
        for key in op_spec.FLOAT_LIST_ATTRS:
            name = fresh(f"{base}_{key}")
            out.graph.initializer.append(numpy_helper.from_array(np.asarray(attrs[key], np.float32), name))
            consts.append(name)
        nodes.append(op_spec.make_qdp_onnx_node([node.input[0], *consts], [node.output[0], fresh(f"{base}_ws")],
                                        int(attrs[op_spec.ATTR_GROUPS]), bool(attrs.get(op_spec.ATTR_RELU_DW, 1)),
                                        bool(attrs.get(op_spec.ATTR_RELU_PW, 1)), name=base))
        count += 1
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, count


__all__ = ["to_qdp_model"]
