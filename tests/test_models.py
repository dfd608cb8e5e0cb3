"""MV1/MV2 with ULSAM at paper positions: grammar, legality, every paper configuration, cost counting."""

from __future__ import annotations

import pytest
import torch

import ulsam_deploy
from helpers import PAPER_CONFIGS
from ulsam_deploy.errors import ConfigError
from ulsam_deploy.models import ULSAM, Position, build_model, parse_positions, profile_model



def test_parse_positions():
    assert parse_positions("8:1, 9:1,11") == [Position(8, False), Position(9, False), Position(11, True)]
    assert parse_positions("") == [] and parse_positions(None) == [] and parse_positions("none") == []


@pytest.mark.parametrize("text,needle", [("8:2", "only 'k:1'"), ("x", "notation"), ("8:1,8:1", "twice"),
                                         ("1;2", "notation")])
def test_bad_position_syntax(text, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_positions(text)


@pytest.mark.parametrize("arch,width,ulsam", PAPER_CONFIGS)
@pytest.mark.parametrize("groups", [1, 16])
def test_every_paper_configuration_builds_and_runs(arch, width, ulsam, groups):
    model = build_model(arch, width, ulsam, groups=groups, num_classes=10, input_size=64).eval()
    n_ulsam = sum(isinstance(m, ULSAM) for m in model.modules())
    assert n_ulsam == len(ulsam.split(","))
    assert all(m.groups == groups for m in model.modules() if isinstance(m, ULSAM))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


@pytest.mark.parametrize("arch,ulsam,layer_text", [
    ("mv2", "19", "layer 19"), ("mv2", "1", "layer 1"), ("mv2", "3", "layer 3"), ("mv2", "12", "layer 12"),
    ("mv1", "13", "layer 13"), ("mv1", "2", "layer 2"), ("mv1", "15:1", "no layer 15"),
    ("mv2", "21:1", "no layer 21"), ("mv2", "20:1", "classifier"), ("mv2", "0", "no layer 0"),
])
def test_illegal_positions_name_the_layer(arch, ulsam, layer_text):
    with pytest.raises(ConfigError, match=layer_text):
        build_model(arch, ulsam=ulsam)


def test_channels_not_divisible_by_groups_names_the_layer():
    # MV2 layer 2 outputs 16 channels at width 1.0; at width 0.35 layer 2 has 8 -> g=16 cannot split
    with pytest.raises(ConfigError, match="layer 2 .* 8 channels"):
        build_model("mv2", 0.35, "2:1", groups=16)


@pytest.mark.parametrize("groups", [2, 4, 8])
def test_groups_in_between_build(groups):
    model = build_model("mv2", ulsam="9,13,17:1", groups=groups, num_classes=3, input_size=32).eval()
    assert {m.groups for m in model.modules() if isinstance(m, ULSAM)} == {groups}
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_inserted_ulsam_keeps_torchvision_keys_and_replaced_layer_holds_ulsam():
    model = build_model("mv2", ulsam="13,17:1")
    keys = model.state_dict().keys()
    assert "features.12.subspaces.0.conv_dws.weight" in keys  # layer 13 replaced
    assert "ulsam_after.17.subspaces.3.bn_point.running_var" in keys  # inserted after layer 17
    assert "features.16.conv.0.0.weight" in keys and "features.18.0.weight" in keys
    assert "classifier.1.weight" in keys


def test_public_api_build_model_signature():
    model = ulsam_deploy.build_model("mv1", width=0.5, ulsam="8:1,9:1,11", groups=8, num_classes=5, input_size=96)
    assert model.config.width == 0.5 and model.config.input_size == 96 and model.config.num_classes == 5


# ------------------------------------------------------------------------------------- costs

def test_vanilla_totals_match_the_papers_figures():
    mv1 = profile_model(build_model("mv1"))
    mv2 = profile_model(build_model("mv2"))
    assert round(mv1.params / 1e6, 1) == 4.2 and round(mv1.macs / 1e6) == 569
    assert abs(mv2.params / 1e6 - 3.4) < 0.1 and round(mv2.macs / 1e6) in (300, 301)


def test_ulsam_cost_is_2m_params_and_2mhw_macs():
    base = profile_model(build_model("mv1"))
    with_ulsam = profile_model(build_model("mv1", ulsam="11:1"))
    assert with_ulsam.params - base.params == 2 * 512  # paper: 1.02 K for m = 512
    assert with_ulsam.macs - base.macs == 2 * 512 * 14 * 14  # paper: 0.2 M at 14 x 14
    row = next(r for r in with_ulsam.layers if r.layer == "11:1")
    assert row.ulsam and row.params == 1024 and row.macs == 200704
    assert profile_model(build_model("mv1", ulsam="11:1", groups=16)).params == with_ulsam.params


@pytest.mark.parametrize("arch,width,ulsam", [c for c in PAPER_CONFIGS if ":" not in c[2].split(",")[-1]])
def test_replacing_configurations_cut_macs(arch, width, ulsam):
    vanilla = profile_model(build_model(arch, width))
    ours = profile_model(build_model(arch, width, ulsam))
    assert ours.macs < vanilla.macs and ours.params < vanilla.params
    assert 0.70 < ours.macs / vanilla.macs < 0.97


def test_per_layer_rows_use_paper_numbers():
    cost = profile_model(build_model("mv2", ulsam="14,17:1"))
    labels = [r.layer for r in cost.layers]
    assert labels[:3] == ["1", "2", "3"] and "17:1" in labels and labels[-1] == "20"
    assert labels.index("17:1") == labels.index("17") + 1
    assert sum(r.macs for r in cost.layers) == cost.macs
    assert next(r for r in cost.layers if r.layer == "14").op.startswith("ULSAM")
