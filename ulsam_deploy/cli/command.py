"""The ``@command`` mark: a command module says what its function is called; :mod:`ulsam_deploy.cli.app` registers
every marked function explicitly, with the error policy and the input checks. Command modules import this, never
the app, so there is no import loop."""

from __future__ import annotations


def command(name: str | None = None, **kwargs):
    """Mark ``fn`` as the command ``name`` (default: the function's name, dashes for underscores); ``kwargs`` go to
    Typer's ``app.command``."""
    def mark(fn):
        fn.__cli_command__ = (name, kwargs)
        return fn

    return mark


__all__ = ["command"]
