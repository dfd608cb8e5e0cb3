"""ONNX-to-ONNX passes (simplify, fuse, fp16, int8), each verifiable on ONNX Runtime by itself."""

from .common import check_model, load_onnx, op_counts, ort_max_ir_version, save_onnx_atomic, sha256_file
from .simplify import simplify_model

__all__ = ["check_model", "load_onnx", "op_counts", "ort_max_ir_version", "save_onnx_atomic", "sha256_file",
           "simplify_model"]
