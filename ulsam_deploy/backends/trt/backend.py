"""TensorRT as a bench backend: the model's engines, each checked against this TensorRT and GPU first."""

from __future__ import annotations

from ulsam_deploy.backends.registry import Backend, NoArtifact
from ulsam_deploy.backends.trt.compat import EngineMismatch
from ulsam_deploy.errors import BackendUnavailable


def _missing() -> str | None:
    return None  # said per engine: the runner names what is missing (TensorRT, a GPU, the plugin library)


def _open(model, options):
    if not model.engines:
        raise NoArtifact("no TensorRT engine for this model (build one with 'ulsam-deploy build-trt', then pass "
                         "--engine)")
    from ulsam_deploy.backends.trt.runner import TrtRunner

    for engine in model.engines:
        yield TrtRunner(engine, options.trt_device), str(engine)


BACKEND = Backend("trt", 2, "TensorRT engines", _missing, _open, skip_on=(BackendUnavailable, EngineMismatch))
