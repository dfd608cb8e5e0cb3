"""ONNX Runtime: the runner (CPU / CUDA / TensorRT providers) and the SubspaceAttention reference op."""
