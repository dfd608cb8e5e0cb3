"""What bench found: one row type per table (parity, latency, MACs against time) and the report holding them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ulsam_deploy.backends.base import Runner
from ulsam_deploy.backends.judge import REFERENCE_FIX, Tolerances, Verdict
from ulsam_deploy.bench.latency import LatencyStats, throughput
from ulsam_deploy.errors import ParityError

SCHEMA = "ulsam-deploy-bench/2"


def artifact_name(artifact: str) -> str:
    """What a row names: the file (``model.int8-tensorrt.onnx``), or what it is when there is none."""
    if artifact in ("(in memory)", ""):
        return artifact or "-"
    return Path(artifact).name


@dataclass
class RunnerEntry:
    model: str
    runner: Runner
    artifact: str

    @property
    def label(self) -> str:
        return self.runner.label

    @property
    def precision(self) -> str:
        return self.runner.precision

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.model, self.label, self.precision, self.artifact)

    def describe_artifact(self) -> dict:
        facts = getattr(self.runner, "facts", {}) or {}
        return {"artifact": self.artifact, "file": artifact_name(self.artifact), "precision": self.precision,
                "int8_target": facts.get("int8_target"), "mode": self.runner.mode,
                "latency_meaningful": bool(self.runner.latency_meaningful)}


@dataclass
class ParityRow:
    model: str
    backend: str
    precision: str
    artifact: str
    reference: str
    verdict: Verdict | None  # None for the reference itself
    accuracy: object | None = None  # judge.Accuracy of this runner (labelled inputs)
    mode: str = ""
    int8_target: str | None = None
    problem: str | None = None  # the reference's own outputs prove nothing (judge.reference_problem)

    @property
    def is_reference(self) -> bool:
        return self.verdict is None

    @property
    def comparison(self):
        return None if self.verdict is None else self.verdict.comparison

    @property
    def failures(self) -> list[str]:
        if self.verdict is None:
            return [] if self.problem is None else [f"its own outputs are {self.problem}; {REFERENCE_FIX}"]
        return list(self.verdict.failures)

    @property
    def tolerances(self) -> Tolerances | None:
        return None if self.verdict is None else self.verdict.tolerances

    @property
    def reference_accuracy(self):
        return None if self.verdict is None else self.verdict.main.accuracy_reference

    @property
    def outputs(self) -> list:
        """The judge's figures per output (per input size and output name, ``320x320/feat_s8``)."""
        return [] if self.verdict is None else list(self.verdict.outputs)

    @property
    def worst(self) -> dict | None:
        """The worst figure of each kind over every output: what one table row shows."""
        if not self.outputs:
            return None
        cs = [o.comparison for o in self.outputs]
        return {"max_abs": max(c.max_abs for c in cs), "mean_abs": max(c.mean_abs for c in cs),
                "min_required_atol": max(c.min_required_atol for c in cs),
                "min_required_rtol": max(c.min_required_rtol for c in cs), "cosine": min(c.cosine for c in cs),
                "top1_agreement": min(c.top1_agreement for c in cs) if self.outputs[0].classifier else None,
                "top5_overlap": min(c.top5_overlap for c in cs) if self.outputs[0].classifier else None}

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def file(self) -> str:
        return artifact_name(self.artifact)

    def to_dict(self) -> dict:
        data = {"model": self.model, "backend": self.backend, "precision": self.precision, "artifact": self.artifact,
                "file": self.file, "int8_target": self.int8_target, "mode": self.mode, "reference": self.reference,
                "is_reference": self.is_reference, "passed": self.passed, "failures": self.failures,
                "comparison": self.comparison.to_dict() if self.comparison else None,
                "tolerances": self.tolerances.to_dict() if self.tolerances else None,
                "worst": self.worst, "outputs": [o.to_dict() for o in self.outputs],
                "accuracy": self.accuracy.to_dict() if self.accuracy else None}
        if self.accuracy and self.reference_accuracy and not self.is_reference:
            data["accuracy_delta"] = {"top1": self.accuracy.top1 - self.reference_accuracy.top1,
                                      "top5": self.accuracy.top5 - self.reference_accuracy.top5}
        return data


@dataclass
class LatencyRow:
    model: str
    backend: str
    precision: str
    artifact: str
    batch: int
    stats: LatencyStats
    samples_ms: list[float]
    gpu: dict[str, LatencyStats] | None
    warmup_iters: int
    mode: str = ""
    meaningful: bool = True  # False: a simulation or reference op, not deployment speed
    size: tuple[int, int] | None = None  # input (H, W)

    @property
    def file(self) -> str:
        return artifact_name(self.artifact)

    @property
    def size_text(self) -> str:
        return f"{self.size[0]}x{self.size[1]}" if self.size else ""

    @property
    def qps(self) -> float:
        return throughput(self.stats, self.batch)[0]

    @property
    def images_per_s(self) -> float:
        return throughput(self.stats, self.batch)[1]

    def to_dict(self) -> dict:
        data = {"model": self.model, "backend": self.backend, "precision": self.precision, "artifact": self.artifact,
                "file": self.file, "mode": self.mode, "latency_meaningful": self.meaningful,
                "batch": self.batch, "input_size": list(self.size) if self.size else None,
                "latency_ms": self.stats.to_dict(), "throughput_qps": self.qps,
                "images_per_s": self.images_per_s, "warmup_iterations": self.warmup_iters,
                "gpu": {f"{k}_ms": v.to_dict() for k, v in self.gpu.items()} if self.gpu else None}
        return data


@dataclass
class CompareRow:
    backend: str
    precision: str
    batch: int
    model: str
    baseline: str
    macs: int | None
    baseline_macs: int | None
    median_ms: float
    baseline_median_ms: float
    size: tuple[int, int] | None = None

    @property
    def macs_ratio(self) -> float | None:
        return self.macs / self.baseline_macs if self.macs and self.baseline_macs else None

    @property
    def latency_ratio(self) -> float:
        return self.median_ms / self.baseline_median_ms

    def to_dict(self) -> dict:
        return {"backend": self.backend, "precision": self.precision, "batch": self.batch,
                "input_size": list(self.size) if self.size else None, "model": self.model,
                "baseline": self.baseline, "macs": self.macs, "baseline_macs": self.baseline_macs,
                "macs_ratio": self.macs_ratio, "median_ms": self.median_ms,
                "baseline_median_ms": self.baseline_median_ms, "latency_ratio": self.latency_ratio}


@dataclass
class BenchReport:
    created: str
    machine: dict
    versions: dict
    settings: dict
    inputs: dict
    models: list[dict]
    runners: list[dict]
    skipped: list[dict]
    parity: list[ParityRow]
    latency: list[LatencyRow]
    compare: list[CompareRow]
    warnings: list[str]
    seconds: float = 0.0

    @property
    def parity_failures(self) -> list[ParityRow]:
        return [row for row in self.parity if not row.passed]

    @property
    def passed(self) -> bool:
        return not self.parity_failures

    @property
    def has_labels(self) -> bool:
        return any(row.accuracy is not None for row in self.parity)

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "created": self.created, "passed": self.passed, "seconds": round(self.seconds, 3),
                "machine": self.machine, "versions": self.versions, "settings": self.settings, "inputs": self.inputs,
                "models": self.models, "runners": self.runners, "skipped": self.skipped,
                "parity": [r.to_dict() for r in self.parity], "latency": [r.to_dict() for r in self.latency],
                "compare": [r.to_dict() for r in self.compare], "warnings": list(self.warnings)}

    def raise_for_parity(self) -> None:
        """ParityError (exit 3) naming the failed rows, when any backend failed its thresholds."""
        bad = self.parity_failures
        if bad:
            first = bad[0]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise ParityError(f"Parity failed: {first.backend} ({first.precision}) of {first.model} against "
                              f"{first.reference}: {first.failures[0]}{more}; see the report for every figure.")


__all__ = ["BenchReport", "CompareRow", "LatencyRow", "ParityRow", "RunnerEntry", "SCHEMA", "artifact_name"]
