"""The fused kernel as a TensorRT Python plugin (``tensorrt.plugin``, "QDP") with an AOT
implementation: the engine embeds the shipped Triton PTX and runs without Python (also under
trtexec). QDP AOT takes PTX only (no cubin), so this route always JIT-compiles; the shipped PTX is
ISA 8.0, which every CUDA 12.0+ driver (what TensorRT 10.x cu12 needs anyway) accepts. Needs ``tensorrt`` >= 10.9 (``tensorrt.plugin.aot_impl``; still marked experimental in
TensorRT 11). Without it, :func:`register_qdp_plugin` raises :class:`BackendUnavailable`.

Plugin id ``ulsam::SubspaceAttentionAOT`` (namespace ``ulsam`` like the C++ plugin; a distinct
name because the node signature differs and both may be loaded in one process).

Why the signature differs from the C++ plugin ``ulsam::SubspaceAttention``:

* AOT plugin attributes are *not serialized* into the engine, and kernel scalars can only be
  int32 symbolic expressions, so the folded fp32 constants travel as **inputs** (ONNX
  initializers): ``x, dw_scale[C], dw_shift[C], pw_weight[C], pw_bias[groups]``; the int
  attributes ``groups, relu_dw, relu_pw`` are baked into the launch as constants.
* QDP has no workspace, so the kernel's fp32 logit rows are a second **output**
  ``ws [N*groups, H*W]`` (leave it unconsumed).
* TensorRT launches ``kernel(inputs..., int32 scalars..., outputs...)``: the kernel's parameter
  order was chosen for that. Triton appends two hidden scratch pointers that TensorRT does not
  pass; this kernel never reads them, so :func:`strip_hidden_params` drops them from the PTX.
* Launch: one program per (batch, group) - ``grid = N*groups``, ``split = 1``,
  ``chunk = G`` (the persistent / channel-split planning of the C++ launcher needs device
  information a symbolic launch does not have).

ONNX node for the parser (:func:`make_qdp_onnx_node`)::

    SubspaceAttentionAOT(x, dw_scale, dw_shift, pw_weight, pw_bias) -> (y, ws)
        groups=int, relu_dw=int, relu_pw=int, plugin_namespace="ulsam", aot=1
"""

# No `from __future__ import annotations` here: tensorrt.plugin.register reads the annotations
# of the registered function with inspect.signature() and needs real types, not strings.
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple, Union

import numpy as np
import numpy.typing as npt

from ulsam_deploy.errors import BackendUnavailable

from ulsam_deploy.kernels import aot as _aot
from ulsam_deploy.kernels import plan as _plan

from ulsam_deploy.op_spec import (QDP_INPUT_NAMES as INPUT_NAMES, QDP_NAME, QDP_NAMESPACE,  # noqa: F401
                                  QDP_OUTPUT_NAMES as OUTPUT_NAMES, QDP_PLUGIN_ID, make_qdp_onnx_node)

MIN_TENSORRT = (10, 9)

_registered = set()


# --------------------------------------------------------------------------- pure logic


def strip_hidden_params(ptx: str, n_hidden: int = len(_aot.HIDDEN_PARAMS)) -> str:
    """Remove Triton's trailing hidden scratch parameters from the ``.entry`` signature.

    TensorRT's AOT launcher passes exactly (inputs, scalars, outputs). Raises ``ValueError`` if
    the kernel body reads one of the removed parameters (then it would need real scratch)."""
    m = re.search(r"(\.entry\s+\w+\s*\()(.*?)(\))", ptx, re.S)
    if not m:
        raise ValueError("no .entry in PTX")
    params = [p.strip() for p in m.group(2).split(",") if p.strip()]
    if len(params) < n_hidden:
        raise ValueError("PTX has fewer parameters than hidden ones to strip")
    keep, drop = params[: len(params) - n_hidden], params[len(params) - n_hidden:]
    body = ptx[m.end():]
    for p in drop:
        name = p.split()[-1]
        if re.search(rf"\b{re.escape(name)}\b", body):
            raise ValueError(f"the kernel reads hidden parameter {name}; it cannot be stripped")
    new_sig = "\n" + ",\n".join("\t" + p for p in keep) + "\n"
    return ptx[: m.start(2)] + new_sig + ptx[m.end(2):]


def probe_compute_capability() -> "int | None":
    """Compute capability of GPU 0 via the driver (e.g. 87), or None without one."""
    from ulsam_deploy.backends.trt.cuda import compute_capability

    return compute_capability(0)


@dataclass(frozen=True)
class QdpKernel:
    entry: str
    ptx: str  # hidden params stripped
    arch: int
    dtype: str
    variant: int
    threads: int
    shared_bytes: int


def select_qdp_kernel(dtype: str, channels: int, groups: int, width: "int | None",
                      arch: "int | None" = None, ptx_dir: "str | Path | None" = None) -> QdpKernel:
    """Pick the shipped PTX for a build: variant from G and W (W unknown/dynamic -> the
    16-column family, which handles any width), arch = device's or the nearest lower shipped
    one (75 when no GPU is visible: PTX JIT-compiles forward)."""
    if groups < 1 or channels % groups:
        raise ValueError(f"channels ({channels}) must be a positive multiple of groups ({groups})")
    if dtype not in _plan.DTYPES:
        raise ValueError(f"dtype must be one of {_plan.DTYPES}")
    pdir = Path(ptx_dir) if ptx_dir else _aot.IMAGE_DIR
    man = _aot.load_manifest(pdir)
    variant = _plan.select_variant(channels // groups, width if width else 16)
    cc = arch if arch else (probe_compute_capability() or min(man["archs"]))
    rec = _aot.find_kernel(man, cc, dtype, variant)
    if rec is None:
        raise BackendUnavailable(f"No shipped PTX for compute capability {cc // 10}.{cc % 10}; "
                                 f"the oldest target is sm_{min(man['archs'])}.")
    ptx = (pdir / rec["file"]).read_text()
    return QdpKernel(rec["entry"], strip_hidden_params(ptx), rec["arch"], dtype, variant,
                     rec["threads"], rec["shared_bytes"])


def qdp_extra_args(g_size, h, w, groups, n_items, relu_dw, relu_pw) -> list:
    """The 9 int32 kernel scalars in kernel order (values or symbolic expressions)."""
    return [g_size, h, w, groups, n_items, 1, g_size, int(bool(relu_dw)), int(bool(relu_pw))]


def qdp_launch_config(n: int, c: int, h: int, w: int, groups: int) -> dict:
    """Concrete version of what :func:`register_qdp_plugin`'s aot_impl encodes symbolically."""
    return {"grid": n * groups, "split": 1, "chunk": c // groups, "items": n * groups,
            "ws_shape": (n * groups, h * w)}


# --------------------------------------------------------------------------- TensorRT glue


def _import_tensorrt_plugin():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable("TensorRT's Python package is not installed; the Python (QDP) "
                                 "plugin needs tensorrt >= 10.9 (or use the C++ plugin: "
                                 "ulsam-deploy build-plugin).") from exc
    ver = tuple(int(p) for p in re.findall(r"\d+", getattr(trt, "__version__", "0"))[:2])
    try:
        import tensorrt.plugin as trtp
    except ImportError as exc:
        raise BackendUnavailable(f"tensorrt {trt.__version__} has no tensorrt.plugin module; the "
                                 "Python (QDP) plugin needs tensorrt >= 10.9.") from exc
    if ver < MIN_TENSORRT or not hasattr(trtp, "aot_impl"):
        raise BackendUnavailable(f"tensorrt {trt.__version__} lacks tensorrt.plugin.aot_impl; the "
                                 "AOT Python plugin needs tensorrt >= 10.9.")
    return trt, trtp


def _definition(trtp):
    """The ``tensorrt.plugin`` definition of our plugin in this process, or None."""
    namespace = getattr(trtp, "op", None)
    try:
        return getattr(getattr(namespace, QDP_NAMESPACE), QDP_NAME)
    except AttributeError:
        return None


# what register_qdp_plugin was last asked for (aot_impl reads it: tensorrt.plugin keeps the first definition)
_settings = {"arch": None}


def register_qdp_plugin(arch: "int | None" = None) -> str:
    """Register ``ulsam::SubspaceAttentionAOT`` with ``tensorrt.plugin``; returns its id.

    Calling it again in one process is harmless: ``tensorrt.plugin`` cannot forget a definition,
    so a definition already there is completed (a previous attempt may have stopped half-way)
    rather than repeated. ``arch`` forces the PTX target (default: the visible GPU's compute
    capability). Every failure is a :class:`BackendUnavailable` with one sentence.
    """
    _settings["arch"] = arch
    if QDP_PLUGIN_ID in _registered:
        return QDP_PLUGIN_ID
    trt, trtp = _import_tensorrt_plugin()
    try:
        _define(trt, trtp)
    except BackendUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - tensorrt.plugin validates with ValueError/TypeError/AssertionError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]
        raise BackendUnavailable(f"TensorRT {trt.__version__} refused the Python plugin {QDP_PLUGIN_ID} "
                                 f"({type(exc).__name__}: {first}); use the C++ plugin instead: "
                                 "'ulsam-deploy build-plugin', then --plugin lib.") from exc
    _registered.add(QDP_PLUGIN_ID)
    return QDP_PLUGIN_ID


def _int(value) -> int:
    """An int attribute as ``tensorrt.plugin`` hands it over: a 1-element int32 array (or an int)."""
    return int(np.asarray(value).reshape(-1)[0])


def _define(trt, trtp) -> None:
    # int attributes are declared as int32 arrays: the ONNX parser passes INT attributes as 1-element kINT32
    # fields, and TensorRT 10.16's tensorrt.plugin turns such a field into a Python int with int(ndarray),
    # which NumPy 2 refuses; an NDArray[int32] attribute is taken as it comes, in 10.9 ... 11.4 alike.
    def _desc(x: trtp.TensorDesc, dw_scale: trtp.TensorDesc, dw_shift: trtp.TensorDesc,
              pw_weight: trtp.TensorDesc, pw_bias: trtp.TensorDesc, groups: npt.NDArray[np.int32],
              relu_dw: npt.NDArray[np.int32],
              relu_pw: npt.NDArray[np.int32]) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
        shp = x.shape_expr
        ws = trtp.from_shape_expr((shp[0] * _int(groups), shp[2] * shp[3]), dtype=trt.float32)
        return x.like(), ws

    def _autotune(x, dw_scale, dw_shift, pw_weight, pw_bias, outputs):
        return [trtp.AutoTuneCombination("FP32|FP16, FP32, FP32, FP32, FP32, FP32|FP16, FP32",
                                         "LINEAR")]

    def _aot_impl(x, dw_scale, dw_shift, pw_weight, pw_bias, groups, relu_dw, relu_pw, outputs,
                  tactic) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams,
                                   trtp.SymExprs]:
        groups, relu_dw, relu_pw = _int(groups), _int(relu_dw), _int(relu_pw)
        shp = x.shape_expr
        if not shp[1].is_constant:
            raise ValueError("SubspaceAttentionAOT needs a static channel dimension")
        channels = shp[1].constant_value()
        width = shp[3].constant_value() if shp[3].is_constant else None
        dtype = "fp16" if x.dtype == trt.float16 else "fp32"
        k = select_qdp_kernel(dtype, channels, groups, width, _settings["arch"])
        n_items = shp[0] * groups
        launch = trtp.KernelLaunchParams()
        launch.grid_x = n_items
        launch.block_x = k.threads
        launch.shared_mem = k.shared_bytes
        scalars = qdp_extra_args(channels // groups, shp[2], shp[3], groups, n_items, relu_dw,
                                 relu_pw)
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(v) for v in scalars])
        return k.entry.encode(), k.ptx.encode(), launch, extra

    definition = _definition(trtp)
    if definition is None:
        trtp.register(QDP_PLUGIN_ID)(_desc)
        definition = _definition(trtp)
    elif getattr(getattr(definition, "register_func", None), "__module__", __name__) != __name__:
        raise BackendUnavailable(f"Another module already defined the Python plugin {QDP_PLUGIN_ID} in this "
                                 "process; use --plugin lib, or a fresh process.")
    if getattr(definition, "autotune_func", None) is None:
        trtp.autotune(QDP_PLUGIN_ID)(_autotune)
    if getattr(definition, "aot_impl_func", None) is None:
        trtp.aot_impl(QDP_PLUGIN_ID)(_aot_impl)
