"""Lazy package attributes: ``import ulsam_deploy`` (and ``--help``) must not import torch or onnx."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """A module ``__getattr__`` resolving ``name`` to ``exports[name]`` (a module path) on first use."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__
