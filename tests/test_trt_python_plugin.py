"""The Python (QDP) plugin on TensorRT's real ``tensorrt.plugin`` (10.16 and 11.4; refused on 10.3).

``trt_api`` tests run on TensorRT's real Python bindings (tests/test_trt_bindings.py). Only the C++
boundary is replaced: the plugin registry by a recorder (tests/trt_fakes.Registry), and the shape
expressions (``IExprBuilder`` / ``IDimensionExpr``) by strict fakes that compute with integers.
``tensorrt.plugin`` itself - validation, creator, AOT plugin class - is TensorRT's code. The kernel's
numerics under the QDP launch are checked in test_kernel_triton.py::test_qdp_launch_configuration.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import trt_fakes as F
from ulsam_deploy import op_spec
from ulsam_deploy.errors import BackendUnavailable
from ulsam_deploy.backends.trt.runtime import parse_version
from ulsam_deploy.kernels import aot
from ulsam_deploy.kernels import plan as P
from ulsam_deploy.kernels import qdp_plugin as Q

MANIFEST = aot.load_manifest()
AOT_KEY = ("SubspaceAttentionAOT", "1", "ulsam")


def _needs_qdp(trt) -> bool:
    return parse_version(trt.__version__) >= (10, 9)


@pytest.fixture
def trtp(trt, fresh_qdp):
    if not _needs_qdp(trt):
        pytest.skip(f"TensorRT {trt.__version__} has no tensorrt.plugin aot_impl")
    return fresh_qdp


class Exprs:
    """IExprBuilder / IDimensionExpr as strict fakes over integers (a dimension: value + whether constant)."""

    def __init__(self, trt):
        self.trt, self.values = trt, {}
        ops = trt.DimensionOperation
        self.ops = {ops.SUM: lambda a, b: a + b, ops.PROD: lambda a, b: a * b, ops.SUB: lambda a, b: a - b,
                    ops.FLOOR_DIV: lambda a, b: a // b, ops.MAX: max, ops.MIN: min}
        self.builder = F.strict(trt.IExprBuilder, trt)
        F.on(self.builder, "constant", lambda arg0: self.dim(int(arg0)))
        F.on(self.builder, "operation", self.operation)

    def dim(self, value, constant=True):
        d = F.strict(self.trt.IDimensionExpr, self.trt)
        self.values[id(d)] = (value, constant)
        F.on(d, "is_constant", lambda: self.values[id(d)][1])
        F.on(d, "get_constant_value", lambda: self.values[id(d)][0])
        F.on(d, "is_size_tensor", lambda: False)
        return d

    def operation(self, arg0, arg1, arg2):
        (a, ca), (b, cb) = self.values[id(arg1)], self.values[id(arg2)]
        return self.dim(self.ops[arg0](a, b), ca and cb)

    def of(self, sym):
        """(value, constant) of a tensorrt.plugin symbolic expression built on these dimensions."""
        return self.values[id(sym._expr)]


_KEEP = []  # a PluginField points into its array without owning it: keep the arrays alive


def _parser_fields(trt, **ints):
    """The fields TensorRT's ONNX parser passes for INT node attributes (kINT32)."""
    arrays = {name: np.array([value], np.int32) for name, value in ints.items()}
    _KEEP.append(arrays)
    return trt.PluginFieldCollection([trt.PluginField(name, data, trt.PluginFieldType.INT32)
                                      for name, data in arrays.items()])


def _tensor_desc(trt, shape, dtype):
    desc = trt.DynamicPluginTensorDesc()
    desc.desc.dims, desc.desc.type, desc.desc.format = trt.Dims(shape), dtype, trt.TensorFormat.LINEAR
    desc.min = desc.opt = desc.max = trt.Dims(shape)
    return desc


@pytest.mark.trt_api(below="10.9")
def test_old_tensorrt_is_refused_in_one_sentence(trt, monkeypatch):
    monkeypatch.setattr(Q, "_registered", set())
    if _needs_qdp(trt):
        pytest.skip(f"TensorRT {trt.__version__} has aot_impl")
    with pytest.raises(BackendUnavailable) as err:
        Q.register_qdp_plugin()
    assert str(err.value) == (f"tensorrt {trt.__version__} has no tensorrt.plugin module; the Python (QDP) plugin "
                              "needs tensorrt >= 10.9.")


@pytest.mark.trt_api(min="10.9")
def test_registration_failure_is_one_sentence_and_a_retry_works(trt, trtp, monkeypatch):
    monkeypatch.setattr(trt, "get_plugin_registry", lambda: None)  # what the stub libnvinfer gives
    with pytest.raises(BackendUnavailable) as err:
        Q.register_qdp_plugin(arch=87)
    message = str(err.value)
    assert message.startswith(f"TensorRT {trt.__version__} refused the Python plugin ulsam::SubspaceAttentionAOT "
                              "(AttributeError: ")
    assert message.endswith("; use the C++ plugin instead: 'ulsam-deploy build-plugin', then --plugin lib.")
    assert "\n" not in message
    monkeypatch.setattr(trt, "get_plugin_registry", lambda: trtp.recorder.fake)
    assert Q.register_qdp_plugin(arch=87) == Q.QDP_PLUGIN_ID
    assert Q.register_qdp_plugin(arch=87) == Q.QDP_PLUGIN_ID  # twice in one process is harmless
    Q._registered.clear()  # even when our own bookkeeping is lost, tensorrt.plugin's definition is reused
    assert Q.register_qdp_plugin(arch=87) == Q.QDP_PLUGIN_ID
    assert list(trtp.recorder.creators) == [AOT_KEY]


@pytest.mark.trt_api(min="10.9")
def test_recorded_creator_serves_the_fused_node_with_an_aot_plugin(trt, trtp, monkeypatch):
    Q.register_qdp_plugin(arch=87)
    creator = trtp.recorder.creators[AOT_KEY]
    node = op_spec.make_qdp_onnx_node(["x", "s", "t", "w", "b"], ["y", "ws"], groups=4, relu_dw=True, relu_pw=False)
    node_attrs = {a.name: a.i for a in node.attribute if a.name not in ("plugin_namespace", "aot")}
    assert sorted(f.name for f in creator.field_names) == sorted(node_attrs)
    assert [a.s for a in node.attribute if a.name == "plugin_namespace"] == [b"ulsam"]
    # aot=1 on the node: TensorRT asks the creator for the AOT implementation; there is no JIT one
    plugin = creator.create_plugin(AOT_KEY[0], AOT_KEY[2], _parser_fields(trt, **node_attrs), trt.TensorRTPhase.BUILD,
                                   trt.QuickPluginCreationRequest.STRICT_AOT)
    assert isinstance(plugin, trt.IPluginV3QuickAOTBuild)
    assert {k: v.tolist() for k, v in plugin.attrs.items()} == {"groups": [4], "relu_dw": [1], "relu_pw": [0]}
    assert [f.type for f in creator.field_names] == [trt.PluginFieldType.INT32] * 3  # what the parser passes
    with pytest.raises(ValueError, match="JIT implementation requested, but not defined"):
        creator.create_plugin(AOT_KEY[0], AOT_KEY[2], _parser_fields(trt, **node_attrs), trt.TensorRTPhase.BUILD,
                              trt.QuickPluginCreationRequest.STRICT_JIT)
    assert plugin.get_output_data_types([trt.float32] * 5, [4, 1, 1, 1, 1]) == [trt.float32, trt.float32]

    exprs = Exprs(trt)
    n, c, h, w = 3, 96, 14, 14
    inputs = [[exprs.dim(n, constant=False), exprs.dim(c), exprs.dim(h), exprs.dim(w)],
              [exprs.dim(c)], [exprs.dim(c)], [exprs.dim(c)], [exprs.dim(4)]]
    monkeypatch.setattr(trt, "DimsExprs", lambda length: [None] * length)  # a C++ container of IDimensionExpr
    y, ws = plugin.get_output_shapes(inputs, [], exprs.builder)
    assert [exprs.values[id(d)] for d in y] == [(n, False), (c, True), (h, True), (w, True)]
    assert [exprs.values[id(d)] for d in ws] == [(n * 4, False), (h * w, True)]

    in_out = [_tensor_desc(trt, (n, c, h, w), trt.float32)] + [_tensor_desc(trt, (c,), trt.float32)] * 3 + [
        _tensor_desc(trt, (4,), trt.float32), _tensor_desc(trt, (n, c, h, w), trt.float32),
        _tensor_desc(trt, (n * 4, h * w), trt.float32)]
    returned = []
    impl = plugin.aot_impl_function
    plugin.aot_impl_function = lambda *args: returned.append(impl(*args)) or returned[-1]
    plugin.set_tactic(0)
    # TensorRT checks our results' types, then hands the expressions to C++ (ISymExpr): there the fake world ends
    with pytest.raises(TypeError, match="ISymExpr"):
        plugin.get_launch_params(inputs, in_out, 5, F.strict(trt.KernelLaunchParams, trt),
                                 F.strict(trt.ISymExprs, trt), exprs.builder)
    (name, ptx, launch, extra), = returned
    rec = aot.find_kernel(MANIFEST, 87, "fp32", P.select_variant(c // 4, w))
    assert name == rec["entry"].encode()
    assert aot.ptx_header(ptx.decode()) == (MANIFEST["ptx_version"], f"sm_{rec['ptx_target']}")
    assert aot.parse_ptx_entry(ptx.decode())[1] == aot.expected_ptx_params()[:-2]  # hidden scratch params stripped
    assert exprs.of(launch.grid_x) == (n * 4, False)  # one program per (batch, group), symbolic in N
    assert exprs.of(launch.block_x) == (rec["threads"], True) and exprs.of(launch.shared_mem) == (rec["shared_bytes"], True)
    assert [exprs.of(e)[0] for e in extra] == [24, h, w, 4, n * 4, 1, 24, 1, 0]
    assert isinstance(extra, trtp.SymIntExprs) and all(isinstance(e, trtp.SymInt32) for e in extra)
    from ulsam_deploy.kernels.triton_kernel import PARAM_ORDER

    assert len(extra) == sum(1 for _, k in PARAM_ORDER if k == "i32")


@pytest.mark.trt_api(min="10.9")
def test_aot_impl_needs_static_channels(trt, trtp, monkeypatch):
    Q.register_qdp_plugin(arch=87)
    creator = trtp.recorder.creators[AOT_KEY]
    plugin = creator.create_plugin(AOT_KEY[0], AOT_KEY[2], _parser_fields(trt, groups=4, relu_dw=1, relu_pw=1),
                                   trt.TensorRTPhase.BUILD, trt.QuickPluginCreationRequest.STRICT_AOT)
    plugin.get_output_data_types([trt.float16] * 5, [4, 1, 1, 1, 1])
    exprs = Exprs(trt)
    inputs = [[exprs.dim(2, False), exprs.dim(96, False), exprs.dim(7), exprs.dim(7)]] + [[exprs.dim(96)]] * 3 + [
        [exprs.dim(4)]]
    monkeypatch.setattr(trt, "DimsExprs", lambda length: [None] * length)
    plugin.get_output_shapes(inputs, [], exprs.builder)
    in_out = [_tensor_desc(trt, (2, 96, 7, 7), trt.float16)] + [_tensor_desc(trt, (96,), trt.float32)] * 4 + [
        _tensor_desc(trt, (2, 96, 7, 7), trt.float16), _tensor_desc(trt, (8, 49), trt.float32)]
    plugin.set_tactic(0)
    with pytest.raises(ValueError, match="static channel"):
        plugin.get_launch_params(inputs, in_out, 5, F.strict(trt.KernelLaunchParams, trt), F.strict(trt.ISymExprs, trt),
                                 exprs.builder)


def test_missing_tensorrt_is_backend_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr(Q, "_registered", set())
    with pytest.raises(BackendUnavailable, match="not installed"):
        Q.register_qdp_plugin()


def test_strip_hidden_params_keeps_a_valid_module(tmp_path):
    rec = aot.find_kernel(MANIFEST, 87, "fp32", 2)
    ptx = (aot.IMAGE_DIR / rec["file"]).read_text()
    stripped = Q.strip_hidden_params(ptx)
    entry, params = aot.parse_ptx_entry(stripped)
    assert entry == rec["entry"] and params == aot.expected_ptx_params()[:-2]
    if aot.find_ptxas():
        f = tmp_path / "stripped.ptx"
        f.write_text(stripped)
        aot.ptxas_check(f, 87)


def test_strip_refuses_when_a_hidden_param_is_used():
    ptx = (".version 8.5\n.target sm_87\n.visible .entry k(\n\t.param .u64 k_param_0,\n"
           "\t.param .u64 k_param_1,\n\t.param .u64 k_param_2\n)\n{\n\tld.param.u64 %rd1, [k_param_2];\n}\n")
    with pytest.raises(ValueError, match="k_param_2"):
        Q.strip_hidden_params(ptx)
    assert "k_param_1" not in Q.strip_hidden_params(ptx.replace("[k_param_2]", "[k_param_0]"))


def test_kernel_selection_falls_back_to_lower_arch(monkeypatch):
    assert Q.select_qdp_kernel("fp32", 96, 4, 14, arch=120).arch == 90
    monkeypatch.setattr(Q, "probe_compute_capability", lambda: None)
    assert Q.select_qdp_kernel("fp16", 160, 1, 7).arch == min(MANIFEST["archs"])
    with pytest.raises(BackendUnavailable):
        Q.select_qdp_kernel("fp32", 96, 4, 14, arch=61)
    with pytest.raises(ValueError):
        Q.select_qdp_kernel("fp32", 96, 5, 14, arch=87)


def test_qdp_onnx_node():
    node = op_spec.make_qdp_onnx_node(["x", "s", "t", "w", "b"], ["y", "ws"], groups=4, relu_dw=True, relu_pw=False)
    assert node.op_type == "SubspaceAttentionAOT"
    attrs = {a.name: a for a in node.attribute}
    assert attrs["plugin_namespace"].s == b"ulsam" and attrs["aot"].i == 1
    assert (attrs["groups"].i, attrs["relu_dw"].i, attrs["relu_pw"].i) == (4, 1, 0)
    with pytest.raises(ValueError):
        op_spec.make_qdp_onnx_node(["x"], ["y"], groups=1)


def test_qdp_launch_config_fits_workspace_output():
    cfg = Q.qdp_launch_config(3, 96, 14, 14, 4)
    assert cfg["grid"] == cfg["items"] == 12 and cfg["ws_shape"] == (12, 196)
