"""Reference (oracle) implementation of the fused ULSAM subspace-attention op.

This module *is* the contract shared by the Triton kernel, the C++ launcher, the TensorRT
plugin and the ONNX fusion pass. Every test compares against it.

Op ``SubspaceAttention`` on ``x`` of shape ``[N, C, H, W]`` with ``groups = g`` (``C % g == 0``,
``G = C // g`` channels per group) and folded fp32 constants ``dw_scale[C]``, ``dw_shift[C]``,
``pw_weight[C]``, ``pw_bias[g]`` and flags ``relu_dw``, ``relu_pw``::

    a_c = relu?(dw_scale_c * x_c + dw_shift_c)                    # relu only if relu_dw
    p_c = maxpool3x3(a_c), stride 1, pad 1, out-of-image = -inf    # padding never wins
    l_k = relu?(sum_{c in group k} pw_weight_c * p_c + pw_bias_k)  # relu only if relu_pw
    A_k = softmax(l_k) over all H*W positions
    y_c = x_c * (1 + A_k)                                          # c in group k

fp16 inputs are computed in fp32 and the result is cast back. ``y`` has the shape and dtype of
``x``.

Two implementations are given, written independently on purpose (the NumPy one pads with -inf
and slides windows by hand, the torch one uses ``max_pool2d``):

- :func:`subspace_attention_numpy` - float64 by default (the precise oracle).
- :func:`subspace_attention_torch` - fp32 compute, output in the input dtype (what a deployed
  fp16 kernel is expected to match).
"""

from __future__ import annotations


import numpy as np

from ulsam_deploy.op_spec import SubspaceAttentionParams  # the one folded-ULSAM parameter set

__all__ = [
    "SubspaceAttentionParams",
    "check_params",
    "random_params",
    "subspace_attention_numpy",
    "attention_maps_numpy",
    "subspace_attention_torch",
]


def check_params(channels: int, groups: int, dw_scale, dw_shift, pw_weight, pw_bias) -> int:
    """Validate shapes; return ``G = channels // groups``. Raises ``ValueError``."""
    if groups < 1 or channels % groups != 0:
        raise ValueError(f"channels ({channels}) must be a positive multiple of groups ({groups})")
    for name, arr, n in (
        ("dw_scale", dw_scale, channels),
        ("dw_shift", dw_shift, channels),
        ("pw_weight", pw_weight, channels),
        ("pw_bias", pw_bias, groups),
    ):
        shape = tuple(np.shape(arr))
        if shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {shape}")
    return channels // groups


def random_params(channels: int, groups: int, *, seed: int = 0, relu_dw: bool = True,
                  relu_pw: bool = True, logit_scale: float = 1.0) -> SubspaceAttentionParams:
    """Deterministic random constants that give non-trivial attention maps.

    Scales are drawn with both signs so that the kernel's sign handling is exercised; shifts and
    biases are small so that the ReLUs are active on part of the data and idle on the rest.
    """
    rng = np.random.default_rng(seed)
    dw_scale = rng.uniform(0.3, 1.5, channels) * rng.choice([-1.0, 1.0], channels)
    dw_shift = rng.normal(0.0, 0.3, channels)
    pw_weight = rng.normal(0.0, 1.0, channels) * logit_scale / np.sqrt(max(1, channels // groups))
    pw_bias = rng.normal(0.5, 0.3, groups) * max(1.0, logit_scale)  # keeps relu_pw mostly open
    f32 = np.float32
    return SubspaceAttentionParams(groups, dw_scale.astype(f32), dw_shift.astype(f32),
                                   pw_weight.astype(f32), pw_bias.astype(f32), relu_dw, relu_pw)


def _maxpool3x3_neg_inf(a: np.ndarray) -> np.ndarray:
    """3x3 / stride 1 / pad 1 max pooling over the last two axes, padding = -inf."""
    h, w = a.shape[-2:]
    padded = np.full(a.shape[:-2] + (h + 2, w + 2), -np.inf, dtype=a.dtype)
    padded[..., 1:-1, 1:-1] = a
    out = np.full_like(a, -np.inf)
    for dy in range(3):
        for dx in range(3):
            np.maximum(out, padded[..., dy:dy + h, dx:dx + w], out=out)
    return out


def attention_maps_numpy(x: np.ndarray, groups: int, dw_scale, dw_shift, pw_weight, pw_bias,
                         relu_dw: bool = True, relu_pw: bool = True,
                         compute_dtype=np.float64) -> np.ndarray:
    """Return the softmax maps ``A`` of shape ``[N, groups, H, W]`` in ``compute_dtype``."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D [N, C, H, W], got shape {x.shape}")
    n, c, h, w = x.shape
    g_size = check_params(c, groups, dw_scale, dw_shift, pw_weight, pw_bias)
    cd = compute_dtype
    xf = x.astype(cd)
    s = np.asarray(dw_scale, dtype=cd).reshape(1, c, 1, 1)
    t = np.asarray(dw_shift, dtype=cd).reshape(1, c, 1, 1)
    a = xf * s + t
    if relu_dw:
        a = np.maximum(a, 0)
    p = _maxpool3x3_neg_inf(a)
    wp = np.asarray(pw_weight, dtype=cd).reshape(1, groups, g_size, 1, 1)
    logits = (p.reshape(n, groups, g_size, h, w) * wp).sum(axis=2)
    logits = logits + np.asarray(pw_bias, dtype=cd).reshape(1, groups, 1, 1)
    if relu_pw:
        logits = np.maximum(logits, 0)
    flat = logits.reshape(n, groups, h * w)
    flat = flat - flat.max(axis=2, keepdims=True)
    e = np.exp(flat)
    att = e / e.sum(axis=2, keepdims=True)
    return att.reshape(n, groups, h, w)


def subspace_attention_numpy(x: np.ndarray, groups: int, dw_scale, dw_shift, pw_weight, pw_bias,
                             relu_dw: bool = True, relu_pw: bool = True,
                             compute_dtype=np.float64, out_dtype=None) -> np.ndarray:
    """NumPy oracle. Computes in ``compute_dtype`` (float64 default); returns ``out_dtype``
    (default: the dtype of ``x``)."""
    x = np.asarray(x)
    n, c, h, w = x.shape
    att = attention_maps_numpy(x, groups, dw_scale, dw_shift, pw_weight, pw_bias, relu_dw,
                               relu_pw, compute_dtype)
    g_size = c // groups
    xf = x.astype(compute_dtype).reshape(n, groups, g_size, h, w)
    y = xf * (1 + att[:, :, None])
    return y.reshape(n, c, h, w).astype(out_dtype or x.dtype)


def subspace_attention_torch(x, groups: int, dw_scale, dw_shift, pw_weight, pw_bias,
                             relu_dw: bool = True, relu_pw: bool = True):
    """torch reference: fp32 (or fp64 if ``x`` is fp64) compute, output in ``x.dtype``.

    Constants may be NumPy arrays or tensors. Runs on any device torch supports.
    """
    import torch
    import torch.nn.functional as F

    if x.dim() != 4:
        raise ValueError(f"x must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    check_params(c, groups, dw_scale, dw_shift, pw_weight, pw_bias)
    cd = torch.float64 if x.dtype == torch.float64 else torch.float32

    def _t(v):
        return torch.as_tensor(v if torch.is_tensor(v) else np.asarray(v),
                               device=x.device).to(cd)

    xf = x.to(cd)
    a = xf * _t(dw_scale).view(1, c, 1, 1) + _t(dw_shift).view(1, c, 1, 1)
    if relu_dw:
        a = torch.relu(a)
    p = F.max_pool2d(a, kernel_size=3, stride=1, padding=1)  # pads with -inf
    g_size = c // groups
    logits = (p.view(n, groups, g_size, h, w) * _t(pw_weight).view(1, groups, g_size, 1, 1)).sum(2)
    logits = logits + _t(pw_bias).view(1, groups, 1, 1)
    if relu_pw:
        logits = torch.relu(logits)
    att = torch.softmax(logits.reshape(n, groups, h * w), dim=-1).view(n, groups, 1, h, w)
    y = xf.view(n, groups, g_size, h, w) * (1 + att)
    return y.view(n, c, h, w).to(x.dtype)
