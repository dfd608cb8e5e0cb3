"""The fused ULSAM op as it appears in ONNX and TensorRT: one definition for the fusion pass,
the ONNX Runtime custom op, the TensorRT C++ plugin and the Python (QDP) plugin.

Semantics (eval-mode ULSAM, see :class:`SubspaceAttentionParams`)::

    a = relu?(dw_scale * x + dw_shift)            per channel (relu if relu_dw)
    p = maxpool3x3_s1_p1(a)                       padding never wins
    l_k = relu?(sum_{c in k} pw_weight_c p_c + pw_bias_k)   per group (relu if relu_pw)
    y = x * (1 + softmax_hw(l_k))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OP_TYPE = "SubspaceAttention"
DOMAIN = "ai.onnx.contrib"  # required by onnxruntime-extensions' Python custom ops; TensorRT ignores it
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "ulsam"

# node attributes (TensorRT's ONNX parser: INT -> kINT32, FLOATS -> kFLOAT32, STRING -> kCHAR)
ATTR_GROUPS = "groups"  # int
ATTR_RELU_DW = "relu_dw"  # int 0/1
ATTR_RELU_PW = "relu_pw"  # int 0/1
ATTR_DW_SCALE = "dw_scale"  # floats [C]
ATTR_DW_SHIFT = "dw_shift"  # floats [C]
ATTR_PW_WEIGHT = "pw_weight"  # floats [C]
ATTR_PW_BIAS = "pw_bias"  # floats [g]
FLOAT_LIST_ATTRS = (ATTR_DW_SCALE, ATTR_DW_SHIFT, ATTR_PW_WEIGHT, ATTR_PW_BIAS)

# how an engine gets the fused op: auto (lib where built, else python), lib (the C++ plugin library), python (QDP)
PLUGIN_ROUTES = ("auto", "lib", "python")

# node attributes TensorRT's ONNX parser ignores but routes by
PLUGIN_ATTRS = {"plugin_version": PLUGIN_VERSION, "plugin_namespace": PLUGIN_NAMESPACE}

# the same op for TensorRT's AOT Python plugin (kernels/qdp_plugin.py says why its signature differs):
# SubspaceAttentionAOT(x, dw_scale, dw_shift, pw_weight, pw_bias) -> (y, ws), int attributes only
QDP_NAMESPACE = PLUGIN_NAMESPACE
QDP_NAME = "SubspaceAttentionAOT"
QDP_PLUGIN_ID = f"{QDP_NAMESPACE}::{QDP_NAME}"
QDP_INPUT_NAMES = ("x", "dw_scale", "dw_shift", "pw_weight", "pw_bias")
QDP_OUTPUT_NAMES = ("y", "ws")


def make_qdp_onnx_node(inputs, outputs, groups: int, relu_dw: bool = True, relu_pw: bool = True,
                       name: "str | None" = None):
    """ONNX NodeProto for the AOT QDP plugin (``inputs``: x + the 4 constant initializers'
    names; ``outputs``: y and the unused workspace)."""
    from onnx import helper

    if len(inputs) != len(QDP_INPUT_NAMES) or len(outputs) != len(QDP_OUTPUT_NAMES):
        raise ValueError(f"need inputs {QDP_INPUT_NAMES} and outputs {QDP_OUTPUT_NAMES}")
    return helper.make_node(QDP_NAME, list(inputs), list(outputs), name=name, groups=int(groups),
                            relu_dw=int(bool(relu_dw)), relu_pw=int(bool(relu_pw)),
                            plugin_namespace=QDP_NAMESPACE, aot=1)


@dataclass
class SubspaceAttentionParams:
    """The folded constants of one ULSAM block: what the model folds to (``fold_ulsam``), what the fusion pass
    writes as node attributes, what the ONNX Runtime reference op, the kernels and the plugin read.

    ``a = relu?(dw_scale * x + dw_shift)``, ``p = maxpool3x3(a)``, ``l_k = relu?(sum_{c in k} pw_weight_c p_c +
    pw_bias_k)``, ``A_k = softmax_hw(l_k)``, ``y = x (1 + A)``.
    """

    groups: int
    dw_scale: np.ndarray  # [C]
    dw_shift: np.ndarray  # [C]
    pw_weight: np.ndarray  # [C]
    pw_bias: np.ndarray  # [groups]
    relu_dw: bool = True
    relu_pw: bool = True

    @property
    def channels(self) -> int:
        return int(np.asarray(self.dw_scale).shape[0])

    def as_kwargs(self) -> dict:
        return {"groups": self.groups, "dw_scale": self.dw_scale, "dw_shift": self.dw_shift, "pw_weight": self.pw_weight,
                "pw_bias": self.pw_bias, "relu_dw": self.relu_dw, "relu_pw": self.relu_pw}

    def validate(self) -> "SubspaceAttentionParams":
        """Raise ValueError unless the shapes, flags and values fit the op."""
        c, g = self.channels, int(self.groups)
        if g < 1 or c < 1 or c % g:
            raise ValueError(f"channels ({c}) must be a positive multiple of groups ({g})")
        for name, n in ((ATTR_DW_SHIFT, c), (ATTR_PW_WEIGHT, c), (ATTR_PW_BIAS, g)):
            if np.asarray(getattr(self, name)).reshape(-1).shape[0] != n:
                raise ValueError(f"{name} has {np.asarray(getattr(self, name)).size} values, not {n}")
        if not all(np.isfinite(np.asarray(getattr(self, k), np.float64)).all() for k in FLOAT_LIST_ATTRS):
            raise ValueError("the constants are not all finite")
        return self

    def attributes(self) -> dict:
        """The ONNX node attributes of this op (FLOATS as float32 values, flags as 0/1 ints)."""
        floats = lambda v: [float(x) for x in np.asarray(v, np.float32).reshape(-1)]  # noqa: E731
        return {**PLUGIN_ATTRS, ATTR_GROUPS: int(self.groups), ATTR_RELU_DW: int(bool(self.relu_dw)),
                ATTR_RELU_PW: int(bool(self.relu_pw)), ATTR_DW_SCALE: floats(self.dw_scale),
                ATTR_DW_SHIFT: floats(self.dw_shift), ATTR_PW_WEIGHT: floats(self.pw_weight),
                ATTR_PW_BIAS: floats(self.pw_bias)}

    @classmethod
    def from_attributes(cls, attrs: dict) -> "SubspaceAttentionParams":
        """From a node's attributes (as ``onnx.helper.get_attribute_value`` returns them); validated."""
        missing = [k for k in (ATTR_GROUPS, *FLOAT_LIST_ATTRS) if k not in attrs]
        if missing:
            raise ValueError(f"missing attribute(s) {', '.join(missing)}")
        as_f32 = lambda k: np.asarray(attrs[k], np.float32).reshape(-1)  # noqa: E731
        relu = [int(attrs.get(ATTR_RELU_DW, 1)), int(attrs.get(ATTR_RELU_PW, 1))]
        if any(r not in (0, 1) for r in relu):
            raise ValueError(f"relu flags must be 0 or 1, not {relu}")
        return cls(int(attrs[ATTR_GROUPS]), as_f32(ATTR_DW_SCALE), as_f32(ATTR_DW_SHIFT), as_f32(ATTR_PW_WEIGHT),
                   as_f32(ATTR_PW_BIAS), bool(relu[0]), bool(relu[1])).validate()
