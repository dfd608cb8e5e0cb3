"""``bench``: parity and latency of every backend on identical inputs, and the reports.

One module per concept: :mod:`.models` (what is benched), :mod:`.options` (how), :mod:`.run` (the parity pass and
the one interleaved latency loop), :mod:`.results` (the rows and the report), :mod:`.machine` (where it ran),
:mod:`.report` (JSON, CSV, Markdown, chart). Backends come from :mod:`ulsam_deploy.backends.registry`.
Names load lazily: importing this package imports no framework.
"""

from ulsam_deploy._lazy import lazy_exports

_EXPORTS = {
    "BenchOptions": "ulsam_deploy.bench.options",
    "BenchReport": "ulsam_deploy.bench.results",
    "ModelSpec": "ulsam_deploy.bench.models",
    "resolve_model": "ulsam_deploy.bench.models",
    "run_bench": "ulsam_deploy.bench.run",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
