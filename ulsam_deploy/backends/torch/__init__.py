"""PyTorch: the runner for eval-mode checkpoints (CPU or CUDA)."""
