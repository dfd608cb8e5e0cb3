"""ONNX Runtime: the runner (CPU / CUDA / TensorRT providers) and the SubspaceAttention reference op."""


def session(model, *, threads: int | None = None, provider: str = "cpu"):
    """An ``onnxruntime.InferenceSession`` that runs one of our artifacts exactly as ``bench`` and every gate do:
    the SubspaceAttention reference op registered for a fused graph, graph optimizations off for an int8 model made
    for TensorRT (Q/DQ as written), ONNX Runtime's own kernels otherwise. For field tools that take a session, such
    as Polygraphy: ``OnnxrtRunner(session("model.fused.onnx"))`` (see docs/fusion.md). Feed it float32 images
    [N, C, H, W] (float16 for an fp16-I/O model)."""
    from ulsam_deploy.backends.onnxrt.runner import OrtRunner

    runner = OrtRunner(model, provider=provider, threads=threads)
    runner.load()
    return runner.session


__all__ = ["session"]
