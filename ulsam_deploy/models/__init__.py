"""Models: ULSAM, MobileNet-V1/V2 with ULSAM at paper positions, checkpoints, cost counting.

:mod:`.config` and :mod:`.positions` are torch-free; the networks, checkpoints and cost counting load
torch, lazily, when their names are first used.
"""

from ulsam_deploy._lazy import lazy_exports

_EXPORTS = {
    **{n: "ulsam_deploy.models.checkpoint" for n in ("CheckpointInfo", "load_checkpoint", "load_checkpoint_with_info",
                                                    "load_pretrained", "save_checkpoint")},
    **{n: "ulsam_deploy.models.config" for n in ("ARCHS", "FeatureTap", "ModelConfig", "PAPER_CONFIGS", "PAPER_GROUPS",
                                                 "feature_taps", "layer_specs", "network_stride")},
    **{n: "ulsam_deploy.models.mobilenet" for n in ("Backbone", "MobileNetULSAM", "build_model", "calibrate_batchnorm")},
    **{n: "ulsam_deploy.models.positions" for n in ("LayerSpec", "Position", "parse_positions")},
    **{n: "ulsam_deploy.models.profile" for n in ("ModelCost", "profile_model")},
    **{n: "ulsam_deploy.models.ulsam" for n in ("ULSAM", "FoldedULSAM", "ULSAMExport", "fold_ulsam", "replace_ulsam_blocks",
                                                "to_export_form")},
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
