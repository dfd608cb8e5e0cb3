"""The runner interface, in the spirit of Polygraphy's runners: comparators and timers use only this."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import numpy as np

from ulsam_deploy.errors import BackendUnavailable


class RunnerUnavailable(BackendUnavailable):
    """The backend cannot run here (library, GPU or plugin missing); the message says why and how to fix."""


class Runner(ABC):
    """One backend holding one model. ``infer`` takes and returns float32 NumPy arrays (NCHW in, logits out).

    Beyond ``load`` / ``infer`` / ``describe`` / ``close``, the timing loop uses :meth:`prepare`, which
    binds one batch and returns the call to time (so conversions that a deployed program would do
    once are not timed), and :meth:`batch_limits` (static-batch models and engine profiles).
    """

    name: str = "runner"
    #: numeric precision of the model this runner holds: "fp32", "fp16" or "int8"
    precision: str = "fp32"

    def __enter__(self) -> "Runner":
        self.load()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def label(self) -> str:
        """Short name for tables: the backend plus where it runs (``ort:cpu``, ``torch:cuda``, ``trt``)."""
        return self.name

    @abstractmethod
    def load(self) -> None:
        """Prepare the model (build a session, move weights); may raise :class:`RunnerUnavailable`."""

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch synchronously and return the (first) output as a host float32 array."""

    def infer_all(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output of one batch (a backbone has several), as host float32 arrays."""
        return [self.infer(batch)]

    #: how the artifact is executed, when that matters to its figures (e.g. "Q/DQ simulated, TensorRT semantics")
    mode: str = ""
    #: False where the latency measures a simulation or a reference op, not deployment speed
    latency_meaningful: bool = True

    def prepare(self, batch: np.ndarray) -> tuple[Callable[[], object], Callable[[], dict | None] | None]:
        """(run, stages): ``run()`` infers ``batch`` once, synchronously, end to end (host in, host out);
        ``stages()`` returns the GPU stage timings in ms (``h2d``, ``compute``, ``d2h``) of the last run, or
        None where the backend has none. The default binds nothing and times :meth:`infer`."""
        return (lambda: self.infer(batch)), None

    def batch_limits(self) -> tuple[int, int] | None:
        """(min, max) batch this model accepts, or None for any batch."""
        return None

    def size_limits(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """((min H, max H), (min W, max W)) this model accepts (a fixed-size ONNX, an engine's profile), or None
        for any size."""
        return None

    def describe(self) -> dict:
        """Settings and versions that make a measurement reproducible."""
        return {"backend": self.name, "precision": self.precision}

    def close(self) -> None:
        """Free resources; idempotent."""


def infer_in_chunks(runner: Runner, data: np.ndarray, chunk: int = 32, *, progress=None) -> list[np.ndarray]:
    """Every output for all of ``data``, in chunks that fit the runner's batch limits (a static batch is padded).

    ``progress(done, total)`` is called after each chunk.
    """
    limits = runner.batch_limits()
    lo, hi = limits if limits else (1, max(chunk, 1))
    size = max(lo, min(hi, chunk))
    parts: list[list[np.ndarray]] = []
    for start in range(0, len(data), size):
        part = data[start:start + size]
        n = len(part)
        if n < lo:
            part = np.concatenate([part] + [part[-1:]] * (lo - n))
        parts.append([o[:n] for o in runner.infer_all(part)])
        if progress is not None:
            progress(min(start + size, len(data)), len(data))
    return [np.concatenate([p[k] for p in parts]).astype(np.float32) for k in range(len(parts[0]))] if parts else []
