"""Latency maths and the interleaved timing loop used by ``bench``.

Figures follow trtexec's performance summary so users read them the same way:

* percentiles by the nearest-rank method, which is what trtexec computes
  (``sorted[max(n - 1 - floor((1 - p/100) n), 0)]`` == ``sorted[ceil(p n / 100) - 1]``), here in exact
  arithmetic (trtexec's float maths can pick the next sample when ``p n / 100`` is an integer);
* median of the sorted samples (mean of the two middle values for an even count);
* coefficient of variation = population standard deviation / mean; a row whose host latency varies by more
  than 2.5 % is flagged "unstable". That threshold is ours: trtexec (``sampleReporting.cpp``) warns on the CV of
  GPU compute time, above 1 % up to TensorRT 10.13.0 (JetPack 6's 10.3 included) and above 2.5 % from 10.13.2;
* throughput: runs are synchronous with one query in flight, so queries/s = 1000 / mean latency (ms)
  and images/s = queries/s x batch.

Interleaving: several targets (model x backend at one batch size) are timed in turn, in blocks of
roughly ``block_s`` seconds, rotating the starting target every round, until every target has at
least ``min_iters`` samples and ``min_seconds`` of measured time. Slow drift of a shared machine
(another job starting, thermal throttling) then hits all targets alike, so their ratios stay fair.
The first call of each block is run but not recorded (it pays for the switch between targets:
caches, thread pools waking up), which is what a dedicated loop would never see either.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

UNSTABLE_CV = 0.025  # our rule, on host latency (trtexec: GPU compute time, 1 % to 10.13.0, 2.5 % from 10.13.2)
UNSTABLE_WARNING = ("some rows are unstable (their host latency varies by more than 2.5 %): the machine was busy or "
                    "the run too short; re-run with a longer --duration on a quiet machine before trusting small "
                    "differences")
PERCENTILES = (90, 95, 99)
# trtexec's names for the per-stage GPU timings
GPU_STAGES = {"h2d": "H2D Latency", "compute": "GPU Compute Time", "d2h": "D2H Latency"}


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending sequence (trtexec's ``findPercentile``)."""
    n = len(sorted_values)
    if n == 0:
        return math.inf
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be in [0, 100], not {p}")
    # integer arithmetic on p*n avoids float surprises such as (1 - 0.9) * 10 == 0.9999999999999998
    rank = math.ceil(round(p * n, 9) / 100)
    return float(sorted_values[max(rank - 1, 0)])


def median(sorted_values: Sequence[float]) -> float:
    n = len(sorted_values)
    if n == 0:
        return math.inf
    m = n // 2
    return float(sorted_values[m]) if n % 2 else (float(sorted_values[m - 1]) + float(sorted_values[m])) / 2.0


@dataclass
class LatencyStats:
    """Summary of timing samples in milliseconds (trtexec's fields plus std and CV)."""

    count: int
    min: float
    max: float
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    std: float
    cv: float  # std / mean

    @property
    def unstable(self) -> bool:
        return self.cv > UNSTABLE_CV

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> "LatencyStats":
        values = sorted(float(v) for v in samples_ms)
        if not values:
            raise ValueError("no timing samples")
        arr = np.asarray(values, dtype=np.float64)
        mean = float(arr.mean())
        std = float(arr.std())  # population std, as trtexec
        return cls(count=len(values), min=values[0], max=values[-1], mean=mean, median=median(values),
                   p90=percentile(values, 90), p95=percentile(values, 95), p99=percentile(values, 99),
                   std=std, cv=std / mean if mean > 0 else 0.0)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["unstable"] = self.unstable
        return data


@dataclass
class TimingConfig:
    warmup_s: float = 0.5
    min_iters: int = 10
    min_seconds: float = 3.0
    block_s: float = 0.25
    max_seconds: float | None = None  # hard cap per target (None: no cap beyond the minimums)

    def __post_init__(self) -> None:
        from ulsam_deploy.errors import UserError

        if self.warmup_s < 0:
            raise UserError(f"--warmup must be zero or more milliseconds, not {self.warmup_s * 1000:g}.")
        if int(self.min_iters) < 1:
            raise UserError(f"--iterations must be at least 1, not {self.min_iters}.")
        if self.min_seconds < 0:
            raise UserError(f"--duration must be zero or more seconds, not {self.min_seconds}.")
        self.min_iters = int(self.min_iters)
        self.block_s = max(float(self.block_s), 1e-3)


@dataclass
class TimingTarget:
    """One thing to time: ``run()`` does one synchronous inference; ``stages()`` (optional) returns the
    GPU stage timings in ms of the call just made (keys ``h2d``, ``compute``, ``d2h``)."""

    key: object
    run: Callable[[], object]
    stages: Callable[[], dict[str, float] | None] | None = None
    samples_ms: list[float] = field(default_factory=list)
    stage_samples: dict[str, list[float]] = field(default_factory=dict)
    measured_s: float = 0.0
    warmup_iters: int = 0

    def done(self, config: TimingConfig) -> bool:
        if config.max_seconds is not None and self.measured_s >= config.max_seconds and self.samples_ms:
            return True
        return len(self.samples_ms) >= config.min_iters and self.measured_s >= config.min_seconds


@dataclass
class TimingResult:
    key: object
    stats: LatencyStats
    samples_ms: list[float]
    gpu: dict[str, LatencyStats] | None
    warmup_iters: int


def _block(target: TimingTarget, seconds: float, record: bool, skip_first: bool) -> None:
    clock = time.perf_counter_ns
    run, stages = target.run, target.stages
    if skip_first:
        run()
    start = clock()
    end_by = start + int(seconds * 1e9)
    while True:
        t0 = clock()
        run()
        t1 = clock()
        if record:
            target.samples_ms.append((t1 - t0) / 1e6)
            if stages is not None:
                for name, value in (stages() or {}).items():
                    target.stage_samples.setdefault(name, []).append(float(value))
        else:
            target.warmup_iters += 1
        if t1 >= end_by:
            break
    if record:
        target.measured_s += (clock() - start) / 1e9


def measure_interleaved(targets: Sequence[TimingTarget], config: TimingConfig,
                        on_round: Callable[[int, Sequence[TimingTarget]], None] | None = None) -> list[TimingResult]:
    """Warm every target up by time, then time them in rotating blocks until all meet the minimums."""
    targets = list(targets)
    if not targets:
        return []
    for target in targets:
        if config.warmup_s > 0:
            _block(target, config.warmup_s, record=False, skip_first=False)
        else:
            target.run()
            target.warmup_iters += 1
    rounds = 0
    while not all(t.done(config) for t in targets):
        k = len(targets)
        for i in range(k):
            target = targets[(rounds + i) % k]
            if config.max_seconds is not None and target.done(config) and target.measured_s >= config.max_seconds:
                continue
            _block(target, config.block_s, record=True, skip_first=k > 1)
        rounds += 1
        if on_round is not None:
            on_round(rounds, targets)
    results = []
    for target in targets:
        gpu = {name: LatencyStats.from_samples(values) for name, values in target.stage_samples.items() if values}
        results.append(TimingResult(target.key, LatencyStats.from_samples(target.samples_ms), list(target.samples_ms),
                                    gpu or None, target.warmup_iters))
    return results


def throughput(stats: LatencyStats, batch: int) -> tuple[float, float]:
    """(queries/s, images/s) for synchronous runs with one query in flight."""
    qps = 1000.0 / stats.mean if stats.mean > 0 else 0.0
    return qps, qps * batch


__all__ = ["GPU_STAGES", "LatencyStats", "PERCENTILES", "TimingConfig", "TimingResult", "TimingTarget", "UNSTABLE_CV",
           "measure_interleaved", "median", "percentile", "throughput"]
