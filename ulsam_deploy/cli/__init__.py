"""The ``ulsam-deploy`` command line (Typer + Rich): parse, call the library, render."""

from ulsam_deploy.cli.app import app, run

__all__ = ["app", "run"]
