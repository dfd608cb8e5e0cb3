"""Models: ULSAM, MobileNet-V1/V2 with ULSAM at paper positions, checkpoints, cost counting."""

from ulsam_deploy.models.checkpoint import (CheckpointInfo, load_checkpoint, load_checkpoint_with_info, load_pretrained,
                         save_checkpoint)
from ulsam_deploy.models.mobilenet import ARCHS, MobileNetULSAM, ModelConfig, build_model, layer_specs
from ulsam_deploy.models.positions import LayerSpec, Position, parse_positions
from ulsam_deploy.models.profile import ModelCost, profile_model
from ulsam_deploy.models.ulsam import ULSAM, FoldedULSAM, ULSAMExport, fold_ulsam

__all__ = [
    "ARCHS", "CheckpointInfo", "FoldedULSAM", "LayerSpec", "MobileNetULSAM", "ModelConfig", "ModelCost",
    "Position", "ULSAM", "ULSAMExport", "build_model", "fold_ulsam", "layer_specs", "load_checkpoint",
    "load_checkpoint_with_info", "load_pretrained", "parse_positions", "profile_model", "save_checkpoint",
]
