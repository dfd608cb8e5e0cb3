"""Backends behind one small runner interface (load, infer a batch, describe itself)."""

from .base import Runner, RunnerUnavailable
from .ort_runner import OrtRunner
from .torch_runner import TorchRunner

__all__ = ["OrtRunner", "Runner", "RunnerUnavailable", "TorchRunner"]
