"""The runner interface, in the spirit of Polygraphy's runners: comparators and timers use only this."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..errors import BackendUnavailable


class RunnerUnavailable(BackendUnavailable):
    """The backend cannot run here (library, GPU or plugin missing); the message says why and how to fix."""


class Runner(ABC):
    """One backend holding one model. ``infer`` takes and returns float32 NumPy arrays (NCHW in, logits out)."""

    name: str = "runner"

    def __enter__(self) -> "Runner":
        self.load()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @abstractmethod
    def load(self) -> None:
        """Prepare the model (build a session, move weights); may raise :class:`RunnerUnavailable`."""

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch synchronously and return the output as a host array."""

    def describe(self) -> dict:
        """Settings and versions that make a measurement reproducible."""
        return {"backend": self.name}

    def close(self) -> None:
        """Free resources; idempotent."""
