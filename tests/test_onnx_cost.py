"""MACs and parameters read from an ONNX graph (torch-free, for ``bench --compare`` on a board) equal the paper-rule
count of the torch model, through fusion and fp16."""

from __future__ import annotations

import onnx
import pytest

from helpers import randomize_bn
from ulsam_deploy.models import build_model, profile_model
from ulsam_deploy.passes.cost import onnx_cost
from ulsam_deploy.steps.export import ExportOptions, onnx_from_model


@pytest.mark.parametrize("arch, width, ulsam, size, channels", [
    ("mv1", 0.5, "8:1,9:1,11", 64, 3), ("mv2", 0.35, "13,14,16,17", 64, 3), ("mv2", 0.5, "17:1", 48, 1),
    ("mv2", 0.35, "", 32, 3),
], ids=["mv1-8:1,9:1,11", "mv2-13,14,16,17", "mv2-17:1-grey", "mv2-vanilla"])
def test_graph_count_equals_torch_count(arch, width, ulsam, size, channels):
    model = randomize_bn(build_model(arch, width, ulsam, 4, num_classes=10, input_size=size, in_channels=channels))
    expected = profile_model(model.eval())
    proto, _ = onnx_from_model(model, ExportOptions())
    assert onnx_cost(proto) == (expected.macs, expected.params)


def test_fused_and_fp16_graphs_count_the_same():
    pytest.importorskip("onnxconverter_common")
    from ulsam_deploy.passes.fp16 import to_fp16
    from ulsam_deploy.passes.fuse import fuse_model

    model = randomize_bn(build_model("mv2", 0.35, "14,17:1", 4, num_classes=10, input_size=32, in_channels=1)).eval()
    expected = profile_model(model)
    proto, _ = onnx_from_model(model, ExportOptions())
    fused, report = fuse_model(proto)
    assert len(report["blocks"]) == 2 and onnx_cost(fused) == (expected.macs, expected.params)
    half, _ = to_fp16(proto)
    assert onnx_cost(half) == (expected.macs, expected.params)


def test_an_unknown_spatial_size_is_a_value_error():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    with pytest.raises(ValueError, match="cannot infer the shape"):
        onnx_cost(helper.make_model(graph))
    static = helper.make_graph(graph.node, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                               graph.output, [weight])
    assert onnx_cost(onnx.helper.make_model(static)) == (4 * 3 * 9 * 36, 4 * 3 * 9)  # 6x6 output, no padding
