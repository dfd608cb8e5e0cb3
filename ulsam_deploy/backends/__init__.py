"""Backends behind one small runner interface (load, infer a batch, describe itself).

``TrtRunner`` lives in :mod:`.trt_runner`; importing it never imports TensorRT (that happens in
``load``), so it is safe everywhere.
"""

from .base import Runner, RunnerUnavailable
from .ort_runner import OrtRunner
from .torch_runner import TorchRunner
from .trt_runner import TrtRunner

__all__ = ["OrtRunner", "Runner", "RunnerUnavailable", "TorchRunner", "TrtRunner"]
