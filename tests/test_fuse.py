"""fuse: every ULSAM form becomes one SubspaceAttention node, equal to the unfused graph on ONNX Runtime;
near-matches are left alone with a reason; the ORT custom op; the ``fuse`` command."""

from __future__ import annotations

import io
import json
import sys
import warnings
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from helpers import PAPER_CONFIGS, clean_error, randomize_bn
from ulsam_deploy import op_spec
from ulsam_deploy.cli import app
from ulsam_deploy.errors import BackendUnavailable, UserError
from ulsam_deploy.models.ulsam import to_export_form
from ulsam_deploy.steps.export import ExportOptions, export_checkpoint
from ulsam_deploy.onnx_graph import check_model, fit_ir_version
from ulsam_deploy.backends.onnxrt.custom_ops import prepare_model, register_custom_ops, subspace_attention, take_errors
from ulsam_deploy.passes.fuse import fuse_model
from ulsam_deploy.passes.simplify import simplify_model
from ulsam_deploy.kernels.reference import attention_maps_numpy, subspace_attention_numpy
from ulsam_deploy.models import ULSAM, ULSAMExport, build_model, fold_ulsam, save_checkpoint

ULSAM_OPS = Counter({"Conv": 2, "MaxPool": 1, "Softmax": 1})


# ----------------------------------------------------------------------------------------- helpers

def _export(module: torch.nn.Module, channels: int, size: int, *, simplify=True, fold=True, dynamo=False,
            dynamic=True) -> onnx.ModelProto:
    module = module.eval()
    x = torch.zeros(1, channels, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            import logging

            logging.disable(logging.WARNING)
            try:
                program = torch.onnx.export(module, (x,), None, dynamo=True, input_names=["input"],
                                            output_names=["out"], opset_version=18, verbose=False,
                                            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
            finally:
                logging.disable(logging.NOTSET)
            proto = program.model_proto
        else:
            buf = io.BytesIO()
            torch.onnx.export(module, (x,), buf, dynamo=False, input_names=["input"], output_names=["out"],
                              opset_version=17, do_constant_folding=fold,
                              dynamic_axes={"input": {0: "batch"}, "out": {0: "batch"}} if dynamic else None)
            proto = onnx.load_from_string(buf.getvalue())
    return simplify_model(proto) if simplify else proto


def _session(proto: onnx.ModelProto, outputs=()):
    proto = fit_ir_version(_copy(proto))
    for name in outputs:
        proto.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    data = proto.SerializeToString()
    if any(n.op_type == op_spec.OP_TYPE for n in proto.graph.node):
        register_custom_ops(options)
        data = prepare_model(data)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _copy(proto):
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


def _run(proto, x, outputs=()):
    sess = _session(proto, outputs)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: x})))


def _ops(proto) -> Counter:
    return Counter(n.op_type for n in proto.graph.node)


def _fuse_and_compare(proto, channels, size, reference=None, batch=3, expect=None):
    """Fuse, check, and compare fused vs unfused ORT on the graph output and every fused block's output."""
    fused, report = fuse_model(proto)
    if expect is not None:
        assert report["fused"] == expect, report["left_alone"]
    check_model(fit_ir_version(_copy(fused)))
    probes = [b["output"] for b in report["blocks"]]
    probes += [b["input"] for b in report["blocks"] if b["input"] != proto.graph.input[0].name]
    x = np.random.default_rng(7).standard_normal((batch, channels, size, size)).astype(np.float32)
    a, b = _run(proto, x, probes), _run(fused, x, probes)
    assert a.keys() == b.keys()
    for name in a:
        assert np.abs(a[name] - b[name]).max() < 1e-5 * max(1.0, float(np.abs(a[name]).max())), name  # fp32 noise
        assert np.abs(a[name]).max() > 1e-2, f"{name} is too small for the comparison to mean anything"
    _assert_lively(fused, dict(a, **{proto.graph.input[0].name: x}))
    if reference is not None:
        with torch.no_grad():
            ref = reference.eval()(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(b[proto.graph.output[0].name], ref, atol=1e-4, rtol=1e-4)
    return fused, report


def _lively(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """randomize_bn plus ULSAM constants giving O(1) pointwise logits that vary over h*w, so attention maps
    are far from uniform (a ReLU'd-to-zero map is uniform and would hide any constant mistake)."""
    randomize_bn(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ULSAM):
                for sub in m.subspaces:
                    size = sub.conv_dws.out_channels
                    sub.conv_dws.weight.uniform_(-2.0, 2.0, generator=gen)
                    sub.conv_dws.bias.normal_(0.3, 0.3, generator=gen)
                    sub.conv_point.weight.normal_(0.3, 3.0, generator=gen).div_(size ** 0.5)
                    sub.conv_point.bias.normal_(3.0, 0.3, generator=gen)  # positive: relu_pw must not flatten maps
                    if isinstance(sub.bn_point, torch.nn.BatchNorm2d):
                        sub.bn_point.running_mean.zero_()
                        sub.bn_point.bias.fill_(3.0)
    return model


def _assert_lively(fused: onnx.ModelProto, values: dict) -> None:
    """Every fused block's attention maps (recomputed from its input and attributes) must vary over h*w."""
    for node in fused.graph.node:
        if node.op_type != op_spec.OP_TYPE:
            continue
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        maps = attention_maps_numpy(values[node.input[0]], a["groups"], a["dw_scale"], a["dw_shift"], a["pw_weight"],
                                    a["pw_bias"], bool(a["relu_dw"]), bool(a["relu_pw"]))
        hw = maps.shape[2] * maps.shape[3]
        spread = maps.max(axis=(2, 3)) - maps.min(axis=(2, 3))
        # maps varying by 1 % of uniform already move any O(1) constant mistake far above 1e-5; at <= 2x2 every
        # 3x3 window sees the whole map and attention is uniform by construction (choose input sizes accordingly)
        level = np.median(spread) * hw
        assert level > 0.01, f"{node.name}: attention maps are nearly uniform ({level:.3g})"


def _net(arch, width, ulsam, groups, size=64, plain=False):
    torch.manual_seed(0)  # the backbone's init draws from the global RNG: make it independent of test order
    return _lively(build_model(arch, width, ulsam, groups=groups, num_classes=10, input_size=size,
                               plain_ulsam=plain)).eval()


# ------------------------------------------------------------------------- export form (full models)

EXPORT_CASES = [  # input sizes keep every ULSAM at >= 4x4 (see _assert_lively)
    ("mv1", 0.25, "8:1,9:1,11", 4, 64),
    ("mv1", 0.5, "12:1", 16, 64),
    ("mv2", 0.5, "13,14,16,17", 16, 128),  # consecutive blocks: onnxsim merges their reshapes
    ("mv2", 0.5, "17:1", 1, 128),
    ("mv2", 0.5, "9,13", 4, 64),
]


@pytest.mark.slow
@pytest.mark.parametrize("arch,width,ulsam,groups,size", EXPORT_CASES)
def test_export_form_fuses_every_block(arch, width, ulsam, groups, size):
    model = _net(arch, width, ulsam, groups, size)
    proto = _export(to_export_form(model), 3, size)
    blocks = len(ulsam.split(","))
    fused, report = _fuse_and_compare(proto, 3, size, reference=model, expect=blocks)
    before, after = _ops(proto), _ops(fused)
    assert after[op_spec.OP_TYPE] == blocks
    assert after["Softmax"] == after["MaxPool"] == after["Reshape"] == 0
    # exactly the ULSAM ops went away; everything else is untouched
    assert after["Conv"] == before["Conv"] - 2 * blocks
    for op in set(before) - {"Conv", "MaxPool", "Softmax", "Reshape", "Relu", "Add", "Mul"}:
        assert after[op] == before[op], op
    assert report["nodes_after"] == len(fused.graph.node) == report["nodes_before"] - sum(
        b["nodes_replaced"] for b in report["blocks"]) + blocks
    assert report["left_alone"] == []
    assert {b["groups"] for b in report["blocks"]} == {groups} and {b["form"] for b in report["blocks"]} == {"export"}
    # no dead weights left behind
    used = {i for n in fused.graph.node for i in n.input}
    assert all(t.name in used for t in fused.graph.initializer)
    assert any(o.domain == op_spec.DOMAIN for o in fused.opset_import)


def test_fused_node_follows_op_spec_and_fold_ulsam():
    module = _lively(torch.nn.Sequential(ULSAM(16, 4))).eval()
    export = ULSAMExport.from_ulsam(module[0])
    proto = _export(export, 16, 8)
    fused, report = fuse_model(proto)
    (node,) = fused.graph.node
    assert (node.op_type, node.domain) == (op_spec.OP_TYPE, op_spec.DOMAIN)
    assert list(node.input) == ["input"] and list(node.output) == ["out"]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["plugin_version"] == op_spec.PLUGIN_VERSION.encode()
    assert attrs["plugin_namespace"] == op_spec.PLUGIN_NAMESPACE.encode()
    assert attrs[op_spec.ATTR_GROUPS] == 4 and attrs[op_spec.ATTR_RELU_DW] == 1 and attrs[op_spec.ATTR_RELU_PW] == 1
    for name in op_spec.FLOAT_LIST_ATTRS:
        assert next(a for a in node.attribute if a.name == name).type == onnx.AttributeProto.FLOATS
    folded = fold_ulsam(module[0])
    for name in op_spec.FLOAT_LIST_ATTRS:
        np.testing.assert_allclose(attrs[name], getattr(folded, name), rtol=1e-6, atol=1e-7)
    assert report["blocks"][0]["channels"] == 16


@pytest.mark.parametrize("variant", ["unsimplified", "static"])
def test_export_form_variants(variant):
    module = _lively(torch.nn.Sequential(ULSAM(32, 4))).eval()
    export = torch.nn.Sequential(ULSAMExport.from_ulsam(module[0]))
    proto = _export(export, 32, 8, simplify=False, dynamic=variant != "static")
    fused, report = _fuse_and_compare(proto, 32, 8, reference=module, batch=1 if variant == "static" else 3, expect=1)
    assert len(fused.graph.node) == 1 < len(proto.graph.node)


@pytest.mark.slow
def test_dynamo_exporter_both_forms():
    """The dynamo exporter (allowzero reshapes, Split(num_outputs)): export form then per-subspace form."""
    first, second = (_lively(torch.nn.Sequential(ULSAM(16, 4)), seed=s).eval()[0] for s in (0, 1))
    module = torch.nn.Sequential(ULSAMExport.from_ulsam(first), second).eval()
    proto = _export(module, 16, 8, simplify=False, dynamo=True)
    assert _ops(proto)["Split"] == 1
    fused, report = _fuse_and_compare(proto, 16, 8, reference=torch.nn.Sequential(first, second), expect=2)
    assert [b["form"] for b in report["blocks"]] == ["export", "per-subspace"] and len(fused.graph.node) == 2


@pytest.mark.slow
def test_unsimplified_full_model():
    model = _net("mv2", 0.5, "14,17", 4, 128)
    proto = _export(to_export_form(model), 3, 128, simplify=False)
    fused, report = _fuse_and_compare(proto, 3, 128, reference=model, expect=2)
    assert _ops(fused)["Softmax"] == 0 and _ops(fused)["Shape"] == 0  # the shape arithmetic went with the blocks


# ---------------------------------------------------------------- per-subspace (training/reference) form

@pytest.mark.parametrize("groups,fold,plain", [(4, True, False), (4, False, False), (16, True, False), (4, True, True),
                                               (1, False, False)])
@pytest.mark.slow
def test_reference_form_fuses(groups, fold, plain):
    model = _net("mv1", 0.25, "8:1,11", groups, plain=plain)
    proto = _export(model, 3, 64, simplify=fold, fold=fold)
    if not fold:
        assert _ops(proto)["BatchNormalization"] > 0 and _ops(proto)["Split"] + _ops(proto)["Slice"] > 0
    fused, report = _fuse_and_compare(proto, 3, 64, reference=model, expect=2)
    after = _ops(fused)
    assert after["Softmax"] == after["MaxPool"] == after["Concat"] == after["Expand"] == 0
    for block in report["blocks"]:
        assert block["groups"] == groups and block["form"] == "per-subspace"
        assert block["relu_dw"] is block["relu_pw"] is (not plain)
        assert block["batchnorm_folded"] == (0 if fold or plain else 2 * groups)


@pytest.mark.slow
def test_reference_form_consecutive_blocks_mv2():
    model = _net("mv2", 0.5, "16,17", 8, 128)
    fused, report = _fuse_and_compare(_export(model, 3, 128), 3, 128, reference=model, expect=2)
    assert [b["channels"] for b in report["blocks"]] == [80, 80]


# ------------------------------------------------------------------------------------- near-matches

@pytest.fixture(scope="module")
def two_blocks():
    """Two export-form ULSAMs in a row (simplified), with lively constants."""
    mods = [ULSAMExport.from_ulsam(_lively(torch.nn.Sequential(ULSAM(16, 4)), seed=s)[0]) for s in (0, 1)]
    return _export(torch.nn.Sequential(*mods), 16, 8)


def _nodes(proto, op):
    return [n for n in proto.graph.node if n.op_type == op]


def _set_attr(node, name, value):
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def _edit_pool_kernel(p):
    _set_attr(_nodes(p, "MaxPool")[0], "kernel_shape", [5, 5])
    _set_attr(_nodes(p, "MaxPool")[0], "pads", [2, 2, 2, 2])


def _edit_pool_stride(p):
    _set_attr(_nodes(p, "MaxPool")[0], "strides", [2, 2])


def _edit_softmax_axis(p):
    _set_attr(_nodes(p, "Softmax")[0], "axis", 1)


def _edit_offset(p):
    add = next(n for n in p.graph.node if n.op_type == "Add")
    k, const = next((k, t) for k, t in enumerate(p.graph.initializer) if t.name in add.input)
    two = numpy_helper.from_array(np.full(numpy_helper.to_array(const).shape, 2.0, np.float32), "two")
    p.graph.initializer.append(two)  # onnxsim shares the 1 between blocks: give the first block its own 2
    add.input[list(add.input).index(const.name)] = "two"


def _edit_weight_input(p):
    conv = _nodes(p, "Conv")[0]
    init = next(t for t in p.graph.initializer if t.name == conv.input[1])
    p.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    p.graph.initializer.remove(init)


def _edit_extra_consumer(p):
    sm = _nodes(p, "Softmax")[0]
    p.graph.output.append(helper.make_tensor_value_info(sm.output[0], onnx.TensorProto.FLOAT, None))


def _edit_dilated_conv(p):
    _set_attr(_nodes(p, "Conv")[1], "dilations", [2, 2])


NEAR_MISSES = {
    "pool kernel": (_edit_pool_kernel, "MaxPool", True),
    "pool stride": (_edit_pool_stride, "MaxPool", False),
    "softmax axis": (_edit_softmax_axis, "Softmax (axis 1)", True),
    "offset not 1": (_edit_offset, "not by 1", True),
    "weight not constant": (_edit_weight_input, "not a constant", False),
    "extra consumer": (_edit_extra_consumer, "graph output", True),
    "dilated pointwise": (_edit_dilated_conv, "not a plain 1x1", True),
}


@pytest.mark.parametrize("case", list(NEAR_MISSES))
def test_near_match_is_left_alone_with_reason(two_blocks, case):
    edit, needle, runnable = NEAR_MISSES[case]
    proto = _copy(two_blocks)
    edit(proto)
    fused, report = fuse_model(proto)
    if runnable:  # the untouched second block is still fused
        assert report["fused"] == 1, report
        (entry,) = report["left_alone"]
    else:  # an edit that breaks the graph's shapes downstream may leave the second block unprovable too
        assert report["fused"] <= 1, report
        entry = report["left_alone"][0]
    assert needle in entry["reason"] and entry["op"] == "Softmax", entry
    # the first block's nodes are all still there
    kept = 2 - report["fused"]
    assert _ops(fused)["Softmax"] == kept and _ops(fused)["MaxPool"] == kept
    assert _ops(fused)[op_spec.OP_TYPE] == report["fused"]
    if runnable:
        x = np.random.default_rng(0).standard_normal((2, 16, 8, 8)).astype(np.float32)
        extra = [o.name for o in proto.graph.output]
        a, b = _run(proto, x), _run(fused, x)
        for name in extra:
            np.testing.assert_allclose(a[name], b[name], atol=1e-5, rtol=0)


def test_subspace_group_with_one_bad_branch_is_refused_whole():
    module = _lively(torch.nn.Sequential(ULSAM(16, 4))).eval()
    proto = _export(module, 16, 8)
    _set_attr(_nodes(proto, "MaxPool")[2], "kernel_shape", [5, 5])
    _set_attr(_nodes(proto, "MaxPool")[2], "pads", [2, 2, 2, 2])
    fused, report = fuse_model(proto)
    assert report["fused"] == 0 and _ops(fused) == _ops(proto)
    reasons = {e["op"]: e["reason"] for e in report["left_alone"]}
    assert "MaxPool" in reasons["Softmax"] and "other tensor" in reasons["Concat"]


def test_consecutive_blocks_fuse_together_or_not_at_all(two_blocks):
    """onnxsim makes block 2 multiply block 1's pre-reshape tensor; if block 2 stays, block 1 must stay too."""
    assert _nodes(two_blocks, "Reshape")[3].input[0] != two_blocks.graph.input[0].name  # the merged reshape
    proto = _copy(two_blocks)
    _set_attr(_nodes(proto, "MaxPool")[1], "kernel_shape", [5, 5])
    _set_attr(_nodes(proto, "MaxPool")[1], "pads", [2, 2, 2, 2])
    fused, report = fuse_model(proto)
    assert report["fused"] == 0 and _ops(fused) == _ops(proto)
    first, second = sorted(report["left_alone"], key=lambda e: e["node"])
    assert "also used by" in first["reason"] and "MaxPool" in second["reason"]


def test_no_ulsam_fuses_nothing_and_changes_nothing():
    proto = _export(_net("mv1", 0.25, "", 4), 3, 32)
    fused, report = fuse_model(proto)
    assert report["fused"] == 0 and report["left_alone"] == [] and report["blocks"] == []
    assert fused.SerializeToString() == proto.SerializeToString()


def test_fuse_is_idempotent(two_blocks):
    once, first = fuse_model(two_blocks)
    twice, report = fuse_model(once)
    assert report["fused"] == 0 and twice.SerializeToString() == once.SerializeToString()
    assert first["already_fused"] == 0 and report["already_fused"] == 2


# ------------------------------------------------------------------------------- the ORT custom op

def _fused_graph(channels=8, groups=2, dtype=onnx.TensorProto.FLOAT, seed=0, **override):
    rng = np.random.default_rng(seed)
    attrs = {"plugin_version": "1", "plugin_namespace": "ulsam", "groups": groups, "relu_dw": 1, "relu_pw": 0,
             "dw_scale": rng.uniform(-1.5, 1.5, channels).tolist(), "dw_shift": rng.normal(0, 0.3, channels).tolist(),
             "pw_weight": rng.normal(0, 2, channels).tolist(), "pw_bias": rng.normal(0, 0.3, groups).tolist()}
    attrs.update(override)
    node = helper.make_node(op_spec.OP_TYPE, ["x"], ["y"], domain=op_spec.DOMAIN, **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", dtype, ["n", channels, 6, 5])],
                              [helper.make_tensor_value_info("y", dtype, ["n", channels, 6, 5])])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(op_spec.DOMAIN, 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    return fit_ir_version(model), attrs


@pytest.mark.parametrize("dtype,tol", [(onnx.TensorProto.FLOAT, 2e-6), (onnx.TensorProto.FLOAT16, 2e-2)])
def test_custom_op_on_ort_fp32_and_fp16(dtype, tol):
    model, attrs = _fused_graph(dtype=dtype)
    npdt = np.float32 if dtype == onnx.TensorProto.FLOAT else np.float16
    x = np.random.default_rng(1).standard_normal((3, 8, 6, 5)).astype(npdt)
    y = _session(model).run(None, {"x": x})[0]
    assert y.dtype == npdt and y.shape == x.shape
    kw = {k: attrs[k] for k in ("groups", "dw_scale", "dw_shift", "pw_weight", "pw_bias")}
    expected = subspace_attention_numpy(x.astype(np.float64), relu_dw=True, relu_pw=False, **kw)
    np.testing.assert_allclose(y.astype(np.float64), expected, atol=tol, rtol=tol)
    direct = subspace_attention(x, relu_dw=True, relu_pw=False, **kw)
    assert direct.dtype == npdt


def test_custom_op_matches_torch_ulsam():
    module = _lively(torch.nn.Sequential(ULSAM(12, 3))).eval()[0]
    folded = fold_ulsam(module)
    x = np.random.default_rng(3).standard_normal((2, 12, 7, 9)).astype(np.float32)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    got = subspace_attention(x, folded.groups, folded.dw_scale, folded.dw_shift, folded.pw_weight, folded.pw_bias)
    np.testing.assert_allclose(got, ref, atol=2e-6, rtol=1e-5)


def test_bad_attributes_fail_before_ort():
    model, _ = _fused_graph(pw_bias=[0.1, 0.2, 0.3])
    with pytest.raises(UserError, match="inconsistent attributes"):
        prepare_model(model)
    model, _ = _fused_graph()
    node = model.graph.node[0]
    node.attribute.remove(next(a for a in node.attribute if a.name == "dw_shift"))
    with pytest.raises(UserError, match="dw_shift"):
        prepare_model(model)


def test_runtime_error_becomes_nan_not_abort():
    model, _ = _fused_graph(channels=8)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 4  # graph claims 4 channels, op holds 8
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 4
    take_errors()
    y = _session(model).run(None, {"x": np.ones((1, 4, 6, 5), np.float32)})[0]
    assert np.isnan(y).all()
    (message,) = take_errors()
    assert "SubspaceAttention failed" in message


def test_missing_extensions_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime_extensions", None)
    with pytest.raises(BackendUnavailable, match="pip install onnxruntime-extensions"):
        register_custom_ops(ort.SessionOptions())


# ------------------------------------------------------------------------------------------- the CLI

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A real export (with its sidecar) of MV2 + ULSAM 14,17:1 (g=4), 128x128 (layer 17 at 4x4; at 32x32 it is
    1x1 and onnxsim folds that softmax to the constant 1, leaving x * 2: nothing to fuse)."""
    tmp = tmp_path_factory.mktemp("fuse_cli")
    model = _net("mv2", 0.5, "14,17:1", 4, size=128)
    ck = save_checkpoint(model, tmp / "ck.pt")
    export_checkpoint(ck, tmp / "m.onnx", ExportOptions(atol=1e-3))
    return tmp / "m.onnx"


def test_cli_fuse_happy_path(cli_runner, exported, tmp_path):
    out = tmp_path / "f.onnx"
    result = cli_runner.invoke(app, ["fuse", str(exported), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 ULSAM block(s) fused" in result.output and "SubspaceAttention" in result.output
    fused = onnx.load(str(out))
    assert _ops(fused)[op_spec.OP_TYPE] == 2
    side = json.loads((tmp_path / "f.onnx.json").read_text())
    original = json.loads((exported.parent / "m.onnx.json").read_text())
    assert side["onnx"] == "f.onnx" and side["fused_blocks"] == 2 and side["model"] == original["model"]
    export_step, fuse_step = side["steps"]
    assert export_step == original["steps"][0] and fuse_step["step"] == "fuse"
    assert fuse_step["report"]["fused"] == 2 and side["graph"]["nodes"] == len(fused.graph.node)
    assert fuse_step["source"]["sha256"] == original["sha256"]
    blocks = {b["output"] for b in fuse_step["report"]["blocks"]}
    judged = {o["name"].split("/", 1)[1]: o["comparison"]["max_abs"] for o in fuse_step["verdict"]["outputs"]}
    assert blocks < set(judged) and max(judged.values()) <= 1e-4  # the blocks' outputs are judged, not only logits
    assert fuse_step["verdict"]["tolerances"]["rtol"] == 1e-5 and fuse_step["verdict"]["tolerances"]["atol"] == 1e-5


def test_cli_fuse_of_a_fused_model_says_it_was_fused_before(cli_runner, exported, tmp_path):
    once, twice = tmp_path / "f.onnx", tmp_path / "ff.onnx"
    assert cli_runner.invoke(app, ["fuse", str(exported), "-o", str(once)]).exit_code == 0
    result = cli_runner.invoke(app, ["fuse", str(once), "-o", str(twice)])
    assert result.exit_code == 0, result.output
    assert "already has 2 SubspaceAttention node(s)" in " ".join(result.output.split())
    assert onnx.load(str(twice)).graph == onnx.load(str(once)).graph


def test_cli_fuse_default_output_and_overwrite_refusal(cli_runner, exported):
    target = exported.with_name("m.fused.onnx")
    target.unlink(missing_ok=True)
    assert cli_runner.invoke(app, ["fuse", str(exported)]).exit_code == 0
    stamp = target.stat().st_mtime_ns
    clean_error(cli_runner.invoke(app, ["fuse", str(exported)]), 2, "--force")
    assert target.stat().st_mtime_ns == stamp
    assert cli_runner.invoke(app, ["fuse", str(exported), "--force"]).exit_code == 0


def test_cli_fuse_bad_inputs(cli_runner, tmp_path):
    clean_error(cli_runner.invoke(app, ["fuse", str(tmp_path / "missing.onnx")]), 2, "does not exist")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    clean_error(cli_runner.invoke(app, ["fuse", str(junk)]), 2, "not a readable ONNX model")
    assert not (tmp_path / "junk.fused.onnx").exists()


def test_cli_fuse_parity_failure_writes_nothing(cli_runner, exported, tmp_path, monkeypatch):
    import ulsam_deploy.passes.fuse as fuse_module

    real = fuse_module.fuse_model

    def corrupted(model):
        fused, report = real(model)
        node = next(n for n in fused.graph.node if n.op_type == op_spec.OP_TYPE)
        # not pw_bias: softmax ignores a constant offset of a map's logits
        attr = next(a for a in node.attribute if a.name == op_spec.ATTR_PW_WEIGHT)
        for i in range(len(attr.floats)):  # every channel: one channel alone may be dead (ReLU'd to 0) here
            attr.floats[i] = -2.0 * attr.floats[i] + 0.5
        return fused, report

    monkeypatch.setattr(fuse_module, "fuse_model", corrupted)
    out = tmp_path / "bad.onnx"
    clean_error(cli_runner.invoke(app, ["fuse", str(exported), "-o", str(out)]), 3, "nothing was written")
    assert not out.exists() and not (tmp_path / "bad.onnx.json").exists()
    assert list(tmp_path.iterdir()) == []  # no temp files either


@pytest.mark.slow
def test_cli_export_fuse_end_to_end(cli_runner, exported, tmp_path):
    ck = exported.parent / "ck.pt"
    result = cli_runner.invoke(app, ["export", str(ck), "-o", str(tmp_path / "e.onnx"), "--fuse"])
    assert result.exit_code == 0, result.output
    assert "2 ULSAM blocks fused" in " ".join(result.output.split())
    side = json.loads((tmp_path / "e.onnx.json").read_text())
    assert side["fused_blocks"] == 2 and side["graph"]["ops"][op_spec.OP_TYPE] == 2
    assert side["steps"][0]["verdict"]["max_abs"] < 1e-4


# ---------------------------------------------------------------------- one pattern for every pass

@pytest.mark.slow
@pytest.mark.parametrize("arch,width,ulsam", PAPER_CONFIGS)
def test_one_pattern_finds_the_same_blocks_for_fuse_fp16_and_int8(arch, width, ulsam):
    """Every paper configuration, in export form and in per-subspace form, before and after onnxsim: the pattern
    finds one block per ULSAM, fusion fuses exactly those, and the fp16 and int8 passes keep exactly those out."""
    from ulsam_deploy.passes.fp16 import to_fp16
    from ulsam_deploy.passes.int8 import to_int8
    from ulsam_deploy.passes.ulsam_pattern import find_ulsam_blocks

    size = 96 if arch == "mv2" else 64
    model = _net(arch, 0.25 if arch == "mv1" else 0.35, ulsam, 4, size)
    expected = len(ulsam.split(","))
    forms = {"export": to_export_form(model), "per-subspace": model}
    for form, module in forms.items():
        for simplify in (True, False):
            proto = _export(module, 3, size, simplify=simplify)
            blocks = find_ulsam_blocks(proto).blocks
            where = f"{form}, {'simplified' if simplify else 'as exported'}"
            assert len(blocks) == expected and {b.form for b in blocks} == {form}, (where, find_ulsam_blocks(proto))
            _, report = fuse_model(proto)
            assert report["fused"] == expected and {b["output"] for b in report["blocks"]} == {b.y for b in blocks}, where
            _, kept = to_fp16(proto)
            assert kept["ulsam_blocks"] == expected and set(kept["ulsam_nodes"]) == {n for b in blocks for n in b.nodes}, where
            if simplify and form == "export":
                calib = np.random.default_rng(0).standard_normal((4, 3, size, size)).astype(np.float32)
                _, facts = to_int8(proto, calib, calib_method="minmax", batch=4)
                assert facts["excluded_ulsam_blocks"] == expected
                assert set(facts["excluded_nodes"]) == {n for b in blocks for n in b.nodes}, where
