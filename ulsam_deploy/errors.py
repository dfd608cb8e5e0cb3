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


class IOFailure(UserError):
    """The system refused a read or write (disk full, read-only file system, closed output): not the user's input,
    not a bug."""

    exit_code = 74


def os_error_sentence(exc: OSError, target: str | None = None) -> str:
    """One sentence for an OSError, naming the file (``target`` when the error does not carry one) and the fix."""
    import errno

    name = target or exc.filename
    reason = exc.strerror or type(exc).__name__
    if name is None and exc.errno in (errno.EPIPE, errno.EBADF):
        return (f"Standard output or error was closed before everything was written ({reason}); keep the reading "
                "end open, or write reports to a file.")
    where = f"'{name}'" if name is not None else "standard output or a file"
    fixes = {errno.ENOSPC: "free some space or choose another location",
             errno.EDQUOT: "free some space or choose another location",
             errno.EROFS: "choose a writable location",
             errno.EACCES: "fix its permissions or choose another path",
             errno.EPERM: "fix its permissions or choose another path",
             errno.EIO: "check the disk"}
    return f"Cannot read or write {where} ({reason}); {fixes.get(exc.errno, 'check the path and try again')}."
