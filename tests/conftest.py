"""Shared fixtures (helpers live in tests/helpers.py, imported as ``helpers``)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("COLUMNS", "160")


@pytest.fixture
def cli_runner():
    from typer.testing import CliRunner

    return CliRunner()
