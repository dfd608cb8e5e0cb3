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
