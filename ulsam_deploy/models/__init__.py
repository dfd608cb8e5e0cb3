"""Models: ULSAM, MobileNet-V1/V2 with ULSAM at paper positions, checkpoints, cost counting."""

from .checkpoint import (CheckpointInfo, load_checkpoint, load_checkpoint_with_info, load_pretrained,
                         save_checkpoint)
from .mobilenet import ARCHS, MobileNetULSAM, ModelConfig, build_model, layer_specs
from .positions import LayerSpec, Position, parse_positions
from .profile import ModelCost, profile_model
from .ulsam import ULSAM, FoldedULSAM, ULSAMExport, fold_ulsam

__all__ = [
    "ARCHS", "CheckpointInfo", "FoldedULSAM", "LayerSpec", "MobileNetULSAM", "ModelConfig", "ModelCost",
    "Position", "ULSAM", "ULSAMExport", "build_model", "fold_ulsam", "layer_specs", "load_checkpoint",
    "load_checkpoint_with_info", "load_pretrained", "parse_positions", "profile_model", "save_checkpoint",
]
