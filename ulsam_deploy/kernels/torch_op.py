"""The fused ULSAM kernel as a PyTorch op and module: the Triton kernel of :mod:`.triton_kernel` (the same source
the plugin's PTX and cubins are compiled from) behind ``torch.ops.ulsam.subspace_attention``.

What it is for: running a trained network with every ULSAM block as one kernel in PyTorch itself, eager or
captured in a CUDA graph, to measure the fused block end to end against the decomposed ops
(``scripts/gpu_network_bench.py``). Inference only (no autograd formula). On CUDA tensors, or on CPU tensors under
``TRITON_INTERPRET=1`` (how the tests run it without a GPU).
"""

from __future__ import annotations

import torch
from torch import nn

from ulsam_deploy.kernels.triton_kernel import subspace_attention as _launch


@torch.library.custom_op("ulsam::subspace_attention", mutates_args=())
def subspace_attention(x: torch.Tensor, dw_scale: torch.Tensor, dw_shift: torch.Tensor, pw_weight: torch.Tensor,
                       pw_bias: torch.Tensor, groups: int, relu_dw: bool, relu_pw: bool) -> torch.Tensor:
    """``y = x * (1 + softmax_hw(relu?(pw . maxpool3x3(relu?(dw_scale x + dw_shift)) + pw_bias)))`` per group."""
    return _launch(x, groups, dw_scale, dw_shift, pw_weight, pw_bias, relu_dw, relu_pw)


@subspace_attention.register_fake
def _(x, dw_scale, dw_shift, pw_weight, pw_bias, groups, relu_dw, relu_pw):
    return torch.empty_like(x)


class FusedULSAM(nn.Module):
    """One ULSAM block as the fused kernel: the folded constants as fp32 buffers (the kernel computes in fp32 for
    fp16 inputs too, as the plugin does), so ``.half()`` leaves them alone."""

    def __init__(self, folded):
        super().__init__()
        self.groups = int(folded.groups)
        self.relu_dw, self.relu_pw = bool(folded.relu_dw), bool(folded.relu_pw)
        for name in ("dw_scale", "dw_shift", "pw_weight", "pw_bias"):
            self.register_buffer(name, torch.as_tensor(getattr(folded, name), dtype=torch.float32).clone())

    def _apply(self, fn, recurse=True):
        # move with the module (device), but keep fp32 whatever dtype the module is cast to
        super()._apply(fn, recurse)
        for name in ("dw_scale", "dw_shift", "pw_weight", "pw_bias"):
            setattr(self, name, getattr(self, name).float())
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return subspace_attention(x.contiguous(), self.dw_scale, self.dw_shift, self.pw_weight, self.pw_bias,
                                  self.groups, self.relu_dw, self.relu_pw)

    def extra_repr(self) -> str:
        return f"channels={self.dw_scale.numel()}, groups={self.groups}"


def with_fused_ulsam(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval) whose ULSAM blocks are :class:`FusedULSAM` (BatchNorm folded, one kernel)."""
    from ulsam_deploy.models.ulsam import fold_ulsam, replace_ulsam_blocks

    return replace_ulsam_blocks(model, lambda block: FusedULSAM(fold_ulsam(block)))
