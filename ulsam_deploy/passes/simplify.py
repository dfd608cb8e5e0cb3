"""Simplify pass: onnxsim, then Constant nodes turned into initializers (what TensorRT and readers expect)."""

from __future__ import annotations

import onnx

from ulsam_deploy.errors import UserError


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace ``Constant`` nodes with initializers of the same name."""
    keep = []
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def tighten_output_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace symbolic graph-output dims that shape inference (with data propagation) proves constant by that
    constant, in place: once H and W are symbolic the exporter declares every dim of a reshape's result dynamic,
    though the channel count is fixed."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for out in probe.graph.output:  # inference keeps declared output shapes: let it derive them afresh
        out.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - nothing is tightened where inference cannot run
        return model
    facts = {o.name: list(o.type.tensor_type.shape.dim) for o in inferred.graph.output
             if o.type.tensor_type.HasField("shape")}
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        fact = facts.get(out.name, [])
        if len(fact) != len(dims):
            continue
        for declared, known in zip(dims, fact):
            if not (declared.HasField("dim_value") and declared.dim_value > 0) and known.dim_value > 0:
                declared.Clear()
                declared.dim_value = known.dim_value
    return model


def simplify_model(model: onnx.ModelProto, *, check_n: int = 0) -> onnx.ModelProto:
    """Run onnxsim (constant folding, dead code, shape inference) and tidy constants."""
    try:
        import onnxsim
    except ImportError as exc:  # the [export] extra brings it
        from ulsam_deploy.errors import BackendUnavailable
        from ulsam_deploy.extras import install_command

        raise BackendUnavailable(f"onnxsim is not installed; install it with: {install_command('onnxsim')}, or pass "
                                 "--no-simplify.") from exc
    simplified, ok = onnxsim.simplify(model, check_n=check_n)
    if not ok:
        raise UserError("onnxsim could not prove the simplified model equal to the original; pass --no-simplify.")
    simplified = constants_to_initializers(simplified)
    # onnxsim may leave unused initializers behind after the constant moves; drop them
    used = {name for node in simplified.graph.node for name in node.input}
    used |= {o.name for o in simplified.graph.output}
    inits = [t for t in simplified.graph.initializer if t.name in used]
    del simplified.graph.initializer[:]
    simplified.graph.initializer.extend(inits)
    return simplified
