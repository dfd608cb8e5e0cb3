"""The backends bench can run, found by folder: each backend package declares itself in its ``backend`` module.

A declaration (:class:`Backend`) says what the backend needs to be usable here (a cheap check that imports no
framework), how to open its runners for one model's artifacts, and which errors mean "skip this runner, with the
reason" rather than fail. Bench asks the registry, never names a framework: adding a backend is one new folder
with a ``backend.py`` (the way Polygraphy's backends and mmdeploy's BackendManager are arranged).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterator

from ulsam_deploy.errors import BackendUnavailable, UserError


class NoArtifact(Exception):
    """The model has nothing this backend can run (no engine, no ONNX); the message says how to make one."""


@dataclass(frozen=True)
class Backend:
    """One backend as bench sees it.

    ``missing()``: why it cannot run here at all (install hint), or None. ``open(model, options)``: yields
    ``(runner, artifact)`` per artifact of ``model`` (a :class:`ulsam_deploy.bench.models.ModelSpec`), runners not
    yet loaded; raises :class:`NoArtifact`. ``skip_on``: errors of ``runner.load()`` that skip the row."""

    name: str
    order: int
    describe: str
    missing: Callable[[], str | None]
    open: Callable[[object, object], Iterator[tuple[object, str]]]
    skip_on: tuple[type[BaseException], ...] = (BackendUnavailable,)


@lru_cache(maxsize=1)
def backends() -> dict[str, Backend]:
    """Every declared backend, by name, in bench's order (each folder's ``backend.BACKEND``)."""
    import ulsam_deploy.backends as package

    found: list[Backend] = []
    for info in pkgutil.iter_modules(package.__path__):
        if not info.ispkg:
            continue
        name = f"{package.__name__}.{info.name}.backend"
        if importlib.util.find_spec(name) is None:
            continue
        declared = getattr(importlib.import_module(name), "BACKEND", None)
        if isinstance(declared, Backend):
            found.append(declared)
    return {b.name: b for b in sorted(found, key=lambda b: b.order)}


def names() -> tuple[str, ...]:
    return tuple(backends())


def get(name: str) -> Backend:
    try:
        return backends()[name]
    except KeyError:
        raise UserError(f"Unknown backend '{name}'; choose from {', '.join(names())}.") from None


__all__ = ["Backend", "NoArtifact", "backends", "get", "names"]
