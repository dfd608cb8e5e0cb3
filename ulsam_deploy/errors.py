"""User-facing errors.

Every problem a user can cause or fix (bad file, bad flag, missing TensorRT...) is raised as a
:class:`UserError` carrying one sentence that names the problem and the fix. The CLI prints that
sentence and exits non-zero, without a traceback unless ``--debug`` is given.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; ``str(err)`` is the one sentence shown to them."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} {self.hint}"


class ConfigError(UserError):
    """An illegal model configuration (position, groups, width...)."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the requested model."""


class ParityError(UserError):
    """Two backends disagree beyond the allowed tolerance."""

    exit_code = 3


class BackendUnavailable(UserError):
    """A runtime (TensorRT, CUDA, a plugin) is not installed or not usable here."""

    exit_code = 4
