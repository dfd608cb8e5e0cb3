"""The fused ULSAM op as it appears in ONNX and TensorRT: one definition for the fusion pass,
the ONNX Runtime custom op, the TensorRT C++ plugin and the Python (QDP) plugin.

Semantics (eval-mode ULSAM, see :class:`ulsam_deploy.models.FoldedULSAM`)::

    a = relu?(dw_scale * x + dw_shift)            per channel (relu if relu_dw)
    p = maxpool3x3_s1_p1(a)                       padding never wins
    l_k = relu?(sum_{c in k} pw_weight_c p_c + pw_bias_k)   per group (relu if relu_pw)
    y = x * (1 + softmax_hw(l_k))
"""

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
