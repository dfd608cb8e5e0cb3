"""ONNX Runtime as a bench backend: every ONNX file of the model, once per execution provider."""

from __future__ import annotations

from ulsam_deploy.backends.registry import Backend, NoArtifact


def _missing() -> str | None:
    return None  # onnxruntime is a base dependency; a missing provider is said per runner


def _open(model, options):
    if not model.onnx:
        raise NoArtifact("no ONNX file for this model (run 'ulsam-deploy export' or pass --onnx)")
    from ulsam_deploy.backends.onnxrt.runner import OrtRunner

    for variant in model.onnx:
        artifact = "(in memory)" if isinstance(variant, (bytes, bytearray)) else str(variant)
        for provider in options.ort_providers:
            yield OrtRunner(variant, provider=provider, threads=options.threads, spinning=options.ort_spinning), artifact


BACKEND = Backend("ort", 1, "ONNX Runtime on the ONNX files", _missing, _open)
