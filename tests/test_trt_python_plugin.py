"""tensorrt.plugin (QDP) glue: our logic around TensorRT, tested with a fake ``tensorrt`` module
(TensorRT itself cannot be installed here). The kernel's numerics under the QDP launch
configuration are checked in test_kernel_triton.py::test_qdp_launch_configuration."""

from __future__ import annotations

import inspect
import sys
import types
import typing

import pytest

from ulsam_deploy.errors import BackendUnavailable
from ulsam_deploy.kernels import aot
from ulsam_deploy.kernels import plan as P
from ulsam_deploy.kernels import qdp_plugin as Q

MANIFEST = aot.load_manifest()


class FakeExpr:
    """Stands in for tensorrt.plugin ShapeExpr: value + whether it is a build-time constant."""

    def __init__(self, value, constant=True):
        self.value, self.is_constant = value, constant

    def constant_value(self):
        assert self.is_constant, "constant_value() on a dynamic dimension"
        return self.value

    def _op(self, other, fn):
        ov, oc = (other.value, other.is_constant) if isinstance(other, FakeExpr) else (other, True)
        return FakeExpr(fn(self.value, ov), self.is_constant and oc)

    def __mul__(self, other):
        return self._op(other, lambda a, b: a * b)

    __rmul__ = __mul__

    def __eq__(self, other):
        return isinstance(other, FakeExpr) and (self.value, self.is_constant) == (other.value, other.is_constant)


def make_fake_tensorrt(version="10.9.0", with_aot=True):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.float32, trt.float16 = "float32", "float16"
    trtp = types.ModuleType("tensorrt.plugin")
    trtp.registry = {}

    class TensorDesc:
        def __init__(self, shape, dtype):
            self.shape_expr, self.dtype = list(shape), dtype

        def like(self):
            return TensorDesc(self.shape_expr, self.dtype)

    def decorator(kind):
        def outer(plugin_id):
            def inner(fn):
                trtp.registry.setdefault(plugin_id, {})[kind] = fn
                return fn
            return inner
        return outer

    class KernelLaunchParams:
        grid_x = grid_y = grid_z = block_x = block_y = block_z = 1
        shared_mem = 0

    class SymInt32:
        def __init__(self, value):
            self.value = value

    class SymIntExprs(list):
        @classmethod
        def from_tuple(cls, items):
            return cls(items)

    trtp.TensorDesc = TensorDesc
    trtp.register = decorator("desc")
    trtp.autotune = decorator("autotune")
    trtp.impl = decorator("impl")
    if with_aot:
        trtp.aot_impl = decorator("aot")
    trtp.from_shape_expr = lambda shape, dtype: TensorDesc(shape, dtype)
    trtp.AutoTuneCombination = lambda *a: ("combo",) + a
    trtp.KernelLaunchParams = KernelLaunchParams
    trtp.SymInt32 = SymInt32
    trtp.SymIntExprs = SymIntExprs
    trt.plugin = trtp
    return trt, trtp


@pytest.fixture
def fake_trt(monkeypatch):
    trt, trtp = make_fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)
    monkeypatch.setattr(Q, "_registered", set())
    return trt, trtp


def _x(trtp, n=3, c=96, h=14, w=14, dtype="float32", dyn=(0,)):
    dims = [FakeExpr(v, i not in dyn) for i, v in enumerate((n, c, h, w))]
    return trtp.TensorDesc(dims, dtype)


def test_register_declares_inputs_attrs_and_outputs(fake_trt):
    trt, trtp = fake_trt
    assert Q.register_qdp_plugin(arch=87) == "ulsam::SubspaceAttentionAOT"
    assert Q.register_qdp_plugin(arch=87) == Q.QDP_PLUGIN_ID  # idempotent
    fns = trtp.registry[Q.QDP_PLUGIN_ID]
    assert set(fns) == {"desc", "autotune", "aot"}
    sig = inspect.signature(fns["desc"])  # what tensorrt.plugin validates: real types, in order
    anns = [p.annotation for p in sig.parameters.values()]
    assert list(sig.parameters)[:5] == list(Q.INPUT_NAMES)
    assert all(a is trtp.TensorDesc for a in anns[:5]) and anns[5:] == [int, int, int]
    assert typing.get_args(sig.return_annotation) == (trtp.TensorDesc, trtp.TensorDesc)
    x = _x(trtp)
    consts = [trtp.TensorDesc([FakeExpr(96)], "float32")] * 3 + [trtp.TensorDesc([FakeExpr(4)], "float32")]
    y, ws = fns["desc"](x, *consts, 4, 1, 1)
    assert y.shape_expr == x.shape_expr and y.dtype == "float32"
    assert ws.dtype == "float32"
    assert ws.shape_expr[0] == FakeExpr(12, False) and ws.shape_expr[1] == FakeExpr(196)
    combos = fns["autotune"](x, *consts, (y, ws))
    assert combos[0][1].split(", ") == ["FP32|FP16", "FP32", "FP32", "FP32", "FP32", "FP32|FP16", "FP32"]


@pytest.mark.parametrize("dtype,w,dyn_w,variant", [("float32", 14, False, 2), ("float16", 7, False, 0),
                                                    ("float32", 7, True, 2), ("float16", 14, False, 2)])
def test_aot_impl_returns_stripped_ptx_launch_and_scalars(fake_trt, dtype, w, dyn_w, variant):
    trt, trtp = fake_trt
    Q.register_qdp_plugin(arch=87)
    aot_fn = trtp.registry[Q.QDP_PLUGIN_ID]["aot"]
    dyn = (0, 3) if dyn_w else (0,)
    x = _x(trtp, n=3, c=96, h=14, w=w, dtype=dtype, dyn=dyn)
    name, ptx, launch, extra = aot_fn(x, None, None, None, None, 4, 1, 0, None, 0)
    assert name == MANIFEST["entry"].encode()
    text = ptx.decode()
    _, params = aot.parse_ptx_entry(text)
    assert len(params) == len(aot.expected_ptx_params()) - 2  # no hidden scratch params
    rec = aot.find_kernel(MANIFEST, 87, "fp16" if dtype == "float16" else "fp32", variant)
    assert aot.ptx_header(text) == (MANIFEST["ptx_version"], f"sm_{rec['ptx_target']}")
    assert rec["variant"] == variant == P.select_variant(24, 16 if dyn_w else w)
    assert launch.grid_x == FakeExpr(12, False)  # N * groups, symbolic in N
    assert launch.block_x == rec["threads"] and launch.shared_mem == rec["shared_bytes"]
    vals = [a.value for a in extra]
    assert [v.value if isinstance(v, FakeExpr) else v for v in vals] == [24, 14, w, 4, 12, 1, 24, 1, 0]
    # scalars line up with the kernel's int32 parameters
    from ulsam_deploy.kernels.triton_kernel import PARAM_ORDER
    assert len(vals) == sum(1 for _, k in PARAM_ORDER if k == "i32")


def test_aot_impl_needs_static_channels(fake_trt):
    trt, trtp = fake_trt
    Q.register_qdp_plugin(arch=87)
    with pytest.raises(ValueError, match="static channel"):
        trtp.registry[Q.QDP_PLUGIN_ID]["aot"](_x(trtp, dyn=(0, 1)), None, None, None, None, 4, 1, 1,
                                               None, 0)


def test_missing_tensorrt_is_backend_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr(Q, "_registered", set())
    with pytest.raises(BackendUnavailable, match="not installed"):
        Q.register_qdp_plugin()


def test_old_tensorrt_without_aot_is_refused(monkeypatch):
    trt, trtp = make_fake_tensorrt(version="10.8.0", with_aot=False)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)
    monkeypatch.setattr(Q, "_registered", set())
    with pytest.raises(BackendUnavailable, match="10.9"):
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
    node = Q.make_qdp_onnx_node(["x", "s", "t", "w", "b"], ["y", "ws"], groups=4, relu_dw=True, relu_pw=False)
    assert node.op_type == "SubspaceAttentionAOT"
    attrs = {a.name: a for a in node.attribute}
    assert attrs["plugin_namespace"].s == b"ulsam" and attrs["aot"].i == 1
    assert (attrs["groups"].i, attrs["relu_dw"].i, attrs["relu_pw"].i) == (4, 1, 0)
    with pytest.raises(ValueError):
        Q.make_qdp_onnx_node(["x"], ["y"], groups=1)


def test_qdp_launch_config_fits_workspace_output():
    cfg = Q.qdp_launch_config(3, 96, 14, 14, 4)
    assert cfg["grid"] == cfg["items"] == 12 and cfg["ws_shape"] == (12, 196)
