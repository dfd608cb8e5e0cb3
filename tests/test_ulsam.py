"""ULSAM training form == reference implementation, export form == training form, folding, node counts."""

from __future__ import annotations

import io

import onnx
import pytest
import torch
from torch import nn

from helpers import attention_spread, randomize_bn
from ulsam_deploy.errors import ConfigError
from ulsam_deploy.models import ULSAM, ULSAMExport, fold_ulsam


# The public reference implementation's structure, restated (what real checkpoints come from).
class RefSubSpace(nn.Module):
    def __init__(self, nin):
        super().__init__()
        self.conv_dws = nn.Conv2d(nin, nin, kernel_size=1, stride=1, padding=0, groups=nin)
        self.bn_dws = nn.BatchNorm2d(nin, momentum=0.9)
        self.relu_dws = nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.conv_point = nn.Conv2d(nin, 1, kernel_size=1, stride=1, padding=0, groups=1)
        self.bn_point = nn.BatchNorm2d(1, momentum=0.9)
        self.relu_point = nn.ReLU(inplace=False)
        self.softmax = nn.Softmax(dim=2)

    def forward(self, x):
        out = self.relu_dws(self.bn_dws(self.conv_dws(x)))
        out = self.maxpool(out)
        out = self.relu_point(self.bn_point(self.conv_point(out)))
        m, n, p, q = out.shape
        out = self.softmax(out.view(m, n, -1)).view(m, n, p, q)
        out = out.expand(x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        return torch.mul(out, x) + x


class RefULSAM(nn.Module):
    def __init__(self, nin, num_splits):
        super().__init__()
        self.nin, self.num_splits = nin, num_splits
        self.subspaces = nn.ModuleList([RefSubSpace(nin // num_splits) for _ in range(num_splits)])

    def forward(self, x):
        chunks = torch.chunk(x, self.num_splits, dim=1)
        return torch.cat([self.subspaces[i](chunks[i]) for i in range(self.num_splits)], dim=1)


def _trained_like(module: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.4)
        for m in module.modules():  # mostly positive pointwise weights: relu_point clips some, not all, logits
            if isinstance(m, nn.Conv2d) and m.out_channels == 1:
                m.weight.abs_().sub_(0.2)
    return randomize_bn(module, seed).eval()


@pytest.mark.parametrize("groups", [1, 2, 4, 8, 16])
def test_reference_state_dict_loads_strictly_and_matches(groups):
    ref = _trained_like(RefULSAM(64, groups), seed=groups)
    ours = ULSAM(64, groups).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert set(ours.state_dict()) == set(ref.state_dict())
    x = torch.randn(2, 64, 9, 7)
    assert torch.equal(ours(x), ref(x))
    assert "subspaces.0.conv_dws.weight" in ours.state_dict()
    assert f"subspaces.{groups - 1}.bn_point.running_var" in ours.state_dict()


@pytest.mark.parametrize("groups", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (7, 7), (13, 11)])
def test_export_form_matches_training_form(groups, hw):
    module = _trained_like(ULSAM(32, groups), seed=groups * 31 + hw[0])
    export = ULSAMExport.from_ulsam(module).eval()
    x = torch.randn(3, 32, *hw)
    torch.testing.assert_close(export(x), module(x), atol=1e-5, rtol=0)
    if hw[0] * hw[1] > 9:  # below 3x3 every pooling window sees the whole map: uniform by construction
        assert attention_spread(module, x) > 1e-3


@pytest.mark.parametrize("groups", [1, 4])
def test_plain_form_matches_and_folds_without_relu(groups):
    module = _trained_like(ULSAM(16, groups, plain=True), seed=3)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in module.modules())
    folded = fold_ulsam(module)
    assert not folded.relu_dw and not folded.relu_pw
    x = torch.randn(2, 16, 6, 5)
    torch.testing.assert_close(ULSAMExport(folded)(x), module(x), atol=1e-5, rtol=0)


def test_folded_constants_follow_the_bn_formula():
    module = _trained_like(ULSAM(8, 2), seed=5)
    folded = fold_ulsam(module)
    sub = module.subspaces[1]
    bn = sub.bn_dws
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    expect_s = sub.conv_dws.weight.flatten() * scale
    expect_t = (sub.conv_dws.bias - bn.running_mean) * scale + bn.bias
    torch.testing.assert_close(torch.from_numpy(folded.dw_scale[4:]), expect_s.detach())
    torch.testing.assert_close(torch.from_numpy(folded.dw_shift[4:]), expect_t.detach())
    assert folded.pw_bias.shape == (2,) and folded.pw_weight.shape == (8,)


def test_fold_detects_a_wrong_constant():
    """The equality test above can fail: perturbing one folded constant breaks it."""
    module = _trained_like(ULSAM(16, 4), seed=9)
    folded = fold_ulsam(module)
    folded.dw_shift[5] += 0.5
    x = torch.randn(1, 16, 5, 5)
    assert (ULSAMExport(folded)(x) - module(x)).abs().max() > 1e-3


def _onnx_nodes(module: nn.Module, channels: int) -> int:
    buf = io.BytesIO()
    torch.onnx.export(module.eval(), (torch.randn(1, channels, 7, 7),), buf, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["out"], dynamic_axes={"input": {0: "b"}, "out": {0: "b"}})
    return len(onnx.load_from_string(buf.getvalue()).graph.node)


def test_export_form_node_count_does_not_grow_with_groups():
    counts = {g: _onnx_nodes(ULSAMExport.from_ulsam(ULSAM(64, g).eval()), 64) for g in (1, 4, 16)}
    assert len(set(counts.values())) == 1, counts
    # while the per-subspace training form grows with g
    train = {g: _onnx_nodes(ULSAM(64, g), 64) for g in (1, 4)}
    assert train[4] > train[1]


@pytest.mark.parametrize("channels,groups", [(30, 4), (7, 2), (64, 0)])
def test_bad_group_split_is_a_config_error(channels, groups):
    with pytest.raises(ConfigError, match="groups"):
        ULSAM(channels, groups)
