"""MACs and parameters of an ONNX graph, counted the paper's way, without torch.

Same rule as :func:`ulsam_deploy.models.profile.profile_model` (conv and linear weights only, batch 1), read
from the graph: a board that only has ``model.onnx`` can still put the MACs ratio beside the latency ratio
(``bench --compare``). A Conv costs ``numel(W) * H_out * W_out``, a Gemm / 2-D MatMul weight ``numel(W)``,
a fused SubspaceAttention node the ``2C`` weights and ``2*C*h*w`` MACs of the block it replaced. BatchNorm
folded into a Conv leaves its weight count unchanged, so an export and its checkpoint agree.
"""

from __future__ import annotations

import math
import os

import onnx
from onnx import helper, shape_inference

from ulsam_deploy.op_spec import OP_TYPE


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Inferred shapes by value name; a fused op's output takes its input's shape (onnx cannot infer custom ops)."""
    fused = [n for n in model.graph.node if n.op_type == OP_TYPE]
    work = onnx.ModelProto()
    work.CopyFrom(model)
    # shapes only: weights become typed inputs (not copied through inference); small constants stay, since
    # Reshape targets are read from them
    init_shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    small = [t for t in model.graph.initializer if math.prod(t.dims) <= 64]
    del work.graph.initializer[:]
    work.graph.initializer.extend(small)
    kept = {t.name for t in small}
    for t in model.graph.initializer:
        if t.name not in kept:
            work.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    shapes: dict[str, list[int | None]] = {}
    for _ in range(len(fused) + 1):
        inferred = shape_inference.infer_shapes(work)
        shapes = dict(init_shapes)
        for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
                shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                                   for d in vi.type.tensor_type.shape.dim]
        pending = [n for n in fused if n.output[0] not in shapes and n.input[0] in shapes]
        if not pending:
            break
        for node in pending:
            work.graph.value_info.append(helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT,
                                                                       shapes[node.input[0]]))
    return shapes


def onnx_cost(model: onnx.ModelProto | str | os.PathLike) -> tuple[int, int]:
    """(MACs, params) of conv and linear weights at batch 1; ValueError when a spatial size cannot be inferred."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model))
    shapes = _shapes(model)
    # weights: initializers, also seen through the Cast (fp16) or Q/DQ pair (int8) in front of a layer (graph order)
    weights = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("Cast", "QuantizeLinear", "DequantizeLinear") and node.input[0] in weights:
            weights.add(node.output[0])
    macs = params = 0

    def known(name: str) -> list[int]:
        dims = shapes.get(name)
        if dims is None or any(d is None for d in dims[1:]):
            raise ValueError(f"cannot infer the shape of '{name}'")
        return dims

    for node in model.graph.node:
        if node.op_type == "Conv":
            weight = known(node.input[1])
            out = known(node.output[0])
            n = math.prod(weight)
            params += n
            macs += n * math.prod(out[2:])
        elif node.op_type in ("Gemm", "MatMul"):
            weight = shapes.get(node.input[1])
            if node.input[1] not in weights or weight is None or len(weight) != 2 or None in weight:
                continue  # activations times activations: not a linear layer's weights
            n = math.prod(weight)
            params += n
            macs += n
        elif node.op_type == OP_TYPE:
            dims = known(node.input[0])
            channels, hw = dims[1], math.prod(dims[2:])
            params += 2 * channels
            macs += 2 * channels * hw
    return macs, params


__all__ = ["onnx_cost"]
