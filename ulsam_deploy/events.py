"""What a long-running library call tells its caller. Library code prints nothing: it reports stages,
warnings, progress and structured events here, and the CLI renders them with Rich."""

from __future__ import annotations

import contextlib
from typing import ContextManager


class Events:
    """The silent default; subclasses render (``ulsam_deploy.cli.ui.RichEvents``) or record (tests)."""

    def stage(self, name: str) -> ContextManager:
        """A named stage of work (rendered as a spinner, then a check mark and its duration)."""
        return contextlib.nullcontext()

    def warn(self, message: str) -> None:
        """Something the user should know that does not stop the work."""

    def detail(self, text: str) -> None:
        """Verbatim text worth showing (a tool's log, a parser's error list)."""

    def progress(self, task: str, done: int, total: int, **stats) -> None:
        """Determinate progress of ``task`` (images verified, batches calibrated, training steps...): ``done`` of
        ``total``, the task ends when ``done >= total``; ``stats`` are running figures (loss, accuracy)."""

    def emit(self, kind: str, **data) -> None:
        """A structured event of a longer loop (bench's runners, a training epoch, a fleet's devices)."""


SILENT = Events()


class Recorder(Events):
    """Keeps every warning and event (tests, and the demo's own report)."""

    def __init__(self):
        self.stages: list[str] = []
        self.warnings: list[str] = []
        self.events: list[tuple[str, dict]] = []

    def stage(self, name: str) -> ContextManager:
        self.stages.append(name)
        return contextlib.nullcontext()

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def emit(self, kind: str, **data) -> None:
        self.events.append((kind, data))


__all__ = ["Events", "Recorder", "SILENT"]
