"""ULSAM: ultra-lightweight subspace attention (Saini et al., WACV 2020).

Two forms of the same math:

* :class:`ULSAM` is the training form, child-for-child identical to the reference implementation
  (``subspaces.<i>.conv_dws`` ... ``softmax``), so reference checkpoints load with ``strict=True``.
* :class:`ULSAMExport` is the deployment form: BatchNorm folded into per-channel constants and all
  groups computed by one branch (one depthwise conv, one max pool, one grouped 1x1 conv giving ``g``
  maps, one softmax on ``[N, g, h*w]``), so the exported graph has the same node count for any ``g``.

:class:`FoldedULSAM` holds the folded constants; it is the contract shared with the ONNX fusion
pass, the Triton kernel and the TensorRT plugin (see ``docs/kernel.md``).
"""

from __future__ import annotations


import torch
from torch import nn

from ulsam_deploy.errors import ConfigError
from ulsam_deploy.op_spec import SubspaceAttentionParams


class SubSpace(nn.Module):
    """One subspace: attention map over h*w from its G channels, applied as ``x * (1 + A)``."""

    def __init__(self, channels: int, plain: bool = False):
        super().__init__()
        self.plain = plain
        self.conv_dws = nn.Conv2d(channels, channels, kernel_size=1, groups=channels, bias=True)
        self.bn_dws = nn.Identity() if plain else nn.BatchNorm2d(channels, momentum=0.9)
        self.relu_dws = nn.Identity() if plain else nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.conv_point = nn.Conv2d(channels, 1, kernel_size=1, bias=True)
        self.bn_point = nn.Identity() if plain else nn.BatchNorm2d(1, momentum=0.9)
        self.relu_point = nn.Identity() if plain else nn.ReLU(inplace=False)
        self.softmax = nn.Softmax(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu_dws(self.bn_dws(self.conv_dws(x)))
        out = self.maxpool(out)
        out = self.relu_point(self.bn_point(self.conv_point(out)))
        n, c, h, w = out.shape
        attention = self.softmax(out.view(n, c, h * w)).view(n, c, h, w)
        return attention.expand_as(x) * x + x


class ULSAM(nn.Module):
    """Training form: ``g`` subspaces over contiguous channel chunks (``torch.chunk``)."""

    def __init__(self, channels: int, groups: int = 4, plain: bool = False):
        super().__init__()
        if groups < 1 or channels % groups != 0:
            raise ConfigError(
                f"ULSAM cannot split {channels} channels into {groups} groups "
                f"(channels must be divisible by groups); choose groups from {divisors_upto(channels, 16)}."
            )
        self.channels = channels
        self.groups = groups
        self.plain = plain
        self.subspaces = nn.ModuleList(SubSpace(channels // groups, plain) for _ in range(groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = torch.chunk(x, self.groups, dim=1)
        return torch.cat([sub(chunk) for sub, chunk in zip(self.subspaces, chunks)], dim=1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}" + (", plain=True" if self.plain else "")


def divisors_upto(n: int, limit: int) -> list[int]:
    return [d for d in (1, 2, 4, 8, 16, 32) if d <= limit and n % d == 0]


# the folded form of a ULSAM is the fused op's parameter set: one dataclass for model, pass, kernels, plugin
FoldedULSAM = SubspaceAttentionParams


def _bn_affine(bn: nn.Module, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of an eval-mode BatchNorm; identity for ``nn.Identity``."""
    if isinstance(bn, nn.BatchNorm2d):
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return scale, bn.bias - bn.running_mean * scale
    return torch.ones(size), torch.zeros(size)


@torch.no_grad()
def fold_ulsam(module: ULSAM) -> FoldedULSAM:
    """Fold every subspace's conv + BN pairs into per-channel constants (eval-mode statistics)."""
    scales, shifts, weights, biases = [], [], [], []
    for sub in module.subspaces:
        g_ch = sub.conv_dws.out_channels
        bn_s, bn_t = _bn_affine(sub.bn_dws, g_ch)
        scales.append(sub.conv_dws.weight.reshape(g_ch) * bn_s)
        shifts.append(sub.conv_dws.bias * bn_s + bn_t)
        pbn_s, pbn_t = _bn_affine(sub.bn_point, 1)
        weights.append(sub.conv_point.weight.reshape(g_ch) * pbn_s)
        biases.append(sub.conv_point.bias * pbn_s + pbn_t)
    as_np = lambda ts: torch.cat(ts).detach().float().cpu().numpy()  # noqa: E731
    return FoldedULSAM(
        groups=module.groups,
        dw_scale=as_np(scales),
        dw_shift=as_np(shifts),
        pw_weight=as_np(weights),
        pw_bias=as_np(biases),
        relu_dw=not module.plain,
        relu_pw=not module.plain,
    )


class ULSAMExport(nn.Module):
    """Deployment form of :class:`ULSAM`: one branch for all groups, node count independent of g."""

    def __init__(self, folded: FoldedULSAM):
        super().__init__()
        c, g = folded.channels, folded.groups
        self.channels, self.groups = c, g
        self.relu_dw, self.relu_pw = folded.relu_dw, folded.relu_pw
        self.dw = nn.Conv2d(c, c, kernel_size=1, groups=c, bias=True)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.pw = nn.Conv2d(c, g, kernel_size=1, groups=g, bias=True)
        with torch.no_grad():
            self.dw.weight.copy_(torch.from_numpy(folded.dw_scale).view(c, 1, 1, 1))
            self.dw.bias.copy_(torch.from_numpy(folded.dw_shift))
            self.pw.weight.copy_(torch.from_numpy(folded.pw_weight).view(g, c // g, 1, 1))
            self.pw.bias.copy_(torch.from_numpy(folded.pw_bias))

    @classmethod
    def from_ulsam(cls, module: ULSAM) -> "ULSAMExport":
        return cls(fold_ulsam(module))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # h and w are traced (symbolic in a dynamic-H/W export); the channel count is this module's constant, so the
        # reshapes keep a static channel axis that shape inference can carry to the graph outputs
        _, _, h, w = x.shape
        c, g = self.channels, self.groups
        a = self.dw(x)
        if self.relu_dw:
            a = torch.relu(a)
        logits = self.pw(self.pool(a))
        if self.relu_pw:
            logits = torch.relu(logits)
        attention = torch.softmax(logits.reshape(-1, g, h * w), dim=2).reshape(-1, g, 1, h * w)
        y = x.reshape(-1, g, c // g, h * w) * (attention + 1.0)
        return y.reshape(-1, c, h, w)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}"


def replace_ulsam_blocks(model: nn.Module, make) -> nn.Module:
    """A copy of ``model`` (eval) with every :class:`ULSAM` block replaced by ``make(block)``, wherever it sits
    (a replaced layer in ``features``, an inserted block in ``ulsam_after``)."""
    import copy

    copied = copy.deepcopy(model).eval()
    for parent in list(copied.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ULSAM):
                setattr(parent, name, make(child))
    return copied


def to_export_form(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval) whose ULSAM blocks are :class:`ULSAMExport` (BN folded, one branch)."""
    return replace_ulsam_blocks(model, ULSAMExport.from_ulsam)
