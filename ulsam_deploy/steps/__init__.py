"""File-to-file steps (export, fuse, convert, build-trt): output checks, passes, parity, atomic write, sidecar.

The public face of the step driver for other layers (bench, deploy, fleet): the typed result, reading an ONNX
with the sidecar that must describe it, and the ONNX finalization every step applies."""

from ulsam_deploy.steps._step import (Step, StepResult, check_sidecar_matches, finalize_onnx,  # noqa: F401
                                      load_with_sidecar)

__all__ = ["Step", "StepResult", "check_sidecar_matches", "finalize_onnx", "load_with_sidecar"]
